"""Distillation trainer: data, losses, checkpoints/resume, NaN stop, CLI errors, DDP.

Runs are tiny (resnet8_tiny, digits subsets, 1-3 epochs) and single-threaded: the machine is shared.
"""
import copy
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import shufflekern as sk
from shufflekern.distill import (CifarResNet, HintLoss, NonFiniteLossError, Trainer, build_model,
                                 feature_stages, kd_loss_eager, load_checkpoint_model, load_data)
from shufflekern.distill import losses as L

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
HAS_FUSED = L.fused_available()


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def fused_standin(monkeypatch):
    """Until sk.kd_loss is merged: stand the eager loss in for it, counting calls."""
    calls = []
    if HAS_FUSED:
        yield calls
        return

    def kd_loss(*a, **kw):
        calls.append(1)
        return kd_loss_eager(*a, **kw)
    monkeypatch.setattr(sk, "kd_loss", kd_loss, raising=False)
    monkeypatch.setattr(sk.functional, "kd_loss", kd_loss, raising=False)
    yield calls


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    return env


def _cli(*args, check=True, timeout=300):
    r = subprocess.run([PY, "-m", "shufflekern", *args], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr[-3000:]}")
    return r


def _strip(history):
    """History without the wall-clock fields (the only ones allowed to differ between runs)."""
    return [{k: v for k, v in h.items() if k not in ("seconds", "images_per_s")} for h in history]


def _tiny_data(n_train=96, n_val=48, seed=0):
    return load_data("digits", seed=seed, limit_train=n_train, limit_val=n_val)


# -- data ---------------------------------------------------------------------------------------------
def test_digits_split_is_fixed_and_augmentation_is_a_function_of_seed_epoch_index():
    a, b = load_data("digits", seed=0), load_data("digits", seed=1)
    assert (len(a.train), len(a.val), a.num_classes) == (1437, 360, 10)
    assert torch.equal(a.val.labels, b.val.labels) and torch.equal(a.val.images, b.val.images)
    assert torch.bincount(a.val.labels).tolist() == [36] * 10
    x, y = a.train[5]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= int(y) < 10
    a.train.set_epoch(3)
    x1 = a.train[5][0]
    assert torch.equal(x1, a.train[5][0])                  # same (seed, epoch, index): same image
    a.train.set_epoch(4)
    b.train.set_epoch(3)
    outs = [a.train[5][0], b.train[5][0]]
    assert not all(torch.equal(x1, o) for o in outs)     # other epoch or seed: (almost surely) another crop
    # validation images are not augmented
    assert torch.equal(a.val[0][0], a.val[0][0]) and a.val.augment is False


def test_cifar_missing_dir_error_says_what_to_put_where(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        load_data("cifar10")
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py.*data_batch_1.*never downloads"):
        load_data("cifar10", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        load_data("cifar100", str(tmp_path))
    assert os.listdir(tmp_path) == []                   # nothing downloaded or created


def _fake_cifar(root, name, n=20):
    rng = np.random.default_rng(0)
    folder, files, key, k = {"cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)]
                                         + ["test_batch"], "labels", 10),
                             "cifar100": ("cifar-100-python", ["train", "test"], "fine_labels", 100)}[name]
    os.makedirs(os.path.join(root, folder))
    for f in files:
        with open(os.path.join(root, folder, f), "wb") as fh:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         key: rng.integers(0, k, n).tolist()}, fh)


@pytest.mark.parametrize("name,train_n,classes", [("cifar10", 100, 10), ("cifar100", 20, 100)])
def test_cifar_reads_torchvision_layout(tmp_path, name, train_n, classes):
    _fake_cifar(str(tmp_path), name)
    d = load_data(name, str(tmp_path))
    assert (len(d.train), len(d.val), d.num_classes) == (train_n, 20, classes)
    assert d.train[0][0].shape == (3, 32, 32) and d.train.flip


