"""shufflekern::interleave / shufflekern::deinterleave (csrc/cpu/interleave.cpp), the fused ShuffleNetV2 unit's
concat + channel shuffle on CPU and its inverse: bit-exact against channel_shuffle(cat(a, b), 2) on every dtype,
both memory formats, odd sizes and partial vectors, non-contiguous and mixed-format inputs; gradcheck and
gradgradcheck in fp64 (each op is the other's backward), opcheck, torch.compile, the fused unit's use of them,
bad input."""
import pytest
import torch

import shufflekern as sk
from shufflekern.models.shufflenetv2 import FusedInvertedResidual, InvertedResidual, convert_unit

interleave = torch.ops.shufflekern.interleave
deinterleave = torch.ops.shufflekern.deinterleave
FORMATS = {"nchw": torch.contiguous_format, "cl": torch.channels_last}
SHAPES = [(2, 58, 7, 5), (3, 34, 1, 1), (1, 6, 3, 3), (2, 40, 4, 4), (1, 2, 5, 1), (2, 116, 3, 2), (1, 66, 2, 3)]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64, torch.int32, torch.uint8,
          torch.bool, torch.complex64, torch.complex128]


def reference(a, b, parts):
    q = a.shape[1] // parts
    return [torch.channel_shuffle(torch.cat((a[:, k * q:(k + 1) * q], b[:, k * q:(k + 1) * q]), 1), 2)
            for k in range(parts)]


def make(shape, dtype, fmt, seed):
    gen = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point or dtype.is_complex:
        x = torch.randn(shape, generator=gen, dtype=torch.complex128 if dtype.is_complex else torch.float64)
        x = x.to(dtype)
    elif dtype == torch.bool:
        x = torch.rand(shape, generator=gen) > 0.5
    else:
        x = torch.randint(0, 100, shape, generator=gen).to(dtype)
    return x.contiguous(memory_format=FORMATS[fmt])


def bits(t):
    """t's elements as integers of their width (so NaN payloads and -0.0 compare exactly)."""
    if t.dtype.is_complex:
        t = torch.view_as_real(t)
    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.contiguous().view(view) if t.dtype != torch.bool else t


def parts_of(shape):
    return [p for p in (1, 2, 3) if shape[1] % p == 0]


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bit_exact_and_inverse(shape, dtype, fmt):
    a, b = make(shape, dtype, fmt, 1), make(shape, dtype, fmt, 2)
    if dtype.is_floating_point and a.numel() > 2:
        a[0, 0, 0, 0] = float("nan")
        b[-1, -1, -1, -1] = -0.0
    for parts in parts_of(shape):
        ys = interleave(a, b, parts)
        ref = reference(a, b, parts)
        assert len(ys) == parts
        for y, r in zip(ys, ref):
            assert y.dtype == dtype and y.shape == r.shape
            assert torch.equal(bits(y), bits(r))
            assert y.is_contiguous(memory_format=FORMATS[fmt])
        ga, gb = deinterleave(ys)
        assert torch.equal(bits(ga), bits(a)) and torch.equal(bits(gb), bits(b))
        assert ga.is_contiguous(memory_format=FORMATS[fmt]) and gb.is_contiguous(memory_format=FORMATS[fmt])


@pytest.mark.parametrize("parts", [1, 2])
def test_non_contiguous_and_mixed_formats(parts):
    base = torch.randn(2, 24, 5, 7, dtype=torch.float64)
    cl, nchw = torch.channels_last, torch.contiguous_format
    cases = [  # (a, b, the outputs' memory format: a's)
        (base[:, :12], base[:, 12:], nchw),  # channel slices (the unit's x.chunk(2, 1))
        (base.contiguous(memory_format=cl)[:, :12], base[:, 12:], cl),  # CL slice and NCHW slice
        (base[:, ::2], base[:, 1::2].transpose(2, 3).contiguous().transpose(2, 3), nchw),  # strided, odd strides
        (base[:, :12].contiguous(memory_format=cl), base[:, 12:].contiguous(), cl),
    ]
    for a, b, fmt in cases:
        ys = interleave(a, b, parts)
        for y, r in zip(ys, reference(a, b, parts)):
            assert torch.equal(y, r)
            assert y.is_contiguous(memory_format=fmt)
        ga, gb = deinterleave(ys)
        assert torch.equal(ga, a) and torch.equal(gb, b)
    # deinterleave of parts in different formats: the output takes ys[0]'s
    ys = interleave(base[:, :12], base[:, 12:], 2)
    mixed = [ys[0].contiguous(memory_format=torch.channels_last), ys[1]]
    ga, gb = deinterleave(mixed)
    assert torch.equal(ga, base[:, :12]) and torch.equal(gb, base[:, 12:])
    assert ga.is_contiguous(memory_format=torch.channels_last)


def test_empty():
    for shape in [(0, 4, 3, 3), (2, 4, 0, 3), (2, 0, 3, 3)]:
        a = torch.randn(shape)
        ys = interleave(a, a, 2)
        assert [tuple(y.shape) for y in ys] == [(shape[0], shape[1], shape[2], shape[3])] * 2
        ga, gb = deinterleave(ys)
        assert ga.shape == a.shape and gb.shape == a.shape


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("parts", [1, 2])
def test_gradcheck(parts, fmt):
    a = make((2, 6, 3, 5), torch.float64, fmt, 3).requires_grad_()
    b = make((2, 6, 3, 5), torch.float64, fmt, 4).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: interleave(a, b, parts), (a, b))
    assert torch.autograd.gradgradcheck(lambda a, b: interleave(a, b, parts), (a, b))
    ys = [y.detach().requires_grad_() for y in interleave(a, b, parts)]
    assert torch.autograd.gradcheck(lambda *ys: deinterleave(list(ys)), tuple(ys))
    assert torch.autograd.gradgradcheck(lambda *ys: deinterleave(list(ys)), tuple(ys))


