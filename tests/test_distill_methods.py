"""The distillation methods' losses: DKD, attention transfer, RKD (eager references, the sk.nn modules, the
fused ops once merged), against the published formulas written out here in fp64.

The references in this file restate the published code's formulas (mdistiller `distillers/DKD.py`,
RepDistiller `distiller_zoo/AT.py` and `distiller_zoo/RKD.py`) step by step, in the most literal form
(the B x B x D tensor of differences for RKD's angles, the softmax sums for DKD's binary distributions).
"""
import pytest
import torch
import torch.nn.functional as F

import shufflekern
import shufflekern as sk
from shufflekern.distill import losses as L

HAS_DKD = hasattr(shufflekern, "dkd_loss")
HAS_AT = hasattr(shufflekern, "at_loss")
needs_dkd = pytest.mark.skipif(not HAS_DKD, reason="sk.dkd_loss (fused) is not in this build yet")
needs_at = pytest.mark.skipif(not HAS_AT, reason="sk.at_loss (fused) is not in this build yet")

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# -- literal references -------------------------------------------------------------------------------
def dkd_reference(s, t, y, alpha, beta, T):
    """mdistiller's dkd_loss: softmaxes, the (target, rest) sums, log, KL summed / batch size."""
    gt = F.one_hot(y, s.shape[1]).bool()
    ps, pt = F.softmax(s / T, 1), F.softmax(t / T, 1)
    bs = torch.stack([(ps * gt).sum(1), (ps * ~gt).sum(1)], 1)
    bt = torch.stack([(pt * gt).sum(1), (pt * ~gt).sum(1)], 1)
    tckd = (bt * (bt.log() - bs.log())).sum() * T ** 2 / s.shape[0]
    pt2 = F.softmax(t / T - 1000.0 * gt, 1)
    ls2 = F.log_softmax(s / T - 1000.0 * gt, 1)
    nckd = F.kl_div(ls2, pt2, reduction="sum") * T ** 2 / s.shape[0]
    return alpha * tckd + beta * nckd


def at_reference(fs, ft):
    """RepDistiller's Attention.at_loss with p = 2 (pooling to the smaller H, square)."""
    sh, th = fs.shape[2], ft.shape[2]
    if sh > th:
        fs = F.adaptive_avg_pool2d(fs, (th, th))
    elif sh < th:
        ft = F.adaptive_avg_pool2d(ft, (sh, sh))

    def at(f):
        return F.normalize(f.pow(2).mean(1).view(f.size(0), -1))
    return (at(fs) - at(ft)).pow(2).mean()


def rkd_angles_reference(x):
    """RepDistiller's angle construction: the B x B x D differences, normalised, batched products."""
    d = x.unsqueeze(0) - x.unsqueeze(1)
    n = F.normalize(d, p=2, dim=2)
    return torch.bmm(n, n.transpose(1, 2)).view(-1)


def rkd_reference(fs, ft, wd=25.0, wa=50.0):
    def pdist(e, eps=1e-12):
        sq = e.pow(2).sum(1)
        r = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps).sqrt().clone()
        r[range(len(e)), range(len(e))] = 0
        return r
    s, t = fs.view(fs.shape[0], -1), ft.view(ft.shape[0], -1)
    with torch.no_grad():
        td = pdist(t)
        td = td / td[td > 0].mean()
        ta = rkd_angles_reference(t)
    d = pdist(s)
    d = d / d[d > 0].mean()
    return wd * F.smooth_l1_loss(d, td) + wa * F.smooth_l1_loss(rkd_angles_reference(s), ta)


def _logits(n, c, seed=0, scale=3.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, generator=g, dtype=dtype) * scale,
            torch.randn(n, c, generator=g, dtype=dtype) * scale,
            torch.randint(0, c, (n,), generator=g))


# -- DKD ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,c,T,alpha,beta", [(8, 10, 4.0, 1.0, 8.0), (33, 100, 4.0, 1.0, 8.0),
                                              (5, 2, 1.0, 0.5, 2.0), (16, 7, 2.5, 0.0, 1.0)])
