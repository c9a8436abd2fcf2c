"""sk.models: parameter counts, configurations, small_input, fused == eager (outputs and gradients, train
and eval, both memory formats), no channel-shuffle op in the fused forward, bad configurations."""
import copy

import pytest
import torch
import torchvision
from torch import nn
from torch.profiler import ProfilerActivity, profile

import shufflekern as sk
from shufflekern.models import shufflenet_v1, shufflenet_v2

CL = torch.channels_last
FORMATS = {"nchw": torch.contiguous_format, "channels_last": CL}


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def randomize_bn(model, seed=0):
    """Non-trivial running statistics and affine parameters, so that BN folding is really tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return model


# ---- parameter counts ----------------------------------------------------------------------------------
# Published (megvii ShuffleNet-Series README, in millions) and exact counts of our configuration.
V1_PUBLISHED = {3: (0.7, 1.9, 3.4, 5.4), 8: (1.0, 2.4, 4.3, 6.5)}
V1_EXACT = {3: (717324, 1864728, 3441168, 5449776), 8: (1010448, 2433768, 4268952, 6521232)}
WIDTHS = (0.5, 1.0, 1.5, 2.0)


@pytest.mark.parametrize("groups", [3, 8])
def test_v1_param_counts_match_published_table(groups):
    counts = [n_params(shufflenet_v1(groups, w, fused=False)) for w in WIDTHS]
    assert [round(c / 1e6, 1) for c in counts] == list(V1_PUBLISHED[groups])
    assert counts == list(V1_EXACT[groups])


def test_v1_fused_has_the_same_parameters():
    assert n_params(shufflenet_v1(3, 1.0, fused=True)) == V1_EXACT[3][1]


@pytest.mark.parametrize("groups", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("width", WIDTHS)
def test_v1_every_configuration_builds_and_runs(groups, width):
    m = shufflenet_v1(groups, width, num_classes=10, fused=False, small_input=True).eval()
    stem, outs = sk.models.shufflenet_v1_channels(groups, width)
    assert stem % groups == 0 and all(c % (4 * groups) == 0 for c in outs)
    assert m.stage4[-1].out_channels == outs[-1] == m.fc.in_features
    # No group conv on the first pointwise layer of stage 2, group conv everywhere else.
    assert m.stage2[0].conv1.groups == 1 and m.stage2[1].conv1.groups == groups
    assert m.stage3[0].conv1.groups == groups and len(m.stage3) == 8
    with torch.no_grad():
        assert m(torch.randn(1, 3, 8, 8)).shape == (1, 10)


V2_COUNTS = {0.5: 1366792, 1.0: 2278604, 1.5: 3503624, 2.0: 7393996}
TV_V2 = {0.5: torchvision.models.shufflenet_v2_x0_5, 1.0: torchvision.models.shufflenet_v2_x1_0,
         1.5: torchvision.models.shufflenet_v2_x1_5, 2.0: torchvision.models.shufflenet_v2_x2_0}


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("fused", [False, True])
def test_v2_param_counts_and_state_dict_match_torchvision(width, fused):
    ours, tv = shufflenet_v2(width, fused=fused), TV_V2[width]()
    assert n_params(ours) == V2_COUNTS[width] == n_params(tv)
    sd_ours, sd_tv = ours.state_dict(), tv.state_dict()
    assert list(sd_ours) == list(sd_tv)
    assert all(sd_ours[k].shape == sd_tv[k].shape for k in sd_tv)


@pytest.mark.parametrize("fused", [False, True])
def test_v2_loads_torchvision_weights(fused):
    tv = randomize_bn(torchvision.models.shufflenet_v2_x0_5()).eval()
    ours = shufflenet_v2(0.5, fused=fused)
    ours.load_state_dict(tv.state_dict())
    ours.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make", [lambda s: shufflenet_v1(3, 0.5, 10, fused=False, small_input=s),
                                  lambda s: shufflenet_v2(0.5, 10, fused=False, small_input=s)], ids=["v1", "v2"])
def test_small_input_stem(make):
    small, big = make(True), make(False)
    assert small.conv1[0].stride == (1, 1) and isinstance(small.maxpool, nn.Identity)
    assert big.conv1[0].stride == (2, 2) and isinstance(big.maxpool, nn.MaxPool2d)
    assert list(small.state_dict()) == list(big.state_dict())
    feats = {}
    small.stage4.register_forward_hook(lambda m, i, o: feats.setdefault("s", o))
    big.stage4.register_forward_hook(lambda m, i, o: feats.setdefault("b", o))
    with torch.no_grad():
        small.eval()(torch.randn(1, 3, 32, 32))
        big.eval()(torch.randn(1, 3, 224, 224))
    assert feats["s"].shape[-2:] == (4, 4) and feats["b"].shape[-2:] == (7, 7)


# ---- fused == eager --------------------------------------------------------------------------------------
def canonical_grads(model):
    """The parameter gradients as a state_dict, i.e. in the eager (canonical) channel order."""
    saved = {n: p.data for n, p in model.named_parameters()}
    for p in model.parameters():
        p.data = p.grad
    try:
        sd = model.state_dict()
        return {k: v.clone() for k, v in sd.items() if k in saved}
    finally:
        for n, p in model.named_parameters():
            p.data = saved[n]


def run(model, x, g):
    """Output, input gradient and canonical parameter gradients of model(x) with output gradient g."""
    x = x.clone().requires_grad_()
    y = model(x)
    y.backward(g.to(y.dtype))
    return {"out": y.detach(), "x.grad": x.grad, **canonical_grads(model)}


def assert_fused_matches(eager, fused, fmt, train):
    """Fused == eager, forward and backward.

    Gradients are compared in fp64 (to 1e-9): the kernels run the same code for float and double.  In fp32
    a deep ReLU network's gradient is discontinuous in its activations' signs: an activation within
    rounding of 0 takes the other branch in fp32 than in the fp64 reference (seen: 1 of 23,040 with
    |z| = 3e-8, moving a BatchNorm's input gradient by 18%), in whichever model rounds it across, so an fp32
    gradient comparison fails at random.  The fp32 outputs, which are continuous, are held to the
    flash-attention rule (error <= 2x eager's + a tiny atol against the fp64 reference)."""
    eager, fused = eager.to(memory_format=fmt).train(train), fused.to(memory_format=fmt).train(train)
    ref_model, fused64 = copy.deepcopy(eager).double(), copy.deepcopy(fused).double()
    torch.manual_seed(1)
    x = torch.randn(3, 3, 32, 32).to(memory_format=fmt)
    g = torch.randn(3, 10, dtype=torch.float64)
    ref, got = run(ref_model, x.double(), g), run(fused64, x.double(), g)
    assert ref.keys() == got.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-9, atol=1e-11, msg=k)
    with torch.no_grad():
        ref_out, e32, f32 = ref["out"], eager(x).double(), fused(x).double()
    err_e, err_f = (e32 - ref_out).abs().max().item(), (f32 - ref_out).abs().max().item()
    tol = 2 * err_e + 1e-5 * ref_out.abs().max().item() + 1e-7
    assert err_f <= tol, f"out: fused error {err_f:.3g} > {tol:.3g} (eager fp32 error {err_e:.3g})"
    if train:  # the running statistics moved the same way (one fp32 step each)
        for k, v in eager.state_dict().items():
            if "running" in k or "num_batches" in k:
                torch.testing.assert_close(fused.state_dict()[k], v, atol=1e-5, rtol=1e-5, msg=k)


V1_CASES = [(g, t, f) for g in (3, 8) for t in (True, False) for f in FORMATS]


@pytest.mark.parametrize("groups, train, fmt", V1_CASES)
def test_v1_fused_matches_eager(groups, train, fmt):
    torch.manual_seed(0)
    eager = randomize_bn(shufflenet_v1(groups, 0.5, 10, fused=False, small_input=True))
    fused = shufflenet_v1(groups, 0.5, 10, fused=True, small_input=True)
    fused.load_state_dict(eager.state_dict())  # eager order in, hooks permute
    assert_fused_matches(eager, fused, FORMATS[fmt], train)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_v1_fused_matches_eager_fp64(groups):
    """The other group counts, compared exactly (fp64, train mode: batch statistics; why fp64: see
    assert_fused_matches)."""
    torch.manual_seed(0)
    eager = randomize_bn(shufflenet_v1(groups, 0.5, 10, fused=False, small_input=True)).double()
    fused = sk.fuse(eager)
    torch.manual_seed(1)
    x, g = torch.randn(3, 3, 32, 32, dtype=torch.float64), torch.randn(3, 10, dtype=torch.float64)
    ref, got = run(eager, x, g), run(fused, x, g)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-9, atol=1e-11, msg=k)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_v2_fused_matches_eager(train, fmt):
    torch.manual_seed(0)
    eager = randomize_bn(shufflenet_v2(0.5, 10, fused=False, small_input=True))
    fused = shufflenet_v2(0.5, 10, fused=True, small_input=True)
    fused.load_state_dict(eager.state_dict())
    assert_fused_matches(eager, fused, FORMATS[fmt], train)


