"""shufflekern::batch_norm_act: relu(batch_norm(x) [+ residual]) in one op (what the fused models run), and its
wrappers (models._common.bn_act, BatchNormReLU2d, sk.fuse / sk.unfuse joining and splitting BN + ReLU).

fp64 is compared with the eager composition (F.batch_norm, add, relu) to 1e-9, forward and backward.  In
fp32 the ReLU's gradient is discontinuous at 0 and a pre-activation within rounding of 0 can take the other
branch than in fp64, so the fp32 gradients are compared with the fp64 reference taken through the same ReLU
mask (each implementation its own), under the flash-attention rule (error <= 2x eager's + a tiny slack).
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import shufflekern as sk
from shufflekern.models._common import BatchNormReLU2d, ReLUInBatchNorm, bn_act

OP = torch.ops.shufflekern.batch_norm_act
FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
# odd channel counts (vector tails), 1x1 images, and one big enough for several threads' chunks.  The
# channels_last kernel cuts the flat tensor into periods of lcm(C, vector length) elements: (3, 17, 1, 1) is
# shorter than one period, (2, 5, 3, 7) and (1, 60, 7, 9) are whole periods plus a tail (C = 60 as in
# ShuffleNetV1 g=3), (4, 24, 32, 32) is more periods than one block of sums.
SHAPES = [(2, 5, 3, 7), (3, 17, 1, 1), (4, 40, 5, 6), (4, 24, 32, 32), (1, 60, 7, 9)]


def make(shape, dtype, fmt, residual, affine=True, seed=0, noncontig=False):
    gen = torch.Generator().manual_seed(seed)
    n, c, h, w = shape

    def t(*s):
        return torch.randn(*s, generator=gen, dtype=torch.float64)
    x = (t(n, c, h, w) * 2 + 3).to(dtype)  # a non-zero mean
    if noncontig:  # a channel slice of a wider tensor
        wide = torch.zeros(n, 2 * c, h, w, dtype=dtype).contiguous(memory_format=fmt)
        wide[:, ::2] = x
        x = wide[:, ::2]
    else:
        x = x.contiguous(memory_format=fmt)
    r = t(n, c, h, w).to(dtype).contiguous(memory_format=fmt) if residual else None
    weight = (t(c) + 1).to(dtype) if affine else None
    bias = t(c).to(dtype) if affine else None
    rm, rv = t(c).to(dtype) * 0.1, (torch.rand(c, generator=gen, dtype=torch.float64) + 0.5).to(dtype)
    return x, weight, bias, r, rm, rv


def eager(x, weight, bias, r, rm, rv, training, relu, eps=1e-5):
    """The pre-activation z and y of the eager composition (running statistics not updated)."""
    z = F.batch_norm(x, None if training else rm, None if training else rv, weight, bias, training, 0.0, eps)
    if r is not None:
        z = z + r
    return z, (F.relu(z) if relu else z)


def leaves(*ts):
    return [None if t is None else t.detach().clone().requires_grad_() for t in ts]


def grads_of(y, inputs, g):
    live = [t for t in inputs if t is not None]
    got = iter(torch.autograd.grad(y, live, g))
    return [None if t is None else next(got) for t in inputs]


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("relu", [False, True], ids=["id", "relu"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_matches_eager_fp64(fmt, shape, residual, relu, training):
    x, w, b, r, rm, rv = make(shape, torch.float64, FORMATS[fmt], residual, noncontig=shape[1] == 17)
    xs, ws, bs, rs = leaves(x, w, b, r)
    xe, we, be, re_ = leaves(x, w, b, r)
    y, mean, var = OP(xs, ws, bs, rs, rm, rv, training, 1e-5, relu)
    _, ye = eager(xe, we, be, re_, rm, rv, training, relu)
    torch.testing.assert_close(y, ye, rtol=1e-9, atol=1e-11)
    assert y.is_contiguous(memory_format=FORMATS[fmt]) or shape[2:] == (1, 1)
    if training:
        torch.testing.assert_close(mean, x.mean((0, 2, 3)), rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(var, x.var((0, 2, 3), unbiased=False), rtol=1e-9, atol=1e-11)
    else:
        assert mean.numel() == 0 and var.numel() == 0  # the running statistics were used
    g = torch.randn_like(ye)
    for got, ref, name in zip(grads_of(y, [xs, ws, bs, rs], g), grads_of(ye, [xe, we, be, re_], g),
                              ("x", "weight", "bias", "residual")):
        if ref is not None:
            torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10, msg=name)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_fp32_as_accurate_as_eager(fmt, shape, residual):
    x64, w64, b64, r64, rm, rv = make(shape, torch.float64, FORMATS[fmt], residual, seed=1)
    to32 = [None if t is None else t.float() for t in (x64, w64, b64, r64)]
    g = torch.randn(shape, dtype=torch.float64)
    results = {}
    for name in ("ours", "eager"):
        ins = leaves(*to32)
        if name == "ours":
            y = OP(*ins, None, None, True, 1e-5, True)[0]
        else:
            y = eager(*ins, None, None, True, True)[1]
        grads = grads_of(y, ins, g.float())
        # the fp64 reference through this implementation's own ReLU mask
        ref_ins = leaves(x64, w64, b64, r64)
        z_ref, y_ref = eager(*ref_ins, None, None, True, False)
        ref_grads = grads_of(z_ref, ref_ins, g * (y.detach() > 0).double())
        results[name] = (y, grads, torch.relu(y_ref), ref_grads)
    (y, grads, y_ref, ref_grads), (ye, egrads, _, eref_grads) = results["ours"], results["eager"]
    err_o, err_e = (y.double() - y_ref).abs().max().item(), (ye.double() - y_ref).abs().max().item()
    assert err_o <= 2 * err_e + 1e-6 * y_ref.abs().max().item(), ("y", err_o, err_e)
    for name, got, ref, eg, er in zip(("x", "weight", "bias", "residual"), grads, ref_grads, egrads, eref_grads):
        if got is None:
            continue
        err_o = (got.double() - ref).abs().max().item()
        err_e = (eg.double() - er).abs().max().item()
        assert err_o <= 2 * err_e + 1e-5 * ref.abs().max().item() + 1e-7, (name, err_o, err_e)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_gradcheck(training, fmt):
    x, w, b, r, rm, rv = make((2, 3, 4, 5), torch.float64, FORMATS[fmt], True, seed=2)
    xs, ws, bs, rs = leaves(x, w, b, r)
    assert torch.autograd.gradcheck(lambda *a: OP(*a, rm, rv, training, 1e-5, True)[0], (xs, ws, bs, rs))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_opcheck(training, residual):
    x, w, b, r, rm, rv = make((2, 6, 3, 3), torch.float32, torch.channels_last, residual, seed=3)
    xs, ws, bs, rs = leaves(x, w, b, r)
    torch.library.opcheck(OP.default, (xs, ws, bs, rs, rm, rv, training, 1e-5, True))


def test_no_affine_and_no_grad_inputs():
    x, _, _, r, rm, rv = make((3, 7, 4, 4), torch.float64, torch.channels_last, True, affine=False)
    xs = x.clone().requires_grad_()
    y = OP(xs, None, None, r, None, None, True, 1e-5, True)[0]  # r does not require grad
    _, ye = eager(xs, None, None, r, None, None, True, True)
    torch.testing.assert_close(y, ye, rtol=1e-9, atol=1e-11)
    g = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, xs, g)[0], torch.autograd.grad(ye, xs, g)[0],
                               rtol=1e-9, atol=1e-10)


def test_large_mean_keeps_the_variance():
    """Statistics are summed around a per-channel shift: a mean 1e4 times the spread still gives the variance."""
    x = (torch.randn(8, 16, 10, 10, dtype=torch.float64) + 1e4).float().contiguous(memory_format=torch.channels_last)
    _, mean, var = OP(x, None, None, None, None, None, True, 1e-5, False)
    torch.testing.assert_close(var.double(), x.double().var((0, 2, 3), unbiased=False), rtol=1e-4, atol=0)
    torch.testing.assert_close(mean.double(), x.double().mean((0, 2, 3)), rtol=1e-7, atol=0)


@pytest.mark.parametrize("call, exc, match", [
    (lambda x: OP(x[0], None, None, None, None, None, True, 1e-5, True), ValueError, "x must be 4-D"),
    (lambda x: OP(x.int(), None, None, None, None, None, True, 1e-5, True), TypeError, "float32 or float64"),
    (lambda x: OP(x, torch.ones(3), None, None, None, None, True, 1e-5, True), ValueError, "weight must be 1-D"),
    (lambda x: OP(x, None, torch.ones(4, dtype=torch.float64), None, None, None, True, 1e-5, True), TypeError,
     "bias must have the dtype"),
    (lambda x: OP(x, None, None, x[:, :2], None, None, True, 1e-5, True), ValueError, "residual must have the shape"),
    (lambda x: OP(x, None, None, None, None, None, False, 1e-5, True), ValueError, "running_mean"),
    (lambda x: OP(x, None, None, None, None, None, True, -1.0, True), ValueError, "eps"),
    (lambda x: OP(x[:0], None, None, None, None, None, True, 1e-5, True), ValueError, "at least one value"),
])
def test_bad_arguments_raise_and_name_them(call, exc, match):
    x = torch.randn(2, 4, 3, 3)
    with pytest.raises(exc, match=match):
        call(x)


# ---- the module-level wrappers ------------------------------------------------------------------------------
@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_bn_act_updates_running_statistics_like_batchnorm(momentum, residual):
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(12, momentum=momentum).double()
    ref = copy.deepcopy(bn)
    for step in range(3):
        x = torch.randn(4, 12, 5, 5, dtype=torch.float64) * 3 + step
        r = torch.randn_like(x) if residual else None
        y = bn_act(bn, x.clone(), r)
        ye = ref(x) + (r if residual else 0)
        torch.testing.assert_close(y, F.relu(ye), rtol=1e-9, atol=1e-11)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(bn.state_dict()[k], v, rtol=1e-9, atol=1e-12, msg=k)
    bn.eval(), ref.eval()
    x = torch.randn(2, 12, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(bn_act(bn, x.clone(), relu=False), ref(x), rtol=1e-9, atol=1e-11)


def test_bn_act_without_running_statistics_and_one_value_per_channel():
    bn = nn.BatchNorm2d(4, track_running_stats=False).double().eval()  # batch statistics even in eval
    x = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(bn_act(bn, x.clone()), F.relu(bn(x)), rtol=1e-9, atol=1e-11)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn_act(nn.BatchNorm2d(4).train(), torch.randn(1, 4, 1, 1))


def test_bn_act_falls_back_to_eager_where_there_is_no_kernel():
    """bf16 (no kernel), a BatchNorm2d subclass (its own forward: e.g. the trainer's DistBatchNorm2d) and a
    folded BatchNorm (nn.Identity) run the eager ops; the op is not called."""
    class Shifted(nn.BatchNorm2d):
        def forward(self, x):
            return super().forward(x) + 1.0

    x = torch.randn(2, 8, 4, 4)
    cases = [(nn.BatchNorm2d(8).to(torch.bfloat16), x.to(torch.bfloat16)), (Shifted(8), x), (nn.Identity(), x)]
    for bn, inp in cases:
        with torch.profiler.profile() as prof:
            y = bn_act(bn, inp.clone())
        assert "shufflekern::batch_norm_act" not in {e.name for e in prof.events()}
        torch.testing.assert_close(y, F.relu(bn(inp.clone())))


def test_batchnormrelu2d_is_batchnorm_then_relu_with_the_same_state():
    bn = nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.normal_(), bn.running_var.uniform_(0.5, 1.5)
    fused = BatchNormReLU2d.from_bn(bn)
    assert fused.state_dict().keys() == bn.state_dict().keys()
    x = torch.randn(3, 6, 5, 5)
    ref = copy.deepcopy(bn)
    for mode in (True, False):  # training updates both modules' running statistics alike, eval uses them
        torch.testing.assert_close(fused.train(mode)(x), F.relu(ref.train(mode)(x)), rtol=1e-5, atol=1e-6)
    back = fused.to_bn()
    assert type(back) is nn.BatchNorm2d
    bn.weight.requires_grad_(False)  # a frozen BatchNorm stays frozen
    assert not BatchNormReLU2d.from_bn(bn).weight.requires_grad and BatchNormReLU2d.from_bn(bn).bias.requires_grad
    for k, v in fused.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_fuse_joins_and_unfuse_splits_bn_relu_pairs():
    model = sk.models.shufflenet_v2(0.5, 10, fused=False, small_input=True).train()
    fused = sk.fuse(model)
    joined = [m for m in fused.modules() if isinstance(m, BatchNormReLU2d)]
    assert joined and len(joined) == sum(isinstance(m, ReLUInBatchNorm) for m in fused.modules())
    assert fused.state_dict().keys() == model.state_dict().keys()
    back = sk.unfuse(fused)
    assert not any(isinstance(m, (BatchNormReLU2d, ReLUInBatchNorm)) for m in back.modules())
    assert sum(type(m) is nn.ReLU for m in back.modules()) == sum(type(m) is nn.ReLU for m in model.modules())
    # fusing again in eval folds BatchNorm: no joined pair survives, and the ReLUs are back
    refolded = sk.fuse(fused.eval())
    assert not any(isinstance(m, (nn.BatchNorm2d, ReLUInBatchNorm)) for m in refolded.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(refolded(x), model.eval()(x), rtol=1e-4, atol=1e-5)


def test_convert_sync_batchnorm_splits_joined_pairs():
    from shufflekern.distill.dist import DistBatchNorm2d, convert_sync_batchnorm
    fused = sk.models.shufflenet_v1(3, 0.5, 10, small_input=True).train()
    assert any(isinstance(m, BatchNormReLU2d) for m in fused.modules())
    convert_sync_batchnorm(fused)
    assert not any(isinstance(m, (BatchNormReLU2d, ReLUInBatchNorm)) for m in fused.modules())
    assert all(type(m) is DistBatchNorm2d for m in fused.modules() if isinstance(m, nn.BatchNorm2d))


# ---- the Triton twin (CUDA's kernel; here on CPU tensors under TRITON_INTERPRET=1, small shapes) ---------------
TWIN = torch.ops.shufflekern.batch_norm_act_triton
needs_interpreter = pytest.mark.skipif(not sk._backend.TRITON_INSTALLED or (
    not sk._backend.TRITON_INTERPRET and not torch.cuda.is_available()), reason="Triton cannot run here")
# several position tiles (64) and channel tiles (32), tails in both
TWIN_SHAPES = [(2, 5, 3, 7), (3, 40, 7, 9)]


@needs_interpreter
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("shape", TWIN_SHAPES, ids=str)
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_triton_twin_matches_eager_fp64(fmt, shape, residual, training):
    x, w, b, r, rm, rv = make(shape, torch.float64, FORMATS[fmt], residual, seed=4)
    xs, ws, bs, rs = leaves(x, w, b, r)
    xe, we, be, re_ = leaves(x, w, b, r)
    y, mean, var = TWIN(xs, ws, bs, rs, rm, rv, training, 1e-5, True)
    _, ye = eager(xe, we, be, re_, rm, rv, training, True)
    torch.testing.assert_close(y, ye, rtol=1e-9, atol=1e-11)
    assert y.is_contiguous(memory_format=FORMATS[fmt])
    if training:
        torch.testing.assert_close(var, x.var((0, 2, 3), unbiased=False), rtol=1e-9, atol=1e-11)
    g = torch.randn_like(ye)
    for got, ref, name in zip(grads_of(y, [xs, ws, bs, rs], g), grads_of(ye, [xe, we, be, re_], g),
                              ("x", "weight", "bias", "residual")):
        if ref is not None:
            torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10, msg=name)


@needs_interpreter
def test_triton_twin_fp32_matches_the_cpu_kernel():
    x, w, b, r, _, _ = make((3, 40, 7, 9), torch.float32, torch.channels_last, True, seed=5)
    y_twin, m_twin, v_twin = TWIN(x, w, b, r, None, None, True, 1e-5, True)
    y_cpu, m_cpu, v_cpu = OP(x, w, b, r, None, None, True, 1e-5, True)
    torch.testing.assert_close(m_twin, m_cpu, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(v_twin, v_cpu, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y_twin, y_cpu, rtol=1e-5, atol=1e-5)


@needs_interpreter
def test_triton_twin_gradcheck_and_opcheck():
    x, w, b, r, rm, rv = make((2, 3, 4, 5), torch.float64, torch.channels_last, True, seed=6)
    xs, ws, bs, rs = leaves(x, w, b, r)
    assert torch.autograd.gradcheck(lambda *a: TWIN(*a, None, None, True, 1e-5, True)[0], (xs, ws, bs, rs))
    torch.library.opcheck(TWIN.default, (xs, ws, bs, rs, rm, rv, True, 1e-5, True))


@needs_interpreter
def test_bn_act_runs_the_twin_under_the_triton_backend():
    bn = nn.BatchNorm2d(6).double()
    ref = copy.deepcopy(bn)
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    with sk.backend("triton"), torch.profiler.profile() as prof:
        y = bn_act(bn, x.clone())
    assert "shufflekern::batch_norm_act_triton" in {e.name for e in prof.events()}
    torch.testing.assert_close(y, F.relu(ref(x)), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(bn.running_var, ref.running_var, rtol=1e-9, atol=1e-12)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_bn_relu_on_cuda_matches_eager(dtype):
    bn = nn.BatchNorm2d(24).cuda().to(dtype)
    ref = copy.deepcopy(bn)
    x = torch.randn(4, 24, 9, 9, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    r = torch.randn_like(x)
    xs, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, ye = bn_act(bn, xs * 1, r), F.relu(ref(xe) + r)
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y, ye, **tol)
    g = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, xs, g)[0], torch.autograd.grad(ye, xe, g)[0], **tol)
