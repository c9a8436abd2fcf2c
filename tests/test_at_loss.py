"""sk.at_loss: attention transfer (RepDistiller's distiller_zoo/AT.py, p = 2) in one fused op.

Every backend (native C++ CPU, Triton under the interpreter, the C++/CUDA kernels under the emulator) is
compared with an fp64 evaluation of RepDistiller's formula, written out below (`reference`), forward and
backward (both maps' gradients), on odd shapes, both memory formats, mixed formats, non-contiguous maps, every
dtype the op's OpSpec lists for the backend, and a map below F.normalize's eps (the clamp branch).
"""
import pytest
import torch
import torch.nn.functional as F

import shufflekern as sk

OP = torch.ops.shufflekern.at_loss
FORMATS = {"nchw": torch.contiguous_format, "cl": torch.channels_last}
BACKENDS = ["native", "triton", "emulated"]


def reference(f_s, f_t):
    """RepDistiller's AT loss (p = 2), as written there but for `.view` -> `.reshape` (a channels_last map's
    channel mean is not viewable as [N, -1])."""
    def at(f):
        return F.normalize(f.pow(2).mean(1).reshape(f.size(0), -1))
    return (at(f_s) - at(f_t)).pow(2).mean()


def make(n, c, h, w, dtype=torch.float32, fmt="nchw", seed=0, layout="dense", scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64) * scale
    # a different spatial profile per sample, so the attention maps differ
    x = x + torch.linspace(0, 2, h * w, dtype=torch.float64).reshape(1, 1, h, w) * (seed + 1)
    x = x.to(dtype)
    if layout == "sliced":  # every other channel of a wider map
        wide = torch.zeros(n, 2 * c, h, w, dtype=dtype).contiguous(memory_format=FORMATS[fmt])
        wide[:, ::2] = x
        return wide[:, ::2]
    if layout == "transposed":  # H and W swapped in the strides
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    return x.contiguous(memory_format=FORMATS[fmt])


def run(fn, f_s, f_t, grad_teacher=True, grad_out=1.7):
    """loss and the gradients of grad_out * loss w.r.t. both maps (the teacher's when grad_teacher)."""
    s = f_s.detach().clone().requires_grad_()
    t = f_t.detach().clone().requires_grad_(grad_teacher)
    loss = fn(s, t)
    (loss * grad_out).backward()
    return [loss.detach(), s.grad] + ([t.grad] if grad_teacher else [])


def run_ours(backend, f_s, f_t, grad_teacher=True):
    # the backward too under the backend (the emulated backend routes the CPU kernels while it is on)
    with sk.backend(backend):
        return run(sk.at_loss, f_s, f_t, grad_teacher)


TOL = {torch.float64: 1e-9, torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 3e-2}


def check(f_s, f_t, backend, grad_teacher=True):
    """Ours in the maps' dtype against the fp64 reference of the same (rounded) values; tolerances relative
    to each tensor's largest reference value."""
    want = run(reference, f_s.double(), f_t.double(), grad_teacher)
    got = run_ours(backend, f_s, f_t, grad_teacher)
    assert got[0].dtype == f_s.dtype and got[0].dim() == 0
    # float16 gradients of large maps are ~1e-6: subnormal, spaced 2^-24 apart, whatever computes them
    floor = 2.0 ** -24 if f_s.dtype == torch.float16 else 1e-30
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape and g.dtype == f_s.dtype, i
        tol = TOL[f_s.dtype]
        torch.testing.assert_close(g.double(), w, rtol=tol, atol=tol * float(w.abs().max()) + floor, msg=str(i))
    return got


# ---- every backend: odd shapes, formats, dtypes -------------------------------------------------------------
SHAPES = [  # (N, C_s, C_t, H, W)
    (2, 3, 5, 7, 5),
    (3, 1, 3, 4, 4),     # one student channel
    (4, 16, 8, 1, 1),    # one pixel: a = 1 per sample, loss 0
    (2, 116, 232, 5, 3),
    (1, 33, 17, 9, 9),
]


def _dtypes(backend):
    spec = sk._backend.OPS["at_loss"]
    return spec.cpu if backend == "native" else (spec.triton if backend == "triton" else spec.cuda)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("fmts", [("nchw", "nchw"), ("cl", "cl"), ("nchw", "cl"), ("cl", "nchw")], ids="-".join)