def test_backward_values_and_unused_part():
    a = torch.randn(2, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    lo, hi = interleave(a, b, 2)
    w = torch.randn_like(lo)
    (lo * w).sum().backward()  # hi reaches no loss: its gradient is zeros
    a_ref, b_ref = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    (reference(a_ref, b_ref, 2)[0] * w).sum().backward()
    assert torch.equal(a.grad, a_ref.grad) and torch.equal(b.grad, b_ref.grad)
    assert torch.count_nonzero(a.grad[:, 4:]) == 0


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_opcheck(fmt):
    a = make((2, 6, 3, 5), torch.float64, fmt, 5).requires_grad_()
    b = make((2, 6, 3, 5), torch.float64, fmt, 6).requires_grad_()
    for parts in (1, 2, 3):
        torch.library.opcheck(interleave, (a, b, parts))
    ys = [y.detach().requires_grad_() for y in interleave(a, b, 2)]
    torch.library.opcheck(deinterleave, (ys,))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_compile(fmt):
    a = make((2, 8, 3, 5), torch.float32, fmt, 7).requires_grad_()
    b = make((2, 8, 3, 5), torch.float32, fmt, 8).requires_grad_()

    def f(a, b):
        lo, hi = interleave(a, b, 2)
        x, y = deinterleave([hi.relu(), lo])
        return x * 2 + y

    out = torch.compile(f, fullgraph=True)(a, b)
    ref = f(a, b)
    assert torch.equal(out, ref)
    assert out.is_contiguous(memory_format=FORMATS[fmt])
    g = torch.randn_like(out)
    ga, gb = torch.autograd.grad(out, (a, b), g)
    ra, rb = torch.autograd.grad(ref, (a, b), g)
    assert torch.equal(ga, ra) and torch.equal(gb, rb)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("stride", [1, 2])
def test_fused_unit_trains_through_the_ops(stride, fmt):
    """The fused V2 unit's training path on CPU is these ops (its autograd node), exact against the eager unit."""
    torch.manual_seed(0)
    eager = InvertedResidual(24 if stride == 2 else 48, 48, stride).double().train()
    fused = convert_unit(eager, FusedInvertedResidual)
    x = torch.randn(2, eager.branch2[0].in_channels * (2 if stride == 1 else 1), 9, 7, dtype=torch.float64)
    x = x.contiguous(memory_format=FORMATS[fmt])
    xe, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    ye, yf = eager(xe), fused(xf)
    assert "Interleave" in yf.grad_fn.name()
    lo, hi = fused(xf.detach(), halves=True)
    assert "Interleave" in lo.grad_fn.name() and torch.allclose(torch.cat((lo, hi), 1), ye, atol=1e-12)
    torch.testing.assert_close(yf, ye, atol=1e-12, rtol=1e-12)
    assert yf.is_contiguous(memory_format=FORMATS[fmt])
    g = torch.randn_like(ye)
    ye.backward(g)
    yf.backward(g)
    torch.testing.assert_close(xf.grad, xe.grad, atol=1e-12, rtol=1e-12)
    for (n, pe), pf in zip(eager.named_parameters(), fused.parameters()):
        torch.testing.assert_close(pf.grad, pe.grad, atol=1e-12, rtol=1e-12, msg=n)


def test_info_names_the_fallback():
    assert "shufflekern::interleave" in sk.info()["usable_backends"]["v2 unit interleave (fused models)"]


def test_bad_input_names_the_argument():
    a = torch.randn(2, 6, 3, 3)
    with pytest.raises(ValueError, match="a must be 4-D"):
        interleave(a[0], a[0], 1)
    with pytest.raises(ValueError, match="b must have a's shape"):
        interleave(a, a[:, :4], 1)
    with pytest.raises(TypeError, match=r"b must have the dtype of a \(Float\), got Double"):
        interleave(a, a.double(), 1)
    with pytest.raises(ValueError, match="parts must be positive"):
        interleave(a, a, 0)
    with pytest.raises(ValueError, match=r"channels of a \(6\) must be divisible by parts \(4\)"):
        interleave(a, a, 4)
    with pytest.raises(NotImplementedError, match="empty list"):  # the dispatcher's own message
        deinterleave([])
    with pytest.raises(ValueError, match="ys\\[0\\] must have an even number of channels"):
        deinterleave([torch.randn(2, 5, 3, 3)])
    with pytest.raises(ValueError, match="ys\\[1\\] must have ys\\[0\\]'s shape"):
        deinterleave([a, a[:, :4]])
    with pytest.raises(TypeError, match=r"ys\[1\] must have the dtype of ys\[0\] \(Float\), got Double"):
        deinterleave([a, a.double()])
    with pytest.raises(NotImplementedError, match="SparseCPU"):  # the dispatcher: CPU (strided) kernels only
        interleave(a, a.to_sparse(), 1)
