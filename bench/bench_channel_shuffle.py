"""channel_shuffle: shufflekern vs ATen's native torch.channel_shuffle, the view/transpose/contiguous
version torchvision uses (eager), and torch.compile of that version."""
import pytest
import torch

import shufflekern as sk
from harness import DEVICE, compiled, measure


def view_transpose_shuffle(x, groups):
    # torchvision.models.shufflenetv2.channel_shuffle
    n, c, h, w = x.shape
    x = x.view(n, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(n, c, h, w)


PROVIDERS = {
    "shufflekern": lambda: sk.channel_shuffle,
    "native": lambda: torch.channel_shuffle,
    "eager": lambda: view_transpose_shuffle,
    "compile": lambda: compiled("channel_shuffle", view_transpose_shuffle),
}

# (N, C, H, W, groups): ShuffleNetV2 1.0x stage 2 and ShuffleNetV1 g=3 stage 2, batch 16.
CASES = [
    pytest.param((16, 116, 28, 28, 2), id="16x116x28x28-g2"),
    pytest.param((16, 240, 28, 28, 3), id="16x240x28x28-g3"),
    pytest.param((64, 232, 14, 14, 2), id="64x232x14x14-g2", marks=pytest.mark.full),
    pytest.param((64, 464, 7, 7, 2), id="64x464x7x7-g2", marks=pytest.mark.full),
]


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("mode", ["fwd", pytest.param("bwd", marks=pytest.mark.full), "fwd+bwd"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", CASES)
def test_channel_shuffle(benchmark, case, layout, mode, provider):
    n, c, h, w, g = case
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(0)).contiguous(memory_format=fmt)
    fn = PROVIDERS[provider]()
    measure(benchmark, op="channel_shuffle", provider=provider, mode=mode, shape=f"{n}x{c}x{h}x{w} g={g}",
            layout=layout, dtype=x.dtype, fn=lambda t: fn(t, g), inputs=[x])


# ---- the fused ShuffleNetV2 unit's concat + shuffle: shufflekern::interleave (CPU) vs what the eager unit does
# (cat then shuffle, two copies), the fused unit's torch.stack path (its CUDA / torch.compile path) and
# torch.compile of the eager version.  (a, b): the unit's x1 and branch output, ShuffleNetV2 1.0x batch 16.
def cat_shuffle(a, b):
    return torch.channel_shuffle(torch.cat((a, b), 1), 2)


def stack_interleave(a, b):
    from shufflekern.models.shufflenetv2 import _interleave
    return _interleave(a, b)


INTERLEAVE_PROVIDERS = {
    "shufflekern": lambda: (lambda a, b: torch.ops.shufflekern.interleave(a, b, 1)[0]),
    "eager": lambda: cat_shuffle,
    "stack": lambda: stack_interleave,
    "compile": lambda: compiled("interleave", cat_shuffle),
}
INTERLEAVE_CASES = [
    pytest.param((16, 58, 28, 28), id="16x58x28x28"),
    pytest.param((16, 116, 14, 14), id="16x116x14x14"),
    pytest.param((16, 232, 7, 7), id="16x232x7x7", marks=pytest.mark.full),
]


@pytest.mark.skipif(DEVICE.type != "cpu", reason="shufflekern::interleave has CPU kernels only")
@pytest.mark.parametrize("provider", list(INTERLEAVE_PROVIDERS))
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", INTERLEAVE_CASES)
def test_interleave(benchmark, case, layout, mode, provider):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(case, generator=gen).contiguous(memory_format=fmt) for _ in range(2))
    fn = INTERLEAVE_PROVIDERS[provider]()
    measure(benchmark, op="interleave", provider=provider, mode=mode, shape="x".join(map(str, case)) + " (a, b)",
            layout=layout, dtype=a.dtype, fn=fn, inputs=[a, b])
