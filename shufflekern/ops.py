"""The Python half of the ops' registration: fake kernels, and the Triton twins' CPU and CUDA kernels.

Every op is declared twice in C++ with one schema (csrc/shufflekern.cpp): shufflekern::<op>, the compiled
kernels, and its Triton twin shufflekern::<op>_triton.  One C++ autograd kernel per op serves both
(csrc/autograd/<op>.cpp; the backward of a twin calls the twin's backward ops), so each derivative is
written once.  Here, per op schema, one `_register` call declares the rest of the op:
  - the argument check, `shufflekern._validate.check_<op>` (the one Python statement of the op's checks);
  - a fake kernel (output shapes only) for both families, run after the check, so the two families cannot
    drift apart in shapes;
  - which dtypes each kernel family takes (an OpSpec, which the backend policy in shufflekern/_backend.py
    reads: the native CPU kernel, the C++/CUDA kernel (and so the emulated backend), the Triton twin);
  - the twin's CPU and CUDA kernel: the check, the policy's dtype and device check, then the launcher `<op>`
    in shufflekern/triton/<module>.py (imported on first use: importing triton is slow).
"""
import importlib

import torch

from . import _C  # noqa: F401  (loads the library: TORCH_LIBRARY(shufflekern), the kernels, the autograd)
from . import _backend
from . import _validate as V
from ._backend import ANY, NOT_COMPLEX, OpSpec
from ._validate import KD_REDUCTIONS, suggest_memory_format

TRITON = "_triton"
_F32_64 = (torch.float32, torch.float64)
_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _register(name, check, fake, dtypes, module, dtype_arg=0):
    """Register the fake kernel of shufflekern::<name> and <name>_triton (`check`, then `fake`), declare
    `dtypes` (an OpSpec) to the backend policy, and register the twin's CPU and CUDA kernel (`check`, the
    policy's check of args[dtype_arg], then shufflekern.triton.<module>.<name>)."""
    _backend.OPS[name] = dtypes

    def fake_kernel(*args, **kwargs):
        check(*args, **kwargs)
        return fake(*args, **kwargs)

    for family in ("", TRITON):
        torch.library.register_fake(f"shufflekern::{name}{family}")(fake_kernel)

    def triton_kernel(*args):
        check(*args)
        t = args[dtype_arg]
        _backend.require("triton", name, t.device.type, t.dtype)
        launcher = getattr(importlib.import_module(f"shufflekern.triton.{module}"), name)
        return launcher(*args)

    torch.library.register_kernel(f"shufflekern::{name}{TRITON}", ("cpu", "cuda"), triton_kernel)


def _like(x):
    return torch.empty_like(x, memory_format=suggest_memory_format(x))


def _nchw(t, n, c, h, w, dtype=None):
    return torch.empty((n, c, h, w), dtype=dtype or t.dtype, device=t.device, memory_format=suggest_memory_format(t))


