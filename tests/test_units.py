"""Whole-unit inference ops shufflekern::unit_v2 / unit_v1 (csrc/cpu/unit_ops.cpp) and the fused models'
use of them (shufflekern/models/_units.py): exact against the eager units, both memory formats, stride 1 and 2,
odd sizes, batch 1, opcheck, torch.compile, the fall-back rules, bad input."""

import pytest
import torch
from torch import nn

import shufflekern as sk
from _isa import run_under_avx2_and_default
from shufflekern.models.shufflenetv1 import FusedShuffleV1Unit, ShuffleV1Unit
from shufflekern.models.shufflenetv2 import FusedInvertedResidual, InvertedResidual

FORMATS = {"nchw": torch.contiguous_format, "cl": torch.channels_last}


def _randomize_bn(model, gen):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.2)
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
    return model


def _tol(dtype):
    return dict(rtol=1e-10, atol=1e-11) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)


def _fused_unit(unit):
    """The unit as sk.fuse leaves it in an eval model (BatchNorm folded, weights packed)."""
    fused = sk.fuse(nn.Sequential(unit).eval())[0]
    assert isinstance(fused, (FusedInvertedResidual, FusedShuffleV1Unit))
    return fused


def _check_unit(eager, x, dtype):
    eager = eager.to(dtype).eval()
    fused = _fused_unit(eager)
    x = x.to(dtype)
    with torch.no_grad():
        assert fused.unit_kernel_reason(x) is None
        ref = eager(x)
        out = fused(x)
    assert out.shape == ref.shape
    assert out.is_contiguous(memory_format=sk.ops.suggest_memory_format(x))
    torch.testing.assert_close(out, ref, **_tol(dtype))
    return fused


