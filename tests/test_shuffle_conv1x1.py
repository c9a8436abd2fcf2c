"""sk.shuffle_conv1x1 = F.conv2d(torch.channel_shuffle(x, sg), weight, bias, groups=groups).

Accuracy follows the flash-attention rule: compared with the fp64 eager reference, our error may be at most
twice eager PyTorch's own error in the same dtype, plus a tiny absolute slack.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import shufflekern as sk

FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
PAIRS = [(g, sg) for g in (1, 2, 3, 4, 8) for sg in (1, 2, 3, 4, 8)]
SPATIAL = [(1, 1), (7, 7), (13, 11)]


def channel_counts(g, sg):
    """Two channel counts C (divisible by g and sg) with 4..20 channels a conv group, smallest and largest."""
    step = g * sg // math.gcd(g, sg)
    cs = [c for c in range(step, 20 * g + 1, step) if 4 <= c // g <= 20]
    return sorted({cs[0], cs[-1]})


def make_inputs(n, c, h, w, g, mg, dtype, fmt, bias, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64).to(dtype).contiguous(memory_format=fmt)
    weight = (torch.randn(g * mg, c // g, 1, 1, generator=gen, dtype=torch.float64) / math.sqrt(c // g)).to(dtype)
    b = torch.randn(g * mg, generator=gen, dtype=torch.float64).to(dtype) if bias else None
    return x, weight, b


def reference(x, weight, bias, g, sg, grad_y=None):
    """Output and (if grad_y is given) grads of x, weight, bias of the eager composition, in x's dtype."""
    x = x.detach().requires_grad_()
    weight = weight.detach().requires_grad_()
    bias = None if bias is None else bias.detach().requires_grad_()
    y = F.conv2d(torch.channel_shuffle(x, sg), weight, bias, groups=g)
    if grad_y is None:
        return y.detach(), None
    inputs = [x, weight] + ([bias] if bias is not None else [])
    return y.detach(), torch.autograd.grad(y, inputs, grad_y.to(y.dtype))


def ours(x, weight, bias, g, sg, grad_y, backend="auto"):
    x = x.detach().requires_grad_()
    weight = weight.detach().requires_grad_()
    bias = None if bias is None else bias.detach().requires_grad_()
    with sk.backend(backend):
        y = sk.shuffle_conv1x1(x, weight, bias, groups=g, shuffle_groups=sg)
        inputs = [x, weight] + ([bias] if bias is not None else [])
        grads = torch.autograd.grad(y, inputs, grad_y.to(y.dtype))
    return y.detach(), grads


def assert_flash_close(name, got, eager, exact):
    scale = exact.abs().max().item() if exact.numel() else 0.0
    # In fp64 eager *is* the reference (error 0), so the slack carries the test: rounding of sums.
    tiny = (1e-12 if got.dtype == torch.float64 else 4 * torch.finfo(got.dtype).eps) * max(scale, 1.0)
    err = (got.double() - exact).abs().max().item() if got.numel() else 0.0
    err_eager = (eager.double() - exact).abs().max().item() if got.numel() else 0.0
    assert err <= 2 * err_eager + tiny, f"{name}: error {err:.3g} > 2 x eager's {err_eager:.3g} + {tiny:.3g}"


