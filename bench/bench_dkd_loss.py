"""dkd_loss (Decoupled KD): shufflekern vs mdistiller's eager formula and torch.compile of it, forward and
forward+backward, all in one run so that the ratios share the machine's state."""
import pytest
import torch
import torch.nn.functional as F

import shufflekern as sk
from harness import compiled, measure

T, ALPHA, BETA = 4.0, 1.0, 8.0


def eager_dkd_loss(s, t, y):
    """mdistiller/distillers/DKD.py dkd_loss (batch-mean normalised, as sk.dkd_loss's batchmean)."""
    gt_mask = torch.zeros_like(s, dtype=torch.bool).scatter_(1, y.unsqueeze(1), True)
    other_mask = ~gt_mask

    def cat_mask(p):
        return torch.cat([(p * gt_mask).sum(1, keepdim=True), (p * other_mask).sum(1, keepdim=True)], 1)

    pred_student = cat_mask(F.softmax(s / T, dim=1))
    pred_teacher = cat_mask(F.softmax(t / T, dim=1))
    tckd = F.kl_div(torch.log(pred_student), pred_teacher, reduction="sum") * T ** 2 / y.shape[0]
    pred_teacher_part2 = F.softmax(t / T - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(s / T - 1000.0 * gt_mask, dim=1)
    nckd = F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="sum") * T ** 2 / y.shape[0]
    return ALPHA * tckd + BETA * nckd


PROVIDERS = {
    "shufflekern": lambda: (lambda s, t, y: sk.dkd_loss(s, t, y, temperature=T, alpha=ALPHA, beta=BETA)),
    "eager": lambda: eager_dkd_loss,
    "compile": lambda: compiled("dkd_loss", eager_dkd_loss),
}

SHAPES = [pytest.param((256, 100), id="256x100"), pytest.param((1024, 1000), id="1024x1000")]


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES)
def test_dkd(benchmark, shape, dtype, mode, provider):
    g = torch.Generator().manual_seed(0)
    r, c = shape
    s = (torch.randn(r, c, generator=g) * 3).to(dtype)
    t = (torch.randn(r, c, generator=g) * 3).to(dtype)
    y = torch.randint(0, c, (r,), generator=g)
    measure(benchmark, op="dkd_loss", provider=provider, mode=mode, shape=f"{r}x{c}", dtype=dtype,
            fn=PROVIDERS[provider](), inputs=[s, t, y], grad_inputs=[True, False, False], budget_s=1.0, memory=True)
