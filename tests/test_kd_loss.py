"""sk.kd_kl_div / sk.kd_loss against an fp64 eager reference (flash-attention rule: our error <= 2x the
error of eager PyTorch in the same dtype, plus a tiny absolute term), on the native and Triton backends."""
import contextlib
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import shufflekern as sk

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy inf - inf in the Triton interpreter

OP = torch.ops.shufflekern.kd_loss_forward
REDUCTIONS = ["none", "mean", "sum", "batchmean"]
ATOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 2e-3, torch.float16: 2e-4}


def eager(s, t, target=None, T=1.0, alpha=1.0, reduction="batchmean", ignore_index=-100):
    """The eager reference (computed in s.dtype): T^2 KL + CE, with the design's reductions."""
    C = s.shape[-1]
    ls, lt = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
    # 0 log 0 = 0: F.kl_div(log_target=True) would give 0 * (-inf) = NaN for masked teacher classes.
    kl = (lt.exp() * (lt - ls).masked_fill(lt == -math.inf, 0)).sum(-1) * (T * T)
    if target is None:
        mask = torch.ones(s.shape[:-1], dtype=torch.bool)
        ce = torch.zeros_like(kl)
        alpha = 1.0
    else:
        mask = target != ignore_index
        ce = F.cross_entropy(s.reshape(-1, C), target.reshape(-1), reduction="none",
                             ignore_index=ignore_index).reshape(kl.shape)
    kl, ce = torch.where(mask, kl, 0), torch.where(mask, ce, 0)
    n = max(int(mask.sum()), 1)
    if reduction == "none":
        return alpha * kl + (1 - alpha) * ce
    if reduction == "sum":
        return (alpha * kl + (1 - alpha) * ce).sum()
    if reduction == "batchmean":
        return (alpha * kl + (1 - alpha) * ce).sum() / n
    return alpha * kl.sum() / (n * C) + (1 - alpha) * ce.sum() / n


def run(fn, s, t, target, grad_teacher=True, weight_seed=0, **kw):
    """Loss and gradients of sum(w * loss) for a fixed random w (so that `none` is checked per row)."""
    s = s.detach().clone().requires_grad_()
    t = t.detach().clone().requires_grad_(grad_teacher)
    loss = fn(s, t, target, **kw)
    g = torch.Generator().manual_seed(weight_seed)
    w = torch.rand(loss.shape, generator=g, dtype=torch.float64).to(loss.dtype) + 0.5
    (loss * w).sum().backward()
    return [loss.detach(), s.grad] + ([t.grad] if grad_teacher else [])


def ours(backend):
    def fn(s, t, target, T=1.0, alpha=1.0, reduction="batchmean", ignore_index=-100):
        with sk.backend(backend):
            if target is None:
                return sk.kd_kl_div(s, t, temperature=T, reduction=reduction)
            return sk.kd_loss(s, t, target, temperature=T, alpha=alpha, reduction=reduction,
                              ignore_index=ignore_index)
    return fn


def check_close(s, t, target=None, backend="auto", grad_teacher=True, **kw):
    ref = run(eager, s.double(), t.double(), target, grad_teacher, **kw)
    base = run(eager, s, t, target, grad_teacher, **kw)
    got = run(ours(backend), s, t, target, grad_teacher, **kw)
    for name, r, b, o in zip(["loss", "grad_student", "grad_teacher"], ref, base, got):
        assert o.dtype == s.dtype and o.shape == r.shape, name
        assert torch.isfinite(o).all() == torch.isfinite(r).all(), name
        err_ours = (o.double() - r).abs().nan_to_num(0).max().item() if o.numel() else 0.0
        err_eager = (b.double() - r).abs().nan_to_num(0).max().item() if b.numel() else 0.0
        scale = max(1.0, r.abs().nan_to_num(0).max().item()) if r.numel() else 1.0
        assert err_ours <= 2 * err_eager + ATOL[s.dtype] * scale, (name, err_ours, err_eager)