def test_matches_reference_fp64_and_fp32(backend, shape, fmts):
    n, cs, ct, h, w = shape
    for dtype in (torch.float64, torch.float32):
        f_s = make(n, cs, h, w, dtype, fmts[0], seed=0)
        f_t = make(n, ct, h, w, dtype, fmts[1], seed=1)
        check(f_s, f_t, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_dtype_of_the_opspec(backend, fmt):
    dtypes = _dtypes(backend)
    assert torch.float32 in dtypes and torch.float64 in dtypes
    for dtype in dtypes:
        f_s = make(2, 6, 5, 3, dtype, fmt, seed=2)
        f_t = make(2, 10, 5, 3, dtype, fmt, seed=3)
        check(f_s, f_t, backend)


def test_native_rejects_half_with_a_type_error():
    f = make(2, 3, 4, 4, torch.float16)
    with pytest.raises(TypeError, match="f_student.*float16"):
        sk.at_loss(f, f)


def test_native_large_shapes_both_formats():
    # the benchmark's first case (N = 16 -> 4 to keep it short): several parallel tasks, NCHW accumulator rows
    for fmts in (("nchw", "nchw"), ("cl", "cl"), ("nchw", "cl")):
        f_s = make(4, 116, 28, 28, torch.float32, fmts[0], seed=4)
        f_t = make(4, 232, 28, 28, torch.float32, fmts[1], seed=5)
        check(f_s, f_t, "native")
        check(f_s.double(), f_t.double(), "native")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["sliced", "transposed"])
