"""at_loss (attention transfer, RepDistiller's AT with p = 2): shufflekern vs the eager formula and
torch.compile of it, forward+backward with the gradient to the student only (as in training: the teacher's
maps come from a frozen network), in one run so that the ratios share the machine's state.  Cases: the
issue's (16, 116 vs 232, 28, 28) and (64, 64 vs 256, 8, 8), fp32, both memory formats."""
import pytest
import torch
import torch.nn.functional as F

import shufflekern as sk
from harness import compiled, measure


def _at(f):
    return F.normalize(f.pow(2).mean(1).reshape(f.size(0), -1))


def eager_at_loss(f_s, f_t):
    # RepDistiller's distiller_zoo/AT.py (view -> reshape: a channels_last map's mean is not viewable)
    return (_at(f_s) - _at(f_t)).pow(2).mean()


PROVIDERS = {
    "shufflekern": lambda: sk.at_loss,
    "eager": lambda: eager_at_loss,
    "compile": lambda: compiled("at_loss", eager_at_loss),
}

CASES = [  # (N, C_student, C_teacher, H, W)
    pytest.param((16, 116, 232, 28, 28), id="16x116v232x28x28"),
    pytest.param((64, 64, 256, 8, 8), id="64x64v256x8x8"),
]
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("case", CASES)
def test_at_loss(benchmark, case, layout, mode, provider):
    n, cs, ct, h, w = case
    g = torch.Generator().manual_seed(0)
    fmt = LAYOUTS[layout]
    f_s = torch.randn(n, cs, h, w, generator=g).contiguous(memory_format=fmt)
    f_t = torch.randn(n, ct, h, w, generator=g).contiguous(memory_format=fmt)
    measure(benchmark, op="at_loss", provider=provider, mode=mode, shape=f"{n}x{cs}v{ct}x{h}x{w}", layout=layout,
            dtype=torch.float32, fn=PROVIDERS[provider](), inputs=[f_s, f_t], grad_inputs=[True, False],
            budget_s=1.0, memory=True)
