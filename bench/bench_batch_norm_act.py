"""batch_norm_act (the fused models' BatchNorm [+ residual] + ReLU, training mode): shufflekern vs eager
`F.batch_norm` (+ `add_`) + `relu_`, and torch.compile of that, channels_last fp32.

Cases: ShuffleNetV1 g=3 1.0x activations at batch 16 (the stem's BN + ReLU at 112x112, a stage-2 unit's
closing BN + residual + ReLU at 28x28, a stage-3 one at 14x14).
"""
import pytest
import torch
import torch.nn.functional as F

import shufflekern as sk  # noqa: F401  (registers torch.ops.shufflekern)
from harness import compiled, measure

CL = torch.channels_last
OP = torch.ops.shufflekern.batch_norm_act


def eager(x, w, b, r):
    y = F.batch_norm(x, None, None, w, b, True, 0.1, 1e-5)
    if r is not None:
        y = y.add_(r)
    return y.relu_()


def eager_out_of_place(x, w, b, r):  # what torch.compile is given (no in-place ops to functionalise)
    y = F.batch_norm(x, None, None, w, b, True, 0.1, 1e-5)
    return F.relu(y + r if r is not None else y)


PROVIDERS = {
    "shufflekern": lambda: (lambda x, w, b, r: OP(x, w, b, r, None, None, True, 1e-5, True)[0]),
    "eager": lambda: eager,
    "compile": lambda: compiled("batch_norm_act", eager_out_of_place),
}

# (C, H=W, residual)
SHAPES = [(24, 112, False), (240, 28, True), (480, 14, True)]
# Only with --full: the default run (make bench) stays under 3 minutes; the models' training step, where
# this op matters, is timed by scripts/models_interleaved.py.
CASES = [pytest.param(s, id=f"{s[0]}x{s[1]}x{s[1]}{'+res' if s[2] else ''}", marks=pytest.mark.full)
         for s in SHAPES]
BATCH = 16


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("mode", [pytest.param("fwd", marks=pytest.mark.full), "fwd+bwd"])
@pytest.mark.parametrize("case", CASES)
def test_batch_norm_act(benchmark, case, mode, provider):
    c, hw, residual = case
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, c, hw, hw, generator=gen).contiguous(memory_format=CL)
    w, b = torch.rand(c, generator=gen) + 0.5, torch.randn(c, generator=gen)
    inputs = [x, w, b] + ([torch.randn(BATCH, c, hw, hw, generator=gen).contiguous(memory_format=CL)]
                          if residual else [])
    fn = PROVIDERS[provider]()
    measure(benchmark, op="batch_norm_act", provider=provider, mode=mode,
            shape=f"{BATCH}x{c}x{hw}x{hw}{' +residual' if residual else ''} relu", layout="channels_last",
            dtype=x.dtype, fn=(lambda x, w, b, r=None: fn(x, w, b, r)), inputs=inputs)