def test_v1_fused_state_dict_is_canonical():
    fused = randomize_bn(shufflenet_v1(3, 0.5, 10, fused=True, small_input=True)).eval()
    unit = fused.stage3[1]
    # The tensors themselves are canonical: no state_dict hooks translate them.
    assert torch.equal(unit.state_dict()["bn2.running_mean"], unit.bn2.running_mean)
    assert not unit._state_dict_hooks and not unit._load_state_dict_pre_hooks
    eager = shufflenet_v1(3, 0.5, 10, fused=False, small_input=True).eval()
    eager.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), eager(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("groups", [1, 3, 8])
def test_v1_fused_and_eager_named_parameters_are_equal(groups):
    """Per-channel tools (the pruner, an EMA, inspection) see the same channels in both forms; after a
    training step too (running statistics scattered back into the canonical order)."""
    torch.manual_seed(0)
    eager = randomize_bn(shufflenet_v1(groups, 0.5, 10, fused=False, small_input=True)).double()
    fused = sk.fuse(eager)
    for m in (eager, fused):
        m.train()(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    pe, pf = dict(eager.named_parameters()), dict(fused.named_parameters())
    assert pe.keys() == pf.keys()
    for k in pe:
        assert torch.equal(pe[k], pf[k]), k
    be, bf = dict(eager.named_buffers()), dict(fused.named_buffers())
    for k in be:
        torch.testing.assert_close(bf[k], be[k], rtol=1e-12, atol=1e-12, msg=k)


# ---- the fused forward runs no shuffle ------------------------------------------------------------------
SHUFFLE_OPS = {"aten::channel_shuffle", "aten::native_channel_shuffle", "shufflekern::channel_shuffle",
               "shufflekern::channel_shuffle_triton", "aten::transpose", "aten::clone", "aten::contiguous"}


def ops_run(model, x):
    """Names of the ops that the units (stages 2-4) run; the stem and the classifier hold no shuffle (and
    the classifier's weight.t() would show up as aten::transpose)."""
    stages = nn.Sequential(model.stage2, model.stage3, model.stage4)
    with torch.no_grad():
        x = model.maxpool(model.conv1(x))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            stages(x)
    return {e.name for e in prof.events()}


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("make", [lambda f: shufflenet_v1(3, 0.5, 10, fused=f, small_input=True),
                                  lambda f: shufflenet_v1(8, 0.5, 10, fused=f, small_input=True),
                                  lambda f: shufflenet_v2(0.5, 10, fused=f, small_input=True)],
                         ids=["v1g3", "v1g8", "v2"])
@pytest.mark.parametrize("fold", [False, True], ids=["train-form", "bn-folded"])
def test_fused_forward_runs_no_channel_shuffle(make, fmt, fold):
    x = torch.randn(2, 3, 32, 32).to(memory_format=FORMATS[fmt])
    eager = make(False).to(memory_format=FORMATS[fmt]).eval()
    assert ops_run(eager, x) & SHUFFLE_OPS  # the eager model does shuffle (so this test can fail)
    fused = sk.fuse(eager, fold_bn=fold)
    ran = ops_run(fused, x)
    assert not ran & SHUFFLE_OPS, sorted(ran & SHUFFLE_OPS)
    if "v1" in str(make.__code__.co_consts) or isinstance(fused, sk.models.ShuffleNetV1):
        # (eval, BatchNorm folded, no grad: the whole unit is one op, unit_v1, with the shuffle in its GEMM's reads)
        assert "shufflekern::shuffle_conv1x1" in ran or (fold and "shufflekern::unit_v1" in ran)
    if fold:
        assert "aten::native_batch_norm" not in ran and "aten::_native_batch_norm_legit_no_training" not in ran


# ---- bad configurations -------------------------------------------------------------------------------
@pytest.mark.parametrize("call, match", [
    (lambda: shufflenet_v1(groups=5), "groups"),
    (lambda: shufflenet_v1(groups=0), "groups"),
    (lambda: shufflenet_v1(groups=True), "groups"),
    (lambda: shufflenet_v1(width_mult=0.75), "width_mult"),
    (lambda: shufflenet_v1(num_classes=0), "num_classes"),
    (lambda: shufflenet_v2(width_mult=3.0), "width_mult"),
    (lambda: shufflenet_v2(num_classes=-1), "num_classes"),
    (lambda: sk.models.ShuffleV1Unit(24, 100, groups=3, stride=2), "divisible by groups"),
    (lambda: sk.models.ShuffleV1Unit(30, 240, groups=4, stride=2), r"in_channels \(30\) must be divisible"),
    (lambda: sk.models.ShuffleV1Unit(240, 240, groups=3, stride=3), "stride"),
    (lambda: sk.models.ShuffleV1Unit(240, 480, groups=3, stride=1), "in_channels == out_channels"),
    (lambda: sk.models.FusedShuffleV1Unit(24, 100, groups=3, stride=2), "divisible by groups"),
    (lambda: sk.models.InvertedResidual(116, 116, stride=3), "stride"),
    (lambda: sk.models.InvertedResidual(100, 116, stride=1), "inp == oup"),
])
def test_bad_configuration_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.slow
@pytest.mark.parametrize("make", [lambda: shufflenet_v1(3, 0.5, 10, small_input=True),
                                  lambda: shufflenet_v2(0.5, 10, small_input=True)], ids=["v1", "v2"])
def test_fused_model_compiles_fullgraph(make):
    m = make().to(memory_format=CL)
    x = torch.randn(2, 3, 32, 32).to(memory_format=CL)
    ref = m(x)
    out = torch.compile(m, fullgraph=True)(x)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-3)