def check_against_reference(n, c, h, w, g, sg, mg, dtype, fmt, bias, backend="auto", seed=0):
    x, weight, b = make_inputs(n, c, h, w, g, mg, dtype, fmt, bias, seed)
    grad_y = torch.randn(n, g * mg, h, w, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    grad_y = grad_y.contiguous(memory_format=fmt)
    exact_y, exact_grads = reference(x.double(), weight.double(), None if b is None else b.double(), g, sg, grad_y)
    eager_y, eager_grads = reference(x, weight, b, g, sg, grad_y)
    y, grads = ours(x, weight, b, g, sg, grad_y, backend)
    assert y.dtype == dtype and y.shape == exact_y.shape
    assert y.is_contiguous(memory_format=fmt), "output must keep x's memory format"
    assert grads[0].is_contiguous(memory_format=fmt), "grad of x must keep x's memory format"
    assert_flash_close("y", y, eager_y, exact_y)
    for name, got, eager, exact in zip(("grad_x", "grad_weight", "grad_bias"), grads, eager_grads, exact_grads):
        assert got.shape == exact.shape and got.dtype == dtype, name
        assert_flash_close(name, got, eager, exact)


# ---- native (C++) kernels ------------------------------------------------------------------------

# Every (groups, shuffle_groups) pair in fp32; fp64 and bf16 on pairs that cover g = 1, sg = 1, g < sg,
# g > sg, g = sg and runs of a single channel.
DTYPE_CASES = [(g, sg, torch.float32) for g, sg in PAIRS] + [
    (g, sg, dt) for dt in (torch.float64, torch.bfloat16) for g, sg in ((1, 1), (1, 4), (3, 3), (2, 8), (8, 3), (4, 1))]


@pytest.mark.parametrize("layout", FORMATS)
@pytest.mark.parametrize("g,sg,dtype", DTYPE_CASES, ids=lambda v: str(v).replace("torch.", ""))
def test_native_matches_reference(g, sg, dtype, layout):
    fmt = FORMATS[layout]
    counts = channel_counts(g, sg)
    # Each spatial shape once, cycling through the channel counts, batch sizes 1-3 and bias on/off.
    for j, (h, w) in enumerate(SPATIAL):
        c = counts[j % len(counts)]
        check_against_reference(1 + j, c, h, w, g, sg, (3, 5, 2)[j], dtype, fmt, bias=j != 1, seed=j)


@pytest.mark.parametrize("layout", FORMATS)
@pytest.mark.parametrize("n,c,hw,g,sg,mg", [
    (2, 240, 9, 3, 3, 20),      # ShuffleNetV1-like g=3: 80 channels a group
    (1, 384, 5, 8, 8, 12),      # g=8: runs of 6 channels
    (2, 96, 6, 8, 8, 48),       # 12 channels a group in runs of 1-2
    (3, 60, 10, 1, 3, 37),      # groups=1 with a shuffle: a plain conv with permuted columns
    (1, 100, 17, 4, 2, 33),     # large odd output tiles, pixel tails
])
def test_native_larger_shapes(n, c, hw, g, sg, mg, layout):
    check_against_reference(n, c, hw, hw, g, sg, mg, torch.float32, FORMATS[layout], bias=True)


# Narrow channels_last GEMMs: 1..24 output columns per group in the forward (mg) and in grad_input (cg), K = 40
# (the fp32 microkernels then load the zero-padded weight rows as whole vectors and store C masked), 105
# pixels (not a multiple of 16 or of the 96-pixel tile).
NARROW_COLS = list(range(1, 25))


def check_narrow(cols, sg):
    check_against_reference(1, 3 * 40, 7, 15, 3, sg, cols, torch.float32, torch.channels_last, bias=True)
    check_against_reference(1, 3 * cols, 7, 15, 3, sg, 40, torch.float32, torch.channels_last, bias=False)


@pytest.mark.parametrize("cols", NARROW_COLS)
def test_native_narrow_columns_channels_last(cols):
    check_narrow(cols, 3 if cols % 3 == 0 else 1)


@pytest.mark.parametrize("n,c,hw,sg,mg", [
    (2, 96, 56, 1, 20),   # forward: A = x is 2.4 MB, K = 32, 20 columns; grad_weight: mg = 20, x 2.4 MB
    (2, 96, 56, 3, 20),   # the same through the shuffle's column table
    (4, 60, 40, 3, 40),   # grad_input: A = grad_out is 3 MB, K = 40, 20 columns
])
def test_native_large_channels_last_prefetch(n, c, hw, sg, mg):
    """Operands beyond L2 take the fp32 paths that prefetch the next pixel tile (forward, grad_input) or the next
    pixel chunk (grad_weight with mg <= 24), csrc/cpu/vec/shuffle_conv1x1.cpp."""
    check_against_reference(n, c, hw, hw - 1, 3, sg, mg, torch.float32, torch.channels_last, bias=True)


_ISA_CODE = """
import sys, torch
sys.path.insert(0, "tests")
import shufflekern as sk
import test_shuffle_conv1x1 as t
print(sk._C.runtime_cpu_isa())
for cols in t.NARROW_COLS:
    t.check_narrow(cols, 3 if cols % 3 == 0 else 1)
t.test_native_large_channels_last_prefetch(4, 60, 40, 3, 40)
t.test_native_large_channels_last_prefetch(2, 96, 56, 3, 20)
for layout in t.FORMATS:
    t.test_native_larger_shapes(2, 240, 9, 3, 3, 20, layout)
print("ok")
"""


@pytest.mark.parametrize("isa,name", [("avx2", "AVX2"), ("default", "DEFAULT")])
def test_narrow_columns_other_isas(isa, name):
    """The AVX2 and portable builds (ATEN_CPU_CAPABILITY) on the narrow and large channels_last shapes."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, ATEN_CPU_CAPABILITY=isa, PYTHONPATH=root)
    r = subprocess.run([sys.executable, "-c", _ISA_CODE], cwd=root, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == [name, "ok"]


def test_default_shuffle_groups_is_groups():
    x, w, b = make_inputs(2, 12, 5, 5, 3, 4, torch.float32, torch.contiguous_format, True)
    torch.testing.assert_close(sk.shuffle_conv1x1(x, w, b, groups=3),
                               sk.shuffle_conv1x1(x, w, b, groups=3, shuffle_groups=3), rtol=0, atol=0)
    torch.testing.assert_close(sk.shuffle_conv1x1(x, w, b, groups=3),
                               F.conv2d(torch.channel_shuffle(x, 3), w, b, groups=3))


@pytest.mark.parametrize("layout", FORMATS)
def test_non_contiguous_inputs(layout):
    fmt = FORMATS[layout]
    base = torch.randn(2, 24, 9, 14).contiguous(memory_format=fmt)
    x = base[:, ::2, :, ::2]                          # strided in C and W
    w = torch.randn(12, 6, 2, 1)[:, :, :1]          # non-contiguous weight [12, 6, 1, 1]
    b = torch.randn(24)[::2]
    assert not x.is_contiguous() and not w.is_contiguous() and not b.is_contiguous()
    y = sk.shuffle_conv1x1(x, w, b, groups=2, shuffle_groups=3)
    torch.testing.assert_close(y, F.conv2d(torch.channel_shuffle(x, 3), w, b, groups=2), rtol=1e-5, atol=1e-5)


def test_empty_batch_and_zero_size():
    x, w, b = make_inputs(0, 12, 3, 3, 3, 2, torch.float32, torch.contiguous_format, True)
    y = sk.shuffle_conv1x1(x, w, b, groups=3)
    assert y.shape == (0, 6, 3, 3)
    x, w, b = make_inputs(2, 12, 0, 3, 3, 2, torch.float32, torch.channels_last, True)
    assert sk.shuffle_conv1x1(x, w, b, groups=3).shape == (2, 6, 0, 3)


@pytest.mark.parametrize("layout", FORMATS)
@pytest.mark.parametrize("g,sg,bias", [(1, 1, True), (3, 3, True), (2, 4, False), (4, 2, True), (8, 1, False)])
def test_gradcheck_fp64(g, sg, bias, layout):
    c = 2 * g * sg // math.gcd(g, sg)
    x, w, b = make_inputs(2, c, 3, 2, g, 3, torch.float64, FORMATS[layout], bias)
    x.requires_grad_()
    w.requires_grad_()
    inputs = (x, w) + ((b.requires_grad_(),) if bias else ())
    fn = (lambda x, w, b: sk.shuffle_conv1x1(x, w, b, groups=g, shuffle_groups=sg)) if bias else \
        (lambda x, w: sk.shuffle_conv1x1(x, w, groups=g, shuffle_groups=sg))
    assert torch.autograd.gradcheck(fn, inputs)


def opcheck_samples(dtype=torch.float32):
    for layout, fmt in FORMATS.items():
        for g, sg, bias in ((3, 3, True), (2, 4, False)):
            x, w, b = make_inputs(2, 24, 3, 2, g, 2, dtype, fmt, bias)
            gy = torch.randn(2, g * 2, 3, 2, dtype=dtype).contiguous(memory_format=fmt)
            yield (x.requires_grad_(), w.requires_grad_(), None if b is None else b.requires_grad_(), g, sg), gy


@pytest.mark.parametrize("family", ["", "_triton"])
def test_opcheck(family):
    for (x, w, b, g, sg), gy in opcheck_samples():
        torch.library.opcheck(getattr(torch.ops.shufflekern, "shuffle_conv1x1" + family), (x, w, b, g, sg))
        torch.library.opcheck(getattr(torch.ops.shufflekern, "shuffle_conv1x1_grad_input" + family),
                              (gy, w.detach(), g, sg))
        torch.library.opcheck(getattr(torch.ops.shufflekern, "shuffle_conv1x1_grad_weight" + family),
                              (gy, x.detach(), g, sg))
        for mask in ([True, True, True], [True, False, False], [False, True, True]):
            torch.library.opcheck(getattr(torch.ops.shufflekern, "shuffle_conv1x1_backward" + family),
                                  (gy, x.detach(), w.detach(), g, sg, mask))


@pytest.mark.parametrize("family", ["", "_triton"])
@pytest.mark.parametrize("layout", FORMATS)
def test_backward_op_against_fp64(family, layout):
    """shuffle_conv1x1_backward directly: each requested gradient equals the fp64 eager one, the others are
    0-element; grad_out in the other memory format than x still gives grad_x in x's format."""
    fmt = FORMATS[layout]
    other = torch.contiguous_format if fmt == torch.channels_last else torch.channels_last
    x, w, _ = make_inputs(3, 12, 5, 3, 3, 4, torch.float32, fmt, False)
    gy = torch.randn(3, 12, 5, 3).contiguous(memory_format=other)
    xd, wd = x.double().requires_grad_(), w.double().requires_grad_()
    bd = torch.zeros(12, dtype=torch.float64, requires_grad=True)
    yd = F.conv2d(torch.channel_shuffle(xd, 2), wd, bd, groups=3)
    exact = torch.autograd.grad(yd, (xd, wd, bd), gy.double())
    op = getattr(torch.ops.shufflekern, "shuffle_conv1x1_backward" + family)
    for mask in ([True, True, True], [False, True, False], [True, False, True]):
        got = op(gy, x, w, 3, 2, mask)
        for want, g, e in zip(mask, got, exact):
            if want:
                torch.testing.assert_close(g.double(), e, rtol=1e-5, atol=1e-5)
            else:
                assert g.numel() == 0
        if mask[0]:
            assert got[0].is_contiguous(memory_format=fmt)
    with pytest.raises(ValueError, match="grad_out"):
        op(gy[:, :6], x, w, 3, 2, [True, True, True])


@pytest.mark.parametrize("layout", FORMATS)
def test_torch_compile_fullgraph(layout):
    torch._dynamo.reset()
    x, w, b = make_inputs(2, 24, 5, 4, 3, 4, torch.float32, FORMATS[layout], True)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def fn(x, w, b):
        return sk.shuffle_conv1x1(x, w, b, groups=3, shuffle_groups=2).relu().sum()

    xs, ws, bs = (t.detach().requires_grad_() for t in (x, w, b))
    xr, wr, br = (t.detach().requires_grad_() for t in (x, w, b))
    fn(xs, ws, bs).backward()
    F.conv2d(torch.channel_shuffle(xr, 2), wr, br, groups=3).relu().sum().backward()
    for got, want in ((xs.grad, xr.grad), (ws.grad, wr.grad), (bs.grad, br.grad)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_torch_compile_inductor():
    torch._dynamo.reset()
    x, w, b = make_inputs(2, 24, 5, 4, 3, 4, torch.float32, torch.channels_last, True)
    fn = torch.compile(lambda x: sk.shuffle_conv1x1(x, w, b, groups=3).sigmoid(), fullgraph=True)
    torch.testing.assert_close(fn(x), F.conv2d(torch.channel_shuffle(x, 3), w, b, groups=3).sigmoid())


# ---- Triton kernels (interpreter on CPU tensors) -------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", FORMATS)
@pytest.mark.parametrize("g,sg,c,mg,bias", [(1, 1, 6, 5, True), (3, 3, 24, 7, False), (2, 4, 16, 3, True),
                                            (8, 2, 32, 2, False), (4, 1, 20, 17, True)])
def test_triton_matches_reference(g, sg, c, mg, bias, layout, dtype):
    check_against_reference(2, c, 5, 3, g, sg, mg, dtype, FORMATS[layout], bias, backend="triton")


def test_triton_rejects_float64():
    x, w, b = make_inputs(1, 6, 2, 2, 3, 1, torch.float64, torch.contiguous_format, False)
    with sk.backend("triton"), pytest.raises(TypeError, match="triton backend"):
        sk.shuffle_conv1x1(x, w, groups=3)


# ---- bad input --------------------------------------------------------------------------------------

def _bad_cases():
    x = torch.randn(2, 12, 3, 3)
    w = torch.randn(6, 4, 1, 1)
    yield "groups", ValueError, lambda: sk.shuffle_conv1x1(x, w, groups=0)
    yield "groups", ValueError, lambda: sk.shuffle_conv1x1(x, w, groups=-3)
    yield "groups", TypeError, lambda: sk.shuffle_conv1x1(x, w, groups=3.0)
    yield "shuffle_groups", ValueError, lambda: sk.shuffle_conv1x1(x, w, groups=3, shuffle_groups=0)
    yield r"divisible by groups \(5\)", ValueError, lambda: sk.shuffle_conv1x1(x, torch.randn(5, 2, 1, 1),
                                                                               groups=5)
    yield r"divisible by shuffle_groups \(5\)", ValueError, lambda: sk.shuffle_conv1x1(x, w, groups=3,
                                                                                       shuffle_groups=5)
    yield "weight", ValueError, lambda: sk.shuffle_conv1x1(x, torch.randn(6, 4, 3, 3), groups=3)
    yield "weight", ValueError, lambda: sk.shuffle_conv1x1(x, torch.randn(6, 5, 1, 1), groups=3)
    yield "weight", ValueError, lambda: sk.shuffle_conv1x1(x, torch.randn(6, 4), groups=3)
    yield r"out channels \(weight.shape\[0\] = 7\)", ValueError, lambda: sk.shuffle_conv1x1(
        x, torch.randn(7, 4, 1, 1), groups=3)
    yield "bias", ValueError, lambda: sk.shuffle_conv1x1(x, w, torch.randn(5), groups=3)
    yield "bias", ValueError, lambda: sk.shuffle_conv1x1(x, w, torch.randn(6, 1), groups=3)
    yield "bias", TypeError, lambda: sk.shuffle_conv1x1(x, w, torch.randn(6, dtype=torch.float64), groups=3)
    yield "weight", TypeError, lambda: sk.shuffle_conv1x1(x, w.double(), groups=3)
    yield "weight", ValueError, lambda: sk.shuffle_conv1x1(x, w.to("meta"), groups=3)
    yield "bias", ValueError, lambda: sk.shuffle_conv1x1(x, w, torch.randn(6, device="meta"), groups=3)
    yield "x", ValueError, lambda: sk.shuffle_conv1x1(torch.randn(12, 3, 3), w, groups=3)
    yield "x", ValueError, lambda: sk.shuffle_conv1x1(torch.randn(1, 2, 12, 3, 3), w, groups=3)
    yield "x", TypeError, lambda: sk.shuffle_conv1x1(x.long(), w.long(), groups=3)
    yield "x", TypeError, lambda: sk.shuffle_conv1x1(x.half(), w.half(), groups=3)  # no fp16 CPU kernel


@pytest.mark.parametrize("match,exc,call", list(_bad_cases()))
def test_bad_input_names_the_argument(match, exc, call):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("op,args,match", [
    ("shuffle_conv1x1", lambda x, w: (x, w, None, 3, 5), "shuffle_groups"),
    ("shuffle_conv1x1", lambda x, w: (x, w, None, 0, 3), "groups"),
    ("shuffle_conv1x1", lambda x, w: (x, w[:, :3], None, 3, 3), "weight"),
    ("shuffle_conv1x1", lambda x, w: (x, w, torch.randn(4), 3, 3), "bias"),
    ("shuffle_conv1x1", lambda x, w: (x[0], w, None, 3, 3), "x"),
    ("shuffle_conv1x1_grad_input", lambda x, w: (torch.randn(2, 5, 3, 3), w, 3, 3), "grad_out"),
    ("shuffle_conv1x1_grad_weight", lambda x, w: (torch.randn(2, 6, 3, 4), x, 3, 3), "grad_out"),
    ("shuffle_conv1x1_grad_weight", lambda x, w: (torch.randn(2, 6, 3, 3), x, 3, 5), "shuffle_groups"),
])
def test_direct_op_calls_are_checked_in_cpp(op, args, match):
    """torch.ops.shufflekern.* skips the Python checks: the C++ entry point must refuse the input itself."""
    x, w = torch.randn(2, 12, 3, 3), torch.randn(6, 4, 1, 1)
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        getattr(torch.ops.shufflekern, op)(*args(x, w))


# ---- module -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [False, True])
def test_module_initialised_like_conv2d(bias):
    torch.manual_seed(7)
    conv = nn.Conv2d(24, 36, 1, groups=3, bias=bias)
    torch.manual_seed(7)
    m = sk.nn.ShuffleConv1x1(24, 36, groups=3, bias=bias)
    assert m.weight.shape == conv.weight.shape == (36, 8, 1, 1)
    torch.testing.assert_close(m.weight, conv.weight, rtol=0, atol=0)
    if bias:
        torch.testing.assert_close(m.bias, conv.bias, rtol=0, atol=0)
    else:
        assert m.bias is None
    assert "shuffle_groups=3" in repr(m)


@pytest.mark.parametrize("layout", FORMATS)
def test_module_from_conv(layout):
    conv = nn.Conv2d(24, 12, 1, groups=4, bias=True)
    m = sk.nn.ShuffleConv1x1.from_conv(conv, shuffle_groups=3)
    assert m.groups == 4 and m.shuffle_groups == 3
    assert m.weight is not conv.weight
    x = torch.randn(2, 24, 5, 6).contiguous(memory_format=FORMATS[layout])
    y = m(x)
    torch.testing.assert_close(y, conv(torch.channel_shuffle(x, 3)), rtol=1e-5, atol=1e-5)
    assert y.is_contiguous(memory_format=FORMATS[layout])
    y.sum().backward()
    assert m.weight.grad is not None and m.bias.grad is not None and conv.weight.grad is None


def test_module_from_conv_rejects_other_convs():
    with pytest.raises(ValueError, match="1x1"):
        sk.nn.ShuffleConv1x1.from_conv(nn.Conv2d(6, 6, 3, padding=1))
    with pytest.raises(ValueError, match="stride"):
        sk.nn.ShuffleConv1x1.from_conv(nn.Conv2d(6, 6, 1, stride=2))
    with pytest.raises(TypeError, match="conv"):
        sk.nn.ShuffleConv1x1.from_conv(nn.Linear(6, 6))
    with pytest.raises(ValueError, match="shuffle_groups"):
        sk.nn.ShuffleConv1x1(12, 6, groups=3, shuffle_groups=5)
    with pytest.raises(ValueError, match="groups"):
        sk.nn.ShuffleConv1x1(12, 6, groups=0)


# ---- CUDA (skipped without a GPU) ---------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", FORMATS)
@pytest.mark.parametrize("g,sg", [(1, 1), (3, 3), (2, 4), (8, 8), (4, 1)])
def test_cuda_matches_reference(g, sg, layout, dtype, backend):
    fmt = FORMATS[layout]
    c = 8 * g * sg // math.gcd(g, sg)
    x, w, b = make_inputs(3, c, 13, 11, g, 5, torch.float64, fmt, True)
    gy = torch.randn(3, g * 5, 13, 11, dtype=torch.float64).contiguous(memory_format=fmt)
    exact_y, exact_grads = reference(x, w, b, g, sg, gy)
    xd, wd, bd, gyd = (t.to("cuda", dtype) for t in (x, w, b, gy))
    eager_y, eager_grads = reference(xd, wd, bd, g, sg, gyd)
    y, grads = ours(xd, wd, bd, g, sg, gyd, backend)
    assert y.is_contiguous(memory_format=fmt)
    assert_flash_close("y", y.cpu(), eager_y.cpu(), exact_y)
    for name, got, eager, exact in zip(("grad_x", "grad_weight", "grad_bias"), grads, eager_grads, exact_grads):
        assert_flash_close(name, got.cpu(), eager.cpu(), exact)