V2_CASES = [  # inp, oup, stride, mid, n, h, w
    (24, 116, 2, None, 2, 9, 7),
    (116, 116, 1, None, 2, 7, 9),
    (232, 232, 1, None, 1, 5, 5),
    (10, 20, 2, 6, 1, 1, 1),
    (20, 20, 1, 17, 3, 3, 11),
    (8, 8, 1, 40, 1, 2, 3),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("case", V2_CASES, ids=lambda c: "-".join(map(str, c)))
def test_unit_v2_matches_eager(case, fmt, dtype):
    inp, oup, stride, mid, n, h, w = case
    gen = torch.Generator().manual_seed(sum(case[:3]))
    eager = _randomize_bn(InvertedResidual(inp, oup, stride, mid), gen)
    x = torch.randn(n, inp, h, w, generator=gen, dtype=torch.float64).contiguous(memory_format=FORMATS[fmt])
    _check_unit(eager, x, dtype)


V1_CASES = [  # inp, out, groups, stride, group_first, mid, n, h, w
    (24, 240, 3, 2, False, None, 2, 9, 7),
    (240, 240, 3, 1, True, None, 2, 7, 9),
    (480, 480, 3, 1, True, None, 1, 3, 3),
    (240, 480, 3, 2, True, None, 1, 5, 6),
    (16, 384, 8, 2, False, None, 1, 7, 7),
    (384, 384, 8, 1, True, None, 2, 4, 5),
    (24, 144, 1, 2, True, None, 1, 5, 5),
    (144, 144, 1, 1, True, 20, 1, 1, 1),
    (12, 36, 2, 2, True, 10, 2, 2, 1),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("case", V1_CASES, ids=lambda c: "-".join(map(str, c)))
def test_unit_v1_matches_eager(case, fmt, dtype):
    inp, out, groups, stride, gf, mid, n, h, w = case
    gen = torch.Generator().manual_seed(inp + out + groups)
    eager = _randomize_bn(ShuffleV1Unit(inp, out, groups, stride, gf, mid), gen)
    x = torch.randn(n, inp, h, w, generator=gen, dtype=torch.float64).contiguous(memory_format=FORMATS[fmt])
    _check_unit(eager, x, dtype)


def test_many_strips_and_threads():
    """A large image is cut into several row strips a task (each recomputing its halo); 1 and 2 threads."""
    gen = torch.Generator().manual_seed(0)
    cases = [(InvertedResidual(24, 48, 2), 24), (InvertedResidual(48, 48, 1), 48),
             (ShuffleV1Unit(24, 240, 3, 2, False), 24), (ShuffleV1Unit(240, 240, 3, 1), 240)]
    threads = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            for unit, c in cases:
                x = torch.randn(1, c, 67, 45, generator=gen, dtype=torch.float64)
                _check_unit(_randomize_bn(unit, gen), x, torch.float64)
    finally:
        torch.set_num_threads(threads)


def _v2_args(dtype=torch.float64, stride=1):
    gen = torch.Generator().manual_seed(1)
    unit = _fused_unit(_randomize_bn(InvertedResidual(20 if stride == 1 else 12, 20, stride), gen).to(dtype).eval())
    x = torch.randn(2, 20 if stride == 1 else 12, 5, 7, generator=gen, dtype=dtype)
    return unit, x, (x, unit.pk_w1, unit.pk_b1, unit.pk_wd, unit.pk_bd, unit.pk_w2, unit.pk_b2, unit.pk_wd1,
                     unit.pk_bd1, unit.pk_wp1, unit.pk_bp1, stride)


def _v1_args(dtype=torch.float64, stride=1):
    gen = torch.Generator().manual_seed(2)
    inp = 24 if stride == 1 else 12
    unit = _fused_unit(_randomize_bn(ShuffleV1Unit(inp, 24, 3, stride), gen).to(dtype).eval())
    x = torch.randn(2, inp, 5, 7, generator=gen, dtype=dtype)
    return unit, x, (x, unit.pk_w1, unit.pk_b1, unit.pk_wd, unit.pk_bd, unit.pk_w3, unit.pk_b3, 3, 3, stride)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("which", ["v2", "v1"])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_opcheck(which, stride, fmt):
    unit, x, args = (_v2_args if which == "v2" else _v1_args)(torch.float32, stride)
    args = (x.contiguous(memory_format=FORMATS[fmt]),) + args[1:]
    torch.library.opcheck(getattr(torch.ops.shufflekern, f"unit_{which}"), args)


@pytest.mark.parametrize("which", ["v2", "v1"])
def test_bad_input(which):
    unit, x, args = (_v2_args if which == "v2" else _v1_args)()
    op = getattr(torch.ops.shufflekern, f"unit_{which}")
    bad = [
        ((x.float(),) + args[1:], TypeError, "dtype"),
        ((x[0],) + args[1:], (ValueError, RuntimeError), "4-D"),
        ((x.half(),) + tuple(a.half() if isinstance(a, torch.Tensor) else a for a in args[1:]), TypeError,
         "float32 or float64"),
        ((x, args[1][:-1]) + args[2:], (ValueError, RuntimeError), "w1 must hold"),
        (args[:-1] + (3,), (ValueError, RuntimeError), "stride must be 1 or 2"),
        ((x[:, :-2],) + args[1:], (ValueError, RuntimeError), "channels"),
    ]
    for a, exc, msg in bad:
        with pytest.raises(exc, match=msg):
            op(*a)  # the C++ checks
        fake = sk.ops._unit_v2_fake if which == "v2" else sk.ops._unit_v1_fake
        with pytest.raises(exc, match=msg):
            fake(*a)  # the Python checks (fake kernel)


def _small_model(which):
    torch.manual_seed(0)
    if which == "v2":
        m = sk.models.shufflenet_v2(0.5, num_classes=10, fused=False, small_input=True)
    else:
        m = sk.models.shufflenet_v1(3, 0.5, num_classes=10, fused=False, small_input=True)
    return _randomize_bn(m, torch.Generator().manual_seed(3)).eval()


def _units(model):
    return [m for m in model.modules() if isinstance(m, (FusedInvertedResidual, FusedShuffleV1Unit))]


@pytest.mark.parametrize("which", ["v2", "v1"])
def test_fused_model_uses_unit_ops_and_round_trips(which):
    model = _small_model(which).double()
    x = torch.randn(2, 3, 33, 31, dtype=torch.float64)
    fused = sk.fuse(model)
    units = _units(fused)
    assert units
    with torch.no_grad():
        ref = model(x)
        assert all(u.unit_kernel_reason(x if i == 0 else None) in (None, "input passed as channel halves")
                   for i, u in enumerate(units[:1]))
        torch.testing.assert_close(fused(x), ref, rtol=1e-10, atol=1e-12)
    # Gradient wanted: the per-op path (the unit ops have no backward), same values, a graph.
    y = fused(x.requires_grad_())
    assert y.requires_grad
    torch.testing.assert_close(y.detach(), ref, rtol=1e-10, atol=1e-12)
    # Back to train(): no unit op; eval() again repacks.
    fused.train()
    assert all(u.unit_kernel_reason(x) == "training mode" for u in units)
    fused.eval()
    assert all(u._unit_ready for u in units)
    # unfuse still round-trips (the packs are not state).
    back = sk.unfuse(fused)
    assert not _units(back)
    assert set(back.state_dict()) == set(fused.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(back(x.detach()), ref, rtol=1e-10, atol=1e-12)


def test_repack_after_weight_changes():
    model = _small_model("v2").double()
    fused = sk.fuse(model)
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    unit = _units(fused)[1]
    with torch.no_grad():
        unit.branch2[5].weight.mul_(2)  # in-place edit: seen by the version check
        ref = sk.unfuse(fused)(x)
        torch.testing.assert_close(fused(x), ref, rtol=1e-10, atol=1e-12)
    sd = {k: v * 1.5 if k.endswith("weight") else v for k, v in fused.state_dict().items()}
    fused.load_state_dict(sd)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), sk.unfuse(fused)(x), rtol=1e-10, atol=1e-12)
    # .float(): repacked in the new dtype (other granularity), still the unit op
    f32 = fused.float()
    with torch.no_grad():
        assert _units(f32)[0].unit_kernel_reason(x.float()) is None
        torch.testing.assert_close(f32(x.float()), sk.unfuse(fused)(x.float()), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16])  # (float16: the per-op CPU path has no kernel either)
