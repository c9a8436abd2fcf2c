"""sk.tune_malloc(): keep freed CPU tensor memory in the process, so a training step does not fault it in again.

glibc's malloc gives large freed blocks back to the OS: a block above the mmap threshold is unmapped when
freed (the threshold rises as large blocks are freed, up to 32 MiB), and the top of the heap is trimmed
when more than the trim threshold (twice the mmap threshold) is free.  A training step allocates and frees
the same activation-sized tensors every step; when its order of frees leaves the top of the heap free,
glibc trims it and the next step faults every page in again (zero-filled by the kernel).  Which pattern
trims is an accident of the process's allocation history: measured on ShuffleNet V1 g=3, batch 16,
224x224, one thread (AMD EPYC Zen 4), the fused model's step faulted ~30,600 pages (125 MB) a step and
the eager model's ~2,200 in one process, and ~25,000 each when each ran alone; with fixed thresholds
neither faults.  PyTorch's CPU tensors come from malloc (c10's alloc_cpu), so this is a property of the process,
not of an op: PyTorch's performance guide recommends a caching allocator (jemalloc, tcmalloc) for the same
reason; `tune_malloc` is the no-install equivalent for glibc.

The price: freed memory stays in the process (its RSS keeps the high-water mark) until it exits.
"""
import ctypes
import ctypes.util
import platform
import threading

__all__ = ["tune_malloc", "malloc_state"]

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3
_lock = threading.Lock()
_state = {"tuned": False, "detail": "glibc defaults (sk.tune_malloc() not called)"}


def _glibc():
    """glibc's handle, or (None, why not)."""
    if platform.system() != "Linux":
        return None, f"not Linux ({platform.system()}): the allocator is not glibc's"
    libc_ver = platform.libc_ver()
    if libc_ver[0] != "glibc":
        return None, f"the C library is {libc_ver[0] or 'unknown'}, not glibc"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError) as e:
        return None, f"glibc's mallopt is not reachable: {e}"
    return libc, None


def tune_malloc(mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Fix glibc's mmap and trim thresholds (bytes) for this process: blocks below `mmap_threshold` come
    from the heap, and the heap keeps up to `trim_threshold` free bytes instead of returning them to the OS.

    Returns True if glibc took both settings; False (and `malloc_state()` says why) where the allocator is
    not glibc's (another OS or C library; with jemalloc or tcmalloc preloaded the call reaches glibc but
    tensors do not come from it — nothing is lost).  Call it once, early; it affects every CPU allocation
    of the process, PyTorch's own included.
    """
    for name, v in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"tune_malloc: {name} must be an int (bytes), got {type(v).__name__}")
        if not 0 < v < 2 ** 31:
            raise ValueError(f"tune_malloc: {name} must be in (0, 2**31) bytes, got {v}")
    with _lock:
        libc, why = _glibc()
        if libc is None:
            _state.update(tuned=False, detail=f"not tuned: {why}")
            return False
        ok_mmap = libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
        ok_trim = libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1
        if ok_mmap and ok_trim:
            _state.update(tuned=True, detail=f"glibc mmap threshold {mmap_threshold >> 20} MiB, trim threshold "
                                             f"{trim_threshold >> 20} MiB (sk.tune_malloc)")
        else:
            failed = [n for n, ok in (("M_MMAP_THRESHOLD", ok_mmap), ("M_TRIM_THRESHOLD", ok_trim)) if not ok]
            _state.update(tuned=False, detail=f"not tuned: glibc's mallopt refused {', '.join(failed)}")
        return _state["tuned"]


def malloc_state() -> dict:
    """{'tuned': bool, 'detail': str}: whether tune_malloc took effect in this process, and the settings."""
    with _lock:
        return dict(_state)
