"""shufflekern::bn_relu_max_pool (csrc/cpu/vec/batch_norm_act.cpp), the fused models' stem: BatchNorm + ReLU +
max_pool2d(3, 2, 1) in one op with a uint8 argmax, and its backward.

Against the eager composition in fp64 (forward and the gradients of x, weight, bias; training and evaluation;
both memory formats; odd shapes: vector tails, 1x1 and 2x3 images, odd H and W); bit-exact against
max_pool2d(batch_norm_act(x)) with ATen's argmax (ties, NaN, inf) in fp32; fp32 as accurate as eager;
gradcheck, opcheck, torch.compile; the fused ShuffleNet stems against the eager models (running statistics
included) and where they fall back; bad input; the AVX2 and portable builds.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

import shufflekern as sk
from _isa import run_under_avx2_and_default
from shufflekern.models import shufflenet_v1, shufflenet_v2

OP = torch.ops.shufflekern.bn_relu_max_pool
BWD = torch.ops.shufflekern.bn_relu_max_pool_backward
FORMATS = {"nchw": torch.contiguous_format, "cl": torch.channels_last}
# C = 24 (the stems': a whole AVX2 vector, 1.5 AVX-512 vectors), odd C and spatial sizes, a 1x1 and a 2x3 image,
# a channel count below one vector; W = 69 and 70: the NCHW forward's vector loop over column pairs (2 x 16
# columns a step at AVX-512) and its remainder, odd and even.
SHAPES = [(2, 24, 20, 17), (3, 5, 7, 9), (2, 17, 1, 1), (1, 33, 2, 3), (4, 3, 6, 6), (1, 4, 7, 69), (2, 3, 5, 70)]


def make(shape, dtype, fmt, seed=0, noncontig=False):
    gen = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1).to(dtype)
    if noncontig:  # a channel slice of a wider tensor
        wide = torch.zeros(n, 2 * c, h, w, dtype=dtype).contiguous(memory_format=fmt)
        wide[:, 1::2] = x
        x = wide[:, 1::2]
    else:
        x = x.contiguous(memory_format=fmt)
    weight = (torch.rand(c, generator=gen, dtype=torch.float64) + 0.5).to(dtype)
    bias = torch.randn(c, generator=gen, dtype=torch.float64).to(dtype)
    rm = (torch.randn(c, generator=gen, dtype=torch.float64) * 0.5).to(dtype)
    rv = (torch.rand(c, generator=gen, dtype=torch.float64) + 0.5).to(dtype)
    return x, weight, bias, rm, rv


def eager(x, weight, bias, rm, rv, training, eps=1e-5):
    z = F.batch_norm(x, None if training else rm, None if training else rv, weight, bias, training, 0.0, eps)
    return F.max_pool2d(F.relu(z), 3, 2, 1)


def leaves(*ts):
    return [None if t is None else t.detach().clone().requires_grad_() for t in ts]


def run(x, w, b, rm, rv, training):
    return OP(x, w, b, None if training else rm, None if training else rv, training, 1e-5)


def to_window(indices, h, w):
    """ATen's max_pool2d indices (flat position in the input plane) as window positions 3 * ky + kx."""
    ho, wo = indices.shape[2], indices.shape[3]
    oy = torch.arange(ho).view(1, 1, ho, 1)
    ox = torch.arange(wo).view(1, 1, 1, wo)
    return (3 * (indices // w - (2 * oy - 1)) + (indices % w - (2 * ox - 1))).to(torch.uint8)


def same_bits(a, b):
    return a.shape == b.shape and torch.equal(a.isnan(), b.isnan()) and torch.equal(
        a.nan_to_num(0.0).reshape(-1).view(torch.int32 if a.dtype == torch.float32 else torch.int64),
        b.nan_to_num(0.0).reshape(-1).view(torch.int32 if b.dtype == torch.float32 else torch.int64))


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_matches_eager_fp64(fmt, shape, training):
    x, w, b, rm, rv = make(shape, torch.float64, FORMATS[fmt], noncontig=shape[1] == 5)
    xs, ws, bs = leaves(x, w, b)
    xe, we, be = leaves(x, w, b)
    y, argmax, mean, var = run(xs, ws, bs, rm, rv, training)
    ye = eager(xe, we, be, rm, rv, training)
    torch.testing.assert_close(y, ye, rtol=1e-12, atol=1e-12)
    assert y.is_contiguous(memory_format=FORMATS[fmt]) or shape[2:] == (1, 1)
    assert argmax.dtype == torch.uint8 and argmax.shape == y.shape and argmax.max() <= 8
    if training:
        torch.testing.assert_close(mean, x.mean((0, 2, 3)), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(var, x.var((0, 2, 3), unbiased=False), rtol=1e-12, atol=1e-12)
    else:
        assert mean.numel() == 0 and var.numel() == 0
    g = torch.randn_like(ye)
    got = torch.autograd.grad(y, (xs, ws, bs), g)
    ref = torch.autograd.grad(ye, (xe, we, be), g)
    for name, a, r in zip(("x", "weight", "bias"), got, ref):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-10, msg=name)
    assert got[0].is_contiguous(memory_format=FORMATS[fmt]) or shape[2:] == (1, 1)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 19, 13, 11), (1, 6, 7, 71)], ids=str)
