"""Backend selection, sk.info() / `python -m shufflekern info`, and the CPU ISA dispatch."""
import os
import re
import subprocess
import sys

import pytest
import torch

import shufflekern as sk
from shufflekern import _backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_py(code, **env):
    e = dict(os.environ, PYTHONPATH=ROOT, **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, cwd=ROOT,
                          timeout=300)


def test_context_manager_restores_and_validates():
    assert sk.get_backend() == "auto"
    with sk.backend("triton"):
        assert sk.get_backend() == "triton"
        with sk.backend("cuda"):
            assert sk.get_backend() == "cuda"
        assert sk.get_backend() == "triton"
    assert sk.get_backend() == "auto"
    with pytest.raises(ValueError, match="backend"):
        with sk.backend("mps"):
            pass
    with pytest.raises(RuntimeError):
        with sk.backend("triton"):
            raise RuntimeError("inside")
    assert sk.get_backend() == "auto"


def test_selection():
    cpu = torch.device("cpu")
    assert _backend.select("channel_shuffle", cpu) is torch.ops.shufflekern.channel_shuffle.default
    with sk.backend("triton"):
        assert _backend.select("channel_shuffle", cpu) is torch.ops.shufflekern.channel_shuffle_triton.default


def test_forced_triton_without_interpreter_fails_loudly(monkeypatch):
    monkeypatch.setattr(_backend, "TRITON_INTERPRET", False)
    with sk.backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        sk.channel_shuffle(torch.randn(1, 4, 2, 2), 2)


def test_forced_cuda_without_cuda_kernels_fails_loudly(monkeypatch):
    monkeypatch.setattr(_backend, "native_unusable_reason",
                        lambda dev: None if dev == "cpu" else "built without CUDA kernels")
    monkeypatch.setattr(_backend, "triton_unusable_reason", lambda dev: "no GPU")
    with sk.backend("cuda"), pytest.raises(RuntimeError, match="without CUDA"):
        _backend.select("channel_shuffle", torch.device("cuda"))
    with pytest.raises(RuntimeError, match="no usable backend"):
        _backend.select("channel_shuffle", torch.device("cuda"))


def test_auto_falls_back_to_triton_for_cuda_when_not_compiled(monkeypatch):
    monkeypatch.setattr(_backend, "native_unusable_reason",
                        lambda dev: None if dev == "cpu" else "built without CUDA kernels")
    monkeypatch.setattr(_backend, "triton_unusable_reason", lambda dev: None)
    assert _backend.select("channel_shuffle", torch.device("cuda")) is torch.ops.shufflekern.channel_shuffle_triton.default


def test_env_var():
    r = run_py("import shufflekern as sk; print(sk.get_backend())", SHUFFLEKERN_BACKEND="triton")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "triton"
    r = run_py("import shufflekern", SHUFFLEKERN_BACKEND="opencl")
    assert r.returncode != 0 and "backend must be one of" in r.stderr


def test_info():
    d = sk.info()
    assert d["torch"] == torch.__version__
    assert d["runtime_cpu_isa"] in d["compiled_cpu_isas"].split()
    assert "cpu" in d["usable_backends"]
    if sk._C.with_cuda:
        assert d["cuda_archs"]


