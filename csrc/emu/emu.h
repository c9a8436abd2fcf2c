// An executor of the CUDA execution model for the host C++ compiler: the project's .cu kernels run on the
// CPU, unchanged, with CUDA's semantics where a kernel can observe them.  Header-only; no CUDA toolkit and
// no torch (csrc/emu/emu_torch.h adds the ATen glue; tests/emu/ compiles this header alone).
//
// Model
//  - A launch runs its blocks one after another.  A block's threads are stackful fibers (ucontext, 128 KiB
//    stacks with a PROT_NONE guard page), so kernel bodies need no change: __syncthreads() and the warp
//    collectives are points where a fiber yields to the block's scheduler.
//  - Between two such points the scheduler runs the ready threads one at a time, to completion of their
//    step, in the order SHUFFLEKERN_EMU_SCHEDULE names: inorder (thread 0 first), reverse, or random:<seed>
//    (a fresh permutation every round).  A result that depends on the order is a race (a missing barrier,
//    shared memory written by two threads): run under several schedules to see it.
//  - __syncthreads() releases when every thread of the block waits at the same __syncthreads (file:line).
//    Threads at different barriers, or some exited while others wait, is a divergent barrier; nothing left
//    to run is a deadlock.  Both are errors naming the kernel, file:line and block.
//  - Warp collectives (__shfl*_sync, __ballot_sync, __any_sync, __all_sync, __syncwarp) are per warp of 32
//    consecutive threads (linear thread id / 32).  A collective completes when every existing lane named in
//    the mask waits at a collective of the same kind with the same mask; a lane outside its own mask, lanes
//    of one mask disagreeing on kind or mask, a named lane that exited, and a shuffle reading a lane
//    outside the mask are errors.
//  - Shared memory (SK_SHARED, SK_DYNAMIC_SHARED) lives in a per-block arena filled with 0xFF bytes (NaN in
//    every float type, -1 in integers) at every block start, so a read before a write shows.  The dynamic
//    part ends at a guard page.
//  - Global memory: every pointer argument must point into a buffer declared for the launch (emu_torch.h's
//    dptr).  The launch copies each buffer into its own mapping between two PROT_NONE pages, with the
//    slack around it filled with 0xFF and checked afterwards, runs the kernel on the copies and copies them
//    back.  A load or store past either end faults (reported with kernel, thread, block and the buffer's
//    argument) or lands in the slack (a store is reported after the launch, a load reads NaN).
//  - SK_KERNEL_ASSERT / a fault / a scheduling error stops the launch and makes launch() throw sk_emu::Error;
//    the process keeps working.
// What it cannot show: timing, coalescing, lockstep execution within a warp, races between blocks (blocks
// run one after another), the memory model of concurrent blocks, hardware math (__expf is expf here).
#pragma once

#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---- CUDA keywords and types -----------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

#define SK_EMU_VEC2(T, name, al) \
  struct alignas(al) name {      \
    T x, y;                      \
  };                             \
  inline name make_##name(T x, T y) { return name{x, y}; }
#define SK_EMU_VEC4(T, name, al) \
  struct alignas(al) name {      \
    T x, y, z, w;                \
  };                             \
  inline name make_##name(T x, T y, T z, T w) { return name{x, y, z, w}; }
SK_EMU_VEC2(float, float2, 8)
SK_EMU_VEC4(float, float4, 16)
SK_EMU_VEC2(double, double2, 16)
SK_EMU_VEC2(int, int2, 8)
SK_EMU_VEC4(int, int4, 16)
SK_EMU_VEC2(unsigned, uint2, 8)
SK_EMU_VEC4(unsigned, uint4, 16)
SK_EMU_VEC2(long long, longlong2, 16)
SK_EMU_VEC2(unsigned long long, ulonglong2, 16)
SK_EMU_VEC2(unsigned short, ushort2, 4)
SK_EMU_VEC4(unsigned short, ushort4, 8)
#undef SK_EMU_VEC2
#undef SK_EMU_VEC4

