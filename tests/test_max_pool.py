"""shufflekern::max_pool3x3s2 (csrc/cpu/max_pool.cpp), the fused models' stem pool at inference, and its
module (models._common.MaxPool3x3s2): bit-exact against F.max_pool2d(x, 3, 2, 1) (a max picks an input
element: no rounding), NaN and -inf, both memory formats, non-contiguous input, odd and tiny sizes,
opcheck, torch.compile, when the module falls back, what sk.fuse / sk.unfuse do with it, bad input."""
import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import shufflekern as sk
from shufflekern.models._common import MaxPool3x3s2

op = torch.ops.shufflekern.max_pool3x3s2
FORMATS = {"nchw": torch.contiguous_format, "cl": torch.channels_last}
SHAPES = [(2, 24, 112, 112), (1, 3, 1, 1), (2, 5, 2, 3), (3, 17, 7, 9), (1, 33, 6, 5), (2, 1, 4, 4)]


def _same(a, b):
    return a.shape == b.shape and torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0),
                                                                                    b.nan_to_num(0.0))


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_exact_against_max_pool2d(shape, dtype, fmt):
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=gen, dtype=dtype).contiguous(memory_format=FORMATS[fmt])
    if x.numel() > 8:
        x[0, 0, 0, min(1, shape[3] - 1)] = float("nan")
        x[-1, -1, -1, -1] = float("-inf")
        x[0, -1, shape[2] // 2, 0] = float("inf")
    y = op(x)
    assert _same(y, F.max_pool2d(x, 3, 2, 1))
    assert y.is_contiguous(memory_format=FORMATS[fmt]) and y.dtype == dtype


def test_all_negative_and_ties():
    x = -torch.rand(2, 4, 5, 6, dtype=torch.float64) - 1.0  # padding (-inf) must never win
    x[:, :, 1:3, 1:3] = -0.5
    assert _same(op(x), F.max_pool2d(x, 3, 2, 1))
    assert _same(op(x.contiguous(memory_format=torch.channels_last)), F.max_pool2d(x, 3, 2, 1))


def test_non_contiguous_and_empty():
    base = torch.randn(2, 12, 9, 11)
    x = base[:, ::2]  # channel slice: neither format's dense layout
    assert _same(op(x), F.max_pool2d(x, 3, 2, 1))
    xt = torch.randn(2, 11, 9, 6).transpose(1, 3)  # [2, 6, 9, 11] with odd strides
    assert _same(op(xt), F.max_pool2d(xt, 3, 2, 1))
    e = op(torch.randn(0, 3, 5, 5))
    assert e.shape == (0, 3, 3, 3)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="x must be 4-D"):
        op(torch.randn(3, 5, 5))
    with pytest.raises(TypeError, match="float32 or float64"):
        op(torch.randn(1, 2, 5, 5).half())
    with pytest.raises(ValueError, match="H, W > 0"):
        op(torch.randn(1, 2, 0, 5))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_opcheck_and_compile(fmt):
    x = torch.randn(2, 7, 9, 10).contiguous(memory_format=FORMATS[fmt])
    torch.library.opcheck(op, (x,))
    compiled = torch.compile(lambda t: op(t) + 1, fullgraph=True)
    assert _same(compiled(x), F.max_pool2d(x, 3, 2, 1) + 1)


def test_module_uses_the_op_only_without_gradient():
    m = MaxPool3x3s2()
    x = torch.randn(2, 6, 11, 12, requires_grad=True)
    y = m(x)  # gradient needed: nn.MaxPool2d's forward, differentiable
    y.sum().backward()
    assert x.grad is not None and _same(y.detach(), F.max_pool2d(x.detach(), 3, 2, 1))
    with torch.no_grad():
        assert _same(m(x), F.max_pool2d(x.detach(), 3, 2, 1))
    # dtypes and shapes the op does not take: nn.MaxPool2d
    assert _same(m(x.detach().half()).float(), F.max_pool2d(x.detach().half(), 3, 2, 1).float())
    assert m(torch.randn(6, 11, 12)).shape == (6, 6, 6)  # unbatched


def test_fuse_swaps_the_stem_pool_and_unfuse_restores_it():
    model = torchvision.models.shufflenet_v2_x0_5().eval()
    eager = copy.deepcopy(model)
    fused = sk.fuse(model)
    assert type(fused.maxpool) is MaxPool3x3s2 and not fused.maxpool.training
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(fused(x), eager(x), rtol=2e-4, atol=2e-5)
    back = sk.unfuse(fused)
    assert type(back.maxpool) is nn.MaxPool2d
    other = nn.Sequential(nn.MaxPool2d(2, 2), nn.MaxPool2d(3, 2, 1, ceil_mode=True))
    assert [type(m) for m in sk.fuse(other)] == [nn.MaxPool2d, nn.MaxPool2d]  # not the stem's pool: kept


def test_info_says_when_it_runs():
    assert "max_pool3x3s2" in sk.info()["usable_backends"]["stem pool (fused models)"]
