"""bn_relu_max_pool (the fused ShuffleNet stems' BatchNorm + ReLU + max_pool2d(3, 2, 1), training mode):
shufflekern's one op vs the two ops the fused models ran before it (batch_norm_act, then ATen's max pool with
its int64 indices), eager `F.batch_norm` + `relu` + `max_pool2d`, and torch.compile of the eager version.

Case: the stem of ShuffleNet V1 g=3 / V2 1.0x at batch 16, [16, 24, 112, 112] -> [16, 24, 56, 56], fp32, in
both memory formats (channels_last is what the fused models train in).  Also max_pool3x3s2, the inference pool.
"""
import pytest
import torch
import torch.nn.functional as F

import shufflekern as sk  # noqa: F401  (registers torch.ops.shufflekern)
from harness import compiled, measure

OP = torch.ops.shufflekern.bn_relu_max_pool
BN_ACT = torch.ops.shufflekern.batch_norm_act


def eager(x, w, b):
    return F.max_pool2d(F.relu(F.batch_norm(x, None, None, w, b, True, 0.1, 1e-5)), 3, 2, 1)


PROVIDERS = {
    "shufflekern": lambda: (lambda x, w, b: OP(x, w, b, None, None, True, 1e-5)[0]),
    "bn_act+pool": lambda: (lambda x, w, b: F.max_pool2d(BN_ACT(x, w, b, None, None, None, True, 1e-5, True)[0],
                                                         3, 2, 1)),
    "eager": lambda: eager,
    "compile": lambda: compiled("bn_relu_max_pool", eager),
}
LAYOUTS = {"channels_last": torch.channels_last, "nchw": torch.contiguous_format}
BATCH, C, HW = 16, 24, 112


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("mode", [pytest.param("fwd", marks=pytest.mark.full), "fwd+bwd"])
@pytest.mark.parametrize("layout", ["channels_last", pytest.param("nchw", marks=pytest.mark.full)])
def test_bn_relu_max_pool(benchmark, layout, mode, provider):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, C, HW, HW, generator=gen).contiguous(memory_format=LAYOUTS[layout])
    w, b = torch.rand(C, generator=gen) + 0.5, torch.randn(C, generator=gen)
    measure(benchmark, op="bn_relu_max_pool", provider=provider, mode=mode,
            shape=f"{BATCH}x{C}x{HW}x{HW} -> {HW // 2}x{HW // 2}", layout=layout, dtype=x.dtype,
            fn=PROVIDERS[provider](), inputs=[x, w, b])


# max_pool3x3s2: the same pool without indices, the fused models' stem at inference (BatchNorm folded into the conv),
# vs ATen's max_pool2d (which computes the indices and drops them) and torch.compile of it.
POOL = {
    "shufflekern": lambda: torch.ops.shufflekern.max_pool3x3s2,
    "eager": lambda: (lambda x: F.max_pool2d(x, 3, 2, 1)),
    "compile": lambda: compiled("max_pool3x3s2", lambda x: F.max_pool2d(x, 3, 2, 1)),
}


@pytest.mark.parametrize("provider", list(POOL))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_max_pool3x3s2(benchmark, layout, provider):
    x = torch.randn(BATCH, C, HW, HW, generator=torch.Generator().manual_seed(0)).contiguous(
        memory_format=LAYOUTS[layout])
    measure(benchmark, op="max_pool3x3s2", provider=provider, mode="fwd",
            shape=f"{BATCH}x{C}x{HW}x{HW} -> {HW // 2}x{HW // 2}", layout=layout, dtype=x.dtype,
            fn=POOL[provider](), inputs=[x], grad_inputs=[False])
