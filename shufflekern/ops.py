"""Registration of the shufflekern ops with PyTorch: Triton twins, fake kernels and autograd.

Every op `shufflekern::<op>` has compiled kernels (CPU always, CUDA when built; schemas in
csrc/shufflekern.cpp, autograd in csrc/autograd/<op>.cpp) and a Triton twin `shufflekern::<op>_triton`
defined here.  Both share one fake kernel, so the two backends cannot drift apart in shapes; the twin's
autograd formula below states the same derivatives as the C++ one (tests compare both against eager
PyTorch).  The backward of an op calls the same backend family as its forward.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import _C  # noqa: F401  (loads the library: TORCH_LIBRARY(shufflekern) and the kernels)
from ._validate import (KD_REDUCTIONS, check_batch_norm_act, check_channel_shuffle, check_kd_op,
                        check_shuffle_conv1x1, check_shuffle_conv1x1_grad_input, check_shuffle_conv1x1_grad_weight,
                        suggest_memory_format)

NATIVE, TRITON = "", "_triton"


def _twin(name):
    """The Triton twin of shufflekern::<name> (what the twins' backward formulas call)."""
    return getattr(torch.ops.shufflekern, name + TRITON)


def _register(name, fake, setup_context=None, backward=None):
    """Register `fake` for shufflekern::<name> and its Triton twin and, if given, the autograd formula
    `backward` for the twin.  The compiled ops' autograd is registered in C++ (csrc/autograd/<op>.cpp,
    the same derivatives): a Python autograd kernel costs every call ~10-20 us of interpreter time, as
    much as a whole shuffle of a ShuffleNet activation."""
    for family in (NATIVE, TRITON):
        torch.library.register_fake(f"shufflekern::{name}{family}")(fake)
    if backward is not None:
        torch.library.register_autograd(f"shufflekern::{name}{TRITON}", backward, setup_context=setup_context)


# --------------------------------------------------------------------------------------------------
# channel_shuffle
# --------------------------------------------------------------------------------------------------

@torch.library.custom_op("shufflekern::channel_shuffle_triton", mutates_args=())
def _channel_shuffle_triton(x: Tensor, groups: int) -> Tensor:
    from .triton.channel_shuffle import channel_shuffle
    return channel_shuffle(x, groups)


def _channel_shuffle_fake(x, groups):
    check_channel_shuffle(x, groups)
    return torch.empty_like(x, memory_format=suggest_memory_format(x))


def _channel_shuffle_setup(ctx, inputs, output):
    x, groups = inputs
    ctx.inverse_groups = x.shape[1] // groups


def _channel_shuffle_backward(ctx, grad):
    # The inverse of a shuffle with g groups on C channels is the shuffle with C/g groups.
    return _twin("channel_shuffle")(grad, ctx.inverse_groups), None


_register("channel_shuffle", _channel_shuffle_fake, _channel_shuffle_setup, _channel_shuffle_backward)


# --------------------------------------------------------------------------------------------------
# shuffle_conv1x1: y = conv2d(channel_shuffle(x, sg), W, b, groups=G), 1x1 weight [C_out, C/G, 1, 1]
# --------------------------------------------------------------------------------------------------
# With P the shuffle (x' = P x) and W_bd the block-diagonal weight of the groups, y = W_bd P x + b, so
#   grad_x = P^T W_bd^T grad_y          (shuffle_conv1x1_grad_input)
#   grad_W = grad_y (P x)^T per group   (shuffle_conv1x1_grad_weight, summed over images and pixels)
#   grad_b = grad_y summed over N, H, W

@torch.library.custom_op("shufflekern::shuffle_conv1x1_triton", mutates_args=())
def _shuffle_conv1x1_triton(x: Tensor, weight: Tensor, bias: Optional[Tensor], groups: int,
                            shuffle_groups: int) -> Tensor:
    from .triton.shuffle_conv1x1 import shuffle_conv1x1
    return shuffle_conv1x1(x, weight, bias, groups, shuffle_groups)


@torch.library.custom_op("shufflekern::shuffle_conv1x1_grad_input_triton", mutates_args=())
def _shuffle_conv1x1_grad_input_triton(grad_out: Tensor, weight: Tensor, groups: int, shuffle_groups: int) -> Tensor:
    from .triton.shuffle_conv1x1 import shuffle_conv1x1_grad_input
    return shuffle_conv1x1_grad_input(grad_out, weight, groups, shuffle_groups)


@torch.library.custom_op("shufflekern::shuffle_conv1x1_grad_weight_triton", mutates_args=())
def _shuffle_conv1x1_grad_weight_triton(grad_out: Tensor, x: Tensor, groups: int, shuffle_groups: int) -> Tensor:
    from .triton.shuffle_conv1x1 import shuffle_conv1x1_grad_weight
    return shuffle_conv1x1_grad_weight(grad_out, x, groups, shuffle_groups)


def _shuffle_conv1x1_fake(x, weight, bias, groups, shuffle_groups):
    check_shuffle_conv1x1(x, weight, bias, groups, shuffle_groups)
    n, _, h, w = x.shape
    return torch.empty((n, weight.shape[0], h, w), dtype=x.dtype, device=x.device,
                       memory_format=suggest_memory_format(x))


def _shuffle_conv1x1_grad_input_fake(grad_out, weight, groups, shuffle_groups):
    check_shuffle_conv1x1_grad_input(grad_out, weight, groups, shuffle_groups)
    n, _, h, w = grad_out.shape
    return torch.empty((n, weight.shape[1] * groups, h, w), dtype=grad_out.dtype, device=grad_out.device,
                       memory_format=suggest_memory_format(grad_out))


def _shuffle_conv1x1_grad_weight_fake(grad_out, x, groups, shuffle_groups):
    check_shuffle_conv1x1_grad_weight(grad_out, x, groups, shuffle_groups)
    return x.new_empty((grad_out.shape[1], x.shape[1] // groups, 1, 1))


def _shuffle_conv1x1_setup(ctx, inputs, output):
    x, weight, bias, groups, shuffle_groups = inputs
    ctx.groups, ctx.shuffle_groups = groups, shuffle_groups
    ctx.has_bias = bias is not None
    ctx.memory_format = suggest_memory_format(x)
    ctx.save_for_backward(x, weight)


def _shuffle_conv1x1_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    # grad_x comes back in x's memory format, as for torch's convolutions.
    grad = grad.contiguous(memory_format=ctx.memory_format)
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_x = _twin("shuffle_conv1x1_grad_input")(grad, weight, ctx.groups, ctx.shuffle_groups)
    if ctx.needs_input_grad[1]:
        grad_w = _twin("shuffle_conv1x1_grad_weight")(grad, x, ctx.groups, ctx.shuffle_groups)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_b = grad.sum((0, 2, 3))
    return grad_x, grad_w, grad_b, None, None


_register("shuffle_conv1x1", _shuffle_conv1x1_fake, _shuffle_conv1x1_setup, _shuffle_conv1x1_backward)
_register("shuffle_conv1x1_grad_input", _shuffle_conv1x1_grad_input_fake)
_register("shuffle_conv1x1_grad_weight", _shuffle_conv1x1_grad_weight_fake)

# kd_loss_forward: sk.kd_kl_div and sk.kd_loss
# --------------------------------------------------------------------------------------------------
# One op returns (loss, d loss/d student, d loss/d teacher).  The gradients are computed inside the
# forward pass while the row is cache-hot (0-element tensors when not asked for: a schema cannot return
# None), so the backward only scales them by grad_output.

@torch.library.custom_op("shufflekern::kd_loss_forward_triton", mutates_args=())
def _kd_loss_forward_triton(student: Tensor, teacher: Tensor, target: Optional[Tensor], temperature: float,
                            alpha: float, ignore_index: int, reduction: int, grad_student: bool,
                            grad_teacher: bool) -> Tuple[Tensor, Tensor, Tensor]:
    from .triton.kd_loss import kd_loss_forward
    return kd_loss_forward(student, teacher, target, temperature, alpha, ignore_index, reduction,
                           grad_student, grad_teacher)


def _kd_loss_fake(student, teacher, target, temperature, alpha, ignore_index, reduction, grad_student,
                  grad_teacher):
    check_kd_op(student, teacher, target, temperature, alpha, ignore_index, reduction)
    loss = student.new_empty(student.shape[:-1] if reduction == KD_REDUCTIONS["none"] else ())
    gs = torch.empty_like(student, memory_format=torch.contiguous_format) if grad_student else student.new_empty(0)
    gt = torch.empty_like(teacher, memory_format=torch.contiguous_format) if grad_teacher else teacher.new_empty(0)
    return loss, gs, gt


def _kd_loss_setup(ctx, inputs, output):
    reduction, grad_student, grad_teacher = inputs[6:9]
    _, gs, gt = output
    ctx.save_for_backward(gs, gt)
    ctx.per_row = reduction == KD_REDUCTIONS["none"]
    ctx.computed = (grad_student, grad_teacher)
    ctx.mark_non_differentiable(gs, gt)
    # The gradient outputs get no gradient: do not let autograd build [R, C] zeros for them.
    ctx.set_materialize_grads(False)


def _tracing(t):
    return (torch.compiler.is_compiling() or type(t) is not torch.Tensor
            or torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.PROXY) is not None)


def _kd_scale(grad, g, per_row):
    if per_row:
        g = g.unsqueeze(-1)
    # loss.backward() passes ones: the precomputed gradient is the answer, and skipping the multiply saves
    # a full pass over [rows, classes] (Liger-Kernel does the same).  Traced graphs keep the multiply, and
    # so does CUDA (the test would synchronise): as in csrc/autograd/kd_loss.cpp.
    if g.device.type == "cpu" and not _tracing(g) and (g.item() == 1 if g.numel() == 1 else bool((g == 1).all())):
        return grad
    return grad * g


def _kd_loss_backward(ctx, g, _unused_gs, _unused_gt):
    grads = []
    for i, (saved, computed, name) in enumerate(zip(ctx.saved_tensors, ctx.computed,
                                                    ("student_logits", "teacher_logits"))):
        if not ctx.needs_input_grad[i]:
            grads.append(None)
            continue
        if not computed:
            raise RuntimeError(f"kd_loss_forward: the gradient w.r.t. {name} was not computed in the "
                               f"forward (grad_{name.split('_')[0]}=False); use sk.kd_loss / sk.kd_kl_div, "
                               "which ask for it whenever the input requires grad")
        grads.append(None if g is None else _kd_scale(saved, g, ctx.per_row))
    return (*grads, None, None, None, None, None, None, None)


_register("kd_loss_forward", _kd_loss_fake, _kd_loss_setup, _kd_loss_backward)


# --------------------------------------------------------------------------------------------------
# batch_norm_act: relu(batch_norm(x) [+ residual]) for the fused models (models._common.bn_act picks the
# family).  C++ autograd for the CPU op in csrc/autograd/batch_norm_act.cpp; the Triton twin's here.
# --------------------------------------------------------------------------------------------------

@torch.library.custom_op("shufflekern::batch_norm_act_triton", mutates_args=())
def _batch_norm_act_triton(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], residual: Optional[Tensor],
                           running_mean: Optional[Tensor], running_var: Optional[Tensor], training: bool,
                           eps: float, relu: bool) -> Tuple[Tensor, Tensor, Tensor]:
    from .triton.batch_norm_act import batch_norm_act
    return batch_norm_act(x, weight, bias, residual, running_mean, running_var, training, eps, relu)


@torch.library.custom_op("shufflekern::batch_norm_act_backward_triton", mutates_args=())
def _batch_norm_act_backward_triton(grad_y: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                                    residual: Optional[Tensor], mean: Tensor, var: Tensor, training: bool,
                                    eps: float, relu: bool,
                                    output_mask: List[bool]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    from .triton.batch_norm_act import batch_norm_act_backward
    return batch_norm_act_backward(grad_y, x, weight, bias, residual, mean, var, training, eps, relu, output_mask)


def _batch_norm_act_fake(x, weight, bias, residual, running_mean, running_var, training, eps, relu):
    check_batch_norm_act(x, weight, bias, residual, running_mean, running_var, training)
    y = torch.empty_like(x, memory_format=suggest_memory_format(x))
    c = x.shape[1] if training else 0  # evaluation returns 0-element statistics (it used the running ones)
    return y, x.new_empty(c), x.new_empty(c)


def _batch_norm_act_backward_fake(grad_y, x, weight, bias, residual, mean, var, training, eps, relu, output_mask):
    fmt = suggest_memory_format(x)
    c = x.shape[1]
    return (torch.empty_like(x, memory_format=fmt) if output_mask[0] else x.new_empty(0),
            torch.empty_like(x, memory_format=fmt) if output_mask[1] else x.new_empty(0),
            x.new_empty(c if output_mask[2] else 0), x.new_empty(c if output_mask[3] else 0))


def _batch_norm_act_setup(ctx, inputs, output):
    x, weight, bias, residual, running_mean, running_var, training, eps, relu = inputs
    _, mean, var = output
    # Evaluation normalises with the running statistics: the backward needs them (not the 0-element outputs).
    ctx.save_for_backward(x, weight, bias, residual, mean if training else running_mean,
                          var if training else running_var)
    ctx.flags = (training, eps, relu)
    ctx.mark_non_differentiable(mean, var)


def _batch_norm_act_backward(ctx, grad_y, _unused_mean, _unused_var):
    x, weight, bias, residual, mean, var = ctx.saved_tensors
    need = ctx.needs_input_grad
    mask = [need[0], residual is not None and need[3], weight is not None and need[1], bias is not None and need[2]]
    if grad_y is None or not any(mask):
        return (None,) * 9
    gx, gr, gw, gb = _twin("batch_norm_act_backward")(grad_y, x, weight, bias, residual, mean, var, *ctx.flags,
                                                      mask)
    pick = [g if m else None for g, m in zip((gx, gr, gw, gb), mask)]
    return pick[0], pick[2], pick[3], pick[1], None, None, None, None, None


_register("batch_norm_act", _batch_norm_act_fake, _batch_norm_act_setup, _batch_norm_act_backward)
_register("batch_norm_act_backward", _batch_norm_act_backward_fake)