def test_forward_bit_exact_with_atens_argmax(fmt, dtype, shape):
    """y is max_pool2d(batch_norm_act(x)) bit for bit and the argmax is ATen's choice: integer-valued x gives
    many ties (ATen takes the first maximum in row-major order), and NaN (the last NaN wins), inf, -inf.
    (In training a NaN makes its channel's statistics NaN: all-NaN windows; evaluation keeps the others.)"""
    gen = torch.Generator().manual_seed(5)
    n, c = shape[:2]
    x = torch.randint(-3, 4, shape, generator=gen).to(dtype)
    x[0, 0, 0, 1] = x[0, 0, 2, 2] = x[-1, 3, 5, 6] = float("nan")
    x[0, 1, 4, 4] = float("inf")
    x[-1, 2, 0, 0] = float("-inf")
    x = x.contiguous(memory_format=FORMATS[fmt])
    w = torch.ones(c, dtype=dtype)
    w[::3] = -1.0  # flips the sign: ties at the top as well as at 0
    b = torch.zeros(c, dtype=dtype)
    rm, rv = torch.zeros(c, dtype=dtype), torch.ones(c, dtype=dtype)
    for training in (True, False):
        y, argmax, _, _ = run(x, w, b, rm, rv, training)
        z = torch.ops.shufflekern.batch_norm_act(x, w, b, None, None if training else rm, None if training else rv,
                                                 training, 1e-5, True)[0]
        yr, idx = F.max_pool2d(z, 3, 2, 1, return_indices=True)
        assert same_bits(y, yr)
        assert torch.equal(argmax, to_window(idx, x.shape[2], x.shape[3]))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_pool_gradient_bit_exact(fmt):
    """With the BatchNorm the identity (eval, mean 0, var 1 - eps, weight 1, bias 0), grad_x is ATen's max pool
    backward through ReLU bit for bit: its summation order over the <= 4 windows holding an input."""
    gen = torch.Generator().manual_seed(6)
    x = torch.randint(0, 3, (2, 21, 9, 14), generator=gen).float().contiguous(memory_format=FORMATS[fmt])
    c = x.shape[1]
    w, b = torch.ones(c), torch.zeros(c)
    rm, rv = torch.zeros(c), torch.full((c,), 1 - 1e-5)
    g = torch.randn(2, c, 5, 7, generator=gen).contiguous(memory_format=FORMATS[fmt])
    xs, xe = leaves(x, x)
    y = run(xs, w, b, rm, rv, False)[0]
    ye = F.max_pool2d(F.relu(xe), 3, 2, 1)
    assert torch.equal(y, ye)
    assert torch.equal(torch.autograd.grad(y, xs, g)[0], torch.autograd.grad(ye, xe, g)[0])


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_fp32_as_accurate_as_eager(fmt):
    shape = (4, 24, 30, 31)
    x64, w64, b64, rm, rv = make(shape, torch.float64, FORMATS[fmt], seed=1)
    g = torch.randn(4, 24, 15, 16, dtype=torch.float64)
    ref_in = leaves(x64, w64, b64)
    y_ref = eager(*ref_in, rm, rv, True)
    ref = torch.autograd.grad(y_ref, ref_in, g)
    errs = {}
    for name in ("ours", "eager"):
        ins = leaves(x64.float(), w64.float(), b64.float())
        y = run(*ins, None, None, True)[0] if name == "ours" else eager(*ins, None, None, True)
        grads = torch.autograd.grad(y, ins, g.float())
        errs[name] = [(y.double() - y_ref).abs().max().item()] + [
            (a.double() - r).abs().max().item() for a, r in zip(grads, ref)]
    scale = [y_ref.abs().max().item()] + [r.abs().max().item() for r in ref]
    for k, name in enumerate(("y", "x", "weight", "bias")):
        assert errs["ours"][k] <= 2 * errs["eager"][k] + 1e-6 * scale[k], (name, errs)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_gradcheck(training, fmt):
    x, w, b, rm, rv = make((2, 3, 5, 6), torch.float64, FORMATS[fmt], seed=2)
    ins = leaves(x, w, b)
    assert torch.autograd.gradcheck(lambda *a: run(*a, rm, rv, training)[0], ins)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_opcheck(training, fmt):
    x, w, b, rm, rv = make((2, 6, 5, 7), torch.float32, FORMATS[fmt], seed=3)
    xs, ws, bs = leaves(x, w, b)
    torch.library.opcheck(OP.default, (xs, ws, bs, None if training else rm, None if training else rv, training,
                                       1e-5))
    y, argmax, mean, var = run(x, w, b, rm, rv, training)
    torch.library.opcheck(BWD.default, (torch.randn_like(y), x, argmax, w, b, mean if training else rm,
                                        var if training else rv, training, 1e-5, [True, True, True]))