def test_dkd_eager_equals_mdistiller_formula_fp64(n, c, T, alpha, beta):
    s, t, y = _logits(n, c)
    s.requires_grad_(True)
    got = L.dkd_loss_eager(s, t, y, temperature=T, alpha=alpha, beta=beta)
    ref = dkd_reference(s, t, y, alpha, beta, T)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    g1, = torch.autograd.grad(got, s)
    g2, = torch.autograd.grad(dkd_reference(s, t, y, alpha, beta, T), s)
    torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-12)


def test_dkd_eager_rows_reductions_and_ignore_index():
    s, t, y = _logits(12, 9, seed=1)
    y[[2, 7]] = -100
    keep = y != -100
    rows = L.dkd_loss_eager(s, t, y, reduction="none")
    assert rows.shape == (12,) and (rows[~keep] == 0).all()
    kept = dkd_reference(s[keep], t[keep], y[keep], 1.0, 8.0, 4.0) * keep.sum()
    torch.testing.assert_close(rows.sum(), kept)
    torch.testing.assert_close(L.dkd_loss_eager(s, t, y, reduction="sum"), kept)
    torch.testing.assert_close(L.dkd_loss_eager(s, t, y), kept / 10)
    torch.testing.assert_close(L.dkd_loss_eager(s, t, y, reduction="mean"), kept / (10 * 9))
    # leading dims are rows
    r3 = L.dkd_loss_eager(s.view(3, 4, 9), t.view(3, 4, 9), y.view(3, 4), reduction="none")
    torch.testing.assert_close(r3, rows.view(3, 4))
    # every row ignored: 0, not NaN, and a zero gradient
    s2 = s.clone().requires_grad_(True)
    z = L.dkd_loss_eager(s2, t, torch.full_like(y, -100))
    z.backward()
    assert z.item() == 0 and (s2.grad == 0).all()
    with pytest.raises(ValueError, match="reduction"):
        L.dkd_loss_eager(s, t, y, reduction="avg")


def test_dkd_eager_is_finite_where_the_literal_formula_is_not():
    s, t, y = _logits(4, 10, seed=2, dtype=torch.float32)
    s[0] = -400.0
    s[0, y[0]] = 400.0  # the student's non-target mass underflows in fp32: log(0) in the literal formula
    assert not torch.isfinite(dkd_reference(s, t, y, 1.0, 8.0, 4.0))
    s = s.requires_grad_(True)
    loss = L.dkd_loss_eager(s, t, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    # and equal to the fp64 value of the same formula
    ref = L.dkd_loss_eager(s.double(), t.double(), y)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)


def test_dkd_eager_gradcheck():
    s, t, y = _logits(5, 6, seed=3, scale=1.0)
    s.requires_grad_(True)
    t.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: L.dkd_loss_eager(a, b, y), (s, t))


def test_dkd_module_eager_path_and_arguments():
    s, t, y = _logits(8, 10, seed=4)
    m = sk.nn.DKDLoss(fused=False)
    assert not m.uses_fused and "path=eager" in repr(m)
    torch.testing.assert_close(m(s, t, y), dkd_reference(s, t, y, 1.0, 8.0, 4.0))
    m2 = sk.nn.DKDLoss(temperature=2.0, alpha=0.5, beta=3.0, reduction="sum")
    torch.testing.assert_close(m2(s, t, y), dkd_reference(s, t, y, 0.5, 3.0, 2.0) * 8)
    assert m2.uses_fused == HAS_DKD
    with pytest.raises(ValueError, match="temperature"):
        sk.nn.DKDLoss(temperature=0)
    with pytest.raises(TypeError, match="beta"):
        sk.nn.DKDLoss(beta="8")
    with pytest.raises(ValueError, match="reduction"):
        sk.nn.DKDLoss(reduction="avg")