def _pooled(x, dtype=None):
    """The output of a 3x3 / stride 2 / padding 1 pool of x (the stem pool's ops)."""
    n, c, h, w = x.shape
    return _nchw(x, n, c, (h - 1) // 2 + 1, (w - 1) // 2 + 1, dtype)


# channel_shuffle: moves elements as bits (any dtype; Triton: no complex) ---------------------------------
_register("channel_shuffle", V.check_channel_shuffle, lambda x, groups: _like(x),
          OpSpec("x", cpu=ANY, cuda=ANY, triton=NOT_COMPLEX), "channel_shuffle")

# shuffle_conv1x1: y = conv2d(channel_shuffle(x, sg), W, b, groups=G); its backward (one op) and its two parts
_SCONV = OpSpec("x", cpu=(torch.float32, torch.float64, torch.bfloat16), cuda=_FLOATS,
                triton=(torch.float32, torch.float16, torch.bfloat16))
_register("shuffle_conv1x1", V.check_shuffle_conv1x1,
          lambda x, weight, bias, groups, shuffle_groups: _nchw(x, x.shape[0], weight.shape[0], *x.shape[2:]),
          _SCONV, "shuffle_conv1x1")
_register("shuffle_conv1x1_grad_input", V.check_shuffle_conv1x1_grad_input,
          lambda grad_out, weight, groups, shuffle_groups: _nchw(grad_out, grad_out.shape[0], weight.shape[1] * groups,
                                                                 *grad_out.shape[2:]),
          _SCONV._replace(arg="grad_out"), "shuffle_conv1x1")
_register("shuffle_conv1x1_grad_weight", V.check_shuffle_conv1x1_grad_weight,
          lambda grad_out, x, groups, shuffle_groups: x.new_empty((grad_out.shape[1], x.shape[1] // groups, 1, 1)),
          _SCONV, "shuffle_conv1x1", dtype_arg=1)


def _shuffle_conv1x1_backward_fake(grad_out, x, weight, groups, shuffle_groups, output_mask):
    return (_like(x) if output_mask[0] else x.new_empty(0), torch.empty_like(weight) if output_mask[1] else
            weight.new_empty(0), weight.new_empty(weight.shape[0] if output_mask[2] else 0))


_register("shuffle_conv1x1_backward", V.check_shuffle_conv1x1_backward, _shuffle_conv1x1_backward_fake,
          _SCONV, "shuffle_conv1x1", dtype_arg=1)


# kd_loss_forward: sk.kd_kl_div and sk.kd_loss ------------------------------------------------------------
# (loss, d loss/d student, d loss/d teacher): the gradients come from the forward pass (0-element tensors when
# not asked for: a schema cannot return None); the backward only scales them by grad_output.
def _kd_loss_fake(student, teacher, target, temperature, alpha, ignore_index, reduction, grad_student,
                  grad_teacher):
    loss = student.new_empty(student.shape[:-1] if reduction == KD_REDUCTIONS["none"] else ())
    gs = torch.empty_like(student, memory_format=torch.contiguous_format) if grad_student else student.new_empty(0)
    gt = torch.empty_like(teacher, memory_format=torch.contiguous_format) if grad_teacher else teacher.new_empty(0)
    return loss, gs, gt


_register("kd_loss_forward", V.check_kd_loss_forward, _kd_loss_fake,
          OpSpec("student_logits", cpu=_FLOATS, cuda=_FLOATS, triton=_FLOATS), "kd_loss")


# --- dkd_loss (begin): sk.dkd_loss; outputs as kd_loss_forward's ----------------------------------------
def _dkd_loss_fake(student, teacher, target, temperature, alpha, beta, ignore_index, reduction, grad_student,
                   grad_teacher):
    return _kd_loss_fake(student, teacher, target, temperature, alpha, ignore_index, reduction, grad_student,
                         grad_teacher)


_register("dkd_loss_forward", V.check_dkd_loss_forward, _dkd_loss_fake,
          OpSpec("student_logits", cpu=_FLOATS, cuda=_FLOATS, triton=_FLOATS), "dkd_loss")
# --- dkd_loss (end) ---------------------------------------------------------------------------------------


# batch_norm_act: relu(batch_norm(x) [+ residual]) for the fused models, and its backward ----------------
def _batch_norm_act_fake(x, weight, bias, residual, running_mean, running_var, training, eps, relu):
    c = x.shape[1] if training else 0  # evaluation returns 0-element statistics (it used the running ones)
    return _like(x), x.new_empty(c), x.new_empty(c)


def _batch_norm_act_backward_fake(grad_y, x, weight, bias, residual, mean, var, training, eps, relu, output_mask):
    c = x.shape[1]
    return (_like(x) if output_mask[0] else x.new_empty(0), _like(x) if output_mask[1] else x.new_empty(0),
            x.new_empty(c if output_mask[2] else 0), x.new_empty(c if output_mask[3] else 0))


_BN = OpSpec("x", cpu=_F32_64, cuda=_FLOATS, triton=_FLOATS)
_register("batch_norm_act", V.check_batch_norm_act, _batch_norm_act_fake, _BN, "batch_norm_act")
_register("batch_norm_act_backward", V.check_batch_norm_act_backward, _batch_norm_act_backward_fake, _BN,
          "batch_norm_act", dtype_arg=1)


# ---- at_loss (issue 14): attention transfer; (loss, q_student, q_teacher) and its backward ---------------
def _at_loss_fake(f_student, f_teacher):
    n, _, h, w = f_student.shape
    acc = V.at_acc_dtype(f_student.dtype)
    return (f_student.new_empty(()), f_student.new_empty((n, h * w), dtype=acc),
            f_student.new_empty((n, h * w), dtype=acc))


def _at_loss_backward_fake(grad, f_student, f_teacher, q_student, q_teacher, output_mask):
    return (_like(f_student) if output_mask[0] else f_student.new_empty(0),
            _like(f_teacher) if output_mask[1] else f_teacher.new_empty(0))


_AT = OpSpec("f_student", cpu=_F32_64, cuda=_FLOATS, triton=_FLOATS)
_register("at_loss", V.check_at_loss, _at_loss_fake, _AT, "at_loss")
_register("at_loss_backward", V.check_at_loss_backward, _at_loss_backward_fake, _AT, "at_loss", dtype_arg=1)
# ---- end at_loss ----

# ---- unit_v2 / unit_v1: whole-unit inference ops (branch h-units) ------------------------------------------
# CPU float32/float64 kernels only (csrc/cpu/unit_ops.cpp), no Triton twin and no autograd: the fused models
# (shufflekern/models/_units.py) call them in eval mode with BatchNorm folded when no gradient is needed.
def _unit_out(x, c, stride):
    h, w = (x.shape[2] - 1) // stride + 1, (x.shape[3] - 1) // stride + 1
    return _nchw(x, x.shape[0], c, h, w)


def _unit_v2_fake(x, w1, b1, wd, bd, w2, b2, wd1, bd1, wp1, bp1, stride):
    V.check_unit_v2(x, w1, b1, wd, bd, w2, b2, wd1, bd1, wp1, bp1, stride)
    return _unit_out(x, 2 * b2.shape[0], stride)


def _unit_v1_fake(x, w1, b1, wd, bd, w3, b3, groups1, groups3, stride):
    V.check_unit_v1(x, w1, b1, wd, bd, w3, b3, groups1, groups3, stride)
    return _unit_out(x, x.shape[1] + (b3.shape[0] if stride == 2 else 0), stride)


torch.library.register_fake("shufflekern::unit_v2")(_unit_v2_fake)
torch.library.register_fake("shufflekern::unit_v1")(_unit_v1_fake)


@torch.library.register_fake("shufflekern::max_pool3x3s2")
def _max_pool3x3s2_fake(x):
    torch._check(x.dim() == 4, lambda: f"max_pool3x3s2: x must be 4-D [N, C, H, W], got {x.dim()}-D")
    return _pooled(x)


# bn_relu_max_pool: max_pool2d(relu(batch_norm(x)), 3, 2, 1) with a uint8 argmax, and its backward (the fused
# models' stem; CPU float32/float64 kernels only, C++ autograd, no Triton twin).
def _check_bn_relu_max_pool(x, weight, bias, running_mean, running_var, training, eps, op="bn_relu_max_pool"):
    V.check_batch_norm_act(x, weight, bias, None, running_mean, running_var, training, eps, op=op)
    torch._check(x.shape[2] > 0 and x.shape[3] > 0, lambda: f"{op}: x must have H, W > 0, got shape {tuple(x.shape)}")


@torch.library.register_fake("shufflekern::bn_relu_max_pool")
def _bn_relu_max_pool_fake(x, weight, bias, running_mean, running_var, training, eps):
    _check_bn_relu_max_pool(x, weight, bias, running_mean, running_var, training, eps)
    c = x.shape[1] if training else 0
    return _pooled(x), _pooled(x, torch.uint8), x.new_empty(c), x.new_empty(c)


@torch.library.register_fake("shufflekern::bn_relu_max_pool_backward")
def _bn_relu_max_pool_backward_fake(grad_y, x, argmax, weight, bias, mean, var, training, eps, output_mask):
    op = "bn_relu_max_pool_backward"
    _check_bn_relu_max_pool(x, weight, bias, mean, var, training, eps, op=op)
    shape = _pooled(x).shape
    for name, t in (("grad_y", grad_y), ("argmax", argmax)):
        torch._check(t.shape == shape,
                     lambda: f"{op}: {name} must have the pooled shape {tuple(shape)}, got {tuple(t.shape)}")
    c = x.shape[1]
    return (_like(x) if output_mask[0] else x.new_empty(0), x.new_empty(c if output_mask[1] else 0),
            x.new_empty(c if output_mask[2] else 0))


# interleave / deinterleave: the fused V2 unit's concat + shuffle and its inverse (CPU, any dtype; C++ autograd).
@torch.library.register_fake("shufflekern::interleave")
def _interleave_fake(a, b, parts):
    op = "interleave"
    torch._check(a.dim() == 4, lambda: f"{op}: a must be 4-D [N, C, H, W], got {a.dim()}-D")
    torch._check(b.shape == a.shape, lambda: f"{op}: b must have a's shape {tuple(a.shape)}, got {tuple(b.shape)}")
    torch._check(b.dtype == a.dtype, lambda: f"{op}: b must have the dtype of a ({a.dtype}), got {b.dtype}")
    torch._check(parts > 0, lambda: f"{op}: parts must be positive, got {parts}")
    n, h, hh, ww = a.shape
    torch._check(h % parts == 0, lambda: f"{op}: channels of a ({h}) must be divisible by parts ({parts})")
    return [_nchw(a, n, 2 * (h // parts), hh, ww) for _ in range(parts)]


@torch.library.register_fake("shufflekern::deinterleave")
def _deinterleave_fake(ys):
    op, y0 = "deinterleave", ys[0]
    torch._check(y0.dim() == 4, lambda: f"{op}: ys[0] must be 4-D [N, C, H, W], got {y0.dim()}-D")
    torch._check(y0.shape[1] % 2 == 0,
                 lambda: f"{op}: ys[0] must have an even number of channels, got {y0.shape[1]}")
    for k, y in enumerate(ys[1:], 1):
        torch._check(y.shape == y0.shape,
                     lambda: f"{op}: ys[{k}] must have ys[0]'s shape {tuple(y0.shape)}, got {tuple(y.shape)}")
        torch._check(y.dtype == y0.dtype,
                     lambda: f"{op}: ys[{k}] must have the dtype of ys[0] ({y0.dtype}), got {y.dtype}")
    n, c, hh, ww = y0.shape
    return _nchw(y0, n, len(ys) * (c // 2), hh, ww), _nchw(y0, n, len(ys) * (c // 2), hh, ww)


# ---- end unit ops ------------------------------------------------------------------------------------------