def test_no_affine_and_partial_gradients():
    x, _, _, rm, rv = make((2, 7, 9, 8), torch.float64, torch.channels_last, seed=4)
    xs, xe = leaves(x, x)
    y, ye = OP(xs, None, None, None, None, True, 1e-3)[0], eager(xe, None, None, None, None, True, eps=1e-3)
    torch.testing.assert_close(y, ye, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, xs, g)[0], torch.autograd.grad(ye, xe, g)[0],
                               rtol=1e-9, atol=1e-10)
    # weight only (x needs no gradient): the backward's mask
    w = torch.rand(7, dtype=torch.float64).requires_grad_()
    we = w.detach().clone().requires_grad_()
    gw = torch.autograd.grad(OP(x, w, None, None, None, True, 1e-5)[0], w, g)[0]
    gwe = torch.autograd.grad(eager(x, we, None, None, None, True), we, g)[0]
    torch.testing.assert_close(gw, gwe, rtol=1e-9, atol=1e-10)
    _, argmax, mean, var = OP(x, w.detach(), None, None, None, True, 1e-5)
    gx, gw2, gb = BWD(g, x, argmax, w.detach(), None, mean, var, True, 1e-5, [False, True, True])
    assert gx.numel() == 0 and gb.shape == (7,)
    torch.testing.assert_close(gw2, gwe, rtol=1e-9, atol=1e-10)