namespace sk_emu {

// Any error of a launch: bad configuration, scheduling error, device assertion, bad memory access.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

constexpr int kWarpSize = 32;
constexpr int kMaxThreads = 1024;
constexpr size_t kStackBytes = 128 * 1024;
constexpr size_t kSharedBytes = 227 * 1024;  // an H100's shared memory a block (opt-in maximum)
constexpr unsigned char kPoison = 0xFF;

inline size_t page_size() {
  static const size_t p = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return p;
}

inline std::string dim_str(dim3 d) {
  std::ostringstream o;
  o << "(" << d.x << ", " << d.y << ", " << d.z << ")";
  return o.str();
}

// A mapping of `bytes` usable bytes with a PROT_NONE page on each side.
struct Guarded {
  char* base = nullptr;  // first usable byte
  size_t bytes = 0;
  Guarded() = default;
  explicit Guarded(size_t n) {
    const size_t pg = page_size();
    bytes = (n + pg - 1) / pg * pg;
    char* m = static_cast<char*>(mmap(nullptr, bytes + 2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (m == MAP_FAILED) throw Error("emulator: out of memory mapping " + std::to_string(n) + " bytes");
    mprotect(m, pg, PROT_NONE);
    mprotect(m + pg + bytes, pg, PROT_NONE);
    base = m + pg;
  }
  Guarded(Guarded&& o) noexcept : base(o.base), bytes(o.bytes) { o.base = nullptr; }
  Guarded& operator=(Guarded&& o) noexcept {
    std::swap(base, o.base);
    std::swap(bytes, o.bytes);
    return *this;
  }
  ~Guarded() {
    if (base) munmap(base - page_size(), bytes + 2 * page_size());
  }
  // Where an address falls relative to this mapping: 0 not near, -1 front guard, +1 back guard, 2 inside.
  int where(const void* p) const {
    const char* c = static_cast<const char*>(p);
    const size_t pg = page_size();
    if (!base || c < base - pg || c >= base + bytes + pg) return 0;
    if (c < base) return -1;
    if (c >= base + bytes) return 1;
    return 2;
  }
};

// ---- per-thread (fiber) state -----------------------------------------------------------------------------
enum class Wait { kNone, kBarrier, kWarp, kDone };
enum class WarpOp { kShflIdx, kShflUp, kShflDown, kShflXor, kBallot, kAny, kAll, kSync };
enum class BarOp { kPlain, kCount, kAnd, kOr };

inline const char* warp_op_name(WarpOp op) {
  switch (op) {
    case WarpOp::kShflIdx: return "__shfl_sync";
    case WarpOp::kShflUp: return "__shfl_up_sync";
    case WarpOp::kShflDown: return "__shfl_down_sync";
    case WarpOp::kShflXor: return "__shfl_xor_sync";
    case WarpOp::kBallot: return "__ballot_sync";
    case WarpOp::kAny: return "__any_sync";
    case WarpOp::kAll: return "__all_sync";
    default: return "__syncwarp";
  }
}

struct Fiber {
  ucontext_t ctx;
  uint3 tid{0, 0, 0};
  int linear = 0, warp = 0, lane = 0;
  Wait wait = Wait::kNone;
  const char* file = "";
  int line = 0;
  // barrier
  BarOp bar_op = BarOp::kPlain;
  int bar_pred = 0, bar_result = 0;
  // warp collective
  WarpOp wop = WarpOp::kSync;
  unsigned mask = 0;
  uint64_t value = 0, result = 0;
  int param = 0, width = kWarpSize;
};

struct Launch;

// One global load or store of one thread (the memory-traffic model, enabled by set_traffic).
struct Access {
  uintptr_t addr;
  const void* path;  // which buffer of the launch the access touches (see record_access)
  uint32_t bytes;
  bool store;
};

// Everything one OS thread needs to run blocks: fibers and their stacks, the shared-memory arena, the
// scheduler's context.  Kept across launches (stacks and arena are mapped once).
struct Executor {
  std::vector<Fiber> fibers;
  std::vector<Guarded> stacks;
  Guarded shared{kSharedBytes};
  size_t shared_dirty = 0;  // bytes of the static arena that may hold values since the last poisoning
  ucontext_t sched;
  Fiber* cur = nullptr;
  Launch* launch = nullptr;
  uint3 block_idx{0, 0, 0};
  dim3 block_dim, grid_dim;
  std::vector<char> altstack = std::vector<char>(64 * 1024);
  bool altstack_set = false;
  std::vector<std::vector<Access>> logs;  // per thread of the block, since its warp's last sync point
};

inline Executor& executor() {
  static thread_local Executor ex;
  return ex;
}

// A buffer the kernel may touch: the caller's [begin, begin + bytes) and its guarded copy.
struct Buffer {
  char* begin;
  size_t bytes;
  std::vector<int> args;  // kernel arguments pointing into it (for messages)
  Guarded copy;
  char* data = nullptr;   // begin's image in `copy`
};

struct Launch {
  std::string name, site;
  dim3 grid, block;
  size_t smem = 0;
  std::vector<Buffer> buffers;
  std::vector<std::pair<const void*, size_t>> shared_vars;  // (tag, offset) of SK_SHARED variables
  size_t shared_top = 0;
  std::string error;
  std::string schedule = "inorder";
  uint64_t seed = 0;
  int mode = 0;  // 0 inorder, 1 reverse, 2 random
  sigjmp_buf jmp;
  volatile bool in_kernel = false;
  void* fault_addr = nullptr;
  int fault_sig = 0;
  bool traffic = false;
  uint64_t blocks_run = 0;
  // memory-traffic model: bytes the threads asked for, 32-byte sectors the warps' accesses touched
  uint64_t load_bytes = 0, store_bytes = 0, load_sectors = 0, store_sectors = 0;
  // per buffer (index as in `buffers`): request-level load sectors, and which sectors were loaded / stored at
  // least once (the L2 model, see dram_bytes)
  std::vector<uint64_t> buf_load_sectors;
  std::vector<std::vector<bool>> buf_loaded, buf_stored;
};

// The L2 model (an H100's 50 MB L2): the bytes of a launch that reach DRAM.  A buffer the launch only reads
// moves each sector it touches once if the buffer fits the L2, else every request's sectors (as the
// request-level model); a buffer the launch writes moves every sector it reads per request and each sector it
// writes once.  Each launch starts cold.  With sampled blocks the counts are scaled up to the grid, a buffer's
// distinct sectors at most the buffer's own.
constexpr uint64_t kL2Bytes = 50ull << 20;
inline uint64_t dram_bytes(const Launch& L, double scale) {
  double sectors = 0;
  for (size_t b = 0; b < L.buf_loaded.size(); ++b) {
    auto count = [](const std::vector<bool>& v) { return double(std::count(v.begin(), v.end(), true)); };
    const double whole = double(L.buffers[b].bytes / 32 + 2);
    const double stored = std::min(whole, scale * count(L.buf_stored[b]));
    const bool read_only = stored == 0;
    sectors += stored + (read_only && L.buffers[b].bytes <= kL2Bytes ? std::min(whole, scale * count(L.buf_loaded[b]))
                                                                      : scale * double(L.buf_load_sectors[b]));
  }
  return uint64_t(sectors * 32.0 + 0.5);
}

// Per-launch memory traffic (set_traffic(true) records it; traffic_log() hands it over and clears it).
struct Traffic {
  std::string kernel;
  uint64_t blocks, blocks_run, load_bytes, store_bytes, load_sectors, store_sectors;
  uint64_t dram_bytes;  // the L2 model's bytes reaching DRAM, already scaled to the whole grid (see dram_bytes)
};

struct TrafficState {
  std::mutex m;
  bool on = false;
  uint64_t sample_blocks = 0;  // 0: run every block
  std::vector<Traffic> log;
};
inline TrafficState& traffic_state() {
  static TrafficState s;
  return s;
}
// Record every launch's traffic from now on.  sample_blocks > 0 runs only that many blocks of a launch,
// evenly spread, and scales the counts up (for the traffic report of large cases; outputs are then
// incomplete).
inline void set_traffic(bool on, uint64_t sample_blocks = 0) {
  std::lock_guard<std::mutex> g(traffic_state().m);
  traffic_state().on = on;
  traffic_state().sample_blocks = sample_blocks;
}
inline std::vector<Traffic> traffic_log() {
  std::lock_guard<std::mutex> g(traffic_state().m);
  return std::move(traffic_state().log);
}

// Buffers declared for the next launch on this OS thread (emu_torch.h's dptr).
inline std::vector<std::pair<char*, size_t>>& pending_buffers() {
  static thread_local std::vector<std::pair<char*, size_t>> v;
  return v;
}
inline void declare_buffer(const void* begin, size_t bytes) {
  if (begin != nullptr && bytes > 0) pending_buffers().emplace_back(static_cast<char*>(const_cast<void*>(begin)), bytes);
}

// Launches so far, by kernel name (process-wide).
inline std::mutex& counts_mutex() {
  static std::mutex m;
  return m;
}
inline std::map<std::string, int64_t>& counts() {
  static std::map<std::string, int64_t> c;
  return c;
}
inline std::map<std::string, int64_t> launch_counts() {
  std::lock_guard<std::mutex> g(counts_mutex());
  return counts();
}

inline std::string where_am_i() {
  Executor& ex = executor();
  std::ostringstream o;
  o << "block " << dim_str(dim3(ex.block_idx));
  if (ex.cur) o << ", thread " << dim_str(dim3(ex.cur->tid));
  return o.str();
}

// Records the launch's first error and ends the calling thread's fiber for good.
[[noreturn]] inline void fail_in_kernel(const std::string& what) {
  Executor& ex = executor();
  if (ex.launch->error.empty()) ex.launch->error = what;
  ex.cur->wait = Wait::kDone;
  swapcontext(&ex.cur->ctx, &ex.sched);
  std::abort();  // never resumed
}

inline void yield_to_scheduler() {
  Executor& ex = executor();
  swapcontext(&ex.cur->ctx, &ex.sched);
}

// ---- the builtins' state ---------------------------------------------------------------------------------
inline const uint3& thread_idx() { return executor().cur->tid; }

inline void device_assert(const char* cond, const char* file, int line) {
  Executor& ex = executor();
  std::ostringstream o;
  o << "device-side assertion `" << cond << "` failed in kernel " << ex.launch->name << " at " << file << ":" << line
    << " (" << where_am_i() << ")";
  fail_in_kernel(o.str());
}

inline void* shared_var(const void* tag, size_t bytes, size_t align) {
  Executor& ex = executor();
  Launch& L = *ex.launch;
  for (const auto& v : L.shared_vars)
    if (v.first == tag) return ex.shared.base + v.second;
  size_t off = (L.shared_top + align - 1) / align * align;
  if (off + bytes + L.smem > kSharedBytes) {
    fail_in_kernel("kernel " + L.name + ": static (" + std::to_string(off + bytes) + " B) + dynamic (" +
                   std::to_string(L.smem) + " B) shared memory exceed " + std::to_string(kSharedBytes) + " B");
  }
  L.shared_vars.emplace_back(tag, off);
  L.shared_top = off + bytes;
  std::memset(ex.shared.base + off, kPoison, bytes);  // later blocks poison it at their start
  ex.shared_dirty = std::max(ex.shared_dirty, L.shared_top);
  return ex.shared.base + off;
}

template <typename T>
inline T* shared_var(const void* tag) {
  static_assert(std::is_trivially_default_constructible_v<std::remove_all_extents_t<T>>,
                "__shared__ variables cannot have constructors");
  return static_cast<T*>(shared_var(tag, sizeof(T), alignof(T) < 16 ? 16 : alignof(T)));
}

// Dynamic shared memory: the last smem bytes before the arena's guard page.
inline void* dynamic_shared() {
  Executor& ex = executor();
  return ex.shared.base + ex.shared.bytes - (ex.launch->smem + 15) / 16 * 16;
}

// Barrier: returns the reduction of `pred` over the block for the count/and/or forms.
inline int syncthreads(const char* file, int line, BarOp op = BarOp::kPlain, int pred = 0) {
  Fiber& f = *executor().cur;
  f.wait = Wait::kBarrier;
  f.file = file;
  f.line = line;
  f.bar_op = op;
  f.bar_pred = pred != 0;
  yield_to_scheduler();
  return f.bar_result;
}

template <typename T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp shuffles move values of at most 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

inline uint64_t warp_collective(const char* file, int line, WarpOp op, unsigned mask, uint64_t value, int param,
                                int width) {
  Fiber& f = *executor().cur;
  if (!(mask >> f.lane & 1u)) {
    std::ostringstream o;
    o << warp_op_name(op) << " in kernel " << executor().launch->name << " at " << file << ":" << line
      << ": the calling lane " << f.lane << " is not in mask 0x" << std::hex << mask << std::dec << " ("
      << where_am_i() << ")";
    fail_in_kernel(o.str());
  }
  if (width < 1 || width > kWarpSize || (width & (width - 1)) != 0) {
    fail_in_kernel(std::string(warp_op_name(op)) + " in kernel " + executor().launch->name + " at " + file + ":" +
                   std::to_string(line) + ": width must be a power of 2 <= 32, got " + std::to_string(width));
  }
  f.wait = Wait::kWarp;
  f.file = file;
  f.line = line;
  f.wop = op;
  f.mask = mask;
  f.value = value;
  f.param = param;
  f.width = width;
  yield_to_scheduler();
  return f.result;
}

// ---- the memory-traffic model -------------------------------------------------------------------------
// A warp's accesses are grouped as a GPU's load/store unit sees them: the j-th load (or store) of each lane
// of the warp to one buffer (lanes on the same path) is one request, and the request moves every distinct
// 32-byte sector its lanes touch.  Its bytes asked for are its distinct elements (lanes that read one
// address, a broadcast, ask for it once), so sector efficiency = asked / moved is at most 1.  Accesses are collected per lane between the warp's sync points and
// grouped when all the lanes concerned reach one (a barrier, a warp collective, the end of the block).
inline void record_access(const void* p, uint32_t bytes, bool store) {
  Executor& ex = executor();
  if (ex.launch == nullptr || !ex.launch->traffic || ex.cur == nullptr) return;
  // The "path" of an access is the buffer it touches: the j-th access of each lane to one buffer is one
  // request (the host compiler may duplicate a kernel's store into two branches where a GPU predicates one
  // instruction, so code addresses would split requests that the hardware issues together).
  const char* c = static_cast<const char*>(p);
  uintptr_t buf = ~uintptr_t(0);
  const std::vector<Buffer>& bufs = ex.launch->buffers;
  for (size_t b = 0; b < bufs.size(); ++b)
    if (c >= bufs[b].data && c < bufs[b].data + bufs[b].bytes) buf = b;
  ex.logs[ex.cur->linear].push_back(Access{reinterpret_cast<uintptr_t>(p), reinterpret_cast<const void*>(buf), bytes, store});
}

// Groups and counts the logs of the threads [lo, hi) whose bit is set in `lanes`, then clears them.
inline void flush_traffic(Executor& ex, Launch& L, int lo, int hi, unsigned lanes = 0xFFFFFFFFu) {
  if (!L.traffic) return;
  struct Key {
    const void* path;
    uint32_t nth;
    bool store;
    uint64_t sector;
    bool operator<(const Key& o) const {
      return std::tie(path, nth, store, sector) < std::tie(o.path, o.nth, o.store, o.sector);
    }
    bool operator==(const Key& o) const {
      return path == o.path && nth == o.nth && store == o.store && sector == o.sector;
    }
  };
  static thread_local std::vector<Key> keys, uses;
  static thread_local std::vector<std::pair<const void*, uint32_t>> seen;
  keys.clear();
  uses.clear();
  for (int t = lo; t < hi; ++t) {
    if (!(lanes >> (t - lo) & 1u)) continue;
    std::vector<Access>& log = ex.logs[t];
    seen.clear();
    for (const Access& a : log) {
      uint32_t nth = 0;
      for (auto& s : seen) {
        if (s.first == a.path) {
          nth = ++s.second;
          break;
        }
      }
      if (nth == 0) seen.emplace_back(a.path, 0);
      // Bytes asked for: the distinct elements of the request (lanes reading one address share it).
      uses.push_back(Key{a.path, nth, a.store, (uint64_t(a.addr) << 8) | a.bytes});
      for (uint64_t sec = a.addr / 32; sec <= (a.addr + a.bytes - 1) / 32; ++sec) keys.push_back(Key{a.path, nth, a.store, sec});
    }
    log.clear();
  }
  std::sort(keys.begin(), keys.end());
  for (size_t i = 0; i < keys.size(); ++i) {
    if (i != 0 && keys[i] == keys[i - 1]) continue;
    (keys[i].store ? L.store_sectors : L.load_sectors) += 1;
    const uintptr_t b = reinterpret_cast<uintptr_t>(keys[i].path);
    if (b >= L.buffers.size()) continue;
    if (L.buf_loaded.size() != L.buffers.size()) {
      L.buf_load_sectors.assign(L.buffers.size(), 0);
      L.buf_loaded.assign(L.buffers.size(), {});
      L.buf_stored.assign(L.buffers.size(), {});
    }
    const uint64_t first = reinterpret_cast<uintptr_t>(L.buffers[b].data) / 32;
    std::vector<bool>& seen_b = keys[i].store ? L.buf_stored[b] : L.buf_loaded[b];
    if (seen_b.empty()) seen_b.assign(L.buffers[b].bytes / 32 + 2, false);
    if (keys[i].sector - first < seen_b.size()) seen_b[keys[i].sector - first] = true;
    if (!keys[i].store) ++L.buf_load_sectors[b];
  }
  std::sort(uses.begin(), uses.end());
  for (size_t i = 0; i < uses.size(); ++i)
    if (i == 0 || !(uses[i] == uses[i - 1])) (uses[i].store ? L.store_bytes : L.load_bytes) += uses[i].sector & 0xFF;
}

inline void flush_warps(Executor& ex, Launch& L, int n) {
  for (int lo = 0; lo < n; lo += kWarpSize) flush_traffic(ex, L, lo, std::min(n, lo + kWarpSize));
}

// ---- global pointers with a traffic record ----------------------------------------------------------------
// A kernel parameter declared SK_GLOBAL(T) (csrc/cuda/runtime.h) is a T* __restrict__ under nvcc and a
// gptr<T> here: a pointer whose element accesses are recorded for the memory-traffic model.  Raw pointer
// parameters still work (checked by the guard pages), but their traffic is not counted.
#define SK_EMU_AI inline __attribute__((always_inline))

template <typename T>
class gptr;

template <typename T>
class gref {
 public:
  using value_type = std::remove_const_t<T>;
  SK_EMU_AI explicit gref(T* p) : p_(p) {}
  SK_EMU_AI value_type load() const {
    record_access(p_, sizeof(T), false);
    return *p_;
  }
  template <typename U, typename = std::enable_if_t<std::is_convertible_v<value_type, U> || std::is_constructible_v<U, value_type>>>
  SK_EMU_AI operator U() const {
    return static_cast<U>(load());
  }
  template <typename U>
  SK_EMU_AI const gref& operator=(const U& v) const {
    static_assert(!std::is_const_v<T>, "store through a pointer to const");
    record_access(p_, sizeof(T), true);
    *p_ = static_cast<value_type>(v);
    return *this;
  }
  SK_EMU_AI const gref& operator=(const gref& o) const { return *this = o.load(); }
  template <typename U>
  SK_EMU_AI const gref& operator+=(const U& v) const { return *this = load() + v; }
  template <typename U>
  SK_EMU_AI const gref& operator-=(const U& v) const { return *this = load() - v; }
  template <typename U>
  SK_EMU_AI const gref& operator*=(const U& v) const { return *this = load() * v; }
  SK_EMU_AI gptr<T> operator&() const { return gptr<T>(p_); }
  SK_EMU_AI value_type operator-() const { return -load(); }

 private:
  T* p_;
};

#define SK_EMU_GREF_OP(op)                                                                         \
  template <typename T, typename U, typename = std::enable_if_t<!std::is_base_of_v<gref<T>, U>>> \
  SK_EMU_AI auto operator op(const gref<T>& a, const U& b) { return a.load() op b; }              \
  template <typename T, typename U, typename = std::enable_if_t<!std::is_base_of_v<gref<T>, U>>> \
  SK_EMU_AI auto operator op(const U& a, const gref<T>& b) { return a op b.load(); }              \
  template <typename T, typename U>                                                               \
  SK_EMU_AI auto operator op(const gref<T>& a, const gref<U>& b) { return a.load() op b.load(); }
SK_EMU_GREF_OP(+)
SK_EMU_GREF_OP(-)
SK_EMU_GREF_OP(*)
SK_EMU_GREF_OP(/)
SK_EMU_GREF_OP(<)
SK_EMU_GREF_OP(>)
SK_EMU_GREF_OP(<=)
SK_EMU_GREF_OP(>=)
SK_EMU_GREF_OP(==)
SK_EMU_GREF_OP(!=)
#undef SK_EMU_GREF_OP

template <typename T>
class gptr {
 public:
  using element_type = T;
  SK_EMU_AI gptr() = default;
  SK_EMU_AI gptr(std::nullptr_t) {}
  SK_EMU_AI explicit gptr(T* p) : p_(p) {}
  template <typename U, typename = std::enable_if_t<std::is_convertible_v<U*, T*>>>
  SK_EMU_AI gptr(const gptr<U>& o) : p_(o.get()) {}
  SK_EMU_AI T* get() const { return p_; }
  SK_EMU_AI explicit operator bool() const { return p_ != nullptr; }
  SK_EMU_AI gref<T> operator*() const { return gref<T>(p_); }
  SK_EMU_AI gref<T> operator[](int64_t i) const { return gref<T>(p_ + i); }
  SK_EMU_AI gptr operator+(int64_t i) const { return gptr(p_ + i); }
  SK_EMU_AI gptr operator-(int64_t i) const { return gptr(p_ - i); }
  SK_EMU_AI int64_t operator-(const gptr& o) const { return p_ - o.p_; }
  SK_EMU_AI gptr& operator+=(int64_t i) {
    p_ += i;
    return *this;
  }
  SK_EMU_AI gptr& operator++() {
    ++p_;
    return *this;
  }
  SK_EMU_AI bool operator==(const gptr& o) const { return p_ == o.p_; }
  SK_EMU_AI bool operator!=(const gptr& o) const { return p_ != o.p_; }

 private:
  T* p_ = nullptr;
};

// reinterpret_cast of a global pointer (vector loads: vcast<const float4>(p)).
template <typename V, typename T>
SK_EMU_AI gptr<V> vcast(gptr<T> p) {
  return gptr<V>(reinterpret_cast<V*>(p.get()));
}

template <typename T>
struct is_gptr : std::false_type {};
template <typename T>
struct is_gptr<gptr<T>> : std::true_type {};

// ---- the scheduler ---------------------------------------------------------------------------------------
inline void fiber_entry();

struct BlockRun {
  Executor& ex;
  Launch& L;
  int n = 0;
  std::vector<int> order;
  std::mt19937_64 rng;

  std::string site(const Fiber& f) const { return std::string(f.file) + ":" + std::to_string(f.line); }
  std::string head() const { return "kernel " + L.name + " (launched at " + L.site + "), block " + dim_str(dim3(ex.block_idx)); }

  // Completes the warp collectives whose lanes have all arrived.  Returns whether any did; sets L.error on
  // a misuse that can never complete.
  bool resolve_warps() {
    bool any = false;
    const int warps = (n + kWarpSize - 1) / kWarpSize;
    for (int w = 0; w < warps && L.error.empty(); ++w) {
      const int lo = w * kWarpSize, hi = std::min(n, lo + kWarpSize);
      const unsigned exists = hi - lo == 32 ? 0xFFFFFFFFu : ((1u << (hi - lo)) - 1u);
      for (int i = lo; i < hi && L.error.empty(); ++i) {
        Fiber& f = ex.fibers[i];
        if (f.wait != Wait::kWarp) continue;
        const unsigned named = f.mask & exists;
        bool complete = true;
        for (int l = 0; l < hi - lo; ++l) {
          if (!(named >> l & 1u)) continue;
          const Fiber& g = ex.fibers[lo + l];
          if (g.wait == Wait::kDone) {
            std::ostringstream o;
            o << head() << ": " << warp_op_name(f.wop) << " at " << site(f) << " (lane " << f.lane << ", mask 0x"
              << std::hex << f.mask << std::dec << ") names lane " << l << ", which has exited";
            L.error = o.str();
            return false;
          }
          if (g.wait != Wait::kWarp) {
            complete = false;
            continue;
          }
          if (g.mask != f.mask || g.wop != f.wop) {
            std::ostringstream o;
            o << head() << ": warp " << w << " lanes disagree: lane " << f.lane << " calls " << warp_op_name(f.wop)
              << "(mask 0x" << std::hex << f.mask << ") at " << site(f) << ", lane " << std::dec << g.lane
              << " calls " << warp_op_name(g.wop) << "(mask 0x" << std::hex << g.mask << std::dec << ") at "
              << site(g);
            L.error = o.str();
            return false;
          }
        }
        if (!complete) continue;
        flush_traffic(ex, L, lo, hi, named);
        if (!complete_group(lo, named)) return false;
        any = true;
      }
    }
    return any;
  }

  bool complete_group(int lo, unsigned named) {
    uint64_t ballot = 0;
    for (int l = 0; l < kWarpSize; ++l)
      if (named >> l & 1u) ballot |= (ex.fibers[lo + l].value != 0 ? 1ull : 0ull) << l;
    for (int l = 0; l < kWarpSize; ++l) {
      if (!(named >> l & 1u)) continue;
      Fiber& f = ex.fibers[lo + l];
      const int w = f.width, seg = l & ~(w - 1), in = l & (w - 1);
      int src = l;
      switch (f.wop) {
        case WarpOp::kShflIdx: src = seg + (f.param & (w - 1)); break;
        case WarpOp::kShflUp: src = in - f.param < 0 ? l : l - f.param; break;
        case WarpOp::kShflDown: src = in + f.param >= w ? l : l + f.param; break;
        case WarpOp::kShflXor: {
          const int s = l ^ (f.param & (kWarpSize - 1));
          src = s >= seg + w ? l : s;
          break;
        }
        default: break;
      }
      switch (f.wop) {
        case WarpOp::kBallot: f.result = ballot; break;
        case WarpOp::kAny: f.result = ballot != 0; break;
        case WarpOp::kAll: f.result = ballot == (uint64_t)named; break;
        case WarpOp::kSync: f.result = 0; break;
        default:
          if (!(named >> src & 1u)) {
            std::ostringstream o;
            o << head() << ": " << warp_op_name(f.wop) << " at " << site(f) << ": lane " << l << " reads lane " << src
              << ", which is not in mask 0x" << std::hex << f.mask << std::dec
              << (lo + src < n ? "" : " (no such thread in the block)");
            L.error = o.str();
            return false;
          }
          f.result = ex.fibers[lo + src].value;
      }
    }
    for (int l = 0; l < kWarpSize; ++l)
      if (named >> l & 1u) ex.fibers[lo + l].wait = Wait::kNone;
    return true;
  }

  // All live threads wait at one __syncthreads: release them.  Otherwise describe why nothing can run.
  bool resolve_barrier() {
    int waiting = 0, done = 0, at_warp = -1;
    const Fiber* first = nullptr;
    for (int i = 0; i < n; ++i) {
      const Fiber& f = ex.fibers[i];
      if (f.wait == Wait::kDone) ++done;
      if (f.wait == Wait::kWarp && at_warp < 0) at_warp = i;
      if (f.wait != Wait::kBarrier) continue;
      ++waiting;
      if (!first) first = &f;
      if (f.file != first->file || f.line != first->line) {
        L.error = head() + ": divergent __syncthreads: thread " + dim_str(dim3(first->tid)) + " waits at " +
                  site(*first) + ", thread " + dim_str(dim3(f.tid)) + " at " + site(f);
        return false;
      }
    }
    if (at_warp >= 0) {
      const Fiber& f = ex.fibers[at_warp];
      std::ostringstream o;
      o << head() << ": deadlock: thread " << dim_str(dim3(f.tid)) << " (warp " << f.warp << ", lane " << f.lane
        << ") waits in " << warp_op_name(f.wop) << " at " << site(f) << " for lanes of mask 0x" << std::hex << f.mask
        << std::dec << " that never arrive";
      if (first) o << " (" << waiting << " threads wait at __syncthreads at " << site(*first) << ")";
      L.error = o.str();
      return false;
    }
    if (waiting == 0) return false;
    if (done > 0) {
      L.error = head() + ": divergent __syncthreads at " + site(*first) + ": " + std::to_string(waiting) +
                " threads wait there but " + std::to_string(done) + " have exited";
      return false;
    }
    flush_warps(ex, L, n);
    int count = 0, all = 1, anyp = 0;
    for (int i = 0; i < n; ++i) {
      count += ex.fibers[i].bar_pred;
      all &= ex.fibers[i].bar_pred;
      anyp |= ex.fibers[i].bar_pred;
    }
    for (int i = 0; i < n; ++i) {
      Fiber& f = ex.fibers[i];
      f.bar_result = f.bar_op == BarOp::kCount ? count : f.bar_op == BarOp::kAnd ? all : f.bar_op == BarOp::kOr ? anyp : 0;
      f.wait = Wait::kNone;
    }
    return true;
  }

  void make_order() {
    for (int i = 0; i < n; ++i) order[i] = L.mode == 1 ? n - 1 - i : i;
    if (L.mode == 2) std::shuffle(order.begin(), order.end(), rng);
  }

  void run(uint64_t block_linear) {
    n = int(ex.block_dim.x * ex.block_dim.y * ex.block_dim.z);
    order.assign(n, 0);
    rng.seed(L.seed * 0x9E3779B97F4A7C15ull + block_linear);
    if (ex.fibers.size() < size_t(n)) ex.fibers.resize(n);
    if (ex.logs.size() < size_t(n)) ex.logs.resize(n);
    for (int i = 0; i < n; ++i) ex.logs[i].clear();
    while (ex.stacks.size() < size_t(n)) ex.stacks.emplace_back(kStackBytes);
    // Poison shared memory: what the last block wrote, and the dynamic part.
    std::memset(ex.shared.base, kPoison, std::max(ex.shared_dirty, L.shared_top));
    ex.shared_dirty = L.shared_top;
    if (L.smem) std::memset(dynamic_shared(), kPoison, (L.smem + 15) / 16 * 16);
    for (int i = 0; i < n; ++i) {
      Fiber& f = ex.fibers[i];
      f = Fiber{};
      f.linear = i;
      f.tid = uint3{unsigned(i % ex.block_dim.x), unsigned(i / ex.block_dim.x % ex.block_dim.y),
                    unsigned(i / (ex.block_dim.x * ex.block_dim.y))};
      f.warp = i / kWarpSize;
      f.lane = i % kWarpSize;
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = ex.stacks[i].base;
      f.ctx.uc_stack.ss_size = ex.stacks[i].bytes;
      f.ctx.uc_link = nullptr;
      makecontext(&f.ctx, &fiber_entry, 0);
    }
    for (;;) {
      make_order();
      bool live = false;
      for (int i : order) {
        Fiber& f = ex.fibers[i];
        if (f.wait != Wait::kNone) continue;
        ex.cur = &f;
        swapcontext(&ex.sched, &f.ctx);
        ex.cur = nullptr;
        if (!L.error.empty()) return;
      }
      for (int i = 0; i < n; ++i) live |= ex.fibers[i].wait != Wait::kDone;
      if (!live) {
        flush_warps(ex, L, n);
        return;
      }
      if (resolve_warps()) continue;
      if (!L.error.empty()) return;
      if (resolve_barrier()) continue;
      if (L.error.empty()) L.error = head() + ": deadlock (no thread can run)";
      return;
    }
  }
};

// Type-erased body of the running launch: calls the kernel with its (translated) arguments.
inline void (*&current_body())(void*) {
  static thread_local void (*body)(void*) = nullptr;
  return body;
}
inline void*& current_args() {
  static thread_local void* args = nullptr;
  return args;
}

inline void fiber_entry() {
  Executor& ex = executor();
  try {
    current_body()(current_args());
  } catch (const std::exception& e) {
    if (ex.launch->error.empty()) ex.launch->error = "kernel " + ex.launch->name + " threw: " + e.what();
  }
  ex.cur->wait = Wait::kDone;
  swapcontext(&ex.cur->ctx, &ex.sched);
  std::abort();
}

// ---- faults ------------------------------------------------------------------------------------------------
struct SignalState {
  std::mutex m;
  int users = 0;
  struct sigaction old_segv, old_bus;
};
inline SignalState& signal_state() {
  static SignalState s;
  return s;
}

inline void on_fault(int sig, siginfo_t* info, void* uc) {
  Executor& ex = executor();
  if (ex.launch != nullptr && ex.launch->in_kernel) {
    ex.launch->in_kernel = false;
    ex.launch->fault_addr = info->si_addr;
    ex.launch->fault_sig = sig;
    siglongjmp(ex.launch->jmp, 1);
  }
  // Not a kernel's fault: hand it to whoever handled it before (the fault repeats on return).
  SignalState& s = signal_state();
  sigaction(sig, sig == SIGSEGV ? &s.old_segv : &s.old_bus, nullptr);
  (void)uc;
}

struct SignalGuard {
  SignalGuard() {
    Executor& ex = executor();
    if (!ex.altstack_set) {
      stack_t st{};
      st.ss_sp = ex.altstack.data();
      st.ss_size = ex.altstack.size();
      sigaltstack(&st, nullptr);
      ex.altstack_set = true;
    }
    SignalState& s = signal_state();
    std::lock_guard<std::mutex> g(s.m);
    if (s.users++ == 0) {
      struct sigaction sa {};
      sa.sa_sigaction = &on_fault;
      sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
      sigemptyset(&sa.sa_mask);
      sigaction(SIGSEGV, &sa, &s.old_segv);
      sigaction(SIGBUS, &sa, &s.old_bus);
    }
  }
  ~SignalGuard() {
    SignalState& s = signal_state();
    std::lock_guard<std::mutex> g(s.m);
    if (--s.users == 0) {
      sigaction(SIGSEGV, &s.old_segv, nullptr);
      sigaction(SIGBUS, &s.old_bus, nullptr);
    }
  }
};

inline std::string describe_fault(Launch& L, const std::string& who) {
  Executor& ex = executor();
  std::ostringstream o;
  o << "kernel " << L.name << " (launched at " << L.site << "), " << who << ": ";
  const void* a = L.fault_addr;
  for (size_t b = 0; b < L.buffers.size(); ++b) {
    const Buffer& buf = L.buffers[b];
    const int w = buf.copy.where(a);
    if (w == 0 || w == 2) continue;
    const char* c = static_cast<const char*>(a);
    o << "out-of-bounds global memory access: address is ";
    if (w < 0) o << (buf.data - c) << " bytes before the start";
    else o << (c - (buf.data + buf.bytes)) << " bytes past the end";
    o << " of the " << buf.bytes << "-byte buffer of argument";
    for (int arg : buf.args) o << " #" << arg;
    return o.str();
  }
  const int sw = ex.shared.where(a);
  if (sw == 1 || sw == -1) return o.str() + "out-of-bounds shared memory access";
  for (size_t i = 0; i < ex.stacks.size(); ++i)
    if (ex.stacks[i].where(a) == -1) return o.str() + "stack overflow (" + std::to_string(kStackBytes) + " B a thread)";
  o << (L.fault_sig == SIGBUS ? "bus error" : "invalid memory access") << " at address " << a
    << " (a pointer outside every buffer of the launch)";
  return o.str();
}

// ---- launch ------------------------------------------------------------------------------------------------
inline std::string base_name(const char* expr) {
  std::string s(expr);
  s.erase(std::remove_if(s.begin(), s.end(), [](char c) { return c == '(' || c == ')' || c == ' ' || c == '&'; }), s.end());
  const size_t lt = s.find('<');
  if (lt != std::string::npos) s.resize(lt);
  const size_t ns = s.rfind("::");
  if (ns != std::string::npos) s = s.substr(ns + 2);
  return s;
}

inline void parse_schedule(Launch& L) {
  const char* env = std::getenv("SHUFFLEKERN_EMU_SCHEDULE");
  const std::string s = env && *env ? env : "inorder";
  L.schedule = s;
  if (s == "inorder") L.mode = 0;
  else if (s == "reverse") L.mode = 1;
  else if (s.rfind("random", 0) == 0) {
    L.mode = 2;
    if (s.size() > 6) {
      char* end = nullptr;
      if (s[6] != ':' || s.size() == 7) throw Error("SHUFFLEKERN_EMU_SCHEDULE must be inorder, reverse or random:<seed>, got " + s);
      L.seed = std::strtoull(s.c_str() + 7, &end, 10);
      if (*end != '\0') throw Error("SHUFFLEKERN_EMU_SCHEDULE must be inorder, reverse or random:<seed>, got " + s);
    }
  } else {
    throw Error("SHUFFLEKERN_EMU_SCHEDULE must be inorder, reverse or random:<seed>, got " + s);
  }
}

inline void check_config(const Launch& L) {
  const uint64_t threads = uint64_t(L.block.x) * L.block.y * L.block.z;
  std::string why;
  if (L.grid.x == 0 || L.grid.y == 0 || L.grid.z == 0 || threads == 0) why = "an empty grid or block";
  else if (threads > kMaxThreads) why = std::to_string(threads) + " threads a block (at most 1024)";
  else if (L.block.z > 64) why = "blockDim.z > 64";
  else if (L.grid.x > 2147483647u || L.grid.y > 65535 || L.grid.z > 65535) why = "gridDim beyond (2^31-1, 65535, 65535)";
  else if (L.smem > kSharedBytes) why = std::to_string(L.smem) + " bytes of dynamic shared memory";
  if (!why.empty())
    throw Error("invalid configuration argument: kernel " + L.name + " launched at " + L.site + " with grid " +
                dim_str(L.grid) + ", block " + dim_str(L.block) + ": " + why);
}

// Maps the declared buffers into guarded copies (overlapping declarations merge into one buffer).
inline void map_buffers(Launch& L) {
  auto pend = std::move(pending_buffers());
  pending_buffers().clear();
  std::sort(pend.begin(), pend.end());
  for (const auto& pb : pend) {
    if (!L.buffers.empty()) {
      Buffer& last = L.buffers.back();
      if (pb.first <= last.begin + last.bytes) {
        last.bytes = std::max<size_t>(last.bytes, pb.first + pb.second - last.begin);
        continue;
      }
    }
    L.buffers.push_back(Buffer{pb.first, pb.second, {}, {}, nullptr});
  }
  for (Buffer& b : L.buffers) {
    // The buffer ends within 15 bytes of the back guard page and keeps its address modulo 16 (vector loads).
    b.copy = Guarded(b.bytes + 16);
    char* end = b.copy.base + b.copy.bytes;
    char* start = end - b.bytes;
    start -= (reinterpret_cast<uintptr_t>(start) - reinterpret_cast<uintptr_t>(b.begin)) & 15u;
    b.data = start;
    std::memset(b.copy.base, kPoison, b.copy.bytes);
    std::memcpy(b.data, b.begin, b.bytes);
  }
}

template <typename P, typename A>
inline P translate(Launch& L, int index, A&& a) {
  if constexpr (is_gptr<P>::value) {
    using E = typename P::element_type;
    return P(translate<E*>(L, index, static_cast<E*>(a)));
  } else if constexpr (std::is_pointer_v<P>) {
    const char* p = reinterpret_cast<const char*>(static_cast<P>(a));
    if (p == nullptr) return nullptr;
    for (Buffer& b : L.buffers) {
      if (p >= b.begin && p <= b.begin + b.bytes) {
        b.args.push_back(index);
        return reinterpret_cast<P>(const_cast<char*>(b.data + (p - b.begin)));
      }
    }
    throw Error("kernel " + L.name + " launched at " + L.site + ": pointer argument #" + std::to_string(index) +
                " points into no buffer declared for the launch (pass tensors through SK_RT::dptr)");
  } else {
    return static_cast<P>(std::forward<A>(a));
  }
}

// Checks the poisoned slack around each buffer (stores that missed the guard pages) and copies back.
inline void unmap_buffers(Launch& L) {
  for (Buffer& b : L.buffers) {
    const char* lo = b.copy.base;
    const char* hi = b.copy.base + b.copy.bytes;
    bool touched = false;
    for (const char* c = lo; c < b.data && !touched; ++c) touched = static_cast<unsigned char>(*c) != kPoison;
    for (const char* c = b.data + b.bytes; c < hi && !touched; ++c) touched = static_cast<unsigned char>(*c) != kPoison;
    std::memcpy(b.begin, b.data, b.bytes);
    if (touched && L.error.empty()) {
      std::ostringstream o;
      o << "kernel " << L.name << " (launched at " << L.site << "): out-of-bounds global store next to the "
        << b.bytes << "-byte buffer of argument";
      for (int arg : b.args) o << " #" << arg;
      L.error = o.str();
    }
  }
}

// Runs every block; returns with L.error set on the first failure (a fault returns through siglongjmp to
// the sigsetjmp here, whose frame is still live).
inline void run_grid(Launch& L) {
  Executor& ex = executor();
  const uint64_t blocks = uint64_t(L.grid.x) * L.grid.y * L.grid.z;
  BlockRun run{ex, L};  // constructed before sigsetjmp: alive when a fault jumps back here
  if (sigsetjmp(L.jmp, 1) != 0) {
    std::string who = "block " + dim_str(dim3(ex.block_idx)) +
                      (ex.cur ? ", thread " + dim_str(dim3(ex.cur->tid)) : std::string());
    ex.cur = nullptr;
    L.error = describe_fault(L, who);
    return;
  }
  uint64_t sample = 0;
  if (L.traffic) {
    std::lock_guard<std::mutex> g(traffic_state().m);
    sample = traffic_state().sample_blocks;
  }
  const uint64_t step = sample > 0 && blocks > sample ? blocks / sample : 1;
  for (uint64_t b = 0; b < blocks; b += step) {
    ex.block_idx = uint3{unsigned(b % L.grid.x), unsigned(b / L.grid.x % L.grid.y), unsigned(b / (uint64_t(L.grid.x) * L.grid.y))};
    ++L.blocks_run;
    L.in_kernel = true;
    run.run(b);
    L.in_kernel = false;
    if (!L.error.empty()) return;
  }
}

template <typename... P, typename... A>
void launch(const char* kernel_expr, const char* file, int line, void (*kernel)(P...), dim3 grid, dim3 block,
            size_t smem, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  Launch L;
  L.name = base_name(kernel_expr);
  L.site = std::string(file) + ":" + std::to_string(line);
  L.grid = grid;
  L.block = block;
  L.smem = smem;
  {
    std::lock_guard<std::mutex> g(traffic_state().m);
    L.traffic = traffic_state().on;
  }
  try {
    check_config(L);
    parse_schedule(L);
  } catch (...) {
    pending_buffers().clear();
    throw;
  }
  map_buffers(L);
  std::tuple<P...> params = [&]<size_t... I>(std::index_sequence<I...>) {
    return std::tuple<P...>{translate<P>(L, int(I), std::forward<A>(args))...};
  }(std::index_sequence_for<P...>{});
  {
    std::lock_guard<std::mutex> g(counts_mutex());
    ++counts()[L.name];
  }
  struct Call {
    void (*kernel)(P...);
    std::tuple<P...>* params;
    static void body(void* self) {
      Call* c = static_cast<Call*>(self);
      std::apply(c->kernel, *c->params);
    }
  } call{kernel, &params};
  Executor& ex = executor();
  if (ex.launch != nullptr) throw Error("kernel " + L.name + " launched from inside a kernel");
  ex.launch = &L;
  ex.grid_dim = grid;
  ex.block_dim = block;
  current_body() = &Call::body;
  current_args() = &call;
  {
    SignalGuard signals;
    run_grid(L);
  }
  ex.launch = nullptr;
  ex.cur = nullptr;
  unmap_buffers(L);
  if (!L.error.empty()) throw Error(L.error + " [schedule " + L.schedule + "]");
  if (L.traffic) {
    std::lock_guard<std::mutex> g(traffic_state().m);
    const uint64_t blocks = uint64_t(grid.x) * grid.y * grid.z;
    traffic_state().log.push_back(Traffic{L.name, blocks, L.blocks_run, L.load_bytes, L.store_bytes, L.load_sectors,
                                          L.store_sectors,
                                          dram_bytes(L, double(blocks) / double(std::max<uint64_t>(L.blocks_run, 1)))});
  }
}

// ---- atomics -----------------------------------------------------------------------------------------------
template <typename T, typename F>
inline T atomic_update(T* p, F f) {
  T old;
  __atomic_load(p, &old, __ATOMIC_RELAXED);
  T next = f(old);
  while (!__atomic_compare_exchange(p, &old, &next, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) next = f(old);
  return old;
}

}  // namespace sk_emu

// ---- CUDA builtins -----------------------------------------------------------------------------------------
#define threadIdx (::sk_emu::thread_idx())
#define blockIdx (::sk_emu::executor().block_idx)
#define blockDim (::sk_emu::executor().block_dim)
#define gridDim (::sk_emu::executor().grid_dim)
#define warpSize 32

#define __syncthreads() ::sk_emu::syncthreads(__FILE__, __LINE__)
#define __syncthreads_count(p) ::sk_emu::syncthreads(__FILE__, __LINE__, ::sk_emu::BarOp::kCount, (p))
#define __syncthreads_and(p) ::sk_emu::syncthreads(__FILE__, __LINE__, ::sk_emu::BarOp::kAnd, (p))
#define __syncthreads_or(p) ::sk_emu::syncthreads(__FILE__, __LINE__, ::sk_emu::BarOp::kOr, (p))

namespace sk_emu {
template <typename T>
inline T shfl(const char* f, int l, WarpOp op, unsigned mask, T v, int param, int width = kWarpSize) {
  return from_bits<T>(warp_collective(f, l, op, mask, to_bits(v), param, width));
}
inline unsigned syncwarp(const char* f, int l, unsigned mask = 0xFFFFFFFFu) {
  warp_collective(f, l, WarpOp::kSync, mask, 0, 0, kWarpSize);
  return 0;
}
inline unsigned active_mask() {
  Executor& ex = executor();
  const int n = int(ex.block_dim.x * ex.block_dim.y * ex.block_dim.z);
  const int lo = ex.cur->warp * kWarpSize;
  unsigned m = 0;
  for (int l = 0; l < kWarpSize && lo + l < n; ++l)
    if (ex.fibers[lo + l].wait != Wait::kDone) m |= 1u << l;
  return m;
}
}  // namespace sk_emu

#define __shfl_sync(mask, v, ...) ::sk_emu::shfl(__FILE__, __LINE__, ::sk_emu::WarpOp::kShflIdx, (mask), (v), __VA_ARGS__)
#define __shfl_up_sync(mask, v, ...) ::sk_emu::shfl(__FILE__, __LINE__, ::sk_emu::WarpOp::kShflUp, (mask), (v), __VA_ARGS__)
#define __shfl_down_sync(mask, v, ...) \
  ::sk_emu::shfl(__FILE__, __LINE__, ::sk_emu::WarpOp::kShflDown, (mask), (v), __VA_ARGS__)
#define __shfl_xor_sync(mask, v, ...) ::sk_emu::shfl(__FILE__, __LINE__, ::sk_emu::WarpOp::kShflXor, (mask), (v), __VA_ARGS__)
#define __ballot_sync(mask, p) \
  unsigned(::sk_emu::warp_collective(__FILE__, __LINE__, ::sk_emu::WarpOp::kBallot, (mask), (p) ? 1 : 0, 0, 32))
#define __any_sync(mask, p) \
  int(::sk_emu::warp_collective(__FILE__, __LINE__, ::sk_emu::WarpOp::kAny, (mask), (p) ? 1 : 0, 0, 32))
#define __all_sync(mask, p) \
  int(::sk_emu::warp_collective(__FILE__, __LINE__, ::sk_emu::WarpOp::kAll, (mask), (p) ? 1 : 0, 0, 32))
#define __syncwarp(...) ::sk_emu::syncwarp(__FILE__, __LINE__ __VA_OPT__(, ) __VA_ARGS__)
#define __activemask() ::sk_emu::active_mask()

#define SK_SHARED(T, name, dims)         \
  static const char name##_sk_tag_ = 0; \
  auto& name = *::sk_emu::shared_var<T dims>(&name##_sk_tag_)
#define SK_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(::sk_emu::dynamic_shared())
#define SK_KERNEL_ASSERT(cond) \
  ((cond) ? (void)0 : ::sk_emu::device_assert(#cond, __FILE__, __LINE__))

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : x > 1.f ? 1.f : x; }
inline int __float_as_int(float x) { return ::sk_emu::from_bits<int>(::sk_emu::to_bits(x)); }
inline float __int_as_float(int x) { return ::sk_emu::from_bits<float>(::sk_emu::to_bits(x)); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }

inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
inline float atomicAdd(float* p, float v) {
  return ::sk_emu::atomic_update(p, [v](float o) { return o + v; });
}
inline double atomicAdd(double* p, double v) {
  return ::sk_emu::atomic_update(p, [v](double o) { return o + v; });
}
inline int atomicSub(int* p, int v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }
inline int atomicMax(int* p, int v) {
  return ::sk_emu::atomic_update(p, [v](int o) { return o > v ? o : v; });
}
inline int atomicMin(int* p, int v) {
  return ::sk_emu::atomic_update(p, [v](int o) { return o < v ? o : v; });
}
template <typename T>
inline T atomicExch(T* p, T v) {
  T old;
  __atomic_exchange(p, &v, &old, __ATOMIC_RELAXED);
  return old;
}
template <typename T>
inline T atomicCAS(T* p, T compare, T v) {
  static_assert(std::is_integral_v<T>, "atomicCAS takes int, unsigned or unsigned long long");
  __atomic_compare_exchange(p, &compare, &v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return compare;
}

// Atomics through a recorded global pointer (SK_GLOBAL parameters): one load and one store of the element.
template <typename T, typename V>
inline T atomicAdd(::sk_emu::gptr<T> p, V v) {
  ::sk_emu::record_access(p.get(), sizeof(T), false);
  ::sk_emu::record_access(p.get(), sizeof(T), true);
  return atomicAdd(p.get(), static_cast<T>(v));
}