def test_info_cli():
    r = subprocess.run([sys.executable, "-m", "shufflekern", "info"], capture_output=True, text=True,
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
    assert r.returncode == 0, r.stderr
    assert "compiled_cpu_isas" in r.stdout and "usable_backends" in r.stdout


@pytest.mark.skipif(sk._C.compiled_cpu_isas() == "DEFAULT", reason="only the portable variant is built")
def test_every_isa_variant_matches():
    # ATEN_CPU_CAPABILITY picks the kernel variant (as it does for ATen's own kernels).
    code = ("import torch, shufflekern as sk, shufflekern._C as C; torch.manual_seed(0);"
            "x = torch.randn(3, 116, 9, 7).contiguous(memory_format=torch.channels_last);"
            "y = sk.channel_shuffle(x, 2); z = sk.channel_shuffle(y, 58);"
            "assert torch.equal(y, torch.channel_shuffle(x, 2)) and torch.equal(z, x);"
            "print(C.runtime_cpu_isa())")
    seen = set()
    for cap in ("default", "avx2", "avx512"):
        # Asking for an ISA the CPU lacks must fall back to one it has, not die of SIGILL.
        r = run_py(code, ATEN_CPU_CAPABILITY=cap)
        assert r.returncode == 0, r.stderr
        seen.add(r.stdout.strip())
    assert "DEFAULT" in seen and len(seen) >= 2
    assert sk._C.runtime_cpu_isa() in seen


# ---- the policy: each backend says whether it can run an input and why not ----------------------------

def test_not_supported_reasons_per_backend():
    r = _backend.not_supported_reasons
    assert r("native", "shuffle_conv1x1", "cpu", torch.float32) == []
    assert r("native", "channel_shuffle", "cpu", torch.complex128) == []
    (why,) = r("native", "shuffle_conv1x1", "cpu", torch.float16)
    assert "x" in why and "float32, float64, bfloat16" in why and "float16" in why
    assert r("native", "batch_norm_act", "cpu", torch.bfloat16) and not r("native", "batch_norm_act", "cpu",
                                                                         torch.float64)
    (why,) = r("triton", "shuffle_conv1x1", "cpu", torch.float64)
    assert "triton backend" in why
    assert "but complex" in r("triton", "channel_shuffle", "cpu", torch.complex64)[0]
    assert r("triton", "channel_shuffle", "cpu", torch.uint16) == []
    assert "CPU tensors only" in r("emulated", "channel_shuffle", "cuda", torch.float32)[0]
    assert "no C++/CUDA kernel" in r("emulated", "no_such_op", "cpu", torch.float32)[0]
    # every op the policy knows says something for every backend
    for op in _backend.forward_ops():
        assert set(_backend.report("cpu", torch.float32)[op]) == {"native", "triton", "emulated"}


def test_triton_unusable_without_interpreter_is_a_device_reason(monkeypatch):
    monkeypatch.setattr(_backend, "TRITON_INTERPRET", False)
    assert _backend.not_supported_reasons("triton", "shuffle_conv1x1", "cpu", torch.float64) == [
        "Triton runs CPU tensors only under TRITON_INTERPRET=1"]


def test_unsupported_dtype_is_a_clear_error_at_the_python_boundary():
    x, w = torch.randn(2, 6, 3, 3).half(), torch.randn(6, 2, 1, 1).half()
    with pytest.raises(TypeError, match=r"shuffle_conv1x1: no usable backend for cpu tensors of dtype float16: "
                                        r"native: .*takes x of dtype float32, float64, bfloat16"):
        sk.shuffle_conv1x1(x, w, groups=3)
    with sk.backend("triton"), pytest.raises(TypeError, match=r"backend 'triton' cannot run it: .*float64"):
        sk.shuffle_conv1x1(x.double(), w.double(), groups=3)


def test_direct_twin_calls_are_refused_as_clearly():
    x, w = torch.randn(2, 6, 3, 3, dtype=torch.float64), torch.randn(6, 2, 1, 1, dtype=torch.float64)
    with pytest.raises(TypeError, match="triton backend .*takes x of dtype"):
        torch.ops.shufflekern.shuffle_conv1x1_triton(x, w, None, 3, 3)
    with pytest.raises(ValueError, match="groups"):  # the argument check runs first, as in the fake kernel
        torch.ops.shufflekern.shuffle_conv1x1_triton(x.float(), w.float(), None, 4, 3)


def test_auto_picks_the_first_backend_that_takes_the_dtype(monkeypatch):
    monkeypatch.setattr(_backend, "native_unusable_reason", lambda dev: None)
    monkeypatch.setattr(_backend, "triton_unusable_reason", lambda dev: None)
    spec = _backend.OPS["shuffle_conv1x1"]
    monkeypatch.setitem(_backend.OPS, "shuffle_conv1x1", spec._replace(cuda=(torch.float32,)))
    cuda = torch.device("cuda")
    assert _backend.select("shuffle_conv1x1", cuda, torch.float32) is torch.ops.shufflekern.shuffle_conv1x1.default
    assert _backend.select("shuffle_conv1x1", cuda, torch.float16) is \
        torch.ops.shufflekern.shuffle_conv1x1_triton.default
    with pytest.raises(TypeError, match="native: .*triton: .*float64"):
        _backend.select("shuffle_conv1x1", cuda, torch.float64)
    with sk.backend("native"), pytest.raises(TypeError, match="backend 'native' cannot run it"):
        _backend.select("shuffle_conv1x1", cuda, torch.float16)


def test_select_or_none_for_callers_with_an_eager_fallback(monkeypatch):
    cpu = torch.device("cpu")
    assert _backend.select_or_none("batch_norm_act", cpu, torch.float32) is torch.ops.shufflekern.batch_norm_act.default
    assert _backend.select_or_none("batch_norm_act", cpu, torch.bfloat16) is None
    with sk.backend("native"):
        assert _backend.select_or_none("batch_norm_act", cpu, torch.float16) is None
    monkeypatch.setattr(_backend, "TRITON_INTERPRET", False)
    with sk.backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        _backend.select_or_none("batch_norm_act", cpu, torch.float32)


def test_auto_on_cpu_is_memoised_and_cheap():
    import time
    cpu = torch.device("cpu")
    first = _backend.select("channel_shuffle", cpu, torch.float32)
    assert _backend.select("channel_shuffle", cpu, torch.float32) is first
    n = 20000
    t0 = time.perf_counter()
    for _ in range(n):
        _backend.select("channel_shuffle", cpu, torch.float32)
    assert (time.perf_counter() - t0) / n < 5e-6  # well under a microsecond on an idle core


@pytest.mark.skipif(not _backend.TRITON_INSTALLED or not _backend.TRITON_INTERPRET, reason="no Triton interpreter")
def test_one_autograd_kernel_serves_both_families():
    """The twin's backward runs the twin's backward ops, through the C++ autograd kernel (no Python formula)."""
    x = torch.randn(2, 6, 3, 3, requires_grad=True)
    w = torch.randn(4, 3, 1, 1, requires_grad=True)
    for family in ("", "_triton"):
        with torch.profiler.profile() as prof:
            getattr(torch.ops.shufflekern, "shuffle_conv1x1" + family)(x, w, None, 2, 3).sum().backward()
        names = {e.name for e in prof.events()}
        assert f"shufflekern::shuffle_conv1x1_backward{family}" in names
        other = "" if family else "_triton"
        assert f"shufflekern::shuffle_conv1x1_backward{other}" not in names
        dump = torch._C._dispatch_dump(f"shufflekern::shuffle_conv1x1{family}")
        assert re.search(r"Autograd\[alias\]: registered at \S*csrc/autograd/shuffle_conv1x1\.cpp", dump), dump