def logits(shape, dtype=torch.float32, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def targets(shape, C, ignored=(), seed=1):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, shape, generator=g)
    for i in ignored:
        y.view(-1)[i] = -100
    return y


# ---- shared with tests/test_dkd_loss.py ----------------------------------------------------------------
HOST_READS = ("item", "__bool__", "__int__", "__float__", "__index__", "tolist", "numpy")


@contextlib.contextmanager
def no_host_reads(monkeypatch, who):
    """Inside: reading a tensor's value on the host (what a CUDA call would synchronise on) fails."""
    def refuse(*a, **k):
        raise AssertionError(f"{who} read a tensor value on the host")

    with monkeypatch.context() as m:
        for name in HOST_READS:
            m.setattr(torch.Tensor, name, refuse)
        yield


def opcheck_family(name, family, samples):
    """torch.library.opcheck of torch.ops.shufflekern.<name><family> ("": native, "_triton") on every sample."""
    op = getattr(torch.ops.shufflekern, name + family)
    for args in samples:
        torch.library.opcheck(op, args)


def gradcheck_inputs():
    """fp64 3 x 6 student and teacher logits (both requiring grad) and targets with an ignored row."""
    s = logits((3, 6), torch.float64).requires_grad_()
    t = logits((3, 6), torch.float64, seed=1).requires_grad_()
    return s, t, torch.tensor([2, -100, 5])


def check_compiled(f):
    """f(s, t, y) under torch.compile(fullgraph=True) gives the eager loss and gradients (6 x 50 logits)."""
    torch._dynamo.reset()
    s, t = logits((6, 50)), logits((6, 50), seed=1)
    y = targets((6,), 50, (2,))
    got = run(torch.compile(f, fullgraph=True), s, t, y)
    want = run(f, s, t, y)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def check_bad_input(bad, backend):
    """A BAD entry (fn(s, t, y), exception type, message pattern) raises under the backend (4 x 10 logits)."""
    fn, exc, match = bad
    s, t = logits((4, 10)), logits((4, 10), seed=1)
    y = targets((4,), 10)
    with sk.backend(backend), pytest.raises(exc, match=match):
        fn(s, t, y)


# ---- numerics ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("shape", [(7, 1), (13, 7), (5, 1000)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_kd_kl_div_matches_reference(shape, dtype, reduction):
    check_close(logits(shape, dtype), logits(shape, dtype, seed=1), T=4.0, reduction=reduction)


# (1, 40000): one long row is split across threads (chunked statistics merged, then a parallel gradient).
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 50257), (1, 40000)])
@pytest.mark.parametrize("with_target", [False, True])
def test_long_rows(shape, dtype, with_target):
    y = targets(shape[:-1], shape[-1]) if with_target else None
    check_close(logits(shape, dtype), logits(shape, dtype, seed=1), y, T=4.0, alpha=0.7, reduction="none")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(13, 7), (9, 1000)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignored", [(), (0, 1)])
def test_kd_loss_matches_reference(shape, dtype, reduction, ignored):
    y = targets(shape[:-1], shape[-1], ignored)
    check_close(logits(shape, dtype), logits(shape, dtype, seed=1), y, T=4.0, alpha=0.7, reduction=reduction)


@pytest.mark.parametrize("T", [0.5, 1.0, 4.0, 20.0])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_temperatures(T, alpha):
    shape = (11, 1000)
    check_close(logits(shape), logits(shape, seed=1), targets((11,), 1000, (3,)), T=T, alpha=alpha,
                reduction="batchmean")


@pytest.mark.parametrize("scale", [1e2, 1e4])
@pytest.mark.parametrize("T", [0.5, 4.0])
def test_huge_logits_do_not_overflow(scale, T):
    shape = (6, 1000)
    s, t = logits(shape, scale=scale), logits(shape, scale=scale, seed=1)
    y = targets((6,), 1000)
    outs = run(ours("auto"), s, t, y, T=T, alpha=0.5, reduction="none")
    assert all(torch.isfinite(o).all() for o in outs)
    check_close(s, t, y, T=T, alpha=0.5, reduction="none")