def test_imagefolder(tmp_path):
    from PIL import Image
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            os.makedirs(tmp_path / split / c)
            for i in range(3):
                Image.new("RGB", (40 + i, 30), (i * 40, 80, 200)).save(tmp_path / split / c / f"{i}.png")
    d = load_data("imagefolder", str(tmp_path), image_size=24)
    assert (len(d.train), len(d.val), d.num_classes) == (6, 6, 2)
    assert d.train[0][0].shape == (3, 24, 24)
    os.rename(tmp_path / "val", tmp_path / "valid")
    with pytest.raises(FileNotFoundError, match="val"):
        load_data("imagefolder", str(tmp_path))


# -- losses -------------------------------------------------------------------------------------------
def _kd_reference(s, t, y, T, alpha, ignore_index=-100):
    """fp64 row-by-row reference of DESIGN.md's kd_loss(reduction='none')."""
    s, t = s.double().reshape(-1, s.shape[-1]), t.double().reshape(-1, t.shape[-1])
    out = []
    for si, ti, yi in zip(s, t, y.reshape(-1)):
        if yi == ignore_index:
            out.append(0.0)
            continue
        pt = torch.softmax(ti / T, -1)
        kl = sum(float(p * (torch.log(p) - ls)) for p, ls in zip(pt, torch.log_softmax(si / T, -1)) if p > 0)
        ce = float(-torch.log_softmax(si, -1)[yi])
        out.append(alpha * T * T * kl + (1 - alpha) * ce)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("shape", [(7, 13), (2, 3, 10)])
def test_kd_loss_eager_matches_reference(shape):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(*shape, generator=g) * 3, torch.randn(*shape, generator=g) * 3
    t[0, ..., 1] = float("-inf") if len(shape) == 2 else t[0, ..., 1]   # p_teacher = 0 -> contributes 0
    y = torch.randint(0, shape[-1], shape[:-1], generator=g)
    y.view(-1)[2] = -100
    ref = _kd_reference(s, t, y, 3.0, 0.7)
    rows = kd_loss_eager(s, t, y, temperature=3.0, alpha=0.7, reduction="none")
    assert rows.shape == y.shape
    torch.testing.assert_close(rows.double().reshape(-1), ref, rtol=1e-5, atol=1e-6)
    n = (y != -100).sum()
    torch.testing.assert_close(kd_loss_eager(s, t, y, temperature=3.0, alpha=0.7).double(), ref.sum() / n,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kd_loss_eager(s, t, y, temperature=3.0, alpha=0.7, reduction="sum").double(),
                               ref.sum(), rtol=1e-5, atol=1e-5)
    all_ignored = kd_loss_eager(s, t, torch.full_like(y, -100))
    assert all_ignored.item() == 0.0


@pytest.mark.skipif(not HAS_FUSED, reason="sk.kd_loss not merged yet")
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "mean", "none"])
def test_fused_kd_loss_matches_eager_reference(reduction):
    g = torch.Generator().manual_seed(1)
    s = torch.randn(33, 10, generator=g, requires_grad=True)
    t = torch.randn(33, 10, generator=g)
    y = torch.randint(0, 10, (33,), generator=g)
    y[3] = -100
    a = sk.kd_loss(s, t, y, temperature=4.0, alpha=0.9, reduction=reduction)
    b = kd_loss_eager(s, t, y, temperature=4.0, alpha=0.9, reduction=reduction)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    ga, = torch.autograd.grad(a.sum(), s)
    gb, = torch.autograd.grad(b.sum(), s)
    torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-6)


def test_hint_loss_adapter_and_spatial_pooling():
    h = HintLoss(8, 16)
    fs, ft = torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)
    loss = h(fs, ft)
    ref = F.mse_loss(F.adaptive_avg_pool2d(h.adapter(fs), 4), ft)
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert h.adapter.weight.grad is not None and h.adapter.weight.grad.abs().sum() > 0


