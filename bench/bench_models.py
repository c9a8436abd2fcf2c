"""End-to-end ShuffleNets, 224x224 fp32: inference (fwd, eval mode) at batch 1 and 16 and a training step
(fwd+bwd: forward, cross-entropy, backward and an SGD step) at batch 16.

Providers, each in its best memory format (so one case has one layout label, "best", and the format is
part of the provider name):
  shufflekern  the fused model, channels_last (inference: `sk.fuse` of the eval model, BatchNorm folded;
               training: `sk.fuse` of the train-mode model)
  eager        the eager model, NCHW (V2: torchvision's ShuffleNetV2 itself)
  eager_cl     the eager model, channels_last
  compile      torch.compile of the eager model, channels_last
  compile_fused  torch.compile of the fused model (`sk.fuse`), channels_last
The SGD step of the training case runs at the start of the next round (the harness owns backward), so each
timed round is one whole step.
"""
import pytest
import torch
import torch.nn.functional as F
import torchvision

import shufflekern as sk
from harness import DEVICE, compiled, measure

CL = torch.channels_last
MODELS = {
    "shufflenet_v1_g3_1.0x": lambda: sk.models.shufflenet_v1(3, 1.0, fused=False),
    "shufflenet_v1_g8_1.0x": lambda: sk.models.shufflenet_v1(8, 1.0, fused=False),
    "shufflenet_v2_1.0x": lambda: torchvision.models.shufflenet_v2_x1_0(),
}
PROVIDERS = ("shufflekern", "eager", "eager_cl", "compile", "compile_fused")
FUSED = ("shufflekern", "compile_fused")
COMPILED = ("compile", "compile_fused")


def build(name, provider, train):
    torch.manual_seed(0)
    model = MODELS[name]().train(train)
    if provider in FUSED:
        model = sk.fuse(model)
    fmt = torch.contiguous_format if provider == "eager" else CL
    return model.to(DEVICE, memory_format=fmt), fmt


def is_default(name, batch, train, provider):
    """The default set (`make bench`): inference at batch 1 and 16 of V1 g=3 and V2 1.0x, every provider
    (torch.compile of the eager and of the fused model included: building the 8 graphs is most of the
    models' share of the default run)."""
    return not train and name != "shufflenet_v1_g8_1.0x"


CASES = [pytest.param(name, batch, train, provider, id=f"{name}-{'train' if train else 'infer'}-b{batch}-{provider}",
                      marks=() if is_default(name, batch, train, provider) else pytest.mark.full)
         for name in MODELS for batch, train in ((1, False), (16, False), (16, True)) for provider in PROVIDERS]


@pytest.mark.parametrize("name, batch, train, provider", CASES)
def test_model(benchmark, name, batch, train, provider):
    model, fmt = build(name, provider, train)
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=fmt)
    fwd = compiled(f"{name}-{train}-{batch}-{provider}", model) if provider in COMPILED else model
    if train:
        target = torch.randint(0, 1000, (batch,), device=DEVICE)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def fn(inp):
            opt.step()  # the previous round's gradients (a no-op on the first round)
            opt.zero_grad(set_to_none=True)
            return F.cross_entropy(fwd(inp), target)
    else:
        model.eval()
        fn = fwd
    measure(benchmark, op=name, provider=provider, mode="fwd+bwd" if train else "fwd",
            shape=f"{batch}x3x224x224", layout="best", dtype=torch.float32, fn=fn, inputs=[x],
            grad_inputs=[False], budget_s=4.0 if train else 2.5, memory=True)