def test_masked_teacher_classes():
    s, t = logits((9, 1000)), logits((9, 1000), seed=1)
    t[:, ::3] = -math.inf   # teacher probability exactly 0: contributes 0, gradient 0
    s[0, ::3] = -math.inf   # student -inf where p = 0 too: still 0, not NaN
    outs = run(ours("auto"), s, t, None, T=2.0, reduction="none")
    assert all(torch.isfinite(o).all() for o in outs)
    assert (outs[2][:, ::3] == 0).all()
    check_close(s, t, T=2.0, reduction="none")
    check_close(s, t, targets((9,), 1000), T=2.0, alpha=0.5, reduction="sum")


def test_student_minus_inf_where_teacher_positive_is_inf():
    s, t = logits((2, 10)), logits((2, 10), seed=1)
    s[1, 4] = -math.inf
    loss = sk.kd_kl_div(s, t, reduction="none")
    assert torch.isfinite(loss[0]) and loss[1] == math.inf


NON_CONTIGUOUS = ["3d", "transposed", "class_sliced", "row_sliced", "expanded_teacher"]


def non_contiguous_case(layout):
    """(student, teacher, target) of 97 classes laid out as `layout` (one of NON_CONTIGUOUS); also used by
    tests/test_dkd_loss.py."""
    if layout == "3d":
        s, t = logits((3, 5, 97)), logits((3, 5, 97), seed=1)
        y = targets((3, 5), 97, (4,))
    elif layout == "transposed":  # classes not contiguous
        s, t = logits((97, 6)).t(), logits((97, 6), seed=1).t()
        y = targets((6,), 97)
    elif layout == "class_sliced":
        s, t = logits((6, 2 * 97))[:, ::2], logits((6, 97 + 40), seed=1)[:, 40:]
        y = targets((6,), 97)
    elif layout == "row_sliced":
        s, t = logits((12, 97))[::2], logits((12, 200), seed=1)[::2, :97]
        y = targets((6,), 97)
    else:
        s, t = logits((6, 97)), logits((1, 97), seed=1).expand(6, 97)
        y = targets((6,), 97)
    assert layout == "3d" or not (s.is_contiguous() and t.is_contiguous())
    return s, t, y


@pytest.mark.parametrize("layout", NON_CONTIGUOUS)
def test_non_contiguous_inputs(layout):
    s, t, y = non_contiguous_case(layout)
    for reduction in ("none", "batchmean"):
        check_close(s, t, y, T=2.0, alpha=0.6, reduction=reduction)


def test_all_rows_ignored_is_zero():
    s, t = logits((4, 50)), logits((4, 50), seed=1)
    y = torch.full((4,), -100)
    for reduction in REDUCTIONS:
        loss, gs, gt = run(ours("auto"), s, t, y, alpha=0.5, reduction=reduction)
        assert (loss == 0).all() and (gs == 0).all() and (gt == 0).all()


def test_custom_ignore_index_and_int32_target():
    s, t = logits((6, 20)), logits((6, 20), seed=1)
    y = targets((6,), 20)
    y[2] = 7
    a = sk.kd_loss(s, t, y.int(), ignore_index=7, reduction="none")
    assert a[2] == 0 and (a[y != 7] > 0).all()
    torch.testing.assert_close(a, eager(s, t, y, T=4.0, alpha=0.9, reduction="none", ignore_index=7))


def test_empty_rows():
    s, t = logits((0, 10)), logits((0, 10))
    assert sk.kd_kl_div(s, t, reduction="none").shape == (0,)
    assert sk.kd_kl_div(s, t).item() == 0


def test_teacher_gradient_only_when_required():
    s, t = logits((4, 30)).requires_grad_(), logits((4, 30), seed=1)
    sk.kd_kl_div(s, t).backward()
    assert s.grad is not None and t.grad is None
    s.grad = None
    t.requires_grad_()
    with torch.no_grad():
        assert sk.kd_kl_div(s, t).grad_fn is None