def test_empty_batch_in_evaluation():
    x, w, b, rm, rv = make((1, 4, 5, 5), torch.float32, torch.contiguous_format)
    y, argmax, _, _ = OP(x[:0], w, b, rm, rv, False, 1e-5)
    assert y.shape == argmax.shape == (0, 4, 3, 3)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_compile(fmt):
    x, w, b, rm, rv = make((2, 8, 10, 9), torch.float32, FORMATS[fmt], seed=7)
    f = torch.compile(lambda t, w_, b_: OP(t, w_, b_, None, None, True, 1e-5)[0] * 2, fullgraph=True)
    xs, ws, bs = leaves(x, w, b)
    xe, we, be = leaves(x, w, b)
    y, ye = f(xs, ws, bs), eager(xe, we, be, None, None, True) * 2
    torch.testing.assert_close(y, ye, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    for a, r in zip(torch.autograd.grad(y, (xs, ws, bs), g), torch.autograd.grad(ye, (xe, we, be), g)):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)


def _bad(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_bad_input_names_the_argument():
    x, w, b, rm, rv = make((2, 4, 5, 5), torch.float32, torch.contiguous_format)
    _bad(lambda: OP(x[0], w, b, None, None, True, 1e-5), ValueError, "bn_relu_max_pool: x must be 4-D")
    _bad(lambda: OP(x.half(), w.half(), b.half(), None, None, True, 1e-5), TypeError,
         "bn_relu_max_pool: the CPU kernel takes float32 or float64 x")
    _bad(lambda: OP(x[:, :, :0], w, b, None, None, False, 1e-5), ValueError, "x must have H, W > 0")
    _bad(lambda: OP(x, w[:3], b, None, None, True, 1e-5), ValueError, "weight must be 1-D of length C = 4")
    _bad(lambda: OP(x, w, b.double(), None, None, True, 1e-5), TypeError, "bias must have the dtype of x")
    _bad(lambda: OP(x, w, b, None, None, False, 1e-5), ValueError, "evaluation .* needs running_mean")
    _bad(lambda: OP(x, w, b, None, None, True, -1.0), ValueError, "eps must be non-negative")
    _bad(lambda: OP(x[:0], w, b, None, None, True, 1e-5), ValueError, "training needs at least one value")
    y, argmax, mean, var = OP(x, w, b, None, None, True, 1e-5)
    g = torch.randn_like(y)
    _bad(lambda: BWD(g, x, argmax.int(), w, b, mean, var, True, 1e-5, [True] * 3), TypeError,
         "bn_relu_max_pool: argmax must be Byte")
    _bad(lambda: BWD(g[:, :, :2], x, argmax, w, b, mean, var, True, 1e-5, [True] * 3), ValueError,
         r"grad_y must have the pooled shape \[2, 4, 3, 3\]")
    _bad(lambda: BWD(g.double(), x, argmax, w, b, mean, var, True, 1e-5, [True] * 3), TypeError,
         "grad_y must be Float")
    _bad(lambda: BWD(g, x, argmax, w, b, mean[:2], var, True, 1e-5, [True] * 3), ValueError,
         "mean must be 1-D of length C = 4")


def test_hand_made_argmax_never_reads_or_writes_outside():
    """An argmax the forward cannot produce (padding positions, values > 8) is skipped, not followed."""
    for fmt in FORMATS.values():
        x, w, b, _, _ = make((2, 4, 5, 5), torch.float64, fmt)
        y, argmax, mean, var = OP(x, w, b, None, None, True, 1e-5)
        bad = torch.full_like(argmax, 255)
        bad[:, :, 0, 0] = 0  # the corner output's window position 0 is padding
        gx = BWD(torch.ones_like(y), x, bad, w, b, mean, var, True, 1e-5, [True, True, True])[0]
        assert torch.isfinite(gx).all()


# ---- the fused ShuffleNet stems --------------------------------------------------------------------------
MODELS = {"v2": lambda: shufflenet_v2(fused=False), "v1_g3": lambda: shufflenet_v1(groups=3, fused=False)}


def _stem_calls(model, x):
    """The number of shufflekern::bn_relu_max_pool calls of a forward and backward of model(x)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is OP.default:
                Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        model(x).sum().backward()
    return Count.n


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("name", list(MODELS))
def test_fused_stem_trains_like_the_eager_model(name, fmt):
    torch.manual_seed(0)
    eager_model = MODELS[name]().double().to(memory_format=FORMATS[fmt])
    fused = sk.fuse(copy.deepcopy(eager_model))
    x = torch.randn(2, 3, 48, 40, dtype=torch.float64).contiguous(memory_format=FORMATS[fmt])
    for step in range(2):
        ye, yf = eager_model(x), fused(x)
        torch.testing.assert_close(yf, ye, rtol=1e-9, atol=1e-10)
        ye.square().sum().backward()
        yf.square().sum().backward()
    bn_e, bn_f = eager_model.conv1[1], fused.conv1[1]
    for key, v in bn_e.state_dict().items():
        torch.testing.assert_close(bn_f.state_dict()[key], v, rtol=1e-12, atol=1e-14, msg=key)
    for (pn, pe), pf in zip(eager_model.named_parameters(), fused.parameters()):
        torch.testing.assert_close(pf.grad, pe.grad, rtol=1e-7, atol=1e-9, msg=pn)
    assert _stem_calls(copy.deepcopy(fused), x) == 1  # (a copy: a training step updates the statistics)
    fused.eval()
    eager_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(x), eager_model(x), rtol=1e-9, atol=1e-10)


def test_fused_stem_falls_back_where_it_must():
    torch.manual_seed(0)
    model = sk.fuse(shufflenet_v2(fused=False))
    x = torch.randn(2, 3, 32, 32)
    seen = []
    handle = model.maxpool.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    assert _stem_calls(model, x) == 0  # a hook on the pool: the modules run one by one
    assert seen == [(2, 24, 16, 16)]
    handle.remove()
    grads = []
    handle = model.conv1[1].register_full_backward_hook(lambda m, gi, go: grads.append(go[0].shape))
    assert _stem_calls(model, x) == 0 and grads == [(2, 24, 16, 16)]  # a backward hook on the BatchNorm
    handle.remove()
    outs = []
    handle = model.conv1.register_forward_hook(lambda m, i, o: outs.append(o.shape))
    assert _stem_calls(model, x) == 0 and outs == [(2, 24, 16, 16)]  # a hook on the stem's Sequential: it runs
    handle.remove()
    assert _stem_calls(model, x) == 1
    assert _stem_calls(model.bfloat16(), x.bfloat16()) == 0  # no kernel for the dtype
    folded = sk.fuse(shufflenet_v2(fused=False).eval(), fold_bn=True)
    with torch.no_grad():
        assert type(folded.conv1[1]) is not type(model.conv1[1])  # folded: BatchNorm gone, nothing to fuse
        folded(x)
    assert type(sk.unfuse(model).maxpool) is torch.nn.MaxPool2d


@pytest.mark.slow
def test_avx2_and_default_paths():
    """The AVX2 and portable builds of the kernels (ATEN_CPU_CAPABILITY) pass the exactness tests (and
    max_pool3x3s2's, whose NCHW kernel is the same pooling routine)."""
    code = ("import torch, sys; sys.path.insert(0, 'tests'); import test_bn_relu_max_pool as t; "
            "import shufflekern as sk; print(sk._C.runtime_cpu_isa());"
            "[t.test_matches_eager_fp64(f, s, tr) for f in t.FORMATS for s in t.SHAPES for tr in (True, False)];"
            "[t.test_forward_bit_exact_with_atens_argmax(f, d, s) for f in t.FORMATS "
            " for d in (torch.float32, torch.float64) for s in ((2, 19, 13, 11), (1, 6, 7, 71))];"
            "[t.test_pool_gradient_bit_exact(f) for f in t.FORMATS]; [t.test_fp32_as_accurate_as_eager(f) "
            " for f in t.FORMATS]; import test_max_pool as mp;"  # max_pool3x3s2 shares the pooling (pool3x3s2.h)
            "[mp.test_exact_against_max_pool2d(s, d, f) for s in mp.SHAPES for d in (torch.float32, torch.float64) "
            " for f in mp.FORMATS]; mp.test_all_negative_and_ties()")
    run_under_avx2_and_default(code)
