"""The parts of `make gpu-check` (scripts/gpu_check.py) that need no GPU, so that it cannot rot."""
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

import shufflekern as sk

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(REPO, "scripts", "gpu_check.py"))
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def test_dry_run_lists_the_steps(capsys):
    assert gpu_check.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    lines = {ln.split(":", 1)[0]: ln for ln in out.splitlines() if ":" in ln}
    assert "SHUFFLEKERN_CUDA=1" in lines["build"] and " build" in lines["build"]
    assert "-m pytest" in lines["tests"] and "-m cuda" in lines["tests"]
    assert "--cuda-sync-debug=error" in lines["tests"]
    assert "-m shufflekern bench --device cuda" in lines["bench"]
    assert "gpu_check.md" in out


def test_steps_pass_extra_bench_args_and_skip_build(capsys):
    assert gpu_check.main(["--dry-run", "--skip-build", "--", "-k", "kd_loss"]) == 0
    out = capsys.readouterr().out
    assert "build:" not in out and "-k kd_loss" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_refuses_without_a_gpu(capsys):
    assert gpu_check.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_arch_list_adds_the_gpus_arch_only_when_needed():
    assert gpu_check.arch_list((8, 0), "8.0;9.0") == "8.0;9.0"
    assert gpu_check.arch_list((8, 6), "8.0;9.0") == "8.0;9.0"   # sm_80 cubins run on sm_86
    assert gpu_check.arch_list((9, 0), "8.0;9.0") == "8.0;9.0"
    assert gpu_check.arch_list((7, 5), "8.0;9.0") == "8.0;9.0;7.5"
    assert gpu_check.arch_list((12, 0), "8.0 9.0".replace(" ", ";")) == "8.0;9.0;12.0"


def test_bench_cli_refuses_cuda_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from shufflekern import _bench_cli
    with pytest.raises(SystemExit, match="no CUDA device"):
        _bench_cli.main(["--device", "cuda"])
    with pytest.raises(SystemExit, match="bad --device|must be cpu or cuda"):
        _bench_cli.main(["--device", "tpu"])


def test_sync_debug_guard_wraps_only_shufflekern_ops():
    import conftest
    calls = []
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    guard = conftest.sync_debug_guard("error", set_mode=calls.append, get_mode=lambda: 0)
    with guard:
        y = sk.channel_shuffle(x, 2)
        (y * 2).sum().backward()  # the backward's channel_shuffle too (autograd carries the mode)
        torch.add(x, 1)
    assert calls == ["error", 0, "error", 0]
    assert all("shufflekern" in op for op in type(guard).ops) and len(type(guard).ops) == 2


def test_pytest_accepts_the_sync_debug_option():
    r = subprocess.run([sys.executable, "-m", "pytest", os.path.join(REPO, "tests", "test_channel_shuffle.py"),
                        "-m", "cuda", "-q", "--cuda-sync-debug=error", "-p", "no:cacheprovider"],
                       capture_output=True, text=True, cwd=REPO, timeout=600,
                       env=dict(os.environ, SHUFFLEKERN_NO_LAUNCH_RECORD="1"))
    assert r.returncode in (0, 5), r.stdout + r.stderr  # (5: every test deselected)


def test_dry_run_cpu_bench_writes_the_table(tmp_path):
    md = tmp_path / "gpu_check.md"
    r = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "gpu_check.py"), "--dry-run", "--cpu-bench",
                        "--md", str(md)], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    text = md.read_text()
    assert "channel_shuffle" in text and "shufflekern ms" in text and "eager ms" in text