@needs_dkd
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_dkd_equals_eager(reduction, dtype):
    s, t, y = _logits(37, 100, seed=5, dtype=dtype)
    y[3] = -100
    kw = dict(temperature=4.0, alpha=1.0, beta=8.0, reduction=reduction)
    s1, s2 = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    a = sk.dkd_loss(s1, t, y, **kw)
    b = L.dkd_loss_eager(s2, t, y, **kw)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a, b, **tol)
    a.sum().backward()
    b.sum().backward()
    torch.testing.assert_close(s1.grad, s2.grad, **tol)
    assert sk.nn.DKDLoss().uses_fused


# -- attention transfer ----------------------------------------------------------------------------------
def test_at_eager_equals_repdistiller_fp64_channels_may_differ():
    g = torch.Generator().manual_seed(0)
    fs = torch.randn(4, 12, 7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    ft = torch.randn(4, 40, 7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    got = L.at_loss_eager(fs, ft)
    ref = at_reference(fs, ft)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-15)
    ga = torch.autograd.grad(got, (fs, ft))
    gb = torch.autograd.grad(at_reference(fs, ft), (fs, ft))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-15)
    # channels_last input: same value
    torch.testing.assert_close(L.at_loss_eager(fs.to(memory_format=torch.channels_last), ft), got)
    assert torch.autograd.gradcheck(L.at_loss_eager, (fs[:2, :3, :3, :2].detach().requires_grad_(True),
                                                      ft[:2, :5, :3, :2].detach().requires_grad_(True)))


def test_at_eager_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="batch size"):
        L.at_loss_eager(torch.randn(2, 3, 4, 4), torch.randn(3, 3, 4, 4))
    with pytest.raises(ValueError, match="H\\*W"):
        L.at_loss_eager(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2))
    with pytest.raises(TypeError, match="f_teacher"):
        L.at_loss_eager(torch.randn(2, 3, 4, 4), [1, 2])


def test_at_module_pools_the_larger_map_and_sums_pairs():
    g = torch.Generator().manual_seed(1)
    s = [torch.randn(3, 8, 16, 16, generator=g, dtype=torch.float64), torch.randn(3, 16, 4, 4, generator=g,
                                                                                  dtype=torch.float64)]
    t = [torch.randn(3, 24, 8, 8, generator=g, dtype=torch.float64), torch.randn(3, 32, 8, 8, generator=g,
                                                                                  dtype=torch.float64)]
    m = sk.nn.ATLoss(fused=False)
    got = m(s, t)
    ref = at_reference(s[0], t[0]) + at_reference(s[1], t[1])
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(m(tuple(s), tuple(t)), ref)
    torch.testing.assert_close(m(s[0], t[0]), at_reference(s[0], t[0]))
    assert "path=eager" in repr(m) and sk.nn.ATLoss().uses_fused == HAS_AT
    with pytest.raises(ValueError, match="pass pairs"):
        m(s, t[:1])
    with pytest.raises(TypeError, match="both"):
        m(s[0], t)
    with pytest.raises(ValueError, match="4-D"):
        m([torch.randn(3, 8)], [torch.randn(3, 8)])