def test_other_dtypes_use_per_op_path(dtype):
    model = _small_model("v1")
    fused = sk.fuse(model).to(dtype)
    x = torch.randn(1, 3, 16, 16).to(dtype)
    for u in _units(fused):
        reason = u.unit_kernel_reason(x)
        assert reason is not None and ("not float32/float64" in reason or "float32/float64" in reason)
    with torch.no_grad():
        torch.testing.assert_close(fused(x).float(), model.to(dtype)(x).float(), rtol=0.1, atol=0.1)


@pytest.mark.parametrize("which", ["v2", "v1"])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_torch_compile_of_fused_model(which, fmt):
    torch._dynamo.reset()
    model = _small_model(which).to(memory_format=FORMATS[fmt])
    fused = sk.fuse(model)
    x = torch.randn(2, 3, 20, 20).contiguous(memory_format=FORMATS[fmt])
    compiled = torch.compile(fused)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=2e-4, atol=2e-5)


def test_info_mentions_unit_ops():
    assert "unit ops (fused eval models)" in sk.info()["usable_backends"]


@pytest.mark.slow
def test_avx2_and_default_paths():
    """The AVX2 and portable builds of the kernels (ATEN_CPU_CAPABILITY) give the same results."""
    code = ("import torch, sys; sys.path.insert(0, 'tests'); import test_units as t; import shufflekern as sk;"
            "print(sk._C.runtime_cpu_isa());"
            "[t.test_unit_v2_matches_eager(c, f, d) for c in t.V2_CASES[:3] for f in t.FORMATS "
            " for d in (torch.float64, torch.float32)];"
            "[t.test_unit_v1_matches_eager(c, f, d) for c in t.V1_CASES[:5] for f in t.FORMATS "
            " for d in (torch.float64, torch.float32)]")
    run_under_avx2_and_default(code)