# -- models ---------------------------------------------------------------------------------------------
def test_crd_resnets_shapes_and_stages():
    m = build_model("resnet8x4", 100)
    assert [s[-1].conv2.out_channels for s in feature_stages(m)] == [64, 128, 256]
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert len(build_model("resnet32x4", 10).layer1) == 5
    n = sum(p.numel() for p in build_model("resnet8x4", 100).parameters())
    assert 1.1e6 < n < 1.3e6   # RepDistiller's resnet8x4 has 1.23M parameters (CIFAR-100)
    with pytest.raises(ValueError, match="unknown model 'resnet9'.*resnet8x4"):
        build_model("resnet9", 10)


# -- trainer --------------------------------------------------------------------------------------------
def test_train_writes_metrics_checkpoints_and_curves(tmp_path):
    torch.manual_seed(0)
    meta = {"arch": "resnet8_tiny", "num_classes": 10, "model_kwargs": {}}
    t = Trainer(build_model("resnet8_tiny", 10), _tiny_data(), epochs=2, batch_size=32, lr=0.1,
                out_dir=str(tmp_path), progress=False, meta=meta, log=lambda m: None)
    m = t.fit()
    js = json.loads((tmp_path / "metrics.json").read_text())
    assert js["final_acc"] == m["final_acc"] == js["history"][-1]["val_acc"]
    assert js["best_acc"] == max(h["val_acc"] for h in js["history"])
    assert [h["epoch"] for h in js["history"]] == [1, 2]
    assert set(js["history"][0]) >= {"epoch", "train_loss", "val_acc", "seconds"}
    csv_lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,train_loss,") and len(csv_lines) == 3
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "epoch"} <= set(ck) and ck["epoch"] == 2
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    model, meta2 = load_checkpoint_model(str(tmp_path / "best.pt"))
    assert meta2 == meta and isinstance(model, CifarResNet)


def test_progress_bar_shows_loss_and_throughput(capsys):
    Trainer(build_model("resnet8_tiny", 10), _tiny_data(64, 32), epochs=1, batch_size=32,
            progress=True).fit()
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "loss=" in err and "img_s=" in err


class _Crash(Exception):
    pass


class _CrashAfter(Trainer):
    """Dies right after the checkpoint of epoch `n` is on disk, like a killed job."""

    crash_after = 1

    def _save(self, epoch, improved):
        super()._save(epoch, improved)
        if epoch == self.crash_after:
            raise _Crash


def _distill_run(out, trainer_cls=Trainer, resume=False, **kw):
    torch.manual_seed(0)
    teacher = build_model("resnet8_tiny", 10)
    torch.manual_seed(1)
    student = build_model("resnet8_tiny", 10)
    opts = dict(teacher=teacher, epochs=3, batch_size=32, lr=0.05, hint_weight=0.5, hint_stage=1,
                clip_grad=5.0, amp=True, out_dir=str(out), progress=False, resume=resume, seed=3,
                log=lambda m: None)
    opts.update(kw)
    return trainer_cls(student, _tiny_data(seed=3), **opts)