@needs_at
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_at_equals_eager(dtype):
    g = torch.Generator().manual_seed(2)
    fs = torch.randn(4, 116, 14, 14, generator=g, dtype=dtype)
    ft = torch.randn(4, 232, 14, 14, generator=g, dtype=dtype)
    a1, a2 = fs.clone().requires_grad_(True), fs.clone().requires_grad_(True)
    t1, t2 = ft.clone().requires_grad_(True), ft.clone().requires_grad_(True)
    a = sk.at_loss(a1, t1)
    b = L.at_loss_eager(a2, t2)
    tol = dict(rtol=1e-5, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(a, b, **tol)
    a.backward()
    b.backward()
    torch.testing.assert_close(a1.grad, a2.grad, **tol)
    torch.testing.assert_close(t1.grad, t2.grad, **tol)
    assert sk.nn.ATLoss().uses_fused


# -- RKD ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("b,d", [(2, 3), (7, 5), (16, 64), (33, 10)])
def test_rkd_gram_angles_equal_the_bxbxd_construction_fp64(b, d):
    g = torch.Generator().manual_seed(b * 100 + d)
    x = (torch.randn(b, d, generator=g, dtype=torch.float64) * 3 + 5).requires_grad_(True)
    got = L._rkd_angles(x)
    ref = rkd_angles_reference(x)
    assert got.shape == (b ** 3,)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    # Gradients: the entries [a, a, c] and [a, b, a] are 0 whatever x is (a zero difference); there the
    # literal construction differentiates F.normalize at 0 (slope 1/eps = 1e12) and its gradient is
    # rounding noise (it fails gradcheck), so it is compared on weights that are 0 on those entries; the
    # Gram form passes gradcheck with every entry weighted.
    w = torch.randn(b, b, b, generator=g, dtype=torch.float64)
    i = torch.arange(b)
    w[i, i, :] = 0
    w[i, :, i] = 0
    g1, = torch.autograd.grad((got * w.reshape(-1)).sum(), x)
    g2, = torch.autograd.grad((ref * w.reshape(-1)).sum(), x)
    torch.testing.assert_close(g1, g2, rtol=1e-8, atol=1e-10)
    if b <= 7:
        w_all = torch.randn(b ** 3, generator=g, dtype=torch.float64)
        assert torch.autograd.gradcheck(lambda a: (L._rkd_angles(a) * w_all).sum(), (x,))


def test_rkd_eager_equals_repdistiller_fp64_value_and_gradient():
    g = torch.Generator().manual_seed(3)
    fs = torch.randn(24, 48, generator=g, dtype=torch.float64, requires_grad=True)
    ft = torch.randn(24, 128, generator=g, dtype=torch.float64)
    got = L.rkd_loss_eager(fs, ft)
    ref = rkd_reference(fs, ft)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    g1, = torch.autograd.grad(got, fs)
    g2, = torch.autograd.grad(ref, fs)
    torch.testing.assert_close(g1, g2, rtol=1e-8, atol=1e-12)
    # module, other weights, 4-D features (flattened)
    m = sk.nn.RKDLoss(distance_weight=1.0, angle_weight=2.0)
    torch.testing.assert_close(m(fs.view(24, 3, 4, 4), ft), rkd_reference(fs, ft, 1.0, 2.0))
    assert torch.autograd.gradcheck(lambda a: L.rkd_loss_eager(a, ft[:5, :6]),
                                    (fs[:5, :4].detach().requires_grad_(True),))


def test_rkd_duplicate_samples_and_fp32_under_autocast():
    g = torch.Generator().manual_seed(4)
    fs = torch.randn(8, 16, generator=g, dtype=torch.float64)
    fs[5] = fs[2]  # a zero difference between two distinct samples: F.normalize gives 0 there
    ft = torch.randn(8, 16, generator=g, dtype=torch.float64)
    torch.testing.assert_close(L.rkd_loss_eager(fs, ft), rkd_reference(fs, ft), rtol=1e-9, atol=1e-10)
    x = fs.float().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = sk.nn.RKDLoss()(x.to(torch.bfloat16), ft.float().to(torch.bfloat16))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(x.grad).all()
    # fp32 vs the fp64 reference, with features far from the origin (the Gram form centres them first)
    big = torch.randn(16, 32, generator=g, dtype=torch.float64) + 50
    torch.testing.assert_close(L.rkd_loss_eager(big.float(), ft[:8].repeat(2, 2).float()).double(),
                               rkd_reference(big, ft[:8].repeat(2, 2)), rtol=2e-4, atol=2e-4)


def test_rkd_bad_input():
    with pytest.raises(ValueError, match="same batch size"):
        L.rkd_loss_eager(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="at least 2"):
        L.rkd_loss_eager(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(TypeError, match="angle_weight"):
        sk.nn.RKDLoss(angle_weight=None)