def test_non_contiguous(backend, layout):
    for fmt in FORMATS:
        f_s = make(2, 5, 6, 4, torch.float64, fmt, seed=6, layout=layout)
        f_t = make(2, 7, 6, 4, torch.float64, "nchw", seed=7, layout=layout)
        assert not f_s.is_contiguous() and not f_s.is_contiguous(memory_format=torch.channels_last)
        check(f_s, f_t, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_and_tiny_maps_take_the_eps_branch(backend):
    # sample 0 of the student is all zeros (a = 0: divided by eps, no gradient through the norm), sample 1 is
    # tiny (||q|| ~ 1e-16 < 1e-12: the clamp's constant branch with a non-zero gradient), sample 2 is normal.
    f_s = make(3, 4, 5, 5, torch.float64, seed=8)
    f_s[0] = 0
    f_s[1] *= 1e-8
    f_t = make(3, 6, 5, 5, torch.float64, seed=9)
    f_t[2] = 0
    got = check(f_s, f_t, backend)
    assert float(got[1][1].abs().max()) > 0  # the eps branch still passes a gradient to q
    assert torch.all(got[1][0] == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_teacher_gradient_only_when_required(backend):
    f_s, f_t = make(2, 3, 4, 4, torch.float64), make(2, 5, 4, 4, torch.float64, seed=1)
    check(f_s, f_t, backend, grad_teacher=False)
    with sk.backend(backend):
        t = f_t.clone().requires_grad_()
        (g,) = torch.autograd.grad(sk.at_loss(f_s, t), t)  # the teacher alone
    want = torch.autograd.grad(reference(f_s, t), t)[0]
    torch.testing.assert_close(g, want, rtol=1e-9, atol=1e-15)


def test_no_grad_and_identical_maps():
    f = make(2, 3, 4, 4)
    with torch.no_grad():
        assert float(sk.at_loss(f, f)) == 0.0
    # the same attention map from different channel counts: 0 loss
    assert float(sk.at_loss(f, torch.cat([f, f], 1))) == pytest.approx(0.0, abs=1e-12)


# ---- the CPU kernel's NCHW paths (csrc/cpu/vec/at_loss.cpp) ---------------------------------------------------
# Pixel counts H*W around the register path's limit (8 vectors: 128 / 64 fp32 pixels for AVX-512 / AVX2 and the
# portable build, 64 / 32 fp64), with and without a partial vector; above it, the accumulator-row path with and
# without a scalar tail.
NCHW_PIXELS = [(1, 1), (3, 5), (4, 4), (17, 1), (31, 1), (4, 8), (3, 11), (7, 9), (8, 8), (5, 13), (127, 1),
               (8, 16), (3, 43), (11, 13), (28, 28)]


@pytest.mark.parametrize("hw", NCHW_PIXELS, ids=str)
def test_native_nchw_register_and_row_paths(hw):
    h, w = hw
    for dtype in (torch.float64, torch.float32):
        f_s = make(2, 3, h, w, dtype, "nchw", seed=10)
        f_t = make(2, 9, h, w, dtype, "nchw", seed=11)
        check(f_s, f_t, "native")
        # against the channels_last kernel (another summation: to rounding)
        _, qs, qt = OP(f_s, f_t)
        _, qs_cl, qt_cl = OP(f_s.contiguous(memory_format=torch.channels_last),
                             f_t.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(qs, qs_cl, rtol=TOL[dtype], atol=0)
        torch.testing.assert_close(qt, qt_cl, rtol=TOL[dtype], atol=0)


# (N, C, H, W, dtype): the samples do not share evenly among 2 threads (N = 1, 3) -> pixel chunks of each
# sample; H*W above the accumulator row's 256 KiB -> chunks at any thread count (fp32 2, fp64 3).
SPLITS = [(1, 5, 24, 23, torch.float32), (3, 4, 40, 40, torch.float32), (1, 3, 24, 23, torch.float64),
          (3, 2, 17, 31, torch.float64), (1, 2, 257, 256, torch.float32), (1, 2, 257, 256, torch.float64)]


@pytest.mark.parametrize("case", SPLITS, ids=str)
def test_native_nchw_pixel_chunks_same_bits_at_any_thread_count(case):
    n, c, h, w, dtype = case
    f_s = make(n, c, h, w, dtype, "nchw", seed=12)
    f_t = make(n, c + 3, h, w, dtype, "nchw", seed=13)
    threads = torch.get_num_threads()
    got = {}
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            got[t] = OP(f_s, f_t), check(f_s, f_t, "native")
    finally:
        torch.set_num_threads(threads)
    (fwd1, grads1), (fwd2, grads2) = got[1], got[2]
    for a, b in zip(list(fwd1) + grads1, list(fwd2) + grads2):
        assert torch.equal(a, b)


_ISA_CODE = """
import sys, torch, shufflekern as sk
sys.path.insert(0, "tests")
from test_at_loss import NCHW_PIXELS, make, run
assert sk._C.runtime_cpu_isa() == sys.argv[2], sk._C.runtime_cpu_isa()
out = []
for h, w in NCHW_PIXELS + [(24, 23)]:
    for dtype in (torch.float64, torch.float32):
        for fmt in ("nchw", "cl"):
            f_s, f_t = make(2, 3, h, w, dtype, fmt, seed=10), make(2, 9, h, w, dtype, fmt, seed=11)
            out.append(run(sk.at_loss, f_s, f_t))
torch.save(out, sys.argv[1])
"""


@pytest.mark.parametrize("isa", ["default", "avx2"])
def test_isa_variants_match_the_reference(isa, tmp_path):
    """The portable and AVX2 builds of the map kernels (ATEN_CPU_CAPABILITY): every NCHW path and channels_last
    against the fp64 reference (their vectors are 8 fp32 / 4 fp64 wide: other register / row splits)."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, ATEN_CPU_CAPABILITY=isa, PYTHONPATH=root)
    path = str(tmp_path / f"at_{isa}.pt")
    subprocess.run([sys.executable, "-c", _ISA_CODE, path, isa.upper()], check=True, env=env, cwd=root)
    got = iter(torch.load(path))
    for h, w in NCHW_PIXELS + [(24, 23)]:
        for dtype in (torch.float64, torch.float32):
            for fmt in ("nchw", "cl"):
                f_s, f_t = make(2, 3, h, w, dtype, fmt, seed=10), make(2, 9, h, w, dtype, fmt, seed=11)
                want = run(reference, f_s.double(), f_t.double())
                for g, wt in zip(next(got), want):
                    assert g.dtype == dtype
                    tol = TOL[dtype]
                    torch.testing.assert_close(g.double(), wt, rtol=tol, atol=tol * float(wt.abs().max()) + 1e-30)


# ---- errors -------------------------------------------------------------------------------------------------
BAD = [
    (lambda s, t: (s, t[:1]), ValueError, "f_teacher.*batch size N = 2"),
    (lambda s, t: (s, t[:, :, :3]), ValueError, "f_teacher.*H x W = 4 x 4"),
    (lambda s, t: (s, t[:, :, :, :2]), ValueError, "f_teacher.*H x W"),
    (lambda s, t: (s[0], t), ValueError, "f_student must be 4-D"),
    (lambda s, t: (s, t[0]), ValueError, "f_teacher must be 4-D"),
    (lambda s, t: (s, t.double()), TypeError, "f_teacher.*dtype"),
    (lambda s, t: (s.int(), t.int()), TypeError, "f_student"),
    (lambda s, t: (s[:, :0], t), ValueError, "f_student.*at least one channel"),
    (lambda s, t: (s[:0], t[:0]), ValueError, "f_student.*at least one sample"),
    (lambda s, t: (s, [1.0]), TypeError, "f_teacher must be a torch.Tensor"),
]


@pytest.mark.parametrize("case", range(len(BAD)))
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_raises(case, backend):
    fn, exc, match = BAD[case]
    s, t = make(2, 3, 4, 4), make(2, 5, 4, 4, seed=1)
    with sk.backend(backend), pytest.raises(exc, match=match):
        sk.at_loss(*fn(s, t))


@pytest.mark.parametrize("case", range(len(BAD) - 1))
def test_bad_input_raises_from_the_op(case):
    # direct calls of the compiled op reach the C++ checks (the same messages)
    fn, exc, match = BAD[case]
    s, t = make(2, 3, 4, 4), make(2, 5, 4, 4, seed=1)
    with pytest.raises(exc, match=match):
        OP(*fn(s, t))


def test_backward_op_checks_its_arguments():
    s, t = make(2, 3, 4, 4), make(2, 5, 4, 4, seed=1)
    loss, qs, qt = OP(s, t)
    bwd = torch.ops.shufflekern.at_loss_backward
    with pytest.raises(ValueError, match="q_student must be \\[N, H\\*W\\]"):
        bwd(loss, s, t, qs[:1], qt, [True, True])
    with pytest.raises(TypeError, match="q_teacher must be"):
        bwd(loss, s, t, qs, qt.double(), [True, True])
    with pytest.raises(ValueError, match="grad must hold one value"):
        bwd(qs, s, t, qs, qt, [True, True])


# ---- registration: opcheck, gradcheck, torch.compile --------------------------------------------------------
def _samples():
    s, t = make(2, 3, 4, 3, torch.float64), make(2, 5, 4, 3, torch.float64, seed=1)
    return [
        (s.clone().requires_grad_(), t.clone().requires_grad_()),
        (s.clone().requires_grad_(), t.contiguous(memory_format=torch.channels_last)),
        (s.float().contiguous(memory_format=torch.channels_last), t.float()),
    ]


@pytest.mark.parametrize("family", ["", "_triton"])
def test_opcheck(family):
    op = getattr(torch.ops.shufflekern, "at_loss" + family)
    for args in _samples():
        torch.library.opcheck(op, args)
    bwd = getattr(torch.ops.shufflekern, "at_loss_backward" + family)
    s, t = _samples()[1]
    loss, qs, qt = op(s.detach(), t)
    for mask in ([True, True], [True, False], [False, True]):
        torch.library.opcheck(bwd, (torch.tensor(1.5, dtype=torch.float64), s.detach(), t, qs, qt, mask))


@pytest.mark.parametrize("backend", ["native", "triton", "emulated"])
def test_gradcheck_fp64_both_inputs(backend):
    s = make(2, 3, 3, 4, torch.float64).requires_grad_()
    t = make(2, 4, 3, 4, torch.float64, seed=1).contiguous(memory_format=torch.channels_last).requires_grad_()
    with sk.backend(backend):
        assert torch.autograd.gradcheck(sk.at_loss, (s, t))


def test_gradcheck_eps_branch():
    # ||q|| ~ 1e-14 < eps: the constant branch; the finite-difference step is scaled to the map (1e-10 << 1e-7)
    s = (make(2, 3, 3, 3, torch.float64) * 1e-7).requires_grad_()
    t = make(2, 2, 3, 3, torch.float64, seed=1).requires_grad_()
    with torch.no_grad():
        assert float(s.pow(2).mean(1).flatten(1).norm(dim=1).max()) < 1e-12
    assert torch.autograd.gradcheck(sk.at_loss, (s, t), eps=1e-10)


@pytest.mark.parametrize("backend", ["native", "triton"])
def test_compile_fullgraph(backend):
    torch._dynamo.reset()
    s, t = make(2, 6, 5, 5), make(2, 12, 5, 5, seed=1, fmt="cl")

    def f(a, b):
        return sk.at_loss(a, b) * 3 + sk.at_loss(b, a)

    with sk.backend(backend):
        got = run(torch.compile(f, fullgraph=True), s, t)
        want = run(f, s, t)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