def test_kill_and_resume_equals_uninterrupted(tmp_path, fused_standin):
    ref = _distill_run(tmp_path / "ref")
    m_ref = ref.fit()
    crashed = _distill_run(tmp_path / "res", _CrashAfter)
    with pytest.raises(_Crash):
        crashed.fit()
    assert len(json.loads((tmp_path / "res" / "metrics.json").read_text())["history"]) == 1
    # Disturb the global RNG as a fresh process would have it: resume must restore it.
    torch.manual_seed(12345)
    resumed = _distill_run(tmp_path / "res", resume=True)
    m_res = resumed.fit()
    assert resumed.start_epoch == 1
    assert _strip(m_res["history"]) == _strip(m_ref["history"])
    assert m_res["final_acc"] == m_ref["final_acc"] and m_res["best_acc"] == m_ref["best_acc"]
    for (k, a), b in zip(ref.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.equal(ref.net.hint.adapter.weight, resumed.net.hint.adapter.weight)
    if not HAS_FUSED:
        assert fused_standin          # the fused path (not --no-fused) was the one exercised


def test_resume_rejects_a_different_run(tmp_path, fused_standin):
    _distill_run(tmp_path, epochs=1).fit()
    with pytest.raises(ValueError, match="epochs"):
        _distill_run(tmp_path, epochs=2, resume=True).fit()


class _NaNAfter(nn.Module):
    def __init__(self, inner, after):
        super().__init__()
        self.inner, self.after, self.calls = inner, after, 0

    def forward(self, x):
        self.calls += self.training
        y = self.inner(x)
        return y * float("nan") if self.training and self.calls > self.after else y


def test_nan_loss_stops_with_a_clear_message(tmp_path):
    t = Trainer(_NaNAfter(build_model("resnet8_tiny", 10), after=4), _tiny_data(), epochs=3,
                batch_size=32, out_dir=str(tmp_path), progress=False, log=lambda m: None)
    with pytest.raises(NonFiniteLossError, match=r"nan at epoch 2, step 2/3.*last good checkpoint.*epoch 1"):
        t.fit()
    assert len(json.loads((tmp_path / "metrics.json").read_text())["history"]) == 1


def test_eager_and_fused_paths_and_hint_train(tmp_path, fused_standin):
    a = _distill_run(tmp_path / "a", epochs=1, fused=False, amp=False)
    w0 = a.net.hint.adapter.weight.detach().clone()
    ma = a.fit()
    assert not torch.equal(w0, a.net.hint.adapter.weight)     # the adapter is optimised
    assert any(p is a.net.hint.adapter.weight for g in a.optimizer.param_groups for p in g["params"])
    b = _distill_run(tmp_path / "b", epochs=1, fused=True, amp=False)
    mb = b.fit()
    assert np.isclose(ma["history"][0]["train_loss"], mb["history"][0]["train_loss"], rtol=1e-4)


def test_trainer_rejects_bad_arguments():
    d = _tiny_data()
    m = build_model("resnet8_tiny", 10)
    for kw, match in [({"epochs": 0}, "epochs"), ({"batch_size": 1}, "batch_size"), ({"lr": -1}, "lr"),
                      ({"alpha": 1.5}, "alpha"), ({"temperature": 0}, "temperature"),
                      ({"batch_size": 4096}, "larger than the training set"), ({"amp": "int8"}, "amp"),
                      ({"hint_weight": 1.0}, "needs a teacher"), ({"optimizer": "lamb"}, "optimizer")]:
        with pytest.raises(ValueError, match=match):
            Trainer(m, d, progress=False, **kw)


# -- CLI ------------------------------------------------------------------------------------------------
from _cli import run_cli as _main  # noqa: E402


class _RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_loaders_refuse_a_checkpoint_that_would_run_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "shufflekern-distill-1", "meta": {"arch": "resnet8_tiny", "num_classes": 10},
                "model": {}, "payload": _RunsCode(marker)}, path)
    with pytest.raises(ValueError, match=r"refusing to load .*evil\.pt.*could run code.*(posix|os)\.system"):
        load_checkpoint_model(str(path))
    assert not marker.exists()
    t = Trainer(build_model("resnet8_tiny", 10), _tiny_data(), epochs=1, batch_size=32, progress=False,
                log=lambda m: None)
    with pytest.raises(ValueError, match="refusing to load"):
        t._load(str(path))
    assert not marker.exists()


def test_python_m_shufflekern_dispatches_train_and_distill():
    for cmd in ("train", "distill"):
        r = _cli(cmd, "--help", timeout=120)
        assert f"python -m shufflekern {cmd}" in r.stdout and "--resume" in r.stdout


