"""The CUDA emulator (csrc/emu/emu.h) catches the bugs it is for: tests/emu/broken_kernels.cpp holds small
kernels with a missing barrier, a shared-memory race, an off-by-one store, a divergent barrier and wrong
warp masks, each beside its fixed version.  The file is compiled with the host compiler alone (the emulator
needs neither CUDA nor torch) and every case runs under several schedules: a broken kernel must be
reported (an error, poison in its output, or an output that depends on the schedule); a fixed one must give
the right answer under every schedule."""
import math
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEDULES = ["inorder", "reverse", "random:1", "random:2", "random:3"]
N = 64


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if cxx is None:
        pytest.fail("no C++ compiler: the emulator tests need one (g++)")
    exe = str(tmp_path_factory.mktemp("emu") / "broken_kernels")
    subprocess.run([cxx, "-std=c++20", "-O1", "-Wall", "-I", os.path.join(ROOT, "csrc"),
                    os.path.join(ROOT, "tests", "emu", "broken_kernels.cpp"), "-o", exe], check=True)

    def run(case, schedule):
        env = dict(os.environ, SHUFFLEKERN_EMU_SCHEDULE=schedule)
        out = subprocess.run([exe, case], env=env, capture_output=True, text=True, check=True).stdout.strip()
        kind, _, rest = out.partition(" ")
        if kind == "error":
            return ("error", rest)
        assert kind == "ok", out
        return ("ok", [float(v) for v in rest.split()])
    return run


x = [float(i + 1) for i in range(N)]
EXPECTED = {
    "missing_syncthreads_fixed": [sum(x)],
    "shared_race_fixed": [x[2 * i] + x[2 * i + 1] for i in range(N // 2)],
    "off_by_one_fixed": x[:50],
    "divergent_barrier_fixed": [2 * v for v in x[:40]],
    "wrong_mask_fixed": [sum(x[:16])],
}

# case -> the words the emulator's report must contain (None: reported through poison or schedule dependence)
BROKEN = {
    "missing_syncthreads": None,
    "shared_race": None,
    "unwritten_shared": None,
    "off_by_one": "out-of-bounds global store",
    "divergent_barrier": "divergent __syncthreads",
    "wrong_mask_exited_lanes": "has exited",
    "wrong_mask_lane_outside": "is not in mask",
    "shuffle_outside_mask": "not in mask",
    "device_assert": "device-side assertion `t < n` failed",
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_kernel_is_reported(broken, case):
    results = [broken(case, s) for s in SCHEDULES]
    errors = [r[1] for r in results if r[0] == "error"]
    if BROKEN[case] is not None:
        assert len(errors) == len(SCHEDULES), results  # a deterministic error: reported under every schedule
        for e in errors:
            assert BROKEN[case] in e and "broken_kernels.cpp" in e, e
        return
    outputs = [r[1] for r in results if r[0] == "ok"]
    poisoned = any(math.isnan(v) for out in outputs for v in out)
    varies = any(out != outputs[0] for out in outputs)
    assert errors or poisoned or varies, f"{case}: every schedule gave the same clean output {outputs[0]}"


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_fixed_kernel_passes_every_schedule(broken, case):
    for s in SCHEDULES:
        kind, out = broken(case, s)
        assert kind == "ok", (s, out)
        assert out == EXPECTED[case], (s, out)


def test_error_names_kernel_site_and_block(broken):
    kind, msg = broken("divergent_barrier", "inorder")
    assert kind == "error"
    assert "scale_divergent_barrier" in msg and "block (0, 0, 0)" in msg and "broken_kernels.cpp:" in msg


def test_bad_schedule_is_an_error(broken):
    kind, msg = broken("missing_syncthreads_fixed", "sideways")
    assert kind == "error" and "SHUFFLEKERN_EMU_SCHEDULE" in msg
