"""sk.fuse / sk.unfuse: torchvision parity, weights kept, BN folding in eval, round trips, export."""
import copy

import pytest
import torch
import torchvision
from torch import nn

import shufflekern as sk
from shufflekern.models import shufflenet_v1, shufflenet_v2
from shufflekern.models._common import BatchNormReLU2d, ReLUInBatchNorm

from test_models import randomize_bn

CL = torch.channels_last
FUSED_TYPES = (sk.models.FusedShuffleV1Unit, sk.models.FusedInvertedResidual)


def tv_model(width=0.5):
    torch.manual_seed(0)
    return randomize_bn({0.5: torchvision.models.shufflenet_v2_x0_5,
                         1.0: torchvision.models.shufflenet_v2_x1_0}[width](num_classes=10))


def has_fused(m):
    return any(isinstance(x, FUSED_TYPES) for x in m.modules())


def only_torch_modules(m):
    return all(type(x).__module__.startswith(("torch.", "torchvision.", "shufflekern.models"))
               and not isinstance(x, FUSED_TYPES) for x in m.modules())


@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL], ids=["nchw", "channels_last"])
def test_fuse_torchvision_eval_equals_original(fmt):
    tv = tv_model().eval().to(memory_format=fmt)
    fused = sk.fuse(tv)
    assert type(fused) is type(tv) and has_fused(fused)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())  # eval: folded
    x = torch.randn(4, 3, 64, 64).to(memory_format=fmt)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), tv(x), rtol=1e-4, atol=1e-5)
    # the original is untouched
    assert not has_fused(tv) and any(isinstance(m, nn.BatchNorm2d) for m in tv.modules())


def test_fuse_torchvision_train_equals_original_with_gradients():
    tv = tv_model().train()
    fused = sk.fuse(tv)
    assert any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())  # train: BN kept
    assert any(isinstance(m, BatchNormReLU2d) for m in fused.modules())  # BN + ReLU pairs joined
    assert fused.state_dict().keys() == tv.state_dict().keys()
    x = torch.randn(4, 3, 64, 64)
    y0, y1 = tv(x), fused(x)
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-5)
    # Gradients in fp64: in fp32 an activation within rounding of 0 can take the other ReLU branch in one
    # model than in the other (see tests/test_models.py assert_fused_matches).
    tv64, fused64 = copy.deepcopy(tv).double(), copy.deepcopy(fused).double()
    tv64(x.double()).square().sum().backward()
    fused64(x.double()).square().sum().backward()
    for (n, p0), (_, p1) in zip(tv64.named_parameters(), fused64.named_parameters()):
        torch.testing.assert_close(p1.grad, p0.grad, rtol=1e-9, atol=1e-11, msg=n)


def test_fold_bn_can_be_forced_either_way():
    tv = tv_model().eval()
    assert any(isinstance(m, nn.BatchNorm2d) for m in sk.fuse(tv, fold_bn=False).modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(sk.fuse(tv, fold_bn=False)(x), tv(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make, train", [
    (lambda: shufflenet_v1(3, 0.5, 10, fused=False), True), (lambda: shufflenet_v1(3, 0.5, 10, fused=False), False),
    (lambda: shufflenet_v1(8, 0.5, 10, fused=False), False), (lambda: shufflenet_v2(0.5, 10, fused=False), False),
    (tv_model, True)], ids=["v1g3-train", "v1g3-eval", "v1g8-eval", "v2-eval", "torchvision-train"])
def test_fuse_unfuse_round_trip(make, train):
    eager = randomize_bn(make()).train(train)
    fused = sk.fuse(eager)
    back = sk.unfuse(fused)
    assert has_fused(fused) and not has_fused(back) and only_torch_modules(back)
    assert back.training == train
    if train:  # nothing folded: the very same state_dict comes back
        sd0, sd1 = eager.state_dict(), back.state_dict()
        assert sd0.keys() == sd1.keys()
        for k in sd0:
            torch.testing.assert_close(sd1[k], sd0[k], rtol=0, atol=0, msg=k)
    x = torch.randn(2, 3, 32, 32)
    eager.eval(), fused.eval(), back.eval()
    with torch.no_grad():
        ref = eager(x)
        torch.testing.assert_close(fused(x), ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(back(x), ref, rtol=1e-4, atol=1e-5)


def test_fuse_finds_units_inside_any_model():
    v2 = shufflenet_v2(0.5, 10, fused=False).eval()
    host = nn.Sequential(nn.Conv2d(3, 48, 1), v2.stage3, nn.Flatten()).eval()
    fused = sk.fuse(host)
    assert all(isinstance(u, sk.models.FusedInvertedResidual) for u in fused[1])
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), host(x), rtol=1e-4, atol=1e-5)
    # a single unit is fused too, and returns a tensor (it has no fused successor)
    unit = sk.fuse(v2.stage2[1])
    assert isinstance(unit, sk.models.FusedInvertedResidual)
    assert isinstance(unit(torch.randn(1, 48, 4, 4)), torch.Tensor)


def test_fuse_rejects_non_modules():
    with pytest.raises(TypeError, match="model"):
        sk.fuse("resnet")
    with pytest.raises(TypeError, match="model"):
        sk.unfuse(None)


@pytest.mark.parametrize("make", [lambda: shufflenet_v1(3, 0.5, 10), lambda: shufflenet_v2(0.5, 10)],
                         ids=["v1", "v2"])
def test_unfused_model_exports_with_torch_export(make):
    model = sk.unfuse(sk.fuse(randomize_bn(make()).eval()))  # BN folded, plain modules
    x = torch.randn(1, 3, 64, 64)
    ep = torch.export.export(model, (x,))
    names = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("shufflekern" in n for n in names), names
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make", [lambda: shufflenet_v1(3, 0.5, 10),
                                  pytest.param(lambda: shufflenet_v2(0.5, 10), marks=pytest.mark.slow)],
                         ids=["v1", "v2"])
def test_unfused_model_exports_to_onnx(make, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    model = sk.unfuse(sk.fuse(randomize_bn(make()).eval()))
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), str(path), dynamo=True)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert not any(node.domain.startswith("shufflekern") for node in proto.graph.node)


def test_fused_v2_in_train_mode_accepts_a_deepcopy_and_keeps_pair_links():
    fused = shufflenet_v2(0.5, 10)
    clone = copy.deepcopy(fused)
    assert type(clone.stage3) is sk.models.FusedUnitSequence
    assert clone.state_dict().keys() == fused.state_dict().keys()


def test_fused_v2_stages_pass_tensors_between_children():
    """Consecutive fused V2 units pass channel halves only inside a FusedUnitSequence; as children of a
    plain nn.Sequential (or called alone) they take and return tensors, with the same result."""
    torch.manual_seed(0)
    fused = randomize_bn(shufflenet_v2(0.5, 10)).eval()
    x = torch.randn(2, 48, 8, 8)
    with torch.no_grad():
        ref = fused.stage3(x)
        assert isinstance(ref, torch.Tensor)
        plain = nn.Sequential(*fused.stage3)
        y = x
        for u in plain:
            y = u(x if y is None else y)
            assert isinstance(y, torch.Tensor)
        torch.testing.assert_close(plain(x), ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
    back = sk.unfuse(fused)
    assert type(back.stage3) is nn.Sequential and not any(isinstance(m, sk.models.FusedUnitSequence)
                                                           for m in back.modules())
