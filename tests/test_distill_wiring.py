"""How the trainer wires the distillation methods on the two pairs of scripts/methods_results.py
(resnet8 -> ShuffleNetV2 and vgg8 -> MobileNetV2, on digits' 32x32 inputs): which stage maps attention
transfer pairs and at what H x W, and that the fused path (`fused=True`, the default) computes, on the same
batch, the same loss terms and the same student gradients as the eager references (`--no-fused`)."""
import pytest
import torch

import shufflekern
from shufflekern.distill import Trainer, TrainConfig, build_model, load_data
from shufflekern.distill.losses import at_pool_pair
from shufflekern.distill.models import is_student_name

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

PAIRS = [("resnet8", "shufflenet_v2"), ("vgg8", "mobilenetv2")]


def _model(name, seed):
    torch.manual_seed(seed)
    kw = {"width_mult": 0.5, "fused": True, "small_input": True} if is_student_name(name) else {}
    return build_model(name, 10, **kw)


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", seed=0, limit_train=64, limit_val=16)


def _batch(data, n=16):
    xs, ys = zip(*(data.train[i] for i in range(n)))
    return torch.stack(xs), torch.stack(ys)


def _trainer(pair, methods, fused, data):
    t_name, s_name = pair
    cfg = TrainConfig(epochs=1, batch_size=16, methods=methods, fused=fused, progress=False)
    return Trainer(cfg, _model(s_name, 1), data, teacher=_model(t_name, 0).eval(), log=lambda m: None)


@pytest.mark.parametrize("pair,want", [
    # (student map, teacher map) -> the H x W the attention maps are compared at
    (PAIRS[0], [((48, 16, 16), (16, 32, 32), (16, 16)), ((96, 8, 8), (32, 16, 16), (8, 8)),
                ((192, 4, 4), (64, 8, 8), (4, 4))]),
    (PAIRS[1], [((12, 16, 16), (128, 16, 16), (16, 16)), ((16, 8, 8), (256, 8, 8), (8, 8)),
                ((48, 4, 4), (512, 4, 4), (4, 4)), ((160, 2, 2), (512, 4, 4), (2, 2))]),
])
def test_at_pairs_the_stage_outputs_as_repdistiller(pair, want, digits):
    """AT pairs RepDistiller's feat[1:-1] (mdistiller's feats[1:]): the stage outputs, shallow to deep,
    the larger map average-pooled to the smaller.  On digits (8x8 upsampled to 32x32) no pair is 1x1 (where
    the normalised attention map would be the constant 1): the smallest is MobileNetV2's 2x2 last stage."""
    tr = _trainer(pair, ("at",), False, digits)
    x, y = _batch(digits)
    tr.net.train()
    tr._loss(x, y)
    got = []
    for s_tap, t_tap in list(zip(tr.net.stage_taps, tr.teacher_stage_taps))[:tr.at_pairs]:
        fs, ft = at_pool_pair(s_tap.out, t_tap.out)
        assert fs.shape[2:] == ft.shape[2:]
        got.append((tuple(s_tap.out.shape[1:]), tuple(t_tap.out.shape[1:]), tuple(fs.shape[2:])))
    assert got == want


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("pair", PAIRS, ids=["resnet8-shufflenet_v2", "vgg8-mobilenetv2"])
@pytest.mark.parametrize("methods", [("kd",), ("dkd",), ("at",), ("kd", "at")], ids=lambda m: "+".join(m))
def test_fused_and_eager_paths_agree_on_a_batch(pair, methods, digits):
    """The same batch through Trainer._loss with fused=True and fused=False: every weighted term equal to
    fp32 rounding, and the student's gradients too (from the same initial weights, in train mode)."""
    for m in methods:
        if not hasattr(shufflekern, {"kd": "kd_loss", "dkd": "dkd_loss", "at": "at_loss"}[m]):
            pytest.skip(f"this build lacks the fused op of {m}")
    x, y = _batch(digits)
    out = {}
    for fused in (True, False):
        tr = _trainer(pair, methods, fused, digits)
        tr.net.train()
        loss, terms = tr._loss(x, y, epoch=0)
        loss.backward()
        out[fused] = ({k: v.item() for k, v in terms.items()}, loss.item(), _grads(tr.model))
    (tf, lf, gf), (te, le, ge) = out[True], out[False]
    assert set(tf) == set(te) == ({"kd"} if "kd" in methods else {"ce"}) | (set(methods) - {"kd"})
    # KD and DKD are KL divergences of near-equal distributions at initialisation (logits ~0.1): their
    # value is a difference of terms of size ~log C, so fp32 rounding leaves an absolute error of about
    # weight * T^2 * eps * log C per row (DKD: 8 * 16 * 1.2e-7 * 2.3 = 3.5e-5; both paths are that close to
    # the fp64 value, the fused one usually closer); AT and CE agree to a few ulps.
    eps, log_c = torch.finfo(torch.float32).eps, torch.log(torch.tensor(10.0)).item()
    abs_tol = {"kd": 0.9 * 16 * eps * log_c * 4, "dkd": 8 * 16 * eps * log_c * 4}
    for k in te:
        assert tf[k] == pytest.approx(te[k], rel=2e-5, abs=abs_tol.get(k, 1e-6)), (k, tf, te)
    assert lf == pytest.approx(le, rel=2e-5, abs=sum(abs_tol.get(k, 1e-6) for k in te))
    assert torch.isfinite(ge).all() and ge.norm() > 0
    # rounding differences pass through BatchNorm's backward: relative to the whole gradient's norm
    assert (gf - ge).norm() <= 1e-4 * ge.norm(), ((gf - ge).norm() / ge.norm()).item()
