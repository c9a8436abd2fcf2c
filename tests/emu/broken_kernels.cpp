// Small kernels with the bugs the CUDA emulator (csrc/emu/emu.h) exists to catch, each beside its fixed
// version.  tests/test_emulator.py compiles this file with the host compiler alone (no CUDA, no torch) and
// runs every case under several schedules:  ./broken_kernels <case>  prints one line,
//   ok <v0> <v1> ...      the launch finished; the values it wrote
//   error <message>       the emulator reported an error
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "emu/emu.h"

namespace {

constexpr int kN = 64;

// Block sum in shared memory.  Broken: no barrier between the writes and the tree's first reads.
__global__ void sum_missing_sync(const float* x, float* out) {
  SK_SHARED(float, sh, [kN]);
  const int t = threadIdx.x;
  sh[t] = x[t];
  for (int s = kN / 2; s > 0; s >>= 1) {
    if (t < s) sh[t] += sh[t + s];
    __syncthreads();
  }
  if (t == 0) out[0] = sh[0];
}

__global__ void sum_fixed(const float* x, float* out) {
  SK_SHARED(float, sh, [kN]);
  const int t = threadIdx.x;
  sh[t] = x[t];
  __syncthreads();
  for (int s = kN / 2; s > 0; s >>= 1) {
    if (t < s) sh[t] += sh[t + s];
    __syncthreads();
  }
  if (t == 0) out[0] = sh[0];
}

// Pair sums through shared memory.  Broken: both threads of a pair write the pair's slot (a write-write
// race: the last writer wins, and which one is last is the schedule's choice).
__global__ void pairs_race(const float* x, float* out) {
  SK_SHARED(float, sh, [kN / 2]);
  const int t = threadIdx.x;
  sh[t / 2] = x[t] + x[t ^ 1] * (t % 2 == 0 ? 1.f : 0.f);
  __syncthreads();
  if (t < kN / 2) out[t] = sh[t];
}

__global__ void pairs_fixed(const float* x, float* out) {
  SK_SHARED(float, sh, [kN / 2]);
  const int t = threadIdx.x;
  if (t % 2 == 0) sh[t / 2] = x[t] + x[t + 1];
  __syncthreads();
  if (t < kN / 2) out[t] = sh[t];
}

// Grid-stride copy.  Broken: `<=` writes one element past the end.
__global__ void copy_off_by_one(const float* x, float* out, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i <= n; i += gridDim.x * blockDim.x) out[i] = x[i < n ? i : 0];
}

__global__ void copy_fixed(const float* x, float* out, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) out[i] = x[i];
}

// Broken: the threads past the data return before the block's barrier.
__global__ void scale_divergent_barrier(const float* x, float* out, int n) {
  SK_SHARED(float, scale, [1]);
  const int t = threadIdx.x;
  if (t >= n) return;
  if (t == 0) scale[0] = 2.f;
  __syncthreads();
  out[t] = x[t] * scale[0];
}

__global__ void scale_fixed(const float* x, float* out, int n) {
  SK_SHARED(float, scale, [1]);
  const int t = threadIdx.x;
  if (t == 0) scale[0] = 2.f;
  __syncthreads();
  if (t < n) out[t] = x[t] * scale[0];
}

// Warp sums of 16-lane halves.  Broken (1): only the first half-warp reduces, with a full mask that names
// the other half, which has gone on and exited.  Broken (2): every lane calls with the low half's mask.
__global__ void half_sum_wrong_mask(const float* x, float* out) {
  const int t = threadIdx.x;
  float v = x[t];
  if (t < 16) {
    for (int o = 8; o > 0; o >>= 1) v += __shfl_down_sync(0xFFFFFFFFu, v, o, 16);
    if (t == 0) out[0] = v;
  }
}

__global__ void half_sum_lane_outside_mask(const float* x, float* out) {
  const int t = threadIdx.x;
  float v = x[t];
  for (int o = 8; o > 0; o >>= 1) v += __shfl_down_sync(0x0000FFFFu, v, o, 16);
  if (t % 16 == 0) out[t / 16] = v;
}

__global__ void half_sum_fixed(const float* x, float* out) {
  const int t = threadIdx.x;
  float v = x[t];
  if (t < 16) {
    for (int o = 8; o > 0; o >>= 1) v += __shfl_down_sync(0x0000FFFFu, v, o, 16);
    if (t == 0) out[0] = v;
  }
}

