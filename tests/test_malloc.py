"""sk.tune_malloc: argument checks, state reporting, and that it stops glibc from faulting freed tensor memory in
again (the effect it exists for), each in a fresh interpreter because the setting is process-wide."""
import platform
import subprocess
import sys

import pytest

import shufflekern as sk

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.parametrize("kw, exc, match", [
    ({"mmap_threshold": 0}, ValueError, "mmap_threshold"),
    ({"trim_threshold": -5}, ValueError, "trim_threshold"),
    ({"mmap_threshold": 2 ** 31}, ValueError, "mmap_threshold"),
    ({"trim_threshold": 1.5}, TypeError, "trim_threshold"),
    ({"mmap_threshold": True}, TypeError, "mmap_threshold"),
])
def test_bad_arguments_name_the_argument(kw, exc, match):
    with pytest.raises(exc, match=match):
        sk.tune_malloc(**kw)


def _run(code):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_state_before_and_after_in_info():
    out = _run("import shufflekern as sk\n"
               "print(sk.malloc_state()['tuned'], sk.info()['cpu_malloc'].startswith('glibc defaults'))\n"
               "print(sk.tune_malloc(), sk.malloc_state()['tuned'], sk.info()['cpu_malloc'])\n")
    before, after = out.strip().splitlines()
    assert before == "False True"
    if GLIBC:
        assert after.startswith("True True glibc mmap threshold 256 MiB, trim threshold 1024 MiB")
    else:
        assert after.startswith("False False not tuned:")


# A training-step-like pattern: allocate several tensors larger than glibc's initial mmap threshold, free
# them in an order that leaves the top of the heap free, repeat.  Count minor page faults of the repeats.
_FAULTS = r"""
import resource, sys, torch
import shufflekern as sk
if sys.argv[1] == "tuned":
    assert sk.tune_malloc()
torch.set_num_threads(1)
def step():
    ts = [torch.ones(3 << 20) for _ in range(6)]  # 12 MiB each
    for t in ts[::-1]:
        t.add_(1)
    del ts
for _ in range(3):
    step()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
"""


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_tuned_process_stops_refaulting_freed_memory():
    default = int(subprocess.run([sys.executable, "-c", _FAULTS, "default"], capture_output=True, text=True,
                                 timeout=300, check=True).stdout)
    tuned = int(subprocess.run([sys.executable, "-c", _FAULTS, "tuned"], capture_output=True, text=True,
                               timeout=300, check=True).stdout)
    pages = 10 * 6 * (12 << 20) // 4096  # what faulting every tensor of every repeat would cost
    assert tuned < 0.02 * pages, (default, tuned, pages)
    assert default > 0.5 * pages, (default, tuned, pages)  # the pathology the call removes (glibc defaults)
