"""The C++/CUDA kernels (csrc/cuda/*.cu), run on CPU tensors under the project's CUDA emulator
(sk.backend("emulated")): the emulated twins of the tests marked @pytest.mark.cuda, which skip without a GPU.

Same references and tolerances as the CPU tests (fp64 eager references, the flash-attention rule), odd
shapes (kd_loss C = 1, 31, 32, 33, 1023, 1025, 4097; pixel counts that are not a multiple of the conv's
16-pixel tile), both memory formats, non-contiguous inputs, every dtype the CUDA kernels dispatch, forward
and backward, a subset under the reverse and random thread schedules, and a coverage test: every
__global__ function in csrc/cuda is launched.
"""
import glob
import math
import os
import re

import pytest
import torch
import torch.nn.functional as F

import shufflekern as sk
import test_channel_shuffle as tcs
import test_dkd_loss as tdkd  # dkd_loss
import test_kd_loss as tkd
import test_shuffle_conv1x1 as tsc

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMU = "emulated"
FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture
def schedule(monkeypatch):
    """Sets SHUFFLEKERN_EMU_SCHEDULE (the emulator reads it at every launch)."""
    def set_(name):
        monkeypatch.setenv("SHUFFLEKERN_EMU_SCHEDULE", name)
    return set_


# ---- the backend itself --------------------------------------------------------------------------------

def test_backend_switches_the_emulator():
    assert not sk._C.emu_enabled()
    with sk.backend(EMU):
        assert sk.get_backend() == EMU and sk._C.emu_enabled()
        with sk.backend("native"):
            assert not sk._C.emu_enabled()
        assert sk._C.emu_enabled()
    assert not sk._C.emu_enabled()
    sk.set_backend(EMU)
    try:
        assert sk._C.emu_enabled()
    finally:
        sk.set_backend("auto")
    assert not sk._C.emu_enabled()
    # The memoised ("auto", cpu) path still runs the CPU kernel afterwards.
    before = sk.testing.emulated_launches().get("_channel_shuffle_kernel", 0)
    x = torch.randn(1, 4, 2, 2)
    assert torch.equal(sk.channel_shuffle(x, 2), torch.channel_shuffle(x, 2))
    assert sk.testing.emulated_launches().get("_channel_shuffle_kernel", 0) == before


def test_env_var_selects_emulated():
    r = tkd.subprocess.run(
        [tkd.sys.executable, "-c", "import shufflekern as sk, torch; x = torch.randn(1, 4, 2, 2);"
         "assert torch.equal(sk.channel_shuffle(x, 2), torch.channel_shuffle(x, 2));"
         "print(sk.get_backend(), sk._C.emu_enabled(), sk.testing.emulated_launches())"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env=dict(os.environ, PYTHONPATH=ROOT, SHUFFLEKERN_BACKEND=EMU))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("emulated True {'_channel_shuffle_kernel': 1}"), r.stdout


def test_emulated_ops_and_info():
    assert set(sk._backend.emulated_ops()) >= {"channel_shuffle", "kd_loss_forward", "shuffle_conv1x1",
                                              "shuffle_conv1x1_grad_input", "shuffle_conv1x1_grad_weight"}
    assert "channel_shuffle" in sk.info()["usable_backends"]["cpu (emulated C++/CUDA)"]


def test_op_without_cuda_kernel_fails_loudly(monkeypatch):
    with sk.backend(EMU), pytest.raises(RuntimeError, match="no_such_op.*no C\\+\\+/CUDA kernel"):
        sk._backend._select("no_such_op", EMU, "cpu")
    if "batch_norm_act" in sk._backend.emulated_ops():
        return
    # Until batch_norm_act has a CUDA kernel, every path to it fails loudly instead of running the CPU kernel.
    from shufflekern.models._common import bn_act
    x = torch.randn(2, 4, 3, 3)
    with sk.backend(EMU):
        with pytest.raises(RuntimeError, match="batch_norm_act: the op has no CUDA kernel yet"):
            torch.ops.shufflekern.batch_norm_act(x, None, None, None, None, None, True, 1e-5, True)
        with pytest.raises(RuntimeError, match="batch_norm_act"):
            bn_act(torch.nn.BatchNorm2d(4), x)  # the fused models' path
        with pytest.raises(RuntimeError, match="batch_norm_act.*no C\\+\\+/CUDA kernel"):
            sk._backend.select("batch_norm_act", x.device)


def test_non_cpu_tensors_fail_loudly():
    with sk.backend(EMU), pytest.raises(RuntimeError, match="emulated.*CPU tensors only"):
        sk._backend.select("channel_shuffle", torch.device("cuda"))


# ---- channel_shuffle (twin of test_channel_shuffle.test_cuda) --------------------------------------------

@pytest.mark.parametrize("layout", ["nchw", "channels_last", "sliced", "transposed"])
@pytest.mark.parametrize("dtype", FLOATS + [torch.int8, torch.int32, torch.bool, torch.complex128], ids=str)
@pytest.mark.parametrize("shape", [(3, 116, 13, 11, 2), (2, 7, 5, 3, 1), (1, 58 * 2, 2, 2, 58), (2, 6, 13, 11, 3)],
                         ids=str)
def test_channel_shuffle(shape, dtype, layout):
    groups = shape[4]
    x = tcs.make(shape[:4], torch.float64, layout) if dtype == torch.complex128 else tcs.make(shape, dtype, layout)
    if dtype == torch.complex128:
        x = torch.complex(x, x.flip(0))
    want = tcs.view_transpose(x, groups)
    with sk.backend(EMU):
        y = sk.channel_shuffle(x, groups)
    assert y.dtype == x.dtype and torch.equal(y, want)
    assert y.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last" and x.shape[1] > 1
                                                                  and x.shape[2] * x.shape[3] > 1)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_channel_shuffle_backward(dtype, layout):
    x = tcs.make((3, 116, 13, 11), dtype, layout).requires_grad_(True)
    with sk.backend(EMU):
        y = sk.channel_shuffle(x, 2)
        (gx,) = torch.autograd.grad(y, x, y)
    assert torch.equal(y, torch.channel_shuffle(x, 2))
    assert torch.equal(gx, x)


def test_channel_shuffle_gradcheck_and_opcheck():
    x = torch.randn(2, 6, 3, 2, dtype=torch.float64, requires_grad=True)
    with sk.backend(EMU):
        assert torch.autograd.gradcheck(lambda t: sk.channel_shuffle(t, 3), (x,))
        torch.library.opcheck(torch.ops.shufflekern.channel_shuffle.default, (x.detach(), 3))


# ---- kd_loss (twins of test_kd_loss.test_cuda_*) -------------------------------------------------------

@pytest.mark.parametrize("C", [1, 31, 32, 33, 1023, 1025, 4097])
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_kd_loss_odd_class_counts(C, dtype):
    rows = 5
    s, t = tkd.logits((rows, C), dtype), tkd.logits((rows, C), dtype, seed=1)
    y = tkd.targets((rows,), C, (2,))
    tkd.check_close(s, t, y, backend=EMU, T=3.0, alpha=0.6, reduction="batchmean")
    tkd.check_close(s, t, None, backend=EMU, T=2.0, reduction="none")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("reduction", tkd.REDUCTIONS)