// Broken: a shuffle reads lane t + 16 across the whole warp with width 32, from lanes outside the mask.
__global__ void shuffle_reads_outside_mask(const float* x, float* out) {
  const int t = threadIdx.x;
  if (t < 16) out[t] = __shfl_down_sync(0x0000FFFFu, x[t], 8);
}

// Reads a shared value nobody wrote: the poison (NaN) shows.
__global__ void read_unwritten_shared(float* out) {
  SK_SHARED(float, sh, [kN]);
  out[threadIdx.x] = sh[threadIdx.x];
}

__global__ void device_assert_kernel(const float* x, float* out, int n) {
  const int t = threadIdx.x;
  SK_KERNEL_ASSERT(t < n);
  out[t] = x[t];
}

std::vector<float> iota(int n) {
  std::vector<float> v(n);
  for (int i = 0; i < n; ++i) v[i] = float(i + 1);
  return v;
}

// Runs `k` on x = 1..n and an output of `out_n` NaNs; returns the output.
template <typename... P, typename... A>
std::vector<float> run(const char* name, void (*k)(P...), dim3 grid, dim3 block, int n, int out_n, A... extra) {
  std::vector<float> x = iota(n), out(out_n, NAN);
  sk_emu::declare_buffer(x.data(), x.size() * sizeof(float));
  sk_emu::declare_buffer(out.data(), out.size() * sizeof(float));
  sk_emu::launch(name, __FILE__, __LINE__, k, grid, block, 0, (const float*)x.data(), out.data(), extra...);
  return out;
}

const std::map<std::string, std::function<std::vector<float>()>>& cases() {
  static const std::map<std::string, std::function<std::vector<float>()>> c = {
      {"missing_syncthreads", [] { return run("sum_missing_sync", sum_missing_sync, 1, kN, kN, 1); }},
      {"missing_syncthreads_fixed", [] { return run("sum_fixed", sum_fixed, 1, kN, kN, 1); }},
      {"shared_race", [] { return run("pairs_race", pairs_race, 1, kN, kN, kN / 2); }},
      {"shared_race_fixed", [] { return run("pairs_fixed", pairs_fixed, 1, kN, kN, kN / 2); }},
      {"off_by_one", [] { return run("copy_off_by_one", copy_off_by_one, 2, 32, 50, 50, 50); }},
      {"off_by_one_fixed", [] { return run("copy_fixed", copy_fixed, 2, 32, 50, 50, 50); }},
      {"divergent_barrier", [] { return run("scale_divergent_barrier", scale_divergent_barrier, 1, kN, 40, 40, 40); }},
      {"divergent_barrier_fixed", [] { return run("scale_fixed", scale_fixed, 1, kN, 40, 40, 40); }},
      {"wrong_mask_exited_lanes", [] { return run("half_sum_wrong_mask", half_sum_wrong_mask, 1, 32, 32, 1); }},
      {"wrong_mask_lane_outside", [] { return run("half_sum_lane_outside_mask", half_sum_lane_outside_mask, 1, 32, 32, 2); }},
      {"wrong_mask_fixed", [] { return run("half_sum_fixed", half_sum_fixed, 1, 32, 32, 1); }},
      {"shuffle_outside_mask", [] { return run("shuffle_reads_outside_mask", shuffle_reads_outside_mask, 1, 32, 32, 16); }},
      {"unwritten_shared", [] {
         std::vector<float> out(kN, 0.f);
         sk_emu::declare_buffer(out.data(), out.size() * sizeof(float));
         sk_emu::launch("read_unwritten_shared", __FILE__, __LINE__, read_unwritten_shared, 1, kN, 0, out.data());
         return out;
       }},
      {"device_assert", [] { return run("device_assert_kernel", device_assert_kernel, 1, 64, 64, 64, 40); }},
  };
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::strcmp(argv[1], "--list") == 0) {
    for (const auto& kv : cases()) std::printf("%s\n", kv.first.c_str());
    return 0;
  }
  for (int i = 1; i < argc; ++i) {
    const auto it = cases().find(argv[i]);
    if (it == cases().end()) {
      std::printf("error unknown case %s\n", argv[i]);
      return 2;
    }
    try {
      const std::vector<float> out = it->second();
      std::printf("ok");
      for (float v : out) std::printf(" %.9g", v);
      std::printf("\n");
    } catch (const sk_emu::Error& e) {
      std::printf("error %s\n", e.what());
    }
  }
  return 0;
}
