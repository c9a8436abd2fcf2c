"""sk.dkd_loss (Decoupled KD) against an fp64 reference of mdistiller's published dkd_loss (flash-attention
rule: our error <= 2x the error of the same formula run eagerly in the input dtype, plus a tiny absolute
term), on the native CPU and Triton backends; the emulated CUDA kernel's twins are in tests/test_emulated.py."""
import math

import pytest
import torch
import torch.nn.functional as F

import shufflekern as sk
from test_kd_loss import (ATOL, NON_CONTIGUOUS, REDUCTIONS, check_bad_input, check_compiled, gradcheck_inputs, logits,
                          no_host_reads, non_contiguous_case, opcheck_family, run, targets)

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy inf - inf in the Triton interpreter

OP = torch.ops.shufflekern.dkd_loss_forward


def mdistiller_rows(s, t, y, T, alpha, beta):
    """mdistiller's dkd_loss (mdistiller/distillers/DKD.py) per row, [R, C] logits, every y a class index:
    without its final `/ batch_size` (the reductions are applied by `reference`)."""
    gt_mask = torch.zeros_like(s, dtype=torch.bool).scatter_(1, y.unsqueeze(1), True)
    other_mask = ~gt_mask

    def cat_mask(p):
        return torch.cat([(p * gt_mask).sum(1, keepdim=True), (p * other_mask).sum(1, keepdim=True)], 1)

    pred_student = cat_mask(F.softmax(s / T, dim=1))
    pred_teacher = cat_mask(F.softmax(t / T, dim=1))
    tckd = F.kl_div(torch.log(pred_student), pred_teacher, reduction="none").sum(1) * T ** 2
    # mdistiller: F.kl_div(log_pred_student_part2, F.softmax(t / T - 1000 * gt_mask), ...); the same KL with the
    # teacher as log-probabilities (log_target=True), whose gradient is finite at the target's p = 0 (mdistiller's
    # form gives NaN teacher gradients there: d/dp of p log p at p = 0).
    log_pred_teacher_part2 = F.log_softmax(t / T - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(s / T - 1000.0 * gt_mask, dim=1)
    nckd = F.kl_div(log_pred_student_part2, log_pred_teacher_part2, reduction="none", log_target=True).sum(1) * T ** 2
    return alpha * tckd + beta * nckd


def reference(s, t, y, temperature=4.0, alpha=1.0, beta=8.0, reduction="batchmean", ignore_index=-100):
    """The rows and reductions of sk.dkd_loss around mdistiller_rows (computed in s.dtype)."""
    C = s.shape[-1]
    s2, t2, y2 = s.reshape(-1, C), t.reshape(-1, C), y.reshape(-1).long()
    mask = y2 != ignore_index
    rows = mdistiller_rows(s2, t2, torch.where(mask, y2, 0), temperature, alpha, beta)
    rows = torch.where(mask, rows, 0)
    n = max(int(mask.sum()), 1)
    if reduction == "none":
        return rows.reshape(s.shape[:-1])
    return rows.sum() / {"sum": 1, "batchmean": n, "mean": n * C}[reduction]


def ours(backend):
    def fn(s, t, y, **kw):
        with sk.backend(backend):
            return sk.dkd_loss(s, t, y, **kw)
    return fn


def check_close(s, t, y, backend="auto", grad_teacher=True, **kw):
    ref = run(reference, s.double(), t.double(), y, grad_teacher, **kw)
    base = run(reference, s, t, y, grad_teacher, **kw)
    got = run(ours(backend), s, t, y, grad_teacher, **kw)
    for name, r, b, o in zip(["loss", "grad_student", "grad_teacher"], ref, base, got):
        assert o.dtype == s.dtype and o.shape == r.shape, name
        assert torch.isfinite(o).all(), name
        err_ours = (o.double() - r).abs().max().item() if o.numel() else 0.0
        err_eager = (b.double() - r).abs().nan_to_num(0).max().item() if b.numel() else 0.0
        scale = max(1.0, r.abs().max().item()) if r.numel() else 1.0
        # bf16/fp16: the gradient is returned in the dtype and scaled by grad_output in the dtype (two roundings,
        # as kd_loss): allow one ulp of the largest value on top of the rule.
        tol = max(ATOL[s.dtype], torch.finfo(s.dtype).eps if s.dtype in (torch.bfloat16, torch.float16) else 0.0)
        assert err_ours <= 2 * err_eager + tol * scale, (name, err_ours, err_eager)


# ---- numerics ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("C", [2, 3, 10, 100, 1000, 4097])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_mdistiller(C, dtype, reduction):
    s, t = logits((7, C), dtype), logits((7, C), dtype, seed=1)
    check_close(s, t, targets((7,), C, (3,)), reduction=reduction)


def test_mdistiller_normalisation_is_batchmean():
    """mdistiller divides the summed rows by target.shape[0]: our batchmean with no ignored row."""
    s, t = logits((16, 100), torch.float64), logits((16, 100), torch.float64, seed=1)
    y = targets((16,), 100)
    want = mdistiller_rows(s, t, y, 4.0, 1.0, 8.0).sum() / y.shape[0]
    torch.testing.assert_close(sk.dkd_loss(s, t, y), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("T,alpha,beta", [(1.0, 1.0, 8.0), (0.5, 0.3, 2.0), (4.0, 1.0, 0.0), (2.0, 0.0, 1.0),
                                          (8.0, 2.0, 8.0)])
def test_temperature_alpha_beta(T, alpha, beta):
    s, t = logits((11, 300)), logits((11, 300), seed=1)
    check_close(s, t, targets((11,), 300, (4,)), temperature=T, alpha=alpha, beta=beta, reduction="none")


def _confident(dtype, C=100, T=4.0, eps=1e-12, student_eps=1e-6, rows=4):
    """Logits with softmax(t/T)[y] = 1 - eps and softmax(s/T)[y] = 1 - student_eps (other classes equal)."""
    y = targets((rows,), C)
    t = torch.zeros(rows, C, dtype=torch.float64)
    s = logits((rows, C), torch.float64, scale=0.1)
    t[torch.arange(rows), y] = T * math.log((1 - eps) / eps * (C - 1))
    s[torch.arange(rows), y] = T * math.log((1 - student_eps) / student_eps * (C - 1))
    return s.to(dtype), t.to(dtype), y


@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_confident_teacher_is_exact_in_fp32(backend):
    """p_t[y] = 1 - 1e-12 in fp32: 1 - p_t[y] comes from the non-target log-sum-exp, so TCKD (and both
    gradients) keep their relative precision against fp64; 1 - p by subtraction would be 0 in fp32."""
    s, t, y = _confident(torch.float32)
    ref = run(reference, s.double(), t.double(), y, reduction="none", alpha=1.0, beta=0.0)
    got = run(ours(backend), s, t, y, reduction="none", alpha=1.0, beta=0.0)
    for name, r, o in zip(["loss", "grad_student", "grad_teacher"], ref, got):
        rel = ((o.double() - r).abs().max() / r.abs().max()).item()
        assert rel < 1e-4, (name, rel)
    # With the NCKD term (small here: KL of nearly uniform non-target softmaxes), the usual rule.
    check_close(s, t, y, backend=backend, reduction="none")


def test_ignored_rows_count_nowhere():
    s, t = logits((6, 20)), logits((6, 20), seed=1)
    y = targets((6,), 20)
    y[2] = 7
    for reduction in REDUCTIONS:
        check_close(s, t, y, reduction=reduction, ignore_index=7)
    rows = sk.dkd_loss(s, t, y.int(), ignore_index=7, reduction="none")
    assert rows[2] == 0 and (rows[y != 7] > 0).all()
    keep = y != 7
    torch.testing.assert_close(sk.dkd_loss(s, t, y, ignore_index=7), sk.dkd_loss(s[keep], t[keep], y[keep]))


@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_all_rows_ignored_is_zero(backend):
    s, t = logits((4, 50)), logits((4, 50), seed=1)
    y = torch.full((4,), -100)
    for reduction in REDUCTIONS:
        loss, gs, gt = run(ours(backend), s, t, y, reduction=reduction)
        assert (loss == 0).all() and (gs == 0).all() and (gt == 0).all()


def test_empty_rows():
    s = logits((0, 10))
    assert sk.dkd_loss(s, s, torch.zeros(0, dtype=torch.int64), reduction="none").shape == (0,)
    assert sk.dkd_loss(s, s, torch.zeros(0, dtype=torch.int64)).item() == 0


def test_masked_teacher_classes():
    s, t = logits((9, 100)), logits((9, 100), seed=1)
    y = targets((9,), 100)
    t[:, ::3] = -math.inf  # teacher probability exactly 0: contributes 0, gradient 0
    t[torch.arange(9), y] = 1.0
    outs = run(ours("auto"), s, t, y, reduction="none")
    assert all(torch.isfinite(o).all() for o in outs)
    nt = torch.ones(9, 100, dtype=torch.bool)
    nt[torch.arange(9), y] = False
    assert (outs[2][:, ::3][nt[:, ::3]] == 0).all()
    # The reference with -inf replaced by a logit whose probability underflows to exactly 0 in fp64 (its KL
    # form gives 0 * -inf = NaN at -inf itself).
    ref = run(reference, s.double(), t.double().clamp(min=-1e4), y, reduction="none")
    for r, o in zip(ref, outs):
        torch.testing.assert_close(o.double(), r, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("backend", ["auto", "triton"])
@pytest.mark.parametrize("layout", NON_CONTIGUOUS)
def test_non_contiguous_inputs(layout, backend):
    s, t, y = non_contiguous_case(layout)
    for reduction in ("none", "batchmean"):
        check_close(s, t, y, backend=backend, grad_teacher=layout != "expanded_teacher", temperature=2.0,
                    reduction=reduction)


def test_teacher_gradient_only_when_required():
    s, t = logits((4, 30)).requires_grad_(), logits((4, 30), seed=1)
    y = targets((4,), 30)
    sk.dkd_loss(s, t, y).backward()
    assert s.grad is not None and t.grad is None
    t.requires_grad_()
    with torch.no_grad():
        assert sk.dkd_loss(s, t, y).grad_fn is None


def test_grad_output_scaling_and_retain_graph():
    s, t = logits((5, 40)), logits((5, 40), seed=1)
    y = targets((5,), 40)
    ref_s = s.clone().requires_grad_()
    (reference(ref_s, t, y, temperature=2.0) * 3).backward()
    x = s.clone().requires_grad_()
    loss = sk.dkd_loss(x, t, y, temperature=2.0)
    (loss * 3).backward(retain_graph=True)
    torch.testing.assert_close(x.grad, ref_s.grad)
    loss.backward()
    torch.testing.assert_close(x.grad, ref_s.grad * 4 / 3)


# ---- Triton (interpreter: small shapes) ----------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_triton_matches_mdistiller(dtype, reduction):
    s, t = logits((5, 37), dtype), logits((5, 37), dtype, seed=1)
    check_close(s, t, targets((5,), 37, (2,)), backend="triton", temperature=3.0, alpha=0.7, beta=4.0,
                reduction=reduction)


@pytest.mark.parametrize("C", [2, 3, 1100])
def test_triton_odd_and_long_rows(C):
    s, t = logits((3, C)), logits((3, C), seed=1)
    check_close(s, t, targets((3,), C, (0,)), backend="triton", reduction="none")


# ---- registration: opcheck, gradcheck, torch.compile -----------------------------------------------------
def _samples():
    s, t = logits((4, 13), torch.float64), logits((4, 13), torch.float64, seed=1)
    y = targets((4,), 13, (1,))
    return [
        (s.clone().requires_grad_(), t, y, 2.0, 1.0, 8.0, -100, 3, True, False),
        (s.clone().requires_grad_(), t.clone().requires_grad_(), y, 4.0, 0.7, 2.0, -100, 0, True, True),
        (s.float(), t.float(), y, 1.0, 0.5, 1.0, -100, 1, False, False),
        (s.float().requires_grad_(), t.float(), y.int(), 0.5, 0.2, 3.0, -100, 2, True, False),
    ]


@pytest.mark.parametrize("family", ["", "_triton"])
def test_opcheck(family):
    opcheck_family("dkd_loss_forward", family, _samples())


@pytest.mark.parametrize("backend,reduction", [
    ("auto", "none"), ("auto", "batchmean"), ("auto", "mean"), ("auto", "sum"), ("triton", "none"),
    pytest.param("triton", "batchmean", marks=pytest.mark.slow)])
def test_gradcheck(backend, reduction):
    s, t, y = gradcheck_inputs()
    with sk.backend(backend):
        assert torch.autograd.gradcheck(
            lambda a, b: sk.dkd_loss(a, b, y, temperature=2.0, alpha=0.6, beta=3.0, reduction=reduction), (s, t))


def test_compile_fullgraph():
    check_compiled(lambda a, b, y: sk.dkd_loss(a, b, y, temperature=2.0) +
                   sk.dkd_loss(a, b, y, reduction="none").sum())


# ---- bad input ----------------------------------------------------------------------------------------
BAD = [
    (lambda s, t, y: sk.dkd_loss(s[:, :1], t[:, :1], y.clamp(max=0)), ValueError, "at least 2 classes"),
    (lambda s, t, y: sk.dkd_loss(s, t[:, :5], y), ValueError, "teacher_logits"),
    (lambda s, t, y: sk.dkd_loss(s, t.double(), y), TypeError, "teacher_logits"),
    (lambda s, t, y: sk.dkd_loss(s.long(), t.long(), y), TypeError, "student_logits"),
    (lambda s, t, y: sk.dkd_loss(s, t, None), TypeError, "target"),
    (lambda s, t, y: sk.dkd_loss(s, t, y[:3]), ValueError, "target"),
    (lambda s, t, y: sk.dkd_loss(s, t, y.float()), TypeError, "target"),
    (lambda s, t, y: sk.dkd_loss(s, t, y.clone().fill_(10)), ValueError, "target"),
    (lambda s, t, y: sk.dkd_loss(s, t, y.clone().fill_(-1)), ValueError, "target"),
    (lambda s, t, y: sk.dkd_loss(s, t, y, temperature=0.0), ValueError, "temperature"),
    (lambda s, t, y: sk.dkd_loss(s, t, y, beta=float("nan")), ValueError, "beta"),
    (lambda s, t, y: sk.dkd_loss(s, t, y, beta="8"), TypeError, "beta"),
    (lambda s, t, y: sk.dkd_loss(s, t, y, alpha=float("inf")), ValueError, "alpha"),
    (lambda s, t, y: sk.dkd_loss(s, t, y, reduction="avg"), ValueError, "reduction"),
    (lambda s, t, y: sk.dkd_loss(s, t, y, ignore_index=1.5), TypeError, "ignore_index"),
    # The C++ entry point (and the twin's Python entry) checks the same things for direct op calls.
    (lambda s, t, y: OP(s, t, y.clone().fill_(10), 1.0, 1.0, 8.0, -100, 3, False, False), ValueError, "target"),
    (lambda s, t, y: OP(s, t, y.clone().fill_(-5), 1.0, 1.0, 8.0, -100, 3, True, False), ValueError, "target"),
    (lambda s, t, y: OP(s[:, :1], t[:, :1], y.clamp(max=0), 1.0, 1.0, 8.0, -100, 3, False, False), ValueError,
     "at least 2 classes"),
    (lambda s, t, y: OP(s, t, y, 1.0, 1.0, float("inf"), -100, 3, False, False), ValueError, "beta"),
    (lambda s, t, y: OP(s, t[:, :3], y, 1.0, 1.0, 8.0, -100, 3, False, False), ValueError, "teacher_logits"),
    (lambda s, t, y: OP(s, t, y, 1.0, 1.0, 8.0, -100, 7, False, False), ValueError, "reduction"),
]


@pytest.mark.parametrize("case", range(len(BAD)))
@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_bad_input_raises(case, backend):
    check_bad_input(BAD[case], backend)


# ---- CUDA (skipped without a GPU; the emulated twins run in tests/test_emulated.py) ----------------------
@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_cuda_matches_cpu(backend, dtype):
    s, t = logits((33, 1000), dtype), logits((33, 1000), dtype, seed=1)
    y = targets((33,), 1000, (3, 5))
    want = run(ours("auto"), s, t, y, temperature=3.0, alpha=0.6, reduction="none")
    got = run(ours(backend), s.cuda(), t.cuda(), y.cuda(), temperature=3.0, alpha=0.6, reduction="none")
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    for g, w in zip(got, want):
        torch.testing.assert_close(g.cpu(), w, rtol=tol, atol=tol)


# ---- CPU ISA variants --------------------------------------------------------------------------------------
_ISA_CODE = ("import sys, torch, shufflekern as sk;"
             "g = torch.Generator().manual_seed(0);"
             "s = torch.randn(3, 5000, generator=g); t = torch.randn(3, 5000, generator=g);"
             "y = torch.tensor([1, -100, 4999]); s.requires_grad_(); t.requires_grad_();"
             "l = sk.dkd_loss(s, t, y, reduction='none'); l.sum().backward();"
             "torch.save((l.detach(), s.grad, t.grad), sys.argv[1])")


@pytest.mark.parametrize("isa", ["default", pytest.param("avx2", marks=pytest.mark.slow)])
def test_isa_variants_agree(isa, tmp_path):
    """The portable (and AVX2) build of the kernel gives this machine's best variant's results."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, ATEN_CPU_CAPABILITY=isa)
    path = str(tmp_path / f"dkd_{isa}.pt")
    subprocess.run([sys.executable, "-c", _ISA_CODE, path], check=True, env=env,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    other = torch.load(path)
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5000, generator=g), torch.randn(3, 5000, generator=g)
    s.requires_grad_()
    t.requires_grad_()
    loss = sk.dkd_loss(s, t, torch.tensor([1, -100, 4999]), reduction="none")
    loss.sum().backward()
    # Each variant's fp32 exp is an approximation (~2e-6 relative); NCKD's KL sums O(log C) terms that cancel,
    # so the row losses (~10 here: T^2 beta KL) agree to ~1e-5 relative, the gradients to ~1e-6.
    for a, b, rtol in zip(other, (loss.detach(), s.grad, t.grad), (5e-5, 1e-5, 1e-5)):
        torch.testing.assert_close(a, b, rtol=rtol, atol=1e-6)


def test_triton_launcher_reads_no_tensor_on_the_host(monkeypatch):
    """As for kd_loss: with the host range check (CPU tensors only) replaced, the launcher reads no tensor value
    on the host (what a CUDA call would synchronise on), whatever the reduction; an out-of-range target is NaN."""
    import shufflekern.triton.dkd_loss as tdkd

    monkeypatch.setattr(tdkd, "check_kd_target_range", lambda *a, **k: None)
    s, t = logits((4, 11)), logits((4, 11), seed=1)
    y = targets((4,), 11, (1,))
    for reduction in range(4):
        with no_host_reads(monkeypatch, "the Triton DKD launcher"):
            out = tdkd.dkd_loss_forward(s, t, y, 4.0, 1.0, 8.0, -100, reduction, True, True)
        with sk.backend("triton"):
            want = torch.ops.shufflekern.dkd_loss_forward_triton(s, t, y, 4.0, 1.0, 8.0, -100, reduction, True, True)
        for a, b in zip(out, want):
            torch.testing.assert_close(a, b)
    loss, _, _ = tdkd.dkd_loss_forward(s[:3], t[:3], torch.tensor([1, 11, -100]), 4.0, 1.0, 8.0, -100, 0, False,
                                       False)
    assert loss[0].isfinite() and loss[1].isnan() and loss[2] == 0
