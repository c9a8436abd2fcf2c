"""torch.distributed helpers: process-group setup under torchrun, a CPU-capable synchronised BatchNorm,
and a check that the replicas hold identical weights."""
import os
import warnings

import torch
import torch.distributed as dist
from torch import nn

# The differentiable all_reduce is deprecated in favour of a private module; it still does what we need.
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_reduce is deprecated")

__all__ = ["setup_distributed", "require_setup", "init_from_env", "is_distributed", "rank", "world_size", "all_reduce_sum",
           "DistBatchNorm2d", "convert_sync_batchnorm", "broadcast_buffers", "assert_in_sync"]


def init_from_env(device_type):
    """Join the process group torchrun describes (WORLD_SIZE > 1); no-op otherwise.

    gloo on CPU, NCCL on CUDA.  Returns True if this call created the group.
    """
    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return True


def setup_distributed(device):
    """The explicit distributed setup the CLI runs before building a Trainer: under torchrun (WORLD_SIZE > 1)
    join the process group (gloo on CPU, NCCL on CUDA); a no-op otherwise.  Returns True if this call
    created the group (the caller then destroys it when done)."""
    import torch as _torch
    return init_from_env(_torch.device(device).type)


def require_setup():
    """Refuse to train single-process-per-rank by accident: under torchrun, setup_distributed must have run."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("WORLD_SIZE > 1 (torchrun) but no process group: call "
                           "shufflekern.distill.dist.setup_distributed(device) before building the Trainer")


def is_distributed():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank():
    return dist.get_rank() if is_distributed() else 0


def world_size():
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum(t):
    if is_distributed():
        dist.all_reduce(t)
    return t


class DistBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span all ranks (like nn.SyncBatchNorm, which is GPU-only).

    mean = sum_r sum(x_r) / N,  var = sum_r sum((x_r - mean)^2) / N  with N the global count, both
    reduced with the differentiable all_reduce, so the backward is exact too.  Same state_dict as
    BatchNorm2d.
    """

    def forward(self, x):
        if not (self.training and is_distributed()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        xf = x.float()
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float32, device=x.device)
        stats = all_reduce(torch.cat([xf.sum(dim=(0, 2, 3)), count]))
        n = stats[-1]
        mean = stats[:-1] / n
        centred = xf - mean.view(1, -1, 1, 1)
        var = all_reduce(centred.pow(2).sum(dim=(0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp_min(1), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y.to(x.dtype)


def convert_sync_batchnorm(module):
    """Replace every BatchNorm2d in `module` by DistBatchNorm2d (in place, weights kept).  A fused model's
    BatchNormReLU2d pairs are split back into BatchNorm2d + ReLU first (the fused units' own BatchNorms
    run eagerly once they are DistBatchNorm2d: see shufflekern.models._common.bn_act)."""
    from ..models._fusing import split_bn_relu
    split_bn_relu(module)
    return _convert(module)


def _convert(module):
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = DistBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats).to(next(child.buffers()).device)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            _convert(child)
    return module


def broadcast_buffers(module, src=0):
    """Give every rank rank `src`'s buffers (BN running stats drift apart without sync BN)."""
    if is_distributed():
        for b in module.buffers():
            dist.broadcast(b, src)


def assert_in_sync(module, where=""):
    """Raise if the replicas' parameters differ (they must be bit-identical under DDP)."""
    if not is_distributed():
        return
    flat = torch.cat([p.detach().double().flatten() for p in module.parameters()]).cpu()
    # Compare a weighted checksum: distinct weights make accidental equality vanishingly unlikely.
    w = torch.arange(1, flat.numel() + 1, dtype=torch.float64).remainder_(97).add_(1)
    mine = torch.stack([(flat * w).sum(), flat.abs().sum()])
    lo, hi = mine.clone(), mine.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if not torch.equal(lo, hi):
        raise RuntimeError(f"DDP replicas diverged {where}: parameter checksums range {lo.tolist()} .. "
                           f"{hi.tolist()}")
