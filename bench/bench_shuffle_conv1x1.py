"""shuffle_conv1x1: shufflekern vs eager `conv2d(channel_shuffle(x))`, torch.compile of it, and eager conv2d
alone on the unshuffled input ("conv_only": the floor a free shuffle would reach).

Cases: ShuffleNetV1 1.0x stage shapes (the pointwise group convs that follow a shuffle), batch 8.
"""
import pytest
import torch
import torch.nn.functional as F

import shufflekern as sk
from harness import compiled, measure

# One compiled graph per case (dynamic=False): let dynamo keep them all instead of falling back to eager.
for _name in ("recompile_limit", "cache_size_limit"):
    if hasattr(torch._dynamo.config, _name):
        setattr(torch._dynamo.config, _name, 256)


def eager(x, w, g):
    return F.conv2d(torch.channel_shuffle(x, g), w, groups=g)


PROVIDERS = {
    "shufflekern": lambda: (lambda x, w, g: sk.shuffle_conv1x1(x, w, groups=g)),
    "eager": lambda: eager,
    "compile": lambda: compiled("shuffle_conv1x1", eager),
    "conv_only": lambda: (lambda x, w, g: F.conv2d(x, w, groups=g)),
}

# (groups, C_in, C_out, H=W): ShuffleNetV1 1.0x, g=3 and g=8.
SHAPES = [(3, 240, 60, 28), (3, 60, 240, 28), (3, 480, 120, 14), (3, 120, 480, 14), (3, 960, 240, 7),
          (8, 384, 96, 28), (8, 96, 384, 28), (8, 768, 192, 14), (8, 1536, 384, 7)]
BATCH = 8
# The default run (make bench, a few minutes for every op) takes three of them; --full takes all nine,
# which is what the geometric means of the shuffle_conv1x1 targets are stated over.
DEFAULT = {(3, 240, 60, 28), (3, 120, 480, 14), (8, 384, 96, 28)}
CASES = [pytest.param(s, id=f"g{s[0]}-{s[1]}to{s[2]}@{s[3]}", marks=() if s in DEFAULT else pytest.mark.full)
         for s in SHAPES]


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("mode", ["fwd", pytest.param("bwd", marks=pytest.mark.full), "fwd+bwd"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", CASES)
def test_shuffle_conv1x1(benchmark, case, layout, mode, provider):
    g, c_in, c_out, hw = case
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, c_in, hw, hw, generator=gen).contiguous(memory_format=fmt)
    w = torch.randn(c_out, c_in // g, 1, 1, generator=gen) / (c_in // g) ** 0.5
    fn = PROVIDERS[provider]()
    measure(benchmark, op="shuffle_conv1x1", provider=provider, mode=mode,
            shape=f"{BATCH}x{c_in}x{hw}x{hw}->{c_out} g={g}", layout=layout, dtype=x.dtype,
            fn=lambda x, w: fn(x, w, g), inputs=[x, w])
