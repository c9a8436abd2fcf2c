"""Argument checks of each op, on the Python side: one function per op schema, `check_<op>(<the op's
arguments>)`, called by the functional wrappers (first, so that users get these messages), by the fake
kernels and by the Triton twins' entry (both registered in shufflekern/ops.py).

Each message names the argument and what was expected.  The compiled kernels' entry points check the same
conditions in C++ (csrc/checks.h, csrc/kd_loss_checks.h, csrc/batch_norm_act.h; shared by the CPU and CUDA
entry points), so direct torch.ops.shufflekern.* calls are safe too.  The two languages each state the
checks once: the fake kernels must run on symbolic shapes, which the C++ checks cannot read.  Which dtypes
a backend takes is not checked here but in the backend policy (shufflekern/_backend.py).
"""
import math

import torch
from torch._prims_common import suggest_memory_format

__all__ = ["suggest_memory_format", "check_tensor", "check_int", "check_number", "check_channel_shuffle",
           "check_shuffle_conv1x1", "check_shuffle_conv1x1_grad_input", "check_shuffle_conv1x1_grad_weight",
           "check_shuffle_conv1x1_backward",
           "check_kd", "check_kd_target_range", "check_kd_loss_forward", "check_batch_norm_act",
           "check_batch_norm_act_backward", "kd_reduction_code", "KD_REDUCTIONS",
           "check_dkd", "check_dkd_loss_forward", "check_at_loss", "check_at_loss_backward", "at_acc_dtype"]