def test_kd_loss_matches_cpu(dtype, reduction):
    """Twin of test_cuda_matches_cpu: the emulated kernel against the CPU kernel, -inf teacher classes and
    ignored rows included."""
    s, t = tkd.logits((33, 1000), dtype), tkd.logits((33, 1000), dtype, seed=1)
    t[0, ::7] = -math.inf
    y = tkd.targets((33,), 1000, (3, 5))
    want = tkd.run(tkd.ours("auto"), s, t, y, T=3.0, alpha=0.6, reduction=reduction)
    got = tkd.run(tkd.ours(EMU), s, t, y, T=3.0, alpha=0.6, reduction=reduction)
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=tol, atol=tol)
    tkd.check_close(s, t, y, backend=EMU, T=3.0, alpha=0.6, reduction=reduction)


@pytest.mark.parametrize("T,alpha", [(1.0, 0.5), (4.0, 0.0), (0.5, 1.0)])
def test_kd_loss_temperatures_and_ignore_index(T, alpha):
    s, t = tkd.logits((9, 33)), tkd.logits((9, 33), seed=1)
    y = tkd.targets((9,), 33, ()).masked_fill(torch.arange(9) % 4 == 1, 7)
    for reduction in tkd.REDUCTIONS:
        tkd.check_close(s, t, y, backend=EMU, T=T, alpha=alpha, reduction=reduction, ignore_index=7)


def test_kd_loss_all_rows_ignored_is_zero():
    s = tkd.logits((4, 33)).requires_grad_(True)
    with sk.backend(EMU):
        loss = sk.kd_loss(s, s.detach() * 2, torch.full((4,), -100), alpha=0.5)
        loss.backward()
    assert loss.item() == 0.0 and torch.equal(s.grad, torch.zeros_like(s))
    with sk.backend(EMU):  # no rows: nothing is launched, the reductions still hold
        empty = tkd.logits((0, 5))
        assert sk.kd_kl_div(empty, empty, reduction="none").shape == (0,)
        assert sk.kd_kl_div(empty, empty, reduction="sum").item() == 0.0
        assert sk.channel_shuffle(torch.randn(0, 6, 2, 2), 3).shape == (0, 6, 2, 2)


@pytest.mark.parametrize("layout", ["3d", "transposed", "class_sliced", "row_sliced", "expanded_teacher"])
def test_kd_loss_non_contiguous(layout):
    base = tkd.logits((6, 40, 2))
    if layout == "3d":
        s, t = tkd.logits((3, 4, 33)), tkd.logits((3, 4, 33), seed=1)
    elif layout == "transposed":
        s, t = base.transpose(1, 2), tkd.logits((6, 40, 2), seed=1).transpose(1, 2)
    elif layout == "class_sliced":
        s, t = base[..., 0], tkd.logits((6, 40, 2), seed=1)[..., 1]
    elif layout == "row_sliced":
        s, t = tkd.logits((12, 33))[::2], tkd.logits((12, 33), seed=1)[1::2]
    else:
        s, t = tkd.logits((5, 33)), tkd.logits((1, 33), seed=1).expand(5, 33)
    y = tkd.targets(s.shape[:-1], s.shape[-1])
    tkd.check_close(s, t, y, backend=EMU, grad_teacher=layout != "expanded_teacher", T=2.0, alpha=0.7)


def _check_bad_target_asserts(kernel, op_call, loss, want):
    """An out-of-range target (10, -1) makes the kernel's device-side assert a RuntimeError from op_call(s, t, y),
    and the process keeps working: loss(s, t, y) afterwards matches want(s, t, y) in fp64 (4 x 10 logits)."""
    s, t = tkd.logits((4, 10)), tkd.logits((4, 10), seed=1)
    y = torch.tensor([0, 9, 3, -100])
    with sk.backend(EMU):
        for bad in (10, -1):
            with pytest.raises(RuntimeError, match="device-side assert.*" + kernel):
                op_call(s, t, torch.tensor([0, bad, 3, -100]))
        got = loss(s, t, y)
    torch.testing.assert_close(got.double(), want(s.double(), t.double(), y), rtol=1e-5, atol=1e-6)


def test_kd_loss_bad_target_is_a_device_assert_and_the_process_keeps_working():
    """Twin of test_cuda_bad_target_raises: the kernel's device-side assert becomes a RuntimeError."""
    _check_bad_target_asserts("_kd_loss_kernel", lambda s, t, y: tkd.OP(s, t, y, 1.0, 0.5, -100, 3, False, False),
                              lambda s, t, y: sk.kd_loss(s, t, y, temperature=1.0, alpha=0.5),
                              lambda s, t, y: tkd.eager(s, t, y, T=1.0, alpha=0.5))


def test_kd_loss_gradcheck_and_opcheck():
    s = tkd.logits((3, 7), torch.float64).requires_grad_(True)
    t = tkd.logits((3, 7), torch.float64, seed=1).requires_grad_(True)
    y = torch.tensor([1, -100, 6])
    with sk.backend(EMU):
        assert torch.autograd.gradcheck(
            lambda a, b: sk.kd_loss(a, b, y, temperature=2.0, alpha=0.6, reduction="none"), (s, t))
        assert torch.autograd.gradcheck(lambda a, b: sk.kd_kl_div(a, b, temperature=3.0), (s, t))
        torch.library.opcheck(tkd.OP, (s.detach(), t.detach(), y, 2.0, 0.6, -100, 3, True, True))


# ---- dkd_loss (begin; twins of test_dkd_loss.test_cuda_*) ---------------------------------------------------

@pytest.mark.parametrize("C", [2, 3, 10, 33, 100, 1025, 4097])
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_dkd_loss_odd_class_counts(C, dtype):
    s, t = tkd.logits((5, C), dtype), tkd.logits((5, C), dtype, seed=1)
    y = tkd.targets((5,), C, (2,))
    tdkd.check_close(s, t, y, backend=EMU, temperature=3.0, alpha=0.7, beta=4.0, reduction="batchmean")
    tdkd.check_close(s, t, y, backend=EMU, reduction="none")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("reduction", tkd.REDUCTIONS)
def test_dkd_loss_matches_cpu(dtype, reduction):
    """Twin of test_dkd_loss.test_cuda_matches_cpu: the emulated kernel against the CPU kernel."""
    s, t = tkd.logits((33, 1000), dtype), tkd.logits((33, 1000), dtype, seed=1)
    y = tkd.targets((33,), 1000, (3, 5))
    want = tdkd.run(tdkd.ours("auto"), s, t, y, temperature=3.0, alpha=0.6, reduction=reduction)
    got = tdkd.run(tdkd.ours(EMU), s, t, y, temperature=3.0, alpha=0.6, reduction=reduction)
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=tol, atol=tol)


