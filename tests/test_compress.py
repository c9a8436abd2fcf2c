"""Compression: shuffle-aware structured pruning, unstructured masks, INT8 PT2E quantization, their CLIs.

Pruning is checked exactly (fp64, eval mode): the pruned model computes what the original computes with
the removed channels' weights in their consuming 1x1 conv set to zero.  Quantization is checked on a
small student trained on digits for a few seconds (module fixture).
"""
import json
import os
import sys

import pytest
import torch
from torch import nn

import shufflekern as sk
from shufflekern.compress import (count_params, mid_channels, prune_structured, prune_unstructured,
                                  recalibrate_bn, v1_kept_per_block, zero_removed)
from shufflekern.distill import Trainer, build_model, load_checkpoint_model, load_data
from shufflekern.distill.report import atomic_torch_save
from shufflekern.distill.trainer import CHECKPOINT_FORMAT
from shufflekern.models import shufflenet_v1, shufflenet_v2


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def randomize_bn(model, seed=0):
    """BatchNorm statistics and affine parameters that are not the identity (else pruning by gamma ties)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.05)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


from _cli import run_cli as _main  # noqa: E402


def _save_ckpt(model, path, arch, **kwargs):
    meta = {"arch": arch, "num_classes": 10, "model_kwargs": kwargs, "data": "digits"}
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "epoch": 0, "model": model.state_dict(), "meta": meta},
                      str(path))
    return str(path)


# -- structured pruning: exactness -----------------------------------------------------------------------
MODELS = {
    "v2": lambda fused: shufflenet_v2(0.5, 10, fused=fused, small_input=True),
    "v1g1": lambda fused: shufflenet_v1(1, 0.5, 10, fused=fused, small_input=True),
    "v1g3": lambda fused: shufflenet_v1(3, 0.5, 10, fused=fused, small_input=True),
    "v1g8": lambda fused: shufflenet_v1(8, 0.5, 10, fused=fused, small_input=True),
}


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.9])
@pytest.mark.parametrize("name", list(MODELS))
def test_pruned_equals_original_with_removed_channels_zeroed(name, ratio):
    torch.manual_seed(0)
    model = randomize_bn(MODELS[name](False)).double().eval()
    pruned, plan = prune_structured(model, ratio)
    assert type(pruned) is type(model) and count_params(pruned) < count_params(model)
    assert any(p["mid_after"] < p["mid_before"] for p in plan)
    reference = zero_removed(model, plan)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        got, want, orig = pruned(x), reference(x), model(x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert (got - orig).abs().max() > 1e-6  # channels really went
    # a dense model of the same class: the constructor rebuilds it from the widths
    kw = {"groups": model.groups} if isinstance(model, sk.models.ShuffleNetV1) else {}
    rebuilt = type(model)(width_mult=0.5, num_classes=10, small_input=True, mid_channels=mid_channels(pruned), **kw)
    rebuilt.load_state_dict(pruned.state_dict())
    assert not [n for n, _ in pruned.named_buffers() if "mask" in n]


@pytest.mark.parametrize("name", ["v2", "v1g3"])
def test_pruning_a_fused_model_returns_a_fused_model_with_the_same_outputs(name):
    torch.manual_seed(0)
    eager = randomize_bn(MODELS[name](False)).double().eval()
    fused = sk.fuse(eager, fold_bn=False)
    pe, _ = prune_structured(eager, 0.5)
    pf, _ = prune_structured(fused, 0.5)
    assert sk.compress.prune.is_fused(pf) and not sk.compress.prune.is_fused(pe)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(pf(x), pe(x), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(sk.unfuse(pf)(x), pe(x), rtol=1e-10, atol=1e-12)
    assert mid_channels(pf) == mid_channels(pe)


def test_v1_kept_channels_are_equal_per_group_and_keep_their_route():
    # g=3, m=20 (ShuffleNetV1 1.0x stage 2): blocks a->j of 7/7/6, 7/6/7, 6/7/7 channels
    mp, blocks = v1_kept_per_block(20, 3, 0.5)
    assert mp == 10 and [sum(r) for r in blocks] == [10, 10, 10]
    from shufflekern.compress.prune import _blocks
    for g in (2, 3, 4, 8):
        for m in range(1, 41):
            for r in (0.25, 0.5, 0.9):
                mp, new = v1_kept_per_block(m, g, r)
                old = _blocks(m, g)
                assert mp <= m and all(new[a][j] <= old[a][j] for a in range(g) for j in range(g))
                assert sum(map(sum, new)) == g * mp


def test_structured_pruning_rejects_bad_input():
    m = MODELS["v2"](False)
    for r in (0, 1, 1.5, -0.1, True, "0.5"):
        with pytest.raises(ValueError, match="ratio must be a number in \\(0, 1\\)"):
            prune_structured(m, r)
    with pytest.raises(TypeError, match="ShuffleNetV1 or ShuffleNetV2 student"):
        prune_structured(build_model("resnet8_tiny", 10), 0.5)
    folded = sk.fuse(m.eval())  # eval: BatchNorm folded into the convs
    with pytest.raises(ValueError, match="no BatchNorm scale"):
        prune_structured(folded, 0.5)


def test_unstructured_masks_zero_weights_but_keep_shapes():
    from shufflekern.compress import count_nonzero, finalize_unstructured
    m = randomize_bn(MODELS["v2"](True))
    n = count_params(m)
    prune_unstructured(m, 0.5)
    finalize_unstructured(m)
    assert count_params(m) == n
    weights = sum(p.numel() for name, p in m.named_parameters() if name.endswith("weight") and p.dim() > 1)
    assert abs((n - count_nonzero(m)) - 0.5 * weights) <= 1
    assert not [k for k in m.state_dict() if "mask" in k or "orig" in k]


# -- prune CLI -------------------------------------------------------------------------------------------
TINY = ["--batch-size", "32", "--limit-train", "64", "--limit-val", "48", "--no-progress", "--latency-rounds", "2"]


def test_recalibrate_bn_is_the_exact_average_over_the_batches():
    """After pruning, every BatchNorm's running statistics become the average over the batches of the batch
    mean and unbiased variance of its input (as seen in train mode), the weights do not move, momentum and the
    eval mode come back; the fused model (whose units call the BatchNorms' kernels without their forward)
    ends with the same statistics."""
    small, _ = prune_structured(randomize_bn(MODELS["v2"](False)).double(), 0.5)
    small.eval()
    fused = sk.fuse(small, fold_bn=False)
    params = {k: v.clone() for k, v in small.named_parameters()}
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(4, 3, 32, 32, generator=gen, dtype=torch.float64) for _ in range(3)]
    bns = [m for m in small.modules() if isinstance(m, nn.BatchNorm2d)]
    seen = {bn: [] for bn in bns}
    hooks = [bn.register_forward_pre_hook(lambda m, a: seen[m].append(a[0].detach().clone())) for bn in bns]
    try:
        assert recalibrate_bn(small, batches) == len(bns)
    finally:
        for h in hooks:
            h.remove()
    assert not small.training
    for bn in bns:
        assert len(seen[bn]) == 3 and bn.momentum == 0.1
        means = torch.stack([t.mean((0, 2, 3)) for t in seen[bn]])
        varis = torch.stack([t.var((0, 2, 3), unbiased=True) for t in seen[bn]])
        torch.testing.assert_close(bn.running_mean, means.mean(0), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(bn.running_var, varis.mean(0), rtol=1e-10, atol=1e-12)
    for k, v in small.named_parameters():
        assert torch.equal(v, params[k]), k
    assert recalibrate_bn(fused, batches) == len(bns)
    want = sk.unfuse(fused).state_dict()
    for k, v in small.state_dict().items():
        torch.testing.assert_close(want[k], v, rtol=1e-9, atol=1e-11, msg=k)
    with pytest.raises(ValueError, match="batches is empty"):
        recalibrate_bn(small, [])


def test_cli_prune_kd_fine_tune_round_trips(tmp_path, capsys):
    torch.manual_seed(0)
    student = _save_ckpt(randomize_bn(shufflenet_v2(0.5, 10, small_input=True)), tmp_path / "s.pt",
                         "shufflenet_v2", width_mult=0.5, fused=True, small_input=True)
    teacher = _save_ckpt(build_model("resnet8_tiny", 10), tmp_path / "t.pt", "resnet8_tiny")
    out = tmp_path / "pruned"
    code, log = _main(capsys, "prune", "--student", student, "--teacher", teacher, "--ratio", "0.5",
                      "--epochs", "1", "--out", str(out), *TINY)
    assert code == 0, log
    js = json.loads((out / "metrics.json").read_text())
    for k in ("params_before", "params_after", "final_acc", "mflops_before", "mflops_after", "latency_before_ms",
              "latency_after_ms", "acc_after_prune", "acc_after_bn_recalib"):
        assert js[k] is not None, k
    assert js["params_after"] < js["params_before"] and js["mflops_after"] < js["mflops_before"]
    assert js["fine_tune"]["loss"] == "kd" and len(js["history"]) == 1
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    # a normal trainer checkpoint (weights_only): the loader, fuse/unfuse and distill --teacher take it
    model, meta = load_checkpoint_model(str(out / "model.pt"))
    assert meta["model_kwargs"]["mid_channels"] == mid_channels(model) == js["mid_channels"]
    assert count_params(model) == js["params_after"]
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(sk.unfuse(model)(x), model(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(sk.fuse(sk.unfuse(model), fold_bn=False)(x), model(x), rtol=1e-4, atol=1e-5)
    code, log = _main(capsys, "distill", "--teacher", str(out / "model.pt"), "--student", "resnet8_tiny",
                      "--epochs", "1", "--out", str(tmp_path / "d"), "--batch-size", "32", "--limit-train", "64",
                      "--limit-val", "32", "--no-progress", "--no-fused")
    assert code == 0, log


def test_cli_prune_unstructured_is_masks_only(tmp_path, capsys):
    student = _save_ckpt(randomize_bn(shufflenet_v1(3, 0.5, 10, small_input=True)), tmp_path / "s.pt",
                         "shufflenet_v1", width_mult=0.5, groups=3, fused=True, small_input=True)
    out = tmp_path / "u"
    code, log = _main(capsys, "prune", "--student", student, "--ratio", "0.6", "--method", "unstructured",
                      "--epochs", "0", "--out", str(out), *TINY)
    assert code == 0, log
    js = json.loads((out / "metrics.json").read_text())
    assert js["params_after"] == js["params_before"] and js["mflops_after"] == js["mflops_before"]
    assert js["nonzero_params_after"] < 0.5 * js["params_after"]
    model, _ = load_checkpoint_model(str(out / "model.pt"))
    assert count_params(model) == js["params_before"]


@pytest.mark.parametrize("extra,match", [
    (["--ratio", "0"], "--ratio must be in \\(0, 1\\)"),
    (["--ratio", "1.5"], "--ratio must be in \\(0, 1\\)"),
    (["--ratio", "0.5", "--student-is-teacher"], "not a ShuffleNet student"),
    (["--ratio", "0.5", "--student-missing"], "does not exist"),
])
def test_cli_prune_bad_input_writes_nothing(tmp_path, capsys, extra, match):
    student = _save_ckpt(shufflenet_v2(0.5, 10, small_input=True), tmp_path / "s.pt", "shufflenet_v2",
                         width_mult=0.5, small_input=True)
    if "--student-is-teacher" in extra:
        student = _save_ckpt(build_model("resnet8_tiny", 10), tmp_path / "t.pt", "resnet8_tiny")
    if "--student-missing" in extra:
        student = str(tmp_path / "nope.pt")
    extra = [e for e in extra if not e.startswith("--student-")]
    out = tmp_path / "out"
    code, log = _main(capsys, "prune", "--student", student, "--out", str(out), *extra, *TINY)
    import re
    assert code != 0 and "Traceback" not in log and re.search(match, log), log
    assert not out.exists()


# -- quantization ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_student(tmp_path_factory):
    """A ShuffleNetV2 0.5x student trained on digits for a few seconds (a trainer checkpoint)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = load_data("digits", seed=0, limit_train=768)
    meta = {"arch": "shufflenet_v2", "num_classes": 10, "data": "digits",
            "model_kwargs": {"width_mult": 0.5, "fused": True, "small_input": True}}
    out = tmp_path_factory.mktemp("student")
    Trainer(shufflenet_v2(0.5, 10, small_input=True), data, epochs=4, batch_size=32, lr=0.05, out_dir=str(out),
            progress=False, meta=meta, log=lambda m: None).fit()
    torch.set_num_threads(threads)  # (a leaked thread count changes which kernels later test files see)
    return str(out / "best.pt"), data


def _acc(fn, data):
    x = torch.stack([data.val[i][0] for i in range(len(data.val))])
    with torch.no_grad():
        return 100.0 * (fn(x).argmax(1) == data.val.labels).float().mean().item()


def _eval_student_and_calib(trained_student, images):
    """The trained student in eval mode, the data, and calibration batches of 32 from the first `images`."""
    path, data = trained_student
    model, _ = load_checkpoint_model(path)
    model.eval()
    calib = [torch.stack([data.train[i][0] for i in range(s, s + 32)]) for s in range(0, images, 32)]
    return model, data, calib


def test_int8_accuracy_close_to_fp32_and_saved_program_round_trips(trained_student, tmp_path):
    pytest.importorskip("torchao")
    from shufflekern.compress import export_program, load_program, quantize_int8
    model, data, calib = _eval_student_and_calib(trained_student, 256)
    example = calib[0][:16]
    q = quantize_int8(model, calib, example)
    acc32, acc8 = _acc(model, data), _acc(q, data)
    assert acc32 > 60, acc32  # the student learned something, so the comparison means something
    assert abs(acc8 - acc32) <= 2.0, (acc32, acc8)
    assert any(p.dtype == torch.int8 for p in q.buffers()) or any(
        "int8" in str(getattr(n, "meta", {}).get("val", "")) for n in q.graph.nodes)
    torch.export.save(export_program(q, example), str(tmp_path / "m.pt2"))
    loaded = load_program(str(tmp_path / "m.pt2")).module()
    for n in (1, 7, 16):  # dynamic batch
        x = calib[1][:n]
        with torch.no_grad():
            assert torch.equal(loaded(x), q(x))


def _dtypes_of(gm, x, targets):
    """dtype of the output of every node of `gm` calling one of `targets`, running it on x."""
    seen = {}

    class Rec(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.op == "call_function" and n.target in targets:
                seen[n.name] = out[0].dtype if isinstance(out, (list, tuple)) else out.dtype
            return out

    with torch.no_grad():
        Rec(gm).run(x)
    return seen


def test_shuffle_aware_int8_runs_cat_shuffle_and_chunk_on_uint8(trained_student):
    """Every unit's cat, its shuffle's transpose and its chunk move uint8 (the stock quantizer leaves the
    stride-1 units' ones in fp32), and no dequantize feeds a cat."""
    pytest.importorskip("torchao")
    from shufflekern.compress import quantize_int8
    aten = torch.ops.aten
    model, data, calib = _eval_student_and_calib(trained_student, 128)
    x = calib[0][:5]
    targets = (aten.cat.default, aten.transpose.int, aten.chunk.default)
    q = quantize_int8(model, calib, x)
    new = _dtypes_of(q, x, targets)
    stock = _dtypes_of(quantize_int8(model, calib, x, shuffle_aware=False), x, targets)
    units = sum(isinstance(m, sk.models.InvertedResidual) for m in sk.unfuse(model).modules())
    assert units == 16
    # the channel shuffles (a transpose each) and cats of all units, the chunks of the 13 stride-1 units
    for dtypes in (new, stock):
        assert sum(k.startswith("cat") for k in dtypes) == units
        assert sum(k.startswith("transpose") for k in dtypes) == units
        assert sum(k.startswith("chunk") for k in dtypes) == 13
    assert set(new.values()) == {torch.uint8}, new
    assert torch.float32 in stock.values()  # so the test above shows a change
    dq = torch.ops.quantized_decomposed.dequantize_per_tensor.default
    for n in q.graph.nodes:
        if n.target is aten.cat.default:
            assert not any(a.target is dq for a in n.args[0]), n


def test_int8_data_movement_is_exact(trained_student):
    """The rewrite (dequantize moved below cat / shuffle / chunk, quantize(dequantize) pairs dropped) computes
    what the converted graph computes, bit for bit, at any batch."""
    pytest.importorskip("torchao")
    import copy

    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import get_default_x86_inductor_quantization_config

    from shufflekern.compress.quantize import _export, int8_data_movement, shuffle_aware_quantizer
    path, data = trained_student
    model, _ = load_checkpoint_model(path)
    calib = [torch.stack([data.train[i][0] for i in range(s, s + 32)]) for s in range(0, 96, 32)]
    quantizer = shuffle_aware_quantizer()
    quantizer.set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(_export(sk.unfuse(model).eval(), calib[0][:4]).module(), quantizer)
    with torch.no_grad():
        for x in calib:
            prepared(x)
    converted = convert_pt2e(prepared)
    rewritten = copy.deepcopy(converted)
    counts = int8_data_movement(rewritten)
    assert counts["cat_int8"] == 16 and counts["dequant_moved"] > 16 and counts["requant_dropped"] > 16, counts
    with torch.no_grad():
        for n in (1, 5, 16):
            x = torch.stack([data.val[i][0] for i in range(n)])
            assert torch.equal(rewritten(x), converted(x))


@pytest.mark.slow
def test_compile_int8_stays_frozen_under_inference_mode(trained_student):
    """compile_int8 lowers to oneDNN INT8 convolutions, and a call under inference_mode (as the latency and
    accuracy measurements make) runs a graph compiled with freezing, not a recompiled unfrozen one."""
    pytest.importorskip("torchao")
    from torch._dynamo.utils import counters

    from shufflekern.compress import compile_int8, quantize_int8
    model, data, calib = _eval_student_and_calib(trained_student, 64)
    x = calib[0][:16]
    q = quantize_int8(model, calib, x)
    counters.clear()
    fn = compile_int8(q, x)
    assert counters["inductor"]["qconv_unary_matcher_count"] > 0  # the INT8 convolutions were lowered
    graphs = counters["stats"]["unique_graphs"]
    assert graphs == 2  # one under no_grad, one under inference_mode, both compiled here (frozen)
    with torch.inference_mode():
        got = fn(x)
    with torch.no_grad():
        got2 = fn(x)
        want = q(x)
    assert counters["stats"]["unique_graphs"] == graphs  # no recompilation
    assert torch.equal(got, got2)
    assert (got.argmax(1) == want.argmax(1)).float().mean() >= 0.9


def test_missing_torchao_is_a_clear_error(monkeypatch, tmp_path, capsys):
    from shufflekern.compress import require_torchao
    monkeypatch.setitem(sys.modules, "torchao", None)  # import torchao -> ImportError
    with pytest.raises(RuntimeError, match="needs the 'torchao' package.*pip install torchao"):
        require_torchao()
    student = _save_ckpt(shufflenet_v2(0.5, 10, small_input=True), tmp_path / "s.pt", "shufflenet_v2",
                         width_mult=0.5, small_input=True)
    code, log = _main(capsys, "quantize", "--model", student, "--out", str(tmp_path / "q"))
    assert code != 0 and "'torchao' package" in log and "Traceback" not in log
    assert not (tmp_path / "q").exists()


@pytest.mark.slow
def test_cli_quantize_end_to_end(trained_student, tmp_path, capsys):
    """Export, calibrate, convert, compile (bs 16 and 1), time, save: ~1 min on two cores."""
    pytest.importorskip("torchao")
    path, _ = trained_student
    out = tmp_path / "q"
    code, log = _main(capsys, "quantize", "--model", path, "--out", str(out), "--calib", "128",
                      "--latency-rounds", "2", "--no-compile-fp32")
    assert code == 0, log
    js = json.loads((out / "metrics.json").read_text())
    for k in ("acc_fp32", "acc_int8", "latency_fp32_ms", "latency_int8_ms", "latency_fp32_bs1_ms",
              "latency_int8_bs1_ms", "size_int8_mb", "size_fp32_mb"):
        assert js[k] > 0, k
    assert abs(js["acc_int8"] - js["acc_fp32"]) <= 2.0
    # the tensors shrink ~4x; the .pt2 file also holds the serialised graph (size_int8_mb counts it all)
    assert js["tensors_int8_mb"] < 0.35 * js["tensors_fp32_mb"]
    assert sorted(os.listdir(out)) == ["metrics.json", "model_int8.pt2"]
