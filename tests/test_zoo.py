"""The trainer's model zoo: RepDistiller's CIFAR VGGs (BN) and MobileNetV2 (mobile_half), their stage and
penultimate taps, and the taps on the fused ShuffleNet students.

The parameter counts below were computed from RepDistiller's own code (models/vgg.py `vgg8_bn` ...
`vgg19_bn`, which its model dict names vgg8 ... vgg19, and models/mobilenetv2.py `mobile_half`) at
num_classes=100; they match the CRD paper's table (vgg13 9.46M, vgg8 3.96M, MobileNetV2 0.81M).
"""
import pytest
import torch
from torch import nn

from shufflekern.distill import build_model, feature_stages, model_names
from shufflekern.distill.models import CifarVGG, MobileNetV2, penultimate_module

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

REPDISTILLER_PARAMS_100 = {
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "mobilenetv2": 812_836,
}


def _count(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", sorted(REPDISTILLER_PARAMS_100))
def test_parameter_counts_equal_repdistiller_at_100_classes(name):
    assert name in model_names()
    m = build_model(name, 100)
    assert _count(m) == REPDISTILLER_PARAMS_100[name]
    # and 10 classes differ by the classifier only
    fc_in = 512 if name.startswith("vgg") else 1280
    assert _count(build_model(name, 10)) == REPDISTILLER_PARAMS_100[name] - 90 * (fc_in + 1)


def test_vgg_layout_and_state_dict_names():
    m = build_model("vgg13", 100)
    assert isinstance(m, CifarVGG)
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    assert len(convs) == 10 and all(c.bias is not None and c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(b, nn.BatchNorm2d) for b in m.modules()) == 10
    # RepDistiller's names: block0.0.weight (conv), block0.1.weight (BN), ..., classifier.weight
    keys = list(m.state_dict())
    assert keys[:2] == ["block0.0.weight", "block0.0.bias"] and "block1.4.running_var" in keys
    assert keys[-2:] == ["classifier.weight", "classifier.bias"]
    # each block ends with BN (its ReLU is the separate stage activation)
    assert all(isinstance(getattr(m, f"block{i}")[-1], nn.BatchNorm2d) for i in range(5))


def test_mobilenetv2_is_mobile_half():
    m = build_model("mobilenetv2", 100)
    assert isinstance(m, MobileNetV2)
    assert m.conv1[0].out_channels == 16 and m.conv1[0].stride == (2, 2)  # int(32 * 0.5), stride 2
    widths = [blk[-1].conv[-1].num_features for blk in m.blocks]
    assert widths == [8, 12, 16, 32, 48, 80, 160]  # int(c * 0.5)
    assert [len(b) for b in m.blocks] == [1, 2, 3, 4, 3, 3, 1]
    assert m.blocks[1][0].conv[0].out_channels == 8 * 6  # expansion 6
    assert m.last_channel == 1280 and m.classifier[0].in_features == 1280


@pytest.mark.parametrize("name,shapes", [
    ("vgg8", [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)]),
    ("vgg16", [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)]),
    ("mobilenetv2", [(12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)]),
])
def test_stage_taps_are_repdistillers_feat_1_to_4(name, shapes):
    m = build_model(name, 10).eval()
    outs, pen = [], []
    hs = [s.register_forward_hook(lambda _m, _i, o: outs.append(o)) for s in feature_stages(m)]
    hs.append(penultimate_module(m).register_forward_pre_hook(lambda _m, i: pen.append(i[0])))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = m(x)
    assert [tuple(o.shape[1:]) for o in outs] == shapes
    if name.startswith("vgg"):
        assert all((o >= 0).all() for o in outs)  # post-ReLU, as RepDistiller's f1..f4 (preact=False)
    assert pen[0].shape == (2, 512 if name.startswith("vgg") else 1280)
    torch.testing.assert_close(y, penultimate_module(m)(pen[0]))
    for h in hs:
        h.remove()


def test_vgg_pools_block3_on_64px_inputs():
    m = build_model("vgg8", 10).eval()
    outs = []
    h = feature_stages(m)[-1].register_forward_hook(lambda _m, _i, o: outs.append(o.shape))
    with torch.no_grad():
        m(torch.randn(1, 3, 64, 64))
    h.remove()
    assert outs == [torch.Size([1, 512, 4, 4])]


@pytest.mark.parametrize("name,kw,stages", [
    ("shufflenet_v2", {"width_mult": 0.5}, [(48, 16, 16), (96, 8, 8), (192, 4, 4)]),
    ("shufflenet_v1", {"width_mult": 0.5, "groups": 3}, None),
])
def test_fused_shufflenet_students_have_taps(name, kw, stages):
    m = build_model(name, 10, fused=True, small_input=True, **kw).eval()
    outs, pen = [], []
    hs = [s.register_forward_hook(lambda _m, _i, o: outs.append(o)) for s in feature_stages(m)]
    hs.append(penultimate_module(m).register_forward_pre_hook(lambda _m, i: pen.append(i[0])))
    with torch.no_grad():
        m(torch.randn(2, 3, 32, 32))
    assert len(outs) == 3 and outs[0].shape[-1] == 16 and outs[-1].shape[-1] == 4
    if stages is not None:
        assert [tuple(o.shape[1:]) for o in outs] == stages
    assert pen[0].dim() == 2 and pen[0].shape[0] == 2
    for h in hs:
        h.remove()


def test_penultimate_module_of_a_plain_model_and_of_one_without_a_classifier():
    m = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert penultimate_module(m) is m[4]
    with pytest.raises(ValueError, match="penultimate"):
        penultimate_module(nn.Sequential(nn.Conv2d(3, 4, 1)))


def test_build_model_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown model 'vgg12'.*vgg8"):
        build_model("vgg12", 10)