def test_dkd_loss_confident_teacher_and_ignored_rows():
    s, t, y = tdkd._confident(torch.float32)
    ref = tdkd.run(tdkd.reference, s.double(), t.double(), y, reduction="none", beta=0.0)
    got = tdkd.run(tdkd.ours(EMU), s, t, y, reduction="none", beta=0.0)
    for r, o in zip(ref, got):  # TCKD alone keeps its relative precision in fp32 (float finish on the device)
        assert ((o.double() - r).abs().max() / r.abs().max()).item() < 1e-4
    tdkd.check_close(s, t, y, backend=EMU, reduction="none")
    s, t = tkd.logits((9, 33)), tkd.logits((9, 33), seed=1)
    y = tkd.targets((9,), 33, ()).masked_fill(torch.arange(9) % 4 == 1, 7)
    for reduction in tkd.REDUCTIONS:
        tdkd.check_close(s, t, y, backend=EMU, reduction=reduction, ignore_index=7)
    with sk.backend(EMU):
        loss = sk.dkd_loss(s.requires_grad_(), t, torch.full((9,), -100))
        loss.backward()
    assert loss.item() == 0 and (s.grad == 0).all()


@pytest.mark.parametrize("layout", ["row_sliced", "transposed", "expanded_teacher"])
def test_dkd_loss_non_contiguous(layout):
    if layout == "row_sliced":
        s, t = tkd.logits((12, 33))[::2], tkd.logits((12, 33), seed=1)[1::2]
    elif layout == "transposed":
        s, t = tkd.logits((33, 6)).t(), tkd.logits((33, 6), seed=1).t()
    else:
        s, t = tkd.logits((5, 33)), tkd.logits((1, 33), seed=1).expand(5, 33)
    y = tkd.targets(s.shape[:-1], s.shape[-1])
    tdkd.check_close(s, t, y, backend=EMU, grad_teacher=layout != "expanded_teacher", temperature=2.0)


def test_dkd_loss_streamed_rows():
    """Rows too large for the shared-memory budget (streamed twice from global memory), misaligned start."""
    C = 20483
    s, tw = tkd.logits((3, C)), tkd.logits((6, C), seed=1)
    y = torch.tensor([0, C - 1, -100])

    def go(name):
        ss, tt = s.clone().requires_grad_(), tw.clone().requires_grad_()
        with sk.backend(name):
            loss = sk.dkd_loss(ss, tt[::2], y, temperature=2.0)
            loss.backward()
        return loss.detach(), ss.grad, tt.grad
    for g_, w_ in zip(go(EMU), go("native")):
        torch.testing.assert_close(g_, w_, rtol=2e-5, atol=2e-6)


def test_dkd_loss_bad_target_is_a_device_assert_and_the_process_keeps_working():
    _check_bad_target_asserts("_dkd_loss_kernel",
                              lambda s, t, y: tdkd.OP(s, t, y, 1.0, 1.0, 8.0, -100, 3, False, False),
                              sk.dkd_loss, tdkd.reference)


def test_dkd_loss_gradcheck_and_opcheck():
    s = tkd.logits((3, 7), torch.float64).requires_grad_(True)
    t = tkd.logits((3, 7), torch.float64, seed=1).requires_grad_(True)
    y = torch.tensor([1, -100, 6])
    with sk.backend(EMU):
        assert torch.autograd.gradcheck(
            lambda a, b: sk.dkd_loss(a, b, y, temperature=2.0, alpha=0.6, beta=3.0, reduction="none"), (s, t))
        torch.library.opcheck(tdkd.OP, (s.detach(), t.detach(), y, 2.0, 0.6, 3.0, -100, 3, True, True))
# ---- dkd_loss (end) ---------------------------------------------------------------------------------------


# ---- shuffle_conv1x1 (twin of test_shuffle_conv1x1.test_cuda_matches_reference) -------------------------

@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("layout", tsc.FORMATS)
@pytest.mark.parametrize("g,sg", [(1, 1), (3, 3), (2, 4), (8, 8), (4, 1)])
def test_shuffle_conv1x1_matches_reference(g, sg, layout, dtype):
    """3 x 13 x 11 = 429 pixels (not a multiple of the 16-pixel tile), 5 outputs a group (a partial tile),
    bias; fp64 reference and eager error at the same precision, as the CUDA test."""
    fmt = tsc.FORMATS[layout]
    c = 8 * g * sg // math.gcd(g, sg)
    x, w, b = tsc.make_inputs(3, c, 13, 11, g, 5, torch.float64, fmt, True)
    gy = torch.randn(3, g * 5, 13, 11, dtype=torch.float64).contiguous(memory_format=fmt)
    exact_y, exact_grads = tsc.reference(x, w, b, g, sg, gy)
    xd, wd, bd, gyd = (t.to(dtype) for t in (x, w, b, gy))
    eager_y, eager_grads = tsc.reference(xd, wd, bd, g, sg, gyd)
    y, grads = tsc.ours(xd, wd, bd, g, sg, gyd, EMU)
    assert y.dtype == dtype and y.is_contiguous(memory_format=fmt)
    assert grads[0].is_contiguous(memory_format=fmt)
    tsc.assert_flash_close("y", y, eager_y, exact_y)
    for name, got, eager, exact in zip(("grad_x", "grad_weight", "grad_bias"), grads, eager_grads, exact_grads):
        assert got.dtype == dtype and got.shape == exact.shape, name
        tsc.assert_flash_close(name, got, eager, exact)


@pytest.mark.parametrize("layout", tsc.FORMATS)
@pytest.mark.parametrize("n,c,hw,g,sg,mg", [(1, 40, (1, 1), 1, 1, 33), (2, 34, (5, 7), 2, 17, 17),
                                            (1, 96, (9, 9), 3, 4, 32), (4, 24, (6, 5), 24, 3, 1)])
def test_shuffle_conv1x1_odd_shapes(n, c, hw, g, sg, mg, layout):
    """Channel counts around the 16-wide tile, a single pixel, depthwise-like groups; fp32 and fp64."""
    for dtype in (torch.float32, torch.float64):
        tsc.check_against_reference(n, c, *hw, g, sg, mg, dtype, tsc.FORMATS[layout], True, backend=EMU)


def test_shuffle_conv1x1_non_contiguous():
    x = torch.randn(2, 24, 9, 14, dtype=torch.float64)[:, :, :, ::2]  # non-contiguous W
    w = torch.randn(12, 8, 1, 1, dtype=torch.float64)
    b = torch.randn(12, dtype=torch.float64)
    gy = torch.randn(2, 12, 9, 7, dtype=torch.float64)
    exact_y, exact_grads = tsc.reference(x, w, b, 3, 3, gy)
    y, grads = tsc.ours(x, w, b, 3, 3, gy, EMU)
    torch.testing.assert_close(y, exact_y, rtol=1e-12, atol=1e-12)
    for got, exact in zip(grads, exact_grads):
        torch.testing.assert_close(got, exact, rtol=1e-12, atol=1e-12)


def test_shuffle_conv1x1_empty_and_zero_channels():
    with sk.backend(EMU):
        assert sk.shuffle_conv1x1(torch.randn(0, 6, 3, 3), torch.randn(4, 3, 1, 1), groups=2).shape == (0, 4, 3, 3)
        y = sk.shuffle_conv1x1(torch.randn(2, 0, 3, 3), torch.randn(4, 0, 1, 1), torch.ones(4))
    assert torch.equal(y, torch.ones(2, 4, 3, 3))