def test_cli_train_then_distill(tmp_path, capsys):
    common = ["--epochs", "1", "--batch-size", "32", "--limit-train", "64", "--limit-val", "32",
              "--no-progress"]
    code, out = _main(capsys, "train", "--model", "resnet8_tiny", "--out", str(tmp_path / "t"), *common)
    assert code == 0 and "val_acc" in out and (tmp_path / "t" / "best.pt").exists()
    code, out = _main(capsys, "distill", "--teacher", str(tmp_path / "t" / "best.pt"), "--student",
                      "resnet8_tiny", "--no-fused", "--hint-weight", "0.1", "--out", str(tmp_path / "s"),
                      *common)
    assert code == 0, out
    js = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert js["config"]["fused"] is False and js["config"]["cmd"] == "distill" and len(js["history"]) == 1


@pytest.mark.parametrize("args,match", [
    (["train", "--model", "resnet9"], "unknown model 'resnet9'"),
    (["train", "--data", "cifar10"], "--data-dir"),
    (["train", "--data", "cifar10", "--data-dir", "/nonexistent"], "cifar-10-batches-py"),
    (["train", "--data", "imagenet"], "invalid choice"),
    (["train", "--batch-size", "1"], "--batch-size must be >= 2"),
    (["train", "--epochs", "0"], "--epochs must be >= 1"),
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["train", "--device", "cuda:0"], "--device cuda:0|no CUDA"),
    (["distill", "--student", "resnet8_tiny"], "--teacher"),
    (["distill", "--teacher", "/nonexistent.pt"], "does not exist"),
    (["distill", "--teacher", "setup.py"], "not a readable checkpoint|not a shufflekern"),
    (["distill", "--teacher", "x.pt", "--alpha", "2"], "--alpha must be in"),
])
def test_cli_bad_flags_and_paths(args, match, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, out = _main(capsys, *args)
    assert code != 0
    assert "Traceback" not in out
    import re
    assert re.search(match, out), out


def test_cli_nan_loss_exits_cleanly(tmp_path, capsys):
    code, out = _main(capsys, "train", "--model", "resnet8_tiny", "--lr", "1e30", "--momentum", "0",
                      "--epochs", "2", "--batch-size", "32", "--limit-train", "96", "--limit-val", "32",
                      "--no-progress", "--out", str(tmp_path))
    assert code != 0
    assert "training loss became" in out and "stopping instead of training on garbage" in out


@pytest.mark.slow
def test_cli_sigkill_and_resume_equals_uninterrupted(tmp_path):
    args = ["train", "--model", "resnet8_tiny", "--epochs", "3", "--batch-size", "32", "--limit-train",
            "96", "--limit-val", "32", "--no-progress", "--seed", "7"]
    _cli(*args, "--out", str(tmp_path / "ref"))
    out = tmp_path / "killed"
    p = subprocess.Popen([PY, "-m", "shufflekern", *args, "--out", str(out)], cwd=ROOT, env=_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not (out / "metrics.json").exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = len(json.loads((out / "metrics.json").read_text())["history"])
    assert done < 3, "the run finished before it could be killed"
    r = _cli(*args, "--out", str(out), "--resume")
    assert f"resumed from {out}/last.pt after epoch" in r.stdout
    ref = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    res = json.loads((out / "metrics.json").read_text())
    assert _strip(res["history"]) == _strip(ref["history"])
    a = torch.load(tmp_path / "ref" / "last.pt", weights_only=True)["model"]
    b = torch.load(out / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- DDP ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ddp_two_processes_match_single_process(tmp_path, capsys):
    # A teacher checkpoint to distil from (the teacher stays unwrapped under DDP).
    code, out = _main(capsys, "train", "--model", "resnet8_tiny", "--epochs", "1", "--batch-size", "32",
                      "--limit-train", "64", "--limit-val", "32", "--no-progress", "--out", str(tmp_path / "t"))
    assert code == 0, out
    # A small lr: early training is chaotic (a mere change of summation order grows ~10x per step at
    # lr 0.05), and float-level differences between 1 and 2 processes are all we allow.
    common = ["distill", "--teacher", str(tmp_path / "t" / "best.pt"), "--student", "resnet8_tiny",
              "--hint-weight", "0.5", "--epochs", "2", "--batch-size", "32", "--limit-train", "128",
              "--limit-val", "64", "--no-progress", "--sync-bn", "--seed", "5", "--device", "cpu",
              "--lr", "0.01", "--fused" if HAS_FUSED else "--no-fused"]
    _cli(*common, "--out", str(tmp_path / "single"))
    r = subprocess.run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                        "shufflekern", *common, "--out", str(tmp_path / "ddp")], cwd=ROOT,
                       env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.count("done: final_acc") == 1          # rank 0 alone logs
    one = json.loads((tmp_path / "single" / "metrics.json").read_text())
    two = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["replica_sync_checks"] == 2                  # both ranks bit-identical after each epoch
    for h1, h2 in zip(one["history"], two["history"]):
        assert np.isclose(h1["train_loss"], h2["train_loss"], rtol=1e-4), (h1, h2)
        assert abs(h1["val_acc"] - h2["val_acc"]) <= 100 / 64 + 1e-9       # at most one image flips
    a = torch.load(tmp_path / "single" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    for part in ("model", "hint"):
        for k in a[part]:
            if a[part][k].is_floating_point():
                torch.testing.assert_close(a[part][k], b[part][k], rtol=1e-3, atol=1e-3, msg=f"{part}.{k}")


# -- ShuffleNet students (sk.models) ------------------------------------------------------------------
def _has_models():
    try:
        import shufflekern.models  # noqa: F401
        return True
    except ImportError:
        return False


@pytest.mark.skipif(not _has_models(), reason="shufflekern.models not merged yet")
@pytest.mark.parametrize("name,kw", [("shufflenet_v2", {"width_mult": 0.5}),
                                     ("shufflenet_v1", {"groups": 3, "width_mult": 0.5})])
def test_distill_into_shufflenet_students_with_hint(tmp_path, fused_standin, name, kw):
    torch.manual_seed(0)
    teacher = build_model("resnet8_tiny", 10)
    student = build_model(name, 10, fused=True, small_input=True, **kw)
    assert len(feature_stages(student)) == 3
    t = Trainer(student, _tiny_data(64, 32), teacher=teacher, epochs=1, batch_size=32, hint_weight=0.5,
                out_dir=str(tmp_path), progress=False, log=lambda m: None,
                meta={"arch": name, "num_classes": 10, "model_kwargs": dict(kw, fused=True, small_input=True)})
    m = t.fit()
    assert np.isfinite(m["history"][0]["train_loss"])
    rebuilt, _ = load_checkpoint_model(str(tmp_path / "best.pt"))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt.eval()(x), t.model.eval()(x))


def test_trainer_takes_a_train_config_and_the_former_keywords_alike():
    from shufflekern.distill import TrainConfig
    torch.manual_seed(0)
    m0 = build_model("resnet8_tiny", 10)
    m1 = copy.deepcopy(m0)
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.1, progress=False, record={"cmd": "test"})
    a = Trainer(cfg, m0, _tiny_data(64, 32))
    b = Trainer(m1, _tiny_data(64, 32), epochs=1, batch_size=32, lr=0.1, progress=False, config={"cmd": "test"})
    assert a.config == b.config == {"cmd": "test"} and a.cfg == b.cfg
    with pytest.raises(TypeError, match="TrainConfig"):
        Trainer(cfg, m0, _tiny_data(64, 32), epochs=2)
    with pytest.raises(TypeError, match="unexpected"):
        Trainer(m0, _tiny_data(64, 32), epoch=2)


def test_trainer_does_not_start_distributed_training(monkeypatch):
    """The process group is the caller's (the CLI's setup_distributed), not the constructor's."""
    from shufflekern.distill import TrainConfig
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="setup_distributed"):
        Trainer(TrainConfig(epochs=1, batch_size=32, progress=False), build_model("resnet8_tiny", 10),
                _tiny_data(64, 32))
