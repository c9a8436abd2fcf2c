"""Backend selection, sk.info() / `python -m shufflekern info`, and the CPU ISA dispatch."""
import os
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