def test_shuffle_conv1x1_gradcheck_and_opcheck():
    x = torch.randn(2, 12, 3, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4, 1, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    with sk.backend(EMU):
        assert torch.autograd.gradcheck(lambda *a: sk.shuffle_conv1x1(*a, groups=3, shuffle_groups=4), (x, w, b))
        torch.library.opcheck(torch.ops.shufflekern.shuffle_conv1x1.default, (x.detach(), w.detach(), b.detach(), 3, 4))


# ---- shuffle_conv1x1_backward: the fused kernel (grad_x and per-tile grad_W / grad_b partials, summed in order)

MASKS = [[a, b, c] for a in (True, False) for b in (True, False) for c in (True, False)]
BWD_OP = torch.ops.shufflekern.shuffle_conv1x1_backward


def _fused_backward_launches():
    """Launches of the fused backward kernel (grad_x tiles and grad_W tiles in one launch)."""
    return sk.testing.emulated_launches().get("_shuffle_conv1x1_backward_split_kernel", 0)


def _grad_out(n, c_out, h, w_, dtype, fmt, seed):
    """A random grad_out (fp64 draws, then dtype) in memory format fmt."""
    gy = torch.randn(n, c_out, h, w_, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return gy.to(dtype).contiguous(memory_format=fmt)


def _check_backward(x, w, gy, g, sg, masks=MASKS, launches=True):
    """Every mask: the requested gradients against the fp64 eager ones (flash rule: error <= 2 x eager's at x's
    dtype + slack), the others 0-element; grad_x in x's memory format."""
    exact_y, exact = tsc.reference(x.double(), w.double(), torch.zeros(w.shape[0], dtype=torch.float64), g, sg,
                                   gy.double())
    _, eager = tsc.reference(x, w, torch.zeros(w.shape[0], dtype=x.dtype), g, sg, gy)
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format
    for mask in masks:
        before = _fused_backward_launches()
        with sk.backend(EMU):
            got = BWD_OP(gy, x, w, g, sg, mask)
        if launches and any(mask):
            assert _fused_backward_launches() == before + 1
        for name, want, gt, ea, ex in zip(("grad_x", "grad_weight", "grad_bias"), mask, got, eager, exact):
            if not want:
                assert gt.numel() == 0, (name, mask)
                continue
            assert gt.dtype == x.dtype and gt.shape == ex.shape, (name, mask)
            tsc.assert_flash_close(f"{name} {mask}", gt, ea, ex)
        if mask[0]:
            assert got[0].is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("layout", tsc.FORMATS)
@pytest.mark.parametrize("n,c,h,w_,g,sg,mg", [
    (3, 24, 13, 11, 3, 4, 5),    # 429 pixels: a partial last tile; runs of 2 channels
    (2, 15, 7, 9, 3, 5, 7),      # odd C, odd H*W
    (1, 34, 1, 1, 2, 17, 17),    # one pixel
    (5, 12, 17, 19, 1, 3, 3),    # 1615 pixels: several tiles, summed partials
])
def test_shuffle_conv1x1_backward_fused(n, c, h, w_, g, sg, mg, layout, dtype):
    fmt = tsc.FORMATS[layout]
    x, w, _ = tsc.make_inputs(n, c, h, w_, g, mg, dtype, fmt, False)
    gy = _grad_out(n, g * mg, h, w_, dtype, fmt, 1)
    masks = MASKS if dtype in (torch.float32, torch.float64) else [[True, True, True], [False, True, False]]
    _check_backward(x, w, gy, g, sg, masks)


@pytest.mark.parametrize("layout", tsc.FORMATS)
def test_shuffle_conv1x1_backward_fused_non_contiguous_grad_out(layout):
    fmt = tsc.FORMATS[layout]
    x, w, _ = tsc.make_inputs(2, 24, 9, 7, 3, 4, torch.float64, fmt, False)
    base = torch.randn(2, 24, 9, 14, dtype=torch.float64)
    gy = base[:, ::2, :, ::2]                                  # strided in C and W: neither format
    assert not gy.is_contiguous() and not gy.is_contiguous(memory_format=torch.channels_last)
    _check_backward(x, w, gy, 3, 4, [[True, True, True], [True, False, True]])
    other = torch.randn(2, 12, 9, 7, dtype=torch.float64).contiguous(
        memory_format=torch.contiguous_format if fmt == torch.channels_last else torch.channels_last)
    _check_backward(x, w, other, 3, 4, [[True, True, True]])   # grad_out in the other format


def test_shuffle_conv1x1_backward_fused_deterministic_and_gradcheck():
    """Same bits twice (partials summed in a fixed order, no atomics), under another schedule too; gradcheck of
    the autograd (which calls the fused op) and opcheck of the op."""
    x, w, _ = tsc.make_inputs(3, 24, 23, 17, 3, 8, torch.float32, torch.channels_last, False)
    gy = torch.randn(3, 24, 23, 17).contiguous(memory_format=torch.channels_last)
    with sk.backend(EMU):
        a = BWD_OP(gy, x, w, 3, 4, [True, True, True])
        b = BWD_OP(gy, x, w, 3, 4, [True, True, True])
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    xd, wd, bd = tsc.make_inputs(2, 12, 5, 3, 3, 2, torch.float64, torch.channels_last, True)
    with sk.backend(EMU):
        assert torch.autograd.gradcheck(lambda *t: sk.shuffle_conv1x1(*t, groups=3, shuffle_groups=2),
                                        (xd.requires_grad_(), wd.requires_grad_(), bd.requires_grad_()))
        gyd = torch.randn(2, 6, 5, 3, dtype=torch.float64)
        for mask in ([True, True, True], [False, True, True], [True, False, False]):
            torch.library.opcheck(BWD_OP.default, (gyd, xd.detach(), wd.detach(), 3, 2, mask))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n,c,h,g,sg,mg", [(1, 300, 5, 1, 3, 4), (2, 40, 3, 1, 2, 200)])
def test_shuffle_conv1x1_channels_last_wide_chunks(n, c, h, g, sg, mg, dtype):
    """channels_last plans whose shared-memory output tile holds all outputs of a group at once (more than the
    128-wide register chunk): grad_x and x's tile of 300 channels in the fused backward, y of 200 outputs."""
    x, w, b = tsc.make_inputs(n, c, h, h, g, mg, dtype, torch.channels_last, True)
    gy = torch.randn(n, g * mg, h, h, dtype=dtype).contiguous(memory_format=torch.channels_last)
    exact_y, _ = tsc.reference(x.double(), w.double(), b.double(), g, sg)
    eager_y, _ = tsc.reference(x, w, b, g, sg)
    with sk.backend(EMU):
        y = sk.shuffle_conv1x1(x, w, b, groups=g, shuffle_groups=sg)
    assert y.is_contiguous(memory_format=torch.channels_last)
    tsc.assert_flash_close("y", y, eager_y, exact_y)
    _check_backward(x, w, gy, g, sg, [[True, True, True], [False, True, False], [True, False, False]])


WHOLE_PIXEL = ("_shuffle_conv1x1_cl_fwd_kernel", "_shuffle_conv1x1_cl_grad_input_kernel")


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("n,c,h,w_,g,sg,mg", [
    (3, 60, 13, 11, 3, 3, 7),    # Cg = 20 (not a multiple of 8), 429 pixels: a partial last tile
    (2, 36, 30, 30, 3, 4, 5),    # Cg = 12, 1800 pixels: several tiles a block, partial sums per block
])
def test_shuffle_conv1x1_channels_last_whole_pixels(n, c, h, w_, g, sg, mg, dtype):
    """channels_last tiles over every group (whole channel vectors read and written once): forward and the
    grad_input op run the whole-pixel kernels and match the fp64 reference; so does the fused backward."""
    fmt = torch.channels_last
    x, w, b = tsc.make_inputs(n, c, h, w_, g, mg, dtype, fmt, True)
    gy = _grad_out(n, g * mg, h, w_, dtype, fmt, 1)
    exact_y, exact = tsc.reference(x.double(), w.double(), b.double(), g, sg, gy.double())
    eager_y, eager = tsc.reference(x, w, b, g, sg, gy)
    before = sk.testing.emulated_launches()
    with sk.backend(EMU):
        y = sk.shuffle_conv1x1(x, w, b, groups=g, shuffle_groups=sg)
        gx = torch.ops.shufflekern.shuffle_conv1x1_grad_input(gy, w, g, sg)
    after = sk.testing.emulated_launches()
    for k in WHOLE_PIXEL[:2]:
        assert after.get(k, 0) == before.get(k, 0) + 1, k
    assert y.is_contiguous(memory_format=fmt) and gx.is_contiguous(memory_format=fmt)
    tsc.assert_flash_close("y", y, eager_y, exact_y)
    tsc.assert_flash_close("grad_input op", gx, eager[0], exact[0])
    masks = MASKS if dtype == torch.float64 else [[True, True, True], [False, True, False]]
    _check_backward(x, w, gy, g, sg, masks)


SUM_KERNEL = "_shuffle_conv1x1_grad_weight_sum_kernel"


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("n,c,h,w_,g,sg,mg,layout,sliced", [
    (2, 96, 7, 7, 3, 3, 8, "nchw", False),           # 7x7 planes: whole-image ranges of consecutive channels
    (1, 48, 9, 9, 3, 3, 32, "nchw", False),          # 81-pixel planes: rows along pixels, weight-column order
    (2, 48, 5, 5, 3, 3, 8, "channels_last", False),  # pixel vectors of whole sectors: aligned pieces
    (2, 60, 5, 3, 3, 3, 7, "channels_last", False),  # 60 channels (not whole sectors): channel runs, no pieces
    (2, 36, 40, 40, 3, 3, 4, "nchw", True),          # 3200 pixels, a small W: grad_W over pixel slices
    (2, 36, 40, 40, 3, 3, 4, "channels_last", True),
])
def test_shuffle_conv1x1_backward_split_roles(n, c, h, w_, g, sg, mg, layout, sliced, dtype):
    """The backward launch's grad_W blocks (tiles of a group's grad_W over all pixels, or over pixel slices whose
    partials a second kernel adds in order) and grad_x blocks, every mask, against the fp64 reference; with all
    three gradients the sum kernel runs exactly when the plan slices the pixels (shapes chosen for each case)."""
    fmt = tsc.FORMATS[layout]
    x, w, _ = tsc.make_inputs(n, c, h, w_, g, mg, dtype, fmt, False)
    gy = _grad_out(n, g * mg, h, w_, dtype, fmt, 2)
    masks = MASKS if dtype in (torch.float32, torch.float64) else [[True, True, True], [False, False, True]]
    _check_backward(x, w, gy, g, sg, masks)
    before = sk.testing.emulated_launches().get(SUM_KERNEL, 0)
    with sk.backend(EMU):
        BWD_OP(gy, x, w, g, sg, [True, True, True])
    sums = sk.testing.emulated_launches().get(SUM_KERNEL, 0) - before
    assert sums == (2 if sliced else 0), sums


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", tsc.FORMATS)
@pytest.mark.parametrize("c,mg,hw", [(240, 20, 28), (60, 80, 28), (480, 40, 14), (120, 160, 14), (960, 80, 7)])
def test_shuffle_conv1x1_v1_shapes(c, mg, hw, layout, dtype):
    """The traffic report's ShuffleNet V1 (g=3) layers at batch 2: the plans the report's rows run (forward tiles of
    whole 7x7 images in NCHW, whole pixels in channels_last; backward per-group grad_W tiles, channels_last
    whole-pixel grad_W slices, grad_x per group or whole pixels) against fp64."""
    fmt = tsc.FORMATS[layout]
    x, w, b = tsc.make_inputs(2, c, hw, hw, 3, mg, dtype, fmt, True)
    exact_y, _ = tsc.reference(x.double(), w.double(), b.double(), 3, 3)
    eager_y, _ = tsc.reference(x, w, b, 3, 3)
    with sk.backend(EMU):
        y = sk.shuffle_conv1x1(x, w, b, groups=3, shuffle_groups=3)
    assert y.is_contiguous(memory_format=fmt)
    tsc.assert_flash_close("y", y, eager_y, exact_y)
    gy = torch.randn(2, 3 * mg, hw, hw, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    _check_backward(x, w, gy.to(dtype).contiguous(memory_format=fmt), 3, 3, [[True, True, True]])


def test_shuffle_conv1x1_backward_split_deterministic_under_schedules(monkeypatch):
    """No atomics: every grad_W / grad_b sum has one owner and a fixed order, so the same bits under every block
    schedule, with and without pixel slices."""
    for shape, fmt in (((2, 96, 7, 7), torch.contiguous_format), ((2, 36, 40, 40), torch.channels_last)):
        n, c, h, w_ = shape
        x, w, _ = tsc.make_inputs(n, c, h, w_, 3, 4, torch.float32, fmt, False)
        gy = torch.randn(n, 12, h, w_).contiguous(memory_format=fmt)
        runs = []
        for sched in ("inorder", "reverse", "random:7"):
            monkeypatch.setenv("SHUFFLEKERN_EMU_SCHEDULE", sched)
            with sk.backend(EMU):
                runs.append(BWD_OP(gy, x, w, 3, 3, [True, True, True]))
        for other in runs[1:]:
            assert all(torch.equal(u, v) for u, v in zip(runs[0], other))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_shuffle_conv1x1_large_channel_plans(dtype):
    """Shapes whose input tile does not fit in shared memory: the streamed plan (input chunks, all outputs
    accumulated in shared memory) and the re-reading one (output chunks), forward and the separate grad_input
    (streamed with 1000 outputs a group); a backward whose grad_out tile does not fit composes the two separate
    kernels."""
    for n, c, h, g, sg, mg in ((1, 1920, 3, 1, 4, 6), (1, 1200, 2, 1, 3, 1100), (1, 8, 3, 2, 2, 1000)):
        x, w, b = tsc.make_inputs(n, c, h, h, g, mg, dtype, torch.channels_last, True)
        gy = torch.randn(n, g * mg, h, h, dtype=dtype).contiguous(memory_format=torch.channels_last)
        exact_y, exact = tsc.reference(x.double(), w.double(), b.double(), g, sg, gy.double())
        eager_y, eager = tsc.reference(x, w, b, g, sg, gy)
        with sk.backend(EMU):
            y = sk.shuffle_conv1x1(x, w, b, groups=g, shuffle_groups=sg)
            gx = torch.ops.shufflekern.shuffle_conv1x1_grad_input(gy, w, g, sg)
            got = BWD_OP(gy, x, w, g, sg, [True, True, True])
        tsc.assert_flash_close("y", y, eager_y, exact_y)
        tsc.assert_flash_close("grad_input op", gx, eager[0], exact[0])
        for name, gt, ea, ex in zip(("grad_x", "grad_weight", "grad_bias"), got, eager, exact):
            tsc.assert_flash_close(name, gt, ea, ex)


# ---- batch_norm_act (twin of test_batch_norm_act.test_fused_bn_relu_on_cuda_matches_eager) ---------------

@pytest.mark.skipif("batch_norm_act" not in sk._backend.emulated_ops(), reason="batch_norm_act has no CUDA kernel")
@pytest.mark.parametrize("layout", tsc.FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_batch_norm_act_fused_bn_relu_matches_eager(dtype, layout):
    import copy
    from shufflekern.models._common import bn_act
    bn = torch.nn.BatchNorm2d(24).to(dtype)
    ref = copy.deepcopy(bn)
    x = torch.randn(4, 24, 9, 7, dtype=dtype).contiguous(memory_format=tsc.FORMATS[layout])
    r = torch.randn_like(x)
    xs, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    before = sum(sk.testing.emulated_launches().values())
    with sk.backend(EMU):
        y = bn_act(bn, xs * 1, r)
        g = torch.randn_like(y)
        gx = torch.autograd.grad(y, xs, g)[0]
    assert sum(sk.testing.emulated_launches().values()) > before, "bn_act did not run the emulated kernels"
    ye = F.relu(ref(xe) + r)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(y, ye, **tol)
    torch.testing.assert_close(gx, torch.autograd.grad(ye, xe, g)[0], **tol)
    torch.testing.assert_close(bn.running_mean, ref.running_mean, **tol)
    torch.testing.assert_close(bn.running_var, ref.running_var, **tol)


def _launched_during(fn):
    before = dict(sk.testing.emulated_launches())
    out = fn()
    after = sk.testing.emulated_launches()
    return out, {k for k, v in after.items() if v > before.get(k, 0)}


def _check_bn_fp64(x, w, b, r, rm, rv, g, training, relu, grad_atol):
    """The emulated batch_norm_act (y, batch statistics, every gradient for the output gradient g) against the
    eager composition in fp64; returns the kernels the forward and the backward launched."""
    import test_batch_norm_act as tbn
    xs, ws, bs, rs = tbn.leaves(x, w, b, r)
    xe, we, be, re_ = tbn.leaves(x, w, b, r)
    with sk.backend(EMU):
        (y, mean, var), fwd = _launched_during(
            lambda: torch.ops.shufflekern.batch_norm_act(xs, ws, bs, rs, rm, rv, training, 1e-5, relu))
        got, bwd = _launched_during(lambda: tbn.grads_of(y, [xs, ws, bs, rs], g))
    _, ye = tbn.eager(xe, we, be, re_, rm, rv, training, relu)
    want = tbn.grads_of(ye, [xe, we, be, re_], g)
    torch.testing.assert_close(y, ye, rtol=1e-9, atol=1e-11)
    if training:
        torch.testing.assert_close(mean, x.mean((0, 2, 3)), rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(var, x.var((0, 2, 3), unbiased=False), rtol=1e-9, atol=1e-11)
    for a, e in zip(got, want):
        if e is not None:
            torch.testing.assert_close(a, e, rtol=1e-8, atol=grad_atol)
    return fwd, bwd


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("relu", [False, True], ids=["id", "relu"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("shape", [(2, 5, 3, 7), (3, 33, 1, 1), (2, 40, 9, 11), (1, 3, 40, 40)], ids=str)
@pytest.mark.parametrize("layout", tsc.FORMATS)
def test_batch_norm_act_fp64_matches_eager(layout, shape, residual, relu, training):
    """fp64 forward (y, batch statistics) and every gradient against the eager composition; odd channel
    counts, 1x1 images, more positions than one block's chunk; a channel slice (non-contiguous) input."""
    import test_batch_norm_act as tbn
    x, w, b, r, rm, rv = tbn.make(shape, torch.float64, tsc.FORMATS[layout], residual, noncontig=shape[1] == 33)
    g = torch.randn(shape, dtype=torch.float64)
    _check_bn_fp64(x, w, b, r, rm, rv, g, training, relu, grad_atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", tsc.FORMATS)
def test_batch_norm_act_low_precision_flash_rule(dtype, layout):
    """Reduced precision against an fp64 reference: our error at most 2x eager PyTorch's own error in the
    same dtype (fp32 where CPU eager has no kernel), plus a small absolute term; y with a residual and ReLU,
    the input gradient without the ReLU (whose mask flips where z rounds across 0, differently in each
    implementation: test_batch_norm_act compares masked gradients in fp32)."""
    import test_batch_norm_act as tbn
    x, w, b, r, rm, rv = tbn.make((4, 24, 9, 7), dtype, tsc.FORMATS[layout], True)
    g = torch.randn(x.shape, dtype=torch.float64).to(dtype)

    def run(args, emulated, relu):
        leaves = tbn.leaves(*args)
        with sk.backend(EMU if emulated else "native"):
            if emulated:
                y = torch.ops.shufflekern.batch_norm_act(*leaves, None, None, True, 1e-5, relu)[0]
            else:
                _, y = tbn.eager(*leaves, None, None, True, relu)
            return y, tbn.grads_of(y, leaves, g.to(y.dtype))[0]

    def eager_low(relu):
        try:
            return run((x, w, b, r), False, relu)
        except RuntimeError:  # no CPU kernel in this dtype
            return run([t.float() for t in (x, w, b, r)], False, relu)
    slack = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    for relu, which in ((True, 0), (False, 1)):
        want = run([t.double() for t in (x, w, b, r)], False, relu)[which]
        ours, theirs = run((x, w, b, r), True, relu)[which], eager_low(relu)[which]
        assert ours.dtype == dtype
        err = (ours.double() - want).abs().max().item()
        eager_err = (theirs.double() - want).abs().max().item()
        assert err <= 2 * eager_err + slack * max(1.0, want.abs().max().item()), (relu, err, eager_err)


def test_batch_norm_act_models_train_step_matches_native():
    """A fused ShuffleNetV1 unit stack in training mode on the emulated kernels (batch_norm_act,
    shuffle_conv1x1, channel_shuffle) against the native CPU kernels: outputs and gradients."""
    torch.manual_seed(0)
    m = sk.models.shufflenet_v1(groups=3, width_mult=0.5, num_classes=10, fused=True, small_input=True).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    outs = []
    for name in ("native", EMU):
        m.zero_grad()
        with sk.backend(name):
            y = m(x)
            y.square().sum().backward()
        outs.append((y.detach(), [p.grad.clone() for p in m.parameters()]))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-9, atol=1e-10)
    for a, e in zip(outs[1][1], outs[0][1]):
        torch.testing.assert_close(a, e, rtol=1e-8, atol=1e-10)


# Shapes that take each path of csrc/cuda/batch_norm_act.cu: the tile (NCHW: a channel; channels_last: the
# channels of a 32-byte sector, or whole rows when a pixel's channels are not whole sectors) kept in shared
# memory (x read once) or streamed (too large for the 224 KiB cache: statistics / sums, then the elementwise
# pass re-reading x), with 16-byte vectors or element by element; the kernels each one must launch.
CACHED_FWD, CACHED_BWD = "_bn_cached_fwd_kernel", "_bn_cached_bwd_kernel"
BN_PATHS = {  # fp64: (shape, layout, forward kernel, backward kernel)
    "cached-planes-vec": ((3, 4, 8, 6), "nchw", CACHED_FWD, CACHED_BWD),
    "cached-planes-odd": ((2, 3, 5, 3), "nchw", CACHED_FWD, CACHED_BWD),
    "cached-sectors": ((2, 12, 5, 5), "channels_last", CACHED_FWD, CACHED_BWD),
    "cached-rows": ((2, 3, 5, 3), "channels_last", CACHED_FWD, CACHED_BWD),
    "cached-rows-vec": ((2, 6, 5, 3), "channels_last", CACHED_FWD, CACHED_BWD),
    "streamed-planes": ((1, 2, 170, 170), "nchw", "_bn_reduce_kernel", "_bn_grad_apply_kernel"),
    "streamed-sectors": ((1, 8, 85, 85), "channels_last", "_bn_reduce_kernel", "_bn_grad_apply_kernel"),
    "streamed-rows": ((1, 3, 98, 98), "channels_last", "_bn_rows_reduce_kernel", "_bn_rows_apply_kernel"),
    "streamed-rows-vec": ((1, 6, 70, 70), "channels_last", "_bn_rows_reduce_kernel", "_bn_rows_apply_kernel"),
    "bwd-streamed-rows-vec": ((1, 6, 50, 50), "channels_last", CACHED_FWD, "_bn_rows_reduce_kernel"),
}




@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("residual,relu", [(True, True), (False, False), (False, True)], ids=["res-relu", "plain", "relu"])
@pytest.mark.parametrize("path", list(BN_PATHS))
def test_batch_norm_act_paths_fp64(path, residual, relu, training):
    """Every path of the CUDA kernels against the eager composition in fp64, forward and every gradient."""
    import test_batch_norm_act as tbn
    shape, layout, fwd_kernel, bwd_kernel = BN_PATHS[path]
    x, w, b, r, rm, rv = tbn.make(shape, torch.float64, tsc.FORMATS[layout], residual)
    g = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=tsc.FORMATS[layout])
    fwd, bwd = _check_bn_fp64(x, w, b, r, rm, rv, g, training, relu, grad_atol=1e-9)
    if training:
        assert fwd_kernel in fwd, fwd
    assert bwd_kernel in bwd, bwd


BN_LOW_PATHS = {  # (shape, layout) per path, for fp32 / fp16 / bf16
    "cached-planes-vec": ((3, 4, 8, 8), "nchw"),
    "cached-sectors": ((2, 16, 5, 5), "channels_last"),
    "cached-rows": ((2, 3, 5, 3), "channels_last"),
    "cached-rows-vec": ((2, 12, 5, 3), "channels_last"),
    "streamed-rows-vec": ((1, 12, 70, 70), "channels_last"),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("path", list(BN_LOW_PATHS))
def test_batch_norm_act_paths_low_precision(path, dtype):
    """Each path in reduced precision against the fp64 op on the same (rounded) inputs: y with a residual
    and ReLU, the statistics, and without the ReLU (whose mask may flip where z rounds across 0) every
    gradient; errors within a few units of the dtype's rounding, relative to the values' scale."""
    import test_batch_norm_act as tbn
    shape, layout = BN_LOW_PATHS[path]
    if path.startswith("streamed") and dtype != torch.float32:
        pytest.skip("one streamed shape, in fp32: half the bytes would fit the cache")
    x, w, b, r, rm, rv = tbn.make(shape, dtype, tsc.FORMATS[layout], True)
    g = torch.randn(shape, dtype=torch.float64).to(dtype).contiguous(memory_format=tsc.FORMATS[layout])
    tol = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]

    def close(a, e):
        err = (a.double() - e).abs().max().item()
        assert err <= tol * max(1.0, e.abs().max().item()), (err, e.abs().max().item())
    for relu in (True, False):
        ins = tbn.leaves(x, w, b, r)
        ref = tbn.leaves(*[t.double() for t in (x, w, b, r)])
        with sk.backend(EMU):
            y, mean, var = torch.ops.shufflekern.batch_norm_act(*ins, None, None, True, 1e-5, relu)
            assert y.dtype == dtype
            got = tbn.grads_of(y, ins, g) if not relu else None
        _, ye = tbn.eager(*ref, None, None, True, relu)
        close(y, ye)
        close(mean, x.double().mean((0, 2, 3)))
        close(var, x.double().var((0, 2, 3), unbiased=False))
        if got is not None:
            for a, e in zip(got, tbn.grads_of(ye, ref, g.double())):
                close(a, e)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_kd_loss_streamed_rows(dtype):
    """Rows too large for the kernel's shared-memory budget are streamed from global memory twice; one
    such row per block, with a misaligned row start (C odd) and a strided (non-contiguous) teacher."""
    C = 20483 if dtype == torch.float32 else 10243
    s, tw = tkd.logits((3, C), dtype), tkd.logits((6, C), dtype, seed=1)
    y = torch.tensor([0, C - 1, -100])

    def go(name):
        ss, tt = s.clone().requires_grad_(), tw.clone().requires_grad_()
        with sk.backend(name):
            loss = sk.kd_loss(ss, tt[::2], y, temperature=2.0, alpha=0.7)  # teacher rows 2C apart
            loss.backward()
        return loss.detach(), ss.grad, tt.grad
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    for g_, w_ in zip(go(EMU), go("native")):
        torch.testing.assert_close(g_, w_, rtol=tol, atol=tol)


@pytest.mark.parametrize("rows,C", [(300, 10), (7, 1000), (5, 3)])
def test_kd_loss_strided_rows_cached(rows, C):
    """Rows that fit the shared-memory cache but are not one contiguous span (row-sliced student)."""
    sw, t = tkd.logits((2 * rows, C)), tkd.logits((rows, C), seed=1)
    y = torch.arange(rows) % C

    def go(name):
        ss, tt = sw.clone().requires_grad_(), t.clone().requires_grad_()
        with sk.backend(name):
            loss = sk.kd_loss(ss[1::2], tt, y, temperature=3.0, alpha=0.5)
            loss.backward()
        return loss.detach(), ss.grad, tt.grad
    for g_, w_ in zip(go(EMU), go("native")):
        torch.testing.assert_close(g_, w_, rtol=2e-5, atol=2e-6)


# ---- at_loss (issue 14): the emulated C++/CUDA kernels against the fp64 RepDistiller formula ----------------
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("fmts", [("nchw", "cl"), ("cl", "nchw")], ids="-".join)
def test_at_loss_matches_reference(dtype, fmts):
    import test_at_loss as tat
    # more than one block of pixels and of samples; C_t > 32 (several channel steps a warp)
    f_s = tat.make(3, 116, 7, 9, dtype, fmts[0], seed=0)
    f_t = tat.make(3, 232, 7, 9, dtype, fmts[1], seed=1)
    tat.check(f_s, f_t, EMU)


def test_at_loss_eps_branch_and_bench_case():
    import test_at_loss as tat
    f_s = tat.make(2, 3, 28, 28, torch.float64, "cl", seed=2)
    f_s[0] = 0
    f_t = tat.make(2, 5, 28, 28, torch.float64, "nchw", seed=3)
    tat.check(f_s, f_t, EMU)


# ---- schedules: results must not depend on the order of a block's threads between barriers -------------

GRAD_WEIGHT = 7  # index of the shuffle_conv1x1 weight gradient in _run_all's list


def _run_all(dtype):
    """One call of each op, forward and backward, on shapes with partial tiles and several blocks."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 24, 7, 5, generator=g, dtype=dtype).contiguous(memory_format=torch.channels_last)
    s = torch.randn(6, 1025, generator=g, dtype=dtype)
    t = torch.randn(6, 1025, generator=g, dtype=dtype)
    y = torch.tensor([0, 1024, -100, 5, 17, 512])
    w = torch.randn(15, 8, 1, 1, generator=g, dtype=dtype)
    out = []
    with sk.backend(EMU):
        xs = x.clone().requires_grad_(True)
        ys = sk.channel_shuffle(xs, 3)
        out += [ys] + list(torch.autograd.grad(ys, xs, ys * 2))
        sr, tr = s.clone().requires_grad_(True), t.clone().requires_grad_(True)
        loss = sk.kd_loss(sr, tr, y, temperature=3.0, alpha=0.7, reduction="none")
        out += [loss] + list(torch.autograd.grad(loss.sum(), (sr, tr)))
        xc, wc = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        yc = sk.shuffle_conv1x1(xc, wc, groups=3, shuffle_groups=4)
        out += [yc] + list(torch.autograd.grad(yc, (xc, wc), torch.ones_like(yc)))
        gyc = torch.randn(yc.shape, generator=g, dtype=dtype).contiguous(memory_format=torch.channels_last)
        out += [torch.ops.shufflekern.shuffle_conv1x1_grad_input(gyc, w, 3, 4),
                torch.ops.shufflekern.shuffle_conv1x1_grad_weight(gyc, x, 3, 4)]
        out += list(BWD_OP(gyc, x, w, 3, 4, [True, True, True]))
        # NCHW: a tile per group (channels_last above runs the whole-pixel kernels)
        xn, gyn = x.contiguous(), gyc.contiguous()
        out += [sk.shuffle_conv1x1(xn, w, groups=3, shuffle_groups=4),
                torch.ops.shufflekern.shuffle_conv1x1_grad_input(gyn, w, 3, 4)]
        out += list(BWD_OP(gyn, xn, w, 3, 4, [True, True, True]))
        if "batch_norm_act" in sk._backend.emulated_ops():  # every op with a CUDA kernel, forward and backward
            xb = x.clone().requires_grad_(True)
            wb, bb = (torch.randn(24, generator=g, dtype=dtype).requires_grad_(True) for _ in range(2))
            rb = torch.randn(x.shape, generator=g, dtype=dtype).requires_grad_(True)
            yb, mean, var = torch.ops.shufflekern.batch_norm_act(xb, wb, bb, rb, None, None, True, 1e-5, True)
            out += [yb, mean, var] + list(torch.autograd.grad(yb, (xb, wb, bb, rb), torch.ones_like(yb)))
            # too large to keep on chip: streamed (NCHW through the plane kernels, channels_last rows of 12
            # bytes through the row kernels), forward and backward
            for shape, fmt in (((1, 1, 240, 240), torch.contiguous_format), ((1, 3, 140, 140), torch.channels_last)):
                xl = torch.randn(shape, generator=g, dtype=dtype).contiguous(memory_format=fmt).requires_grad_(True)
                yl, ml, vl = torch.ops.shufflekern.batch_norm_act(xl, None, None, None, None, None, True, 1e-5, True)
                out += [yl, ml, vl] + list(torch.autograd.grad(yl, xl, torch.ones_like(yl)))
        # ---- at_loss (issue 14): both formats (NCHW student, channels_last teacher), both gradients
        fa = x.contiguous().requires_grad_(True)
        ta = torch.randn(2, 40, 7, 5, generator=g, dtype=dtype).contiguous(memory_format=torch.channels_last)
        ta.requires_grad_(True)
        la = sk.at_loss(fa, ta)
        out += [la] + list(torch.autograd.grad(la * 1.5, (fa, ta)))
        # ---- end at_loss
        # NCHW: whole planes (channels_last above goes through shared-memory row spans)
        xn = x.contiguous().requires_grad_(True)
        yn = sk.channel_shuffle(xn, 3)
        out += [yn] + list(torch.autograd.grad(yn, xn, yn * 2))
        sd, td = s.clone().requires_grad_(True), t.clone().requires_grad_(True)  # dkd_loss
        dloss = sk.dkd_loss(sd, td, y, temperature=3.0, alpha=0.7, beta=4.0, reduction="none")  # dkd_loss
        out += [dloss] + list(torch.autograd.grad(dloss.sum(), (sd, td)))  # dkd_loss
    return out


@pytest.mark.parametrize("name", ["reverse", "random:1", "random:12345"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_schedules_agree_with_inorder(name, dtype, schedule):
    schedule("inorder")
    want = _run_all(dtype)
    schedule(name)
    got = _run_all(dtype)
    for i, (a, b) in enumerate(zip(got, want)):
        # grad_weight (index GRAD_WEIGHT) too: its pixel slices are summed in a fixed order, no atomics.
        assert torch.equal(a, b), (name, i)


# ---- coverage: every __global__ function in csrc/cuda runs under the emulator ---------------------------

def _global_functions():
    names = set()
    for path in glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")):
        names |= set(re.findall(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(", open(path).read()))
    return names


def test_every_cuda_kernel_runs_under_emulation():
    kernels = _global_functions()
    assert len(kernels) >= 5, kernels
    _run_all(torch.float32)
    launched = sk.testing.emulated_launches()
    missing = kernels - set(launched)
    assert not missing, f"CUDA kernels never launched under emulation: {sorted(missing)}"
    assert all(launched[k] > 0 for k in kernels)