def test_grad_output_scaling_and_retain_graph():
    s, t = logits((5, 40)), logits((5, 40), seed=1)
    ref_s = s.clone().requires_grad_()
    (eager(ref_s, t, T=2.0) * 3).backward()
    x = s.clone().requires_grad_()
    loss = sk.kd_kl_div(x, t, temperature=2.0)
    (loss * 3).backward(retain_graph=True)
    torch.testing.assert_close(x.grad, ref_s.grad)
    loss.backward(retain_graph=True)   # unit grad_output: the precomputed gradient, accumulated
    loss.backward()
    torch.testing.assert_close(x.grad, ref_s.grad * 5 / 3)


_ISA_CODE = ("import sys, torch, shufflekern as sk;"
             "g = torch.Generator().manual_seed(0);"
             "s = torch.randn(3, 5000, generator=g); t = torch.randn(3, 5000, generator=g);"
             "y = torch.tensor([1, -100, 4999]); s.requires_grad_();"
             "l = sk.kd_loss(s, t, y, reduction='none'); l.sum().backward();"
             "torch.save((l.detach(), s.grad), sys.argv[1])")


def _isa_results(isa, tmp_path):
    env = dict(os.environ)
    env.pop("ATEN_CPU_CAPABILITY", None)
    if isa:
        env["ATEN_CPU_CAPABILITY"] = isa
    path = str(tmp_path / f"kd_{isa}.pt")
    subprocess.run([sys.executable, "-c", _ISA_CODE, path], check=True, env=env,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return torch.load(path)


@pytest.mark.parametrize("isa", ["default", pytest.param("avx2", marks=pytest.mark.slow)])
def test_isa_variants_agree(isa, tmp_path):
    """The portable (and AVX2) build of the kernel gives this machine's best variant's results."""
    other = _isa_results(isa, tmp_path)
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5000, generator=g), torch.randn(3, 5000, generator=g)
    s.requires_grad_()
    loss = sk.kd_loss(s, t, torch.tensor([1, -100, 4999]), reduction="none")
    loss.sum().backward()
    for a, b in zip(other, (loss.detach(), s.grad)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---- Triton (interpreter: small shapes) ----------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_triton_matches_reference(dtype, reduction):
    s, t = logits((5, 37), dtype), logits((5, 37), dtype, seed=1)
    t[1, :5] = -math.inf
    check_close(s, t, targets((5,), 37, (2,)), backend="triton", T=3.0, alpha=0.6, reduction=reduction)
    check_close(s, t, None, backend="triton", T=1.0, reduction=reduction)


def test_triton_non_contiguous_and_long_row():
    s, t = logits((1100, 3)).t(), logits((3, 1100), seed=1)
    check_close(s, t, targets((3,), 1100, (0,)), backend="triton", T=2.0, alpha=0.5, reduction="none")


def test_triton_all_ignored():
    s, t = logits((3, 9)), logits((3, 9), seed=1)
    with sk.backend("triton"):
        assert sk.kd_loss(s, t, torch.full((3,), -100)).item() == 0


def test_triton_launcher_reads_no_tensor_on_the_host(monkeypatch):
    """What a CUDA call of the Triton launcher would synchronise on: reading a tensor's value on the host.  The
    host range check of the target runs for CPU tensors only (replaced here, as on CUDA); nothing else may read
    a value, whatever the reduction and target."""
    import shufflekern.triton.kd_loss as tkd

    monkeypatch.setattr(tkd, "check_kd_target_range", lambda *a, **k: None)
    s, t = logits((4, 11)), logits((4, 11), seed=1)
    y = targets((4,), 11, (1,))
    for reduction in range(4):
        for target in (None, y):
            with no_host_reads(monkeypatch, "the Triton KD launcher"):
                out = tkd.kd_loss_forward(s, t, target, 2.0, 0.7 if target is not None else 1.0, -100, reduction,
                                          True, True)
            with sk.backend("triton"):
                want = torch.ops.shufflekern.kd_loss_forward_triton(
                    s, t, target, 2.0, 0.7 if target is not None else 1.0, -100, reduction, True, True)
            for a, b in zip(out, want):
                torch.testing.assert_close(a, b)


def test_triton_out_of_range_target_without_the_host_check_is_nan(monkeypatch):
    """On CUDA the launcher skips the host check (no sync): the kernel's row loss is NaN, never a number."""
    import shufflekern.triton.kd_loss as tkd
    monkeypatch.setattr(tkd, "check_kd_target_range", lambda *a, **k: None)
    s, t = logits((3, 9)), logits((3, 9), seed=1)
    for alpha in (1.0, 0.5):
        loss, _, _ = tkd.kd_loss_forward(s, t, torch.tensor([1, 9, -100]), 2.0, alpha, -100, 0, False, False)
        assert loss[0].isfinite() and loss[1].isnan() and loss[2] == 0


# ---- registration: opcheck, gradcheck, torch.compile -----------------------------------------------------
def _samples():
    s, t = logits((4, 13), torch.float64), logits((4, 13), torch.float64, seed=1)
    y = targets((4,), 13, (1,))
    return [
        (s.clone().requires_grad_(), t, None, 2.0, 1.0, -100, 3, True, False),
        (s.clone().requires_grad_(), t.clone().requires_grad_(), y, 4.0, 0.7, -100, 0, True, True),
        (s.float(), t.float(), y, 1.0, 0.5, -100, 1, False, False),
        (s.float().requires_grad_(), t.float(), y, 0.5, 0.2, -100, 2, True, False),
    ]


@pytest.mark.parametrize("family", ["", "_triton"])
def test_opcheck(family):
    opcheck_family("kd_loss_forward", family, _samples())


# The interpreter makes Triton gradchecks slow: one by default, the rest with -m slow.
@pytest.mark.parametrize("backend,reduction", [
    ("auto", "none"), ("auto", "batchmean"), ("auto", "mean"), ("triton", "none"),
    pytest.param("triton", "batchmean", marks=pytest.mark.slow), pytest.param("triton", "mean", marks=pytest.mark.slow)])
def test_gradcheck(backend, reduction):
    s, t, y = gradcheck_inputs()
    with sk.backend(backend):
        assert torch.autograd.gradcheck(
            lambda a, b: sk.kd_loss(a, b, y, temperature=2.0, alpha=0.6, reduction=reduction), (s, t))
        if backend == "auto" or reduction != "none":
            assert torch.autograd.gradcheck(
                lambda a, b: sk.kd_kl_div(a, b, temperature=0.5, reduction=reduction), (s, t))


def test_compile_fullgraph():
    check_compiled(lambda a, b, y: sk.kd_loss(a, b, y, temperature=2.0, alpha=0.5) +
                   sk.kd_kl_div(a, b, reduction="none").sum())


def test_modules():
    s, t = logits((4, 30)), logits((4, 30), seed=1)
    y = targets((4,), 30)
    torch.testing.assert_close(sk.nn.KDKLDiv(2.0, "sum")(s, t), sk.kd_kl_div(s, t, temperature=2.0, reduction="sum"))
    m = sk.nn.KDLoss(temperature=3.0, alpha=0.3, reduction="none", ignore_index=5)
    torch.testing.assert_close(m(s, t, y), sk.kd_loss(s, t, y, temperature=3.0, alpha=0.3, reduction="none",
                                                      ignore_index=5))
    assert "alpha=0.3" in repr(m)
    with pytest.raises(ValueError, match="temperature"):
        sk.nn.KDKLDiv(temperature=0.0)
    with pytest.raises(ValueError, match="reduction"):
        sk.nn.KDLoss(reduction="avg")


# ---- bad input ----------------------------------------------------------------------------------------
BAD = [
    (lambda s, t, y: sk.kd_kl_div(s, t[:, :5]), ValueError, "teacher_logits"),
    (lambda s, t, y: sk.kd_kl_div(s, t.double()), TypeError, "teacher_logits"),
    (lambda s, t, y: sk.kd_kl_div(s.long(), t.long()), TypeError, "student_logits"),
    (lambda s, t, y: sk.kd_kl_div(s[0, 0], t[0, 0]), ValueError, "student_logits"),
    (lambda s, t, y: sk.kd_kl_div(s, t, temperature=0.0), ValueError, "temperature"),
    (lambda s, t, y: sk.kd_kl_div(s, t, temperature=-1.0), ValueError, "temperature"),
    (lambda s, t, y: sk.kd_kl_div(s, t, temperature=float("nan")), ValueError, "temperature"),
    (lambda s, t, y: sk.kd_kl_div(s, t, temperature="4"), TypeError, "temperature"),
    (lambda s, t, y: sk.kd_kl_div(s, t, reduction="avg"), ValueError, "reduction"),
    (lambda s, t, y: sk.kd_loss(s, t, y, alpha=float("inf")), ValueError, "alpha"),
    (lambda s, t, y: sk.kd_loss(s, t, y[:3]), ValueError, "target"),
    (lambda s, t, y: sk.kd_loss(s, t, y.float()), TypeError, "target"),
    (lambda s, t, y: sk.kd_loss(s, t, None), TypeError, "target"),
    (lambda s, t, y: sk.kd_loss(s, t, y.clone().fill_(10)), ValueError, "target"),
    (lambda s, t, y: sk.kd_loss(s, t, y.clone().fill_(-1)), ValueError, "target"),
    (lambda s, t, y: sk.kd_loss(s, t, y, ignore_index=1.5), TypeError, "ignore_index"),
    # The C++ entry point checks the same things for direct op calls.
    (lambda s, t, y: OP(s, t, y.clone().fill_(10), 1.0, 0.5, -100, 3, False, False), ValueError, "target"),
    (lambda s, t, y: OP(s, t, y.clone().fill_(-5), 1.0, 0.5, -100, 3, True, False), ValueError, "target"),
    (lambda s, t, y: OP(s, t[:, :3], None, 1.0, 1.0, -100, 3, False, False), ValueError, "teacher_logits"),
    (lambda s, t, y: OP(s, t, None, 0.0, 1.0, -100, 3, False, False), ValueError, "temperature"),
    (lambda s, t, y: OP(s, t, None, 1.0, 1.0, -100, 7, False, False), ValueError, "reduction"),
    (lambda s, t, y: OP(s, t, y[:2], 1.0, 0.5, -100, 3, False, False), ValueError, "target"),
    (lambda s, t, y: OP(s.int(), t.int(), None, 1.0, 1.0, -100, 3, False, False), TypeError, "student_logits"),
]


@pytest.mark.parametrize("case", range(len(BAD)))
@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_bad_input_raises(case, backend):
    check_bad_input(BAD[case], backend)


# ---- CUDA (skipped without a GPU) ------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cuda_matches_cpu(backend, dtype, reduction):
    s, t = logits((33, 1000), dtype), logits((33, 1000), dtype, seed=1)
    t[0, ::7] = -math.inf
    y = targets((33,), 1000, (3, 5))
    want = run(ours("auto"), s, t, y, T=3.0, alpha=0.6, reduction=reduction)
    got = run(ours(backend), s.cuda(), t.cuda(), y.cuda(), T=3.0, alpha=0.6, reduction=reduction)
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    for g, w in zip(got, want):
        torch.testing.assert_close(g.cpu(), w, rtol=tol, atol=tol)


@pytest.mark.cuda
def test_cuda_bad_target_raises():
    # The CUDA kernel checks targets with a device-side assert (no host sync): PyTorch reports it as a
    # RuntimeError at the next synchronisation, and the CUDA context is unusable afterwards, so this runs in a
    # subprocess.  Its emulated twin (tests/test_emulated.py) runs in every CI.
    code = ("import torch, shufflekern as sk; s = torch.randn(4, 10, device='cuda');"
            "sk.kd_loss(s, s, torch.full((4,), 10, device='cuda'), alpha=0.5).item()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert r.returncode != 0 and "RuntimeError" in r.stderr and "device-side assert" in r.stderr, r.stderr