def check_tensor(op, name, t, dims=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if dims is not None and t.dim() not in (dims if isinstance(dims, tuple) else (dims,)):
        raise ValueError(f"{op}: {name} must be {dims}-D, got {t.dim()}-D with shape {tuple(t.shape)}")


def check_int(op, name, v, minimum=None):
    # SymInt: under torch.compile with dynamic shapes a derived size (e.g. C // groups) is symbolic.
    if isinstance(v, bool) or not isinstance(v, (int, torch.SymInt)):
        raise TypeError(f"{op}: {name} must be an int, got {type(v).__name__}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {v}")


# --------------------------------------------------------------------------------------------------
# channel_shuffle and shuffle_conv1x1
# --------------------------------------------------------------------------------------------------

def check_channel_shuffle(x, groups, op="channel_shuffle"):
    check_tensor(op, "x", x, 4)
    check_int(op, "groups", groups, 1)
    if x.shape[1] % groups != 0:
        raise ValueError(f"{op}: channels of x ({x.shape[1]}) must be divisible by groups ({groups})")


def check_shuffle_conv1x1(x, weight, bias, groups, shuffle_groups, op="shuffle_conv1x1"):
    """conv2d(channel_shuffle(x, shuffle_groups), weight, bias, groups=groups) with a 1x1 weight."""
    check_tensor(op, "x", x, 4)
    check_tensor(op, "weight", weight)
    check_int(op, "groups", groups, 1)
    check_int(op, "shuffle_groups", shuffle_groups, 1)
    c = x.shape[1]
    if c % groups != 0:
        raise ValueError(f"{op}: channels of x ({c}) must be divisible by groups ({groups})")
    if c % shuffle_groups != 0:
        raise ValueError(f"{op}: channels of x ({c}) must be divisible by shuffle_groups ({shuffle_groups})")
    if not x.is_floating_point():
        raise TypeError(f"{op}: x must be a floating-point tensor, got {x.dtype}")
    if weight.dtype != x.dtype:
        raise TypeError(f"{op}: weight must have the dtype of x ({x.dtype}), got {weight.dtype}")
    if weight.device != x.device:
        raise ValueError(f"{op}: weight must be on the device of x ({x.device}), got {weight.device}")
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (1, 1):
        raise ValueError(f"{op}: weight must be [C_out, C_in/groups, 1, 1] (a 1x1 kernel), got shape "
                         f"{tuple(weight.shape)}")
    if weight.shape[1] * groups != c:
        raise ValueError(f"{op}: weight must be [C_out, C_in/groups, 1, 1] = [C_out, {c // groups}, 1, 1], got "
                         f"shape {tuple(weight.shape)}")
    if weight.shape[0] % groups != 0:
        raise ValueError(f"{op}: out channels (weight.shape[0] = {weight.shape[0]}) must be divisible by groups "
                         f"({groups})")
    if bias is not None:
        check_tensor(op, "bias", bias)
        if bias.dtype != x.dtype:
            raise TypeError(f"{op}: bias must have the dtype of x ({x.dtype}), got {bias.dtype}")
        if bias.device != x.device:
            raise ValueError(f"{op}: bias must be on the device of x ({x.device}), got {bias.device}")
        if bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
            raise ValueError(f"{op}: bias must be 1-D of length C_out ({weight.shape[0]}), got shape "
                             f"{tuple(bias.shape)}")


def _check_shuffle_conv1x1_backward(op, grad_out, name, t, groups, shuffle_groups):
    """Both backward ops: grad_out and t (the weight, or x) 4-D, then shuffle_conv1x1's checks on the
    forward arguments they imply."""
    for n, v in (("grad_out", grad_out), (name, t)):
        check_tensor(op, n, v, 4)
    check_int(op, "groups", groups, 1)
    if name == "weight":
        x, w = grad_out.new_empty((0, t.shape[1] * groups, 1, 1)), t
    else:
        x, w = t, t.new_empty((grad_out.shape[1], t.shape[1] // groups, 1, 1))
    check_shuffle_conv1x1(x, w, None, groups, shuffle_groups, op=op)


def check_shuffle_conv1x1_grad_input(grad_out, weight, groups, shuffle_groups, op="shuffle_conv1x1_grad_input"):
    _check_shuffle_conv1x1_backward(op, grad_out, "weight", weight, groups, shuffle_groups)
    if grad_out.shape[1] != weight.shape[0]:
        raise ValueError(f"{op}: grad_out must have C_out = weight.shape[0] = {weight.shape[0]} channels, got "
                         f"{grad_out.shape[1]}")


def check_shuffle_conv1x1_grad_weight(grad_out, x, groups, shuffle_groups, op="shuffle_conv1x1_grad_weight"):
    _check_shuffle_conv1x1_backward(op, grad_out, "x", x, groups, shuffle_groups)
    if grad_out.dtype != x.dtype or grad_out.device != x.device:
        raise TypeError(f"{op}: grad_out must have the dtype and device of x ({x.dtype}, {x.device}), got "
                        f"{grad_out.dtype}, {grad_out.device}")
    n, _, h, w = x.shape
    if (grad_out.shape[0], grad_out.shape[2], grad_out.shape[3]) != (n, h, w):
        raise ValueError(f"{op}: grad_out must be [N, C_out, H, W] with N, H, W of x {tuple(x.shape)}, got "
                         f"{tuple(grad_out.shape)}")


def check_shuffle_conv1x1_backward(grad_out, x, weight, groups, shuffle_groups, output_mask,
                                   op="shuffle_conv1x1_backward"):
    check_tensor(op, "grad_out", grad_out, 4)
    check_shuffle_conv1x1(x, weight, None, groups, shuffle_groups, op=op)
    n, _, h, w = x.shape
    if tuple(grad_out.shape) != (n, weight.shape[0], h, w):
        raise ValueError(f"{op}: grad_out must be [N, C_out, H, W] = {[n, weight.shape[0], h, w]}, got "
                         f"{list(grad_out.shape)}")
    if grad_out.dtype != x.dtype or grad_out.device != x.device:
        raise TypeError(f"{op}: grad_out must have the dtype and device of x ({x.dtype}, {x.device}), got "
                        f"{grad_out.dtype}, {grad_out.device}")
    if len(output_mask) != 3:
        raise ValueError(f"{op}: output_mask must have 3 entries (grad_x, grad_weight, grad_bias), got "
                         f"{len(output_mask)}")


# --------------------------------------------------------------------------------------------------
# batch_norm_act
# --------------------------------------------------------------------------------------------------

def check_batch_norm_act(x, weight, bias, residual, running_mean, running_var, training, eps=1e-5, relu=True,
                         op="batch_norm_act"):
    """The checks of the C++ entry points (csrc/batch_norm_act.h) that do not depend on the backend."""
    check_tensor(op, "x", x, 4)
    if training and x.numel() == 0:
        raise ValueError(f"{op}: training needs at least one value per channel, got x of shape {tuple(x.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.dim() != 1 or t.shape[0] != x.shape[1]):
            raise ValueError(f"{op}: {name} must be 1-D of length C = {x.shape[1]}, got shape {tuple(t.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"{op}: residual must have the shape of x {tuple(x.shape)}, got {tuple(residual.shape)}")
    if not training and (running_mean is None or running_var is None):
        raise ValueError(f"{op}: evaluation (training=False) needs running_mean and running_var")
    if not eps >= 0:
        raise ValueError(f"{op}: eps must be non-negative, got {eps}")


def check_batch_norm_act_backward(grad_y, x, weight, bias, residual, mean, var, training, eps, relu, output_mask,
                                  op="batch_norm_act_backward"):
    """The forward's checks (mean and var in place of the running statistics), and grad_y, mean, var shapes."""
    check_batch_norm_act(x, weight, bias, residual, mean, var, False, eps, relu, op=op)
    check_tensor(op, "grad_y", grad_y)
    if grad_y.shape != x.shape:
        raise ValueError(f"{op}: grad_y must have the shape of x {tuple(x.shape)}, got {tuple(grad_y.shape)}")
    for name, t in (("mean", mean), ("var", var)):
        if t.dim() != 1 or t.shape[0] != x.shape[1]:
            raise ValueError(f"{op}: {name} must be 1-D of length C = {x.shape[1]}, got shape {tuple(t.shape)}")


# --------------------------------------------------------------------------------------------------
# at_loss (issue 14): attention transfer
# --------------------------------------------------------------------------------------------------

def check_at_loss(f_student, f_teacher, op="at_loss"):
    """f_student and f_teacher: 4-D [N, C, H, W] floating maps of one dtype and device, N and H x W equal (the
    channel counts may differ), at least one sample, pixel and channel each (the checks of csrc/at_loss.h)."""
    for name, f in (("f_student", f_student), ("f_teacher", f_teacher)):
        check_tensor(op, name, f, 4)
        if not f.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got {f.dtype}")
    if f_teacher.dtype != f_student.dtype:
        raise TypeError(f"{op}: f_teacher must have the dtype of f_student ({f_student.dtype}), got {f_teacher.dtype}")
    if f_teacher.device != f_student.device:
        raise ValueError(f"{op}: f_teacher must be on the device of f_student ({f_student.device}), got "
                         f"{f_teacher.device}")
    n, _, h, w = f_student.shape
    if f_teacher.shape[0] != n:
        raise ValueError(f"{op}: f_teacher must have f_student's batch size N = {n}, got shape "
                         f"{tuple(f_teacher.shape)}")
    if tuple(f_teacher.shape[2:]) != (h, w):
        raise ValueError(f"{op}: f_teacher must have f_student's H x W = {h} x {w}, got shape "
                         f"{tuple(f_teacher.shape)} (pool the larger map first, e.g. F.adaptive_avg_pool2d)")
    if n == 0 or h * w == 0:
        raise ValueError(f"{op}: f_student must have at least one sample and one pixel, got shape "
                         f"{tuple(f_student.shape)}")
    for name, f in (("f_student", f_student), ("f_teacher", f_teacher)):
        if f.shape[1] == 0:
            raise ValueError(f"{op}: {name} must have at least one channel, got shape {tuple(f.shape)}")


def at_acc_dtype(dtype):
    """The dtype at_loss accumulates in and returns q in: float64 for float64 maps, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_at_loss_backward(grad, f_student, f_teacher, q_student, q_teacher, output_mask, op="at_loss_backward"):
    check_at_loss(f_student, f_teacher, op=op)
    check_tensor(op, "grad", grad)
    if grad.numel() != 1:
        raise ValueError(f"{op}: grad must hold one value (the loss's gradient), got shape {tuple(grad.shape)}")
    n, _, h, w = f_student.shape
    acc = at_acc_dtype(f_student.dtype)
    for name, q in (("q_student", q_student), ("q_teacher", q_teacher)):
        check_tensor(op, name, q)
        if tuple(q.shape) != (n, h * w):
            raise ValueError(f"{op}: {name} must be [N, H*W] = [{n}, {h * w}], got shape {tuple(q.shape)}")
        if q.dtype != acc:
            raise TypeError(f"{op}: {name} must be {acc}, got {q.dtype}")
    if len(output_mask) != 2:
        raise ValueError(f"{op}: output_mask must have 2 entries (f_student, f_teacher), got {len(output_mask)}")


# --------------------------------------------------------------------------------------------------
# kd_kl_div / kd_loss
# --------------------------------------------------------------------------------------------------
KD_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2, "batchmean": 3}
_KD_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def check_number(op, name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{op}: {name} must be a float, got {type(v).__name__}")
    return float(v)


def kd_reduction_code(op, reduction):
    if reduction not in KD_REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {tuple(KD_REDUCTIONS)}, got {reduction!r}")
    return KD_REDUCTIONS[reduction]


def check_kd(op, student, teacher, target, temperature, alpha, reduction, ignore_index=-100):
    """Checks of sk.kd_kl_div / sk.kd_loss (target None for kd_kl_div).  Returns (T, alpha, code)."""
    for name, x in (("student_logits", student), ("teacher_logits", teacher)):
        check_tensor(op, name, x)
        if x.dtype not in _KD_DTYPES:
            raise TypeError(f"{op}: {name} must be float32, float64, bfloat16 or float16, got {x.dtype}")
        if x.dim() < 1:
            raise ValueError(f"{op}: {name} must have a class dimension (at least 1-D), got 0-D")
    if teacher.dtype != student.dtype:
        raise TypeError(f"{op}: teacher_logits dtype ({teacher.dtype}) must match student_logits dtype "
                        f"({student.dtype})")
    if teacher.device != student.device:
        raise ValueError(f"{op}: teacher_logits must be on student_logits' device ({student.device}), "
                         f"got {teacher.device}")
    if teacher.shape != student.shape:
        raise ValueError(f"{op}: teacher_logits shape {tuple(teacher.shape)} must match student_logits "
                         f"shape {tuple(student.shape)}")
    if student.shape[-1] < 1:
        raise ValueError(f"{op}: student_logits must have at least one class, got shape {tuple(student.shape)}")
    temperature = check_number(op, "temperature", temperature)
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"{op}: temperature must be a finite number > 0, got {temperature}")
    alpha = check_number(op, "alpha", alpha)
    if not math.isfinite(alpha):
        raise ValueError(f"{op}: alpha must be finite, got {alpha}")
    code = kd_reduction_code(op, reduction)
    check_int(op, "ignore_index", ignore_index)
    if target is not None:
        check_tensor(op, "target", target)
        if target.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{op}: target must be an int64 (or int32) tensor of class indices, got {target.dtype}")
        if target.device != student.device:
            raise ValueError(f"{op}: target must be on student_logits' device ({student.device}), "
                             f"got {target.device}")
        if target.shape != student.shape[:-1]:
            raise ValueError(f"{op}: target shape {tuple(target.shape)} must be student_logits' shape without "
                             f"the class dimension, {tuple(student.shape[:-1])}")
    return temperature, alpha, code


def check_kd_target_range(target, classes, ignore_index, op="kd_loss"):
    """Value check of target (reads the tensor: eager only, not under tracing)."""
    bad = (target != ignore_index) & ((target < 0) | (target >= classes))
    if bool(bad.any()):
        first = int(target[bad].flatten()[0])
        raise ValueError(f"{op}: target holds {first}, out of range: class indices must be in [0, {classes}) "
                         f"or ignore_index ({ignore_index})")


def check_kd_loss_forward(student, teacher, target, temperature, alpha, ignore_index, reduction, grad_student=False,
                          grad_teacher=False, op="kd_loss_forward"):
    """check_kd for the op's own arguments (reduction as its integer code).  Returns (T, alpha, code)."""
    names = {v: k for k, v in KD_REDUCTIONS.items()}
    if reduction not in names:
        raise ValueError(f"{op}: reduction code must be 0 (none), 1 (mean), 2 (sum) or 3 (batchmean), "
                         f"got {reduction!r}")
    return check_kd(op, student, teacher, target, temperature, alpha, names[reduction], ignore_index)


# --- dkd_loss (begin) -----------------------------------------------------------------------------------
def check_dkd(op, student, teacher, target, temperature, alpha, beta, reduction, ignore_index=-100):
    """Checks of sk.dkd_loss: check_kd's, a target (required), beta, at least 2 classes.  Returns
    (T, alpha, beta, code)."""
    if target is None:
        raise TypeError(f"{op}: target must be a tensor of class indices (DKD splits the target class from the "
                        f"others), got None")
    temperature, alpha, code = check_kd(op, student, teacher, target, temperature, alpha, reduction, ignore_index)
    beta = check_number(op, "beta", beta)
    if not math.isfinite(beta):
        raise ValueError(f"{op}: beta must be finite, got {beta}")
    if student.shape[-1] < 2:
        raise ValueError(f"{op}: student_logits must have at least 2 classes (DKD splits the target class from "
                         f"the others), got shape {tuple(student.shape)}")
    return temperature, alpha, beta, code


def check_dkd_loss_forward(student, teacher, target, temperature, alpha, beta, ignore_index, reduction,
                           grad_student=False, grad_teacher=False, op="dkd_loss_forward"):
    """check_dkd for the op's own arguments (reduction as its integer code)."""
    names = {v: k for k, v in KD_REDUCTIONS.items()}
    if reduction not in names:
        raise ValueError(f"{op}: reduction code must be 0 (none), 1 (mean), 2 (sum) or 3 (batchmean), "
                         f"got {reduction!r}")
    return check_dkd(op, student, teacher, target, temperature, alpha, beta, names[reduction], ignore_index)
# --- dkd_loss (end) -------------------------------------------------------------------------------------

# --------------------------------------------------------------------------------------------------
# unit_v2 / unit_v1: whole-unit inference ops (branch h-units; packed layouts: csrc/unit.h)
# --------------------------------------------------------------------------------------------------

def _unit_granule(x):
    return 64 // x.element_size()


def _check_unit_params(op, x, params):
    """params: (name, tensor, expected numel); every one a tensor of x's dtype and device."""
    for name, t, numel in params:
        check_tensor(op, name, t)
        if t.dtype != x.dtype:
            raise TypeError(f"{op}: {name} must have x's dtype ({x.dtype}), got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{op}: {name} must be on x's device ({x.device}), got {t.device}")
        if t.numel() != numel:
            raise ValueError(f"{op}: {name} must hold {numel} values (the packed layout of csrc/unit.h), "
                             f"got {t.numel()} (shape {tuple(t.shape)})")


def _check_unit_common(op, x, b1, b2, bd, stride):
    check_tensor(op, "x", x, 4)
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{op}: x must be float32 or float64, got {x.dtype}")
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"{op}: x must have H, W > 0, got shape {tuple(x.shape)}")
    check_int(op, "stride", stride)
    if stride not in (1, 2):
        raise ValueError(f"{op}: stride must be 1 or 2, got {stride}")
    for name, b in (("b1", b1), (f"b{'2' if op == 'unit_v2' else '3'}", b2), ("bd", bd)):
        check_tensor(op, name, b, 1)
        if b.shape[0] < 1:
            raise ValueError(f"{op}: {name} must be non-empty")


def check_unit_v2(x, w1, b1, wd, bd, w2, b2, wd1, bd1, wp1, bp1, stride, op="unit_v2"):
    _check_unit_common(op, x, b1, b2, bd, stride)
    g, mid, bf, cin = _unit_granule(x), b1.shape[0], b2.shape[0], x.shape[1]
    r = lambda v: (v + g - 1) // g * g  # noqa: E731
    if stride == 1 and cin != 2 * bf:
        raise ValueError(f"{op}: a stride-1 unit needs x's channels ({cin}) == 2 * b2's ({bf})")
    k1 = bf if stride == 1 else cin
    params = [("w1", w1, k1 * r(mid)), ("b1", b1, mid), ("wd", wd, 9 * r(mid)), ("bd", bd, mid),
              ("w2", w2, mid * r(bf)), ("b2", b2, bf)]
    branch1 = (wd1, bd1, wp1, bp1)
    if stride == 2:
        if any(t is None for t in branch1):
            raise ValueError(f"{op}: wd1, bd1, wp1, bp1 (branch1) must all be given for stride 2")
        params += [("wd1", wd1, 9 * r(cin)), ("bd1", bd1, cin), ("wp1", wp1, cin * r(bf)), ("bp1", bp1, bf)]
    elif any(t is not None for t in branch1):
        raise ValueError(f"{op}: wd1, bd1, wp1, bp1 (branch1) must all be None for stride 1")
    _check_unit_params(op, x, params)


def check_unit_v1(x, w1, b1, wd, bd, w3, b3, groups1, groups3, stride, op="unit_v1"):
    _check_unit_common(op, x, b1, b3, bd, stride)
    check_int(op, "groups1", groups1, 1)
    check_int(op, "groups3", groups3, 1)
    g, mid, br, cin = _unit_granule(x), b1.shape[0], b3.shape[0], x.shape[1]
    r = lambda v: (v + g - 1) // g * g  # noqa: E731
    if cin % groups1 or mid % groups1:
        raise ValueError(f"{op}: x's channels ({cin}) and b1's ({mid}) must be divisible by groups1 ({groups1})")
    if mid % groups3 or br % groups3:
        raise ValueError(f"{op}: b1's channels ({mid}) and b3's ({br}) must be divisible by groups3 ({groups3})")
    if stride == 1 and br != cin:
        raise ValueError(f"{op}: a stride-1 unit needs b3's channels ({br}) == x's ({cin})")
    _check_unit_params(op, x, [("w1", w1, cin * r(mid // groups1)), ("b1", b1, mid), ("wd", wd, 9 * r(mid)),
                               ("bd", bd, mid), ("w3", w3, mid * r(br // groups3)), ("b3", b3, br)])
# ---- end unit_v2 / unit_v1 ---------------------------------------------------------------------------
