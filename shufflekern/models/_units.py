"""Whole-unit inference kernels for the fused models: weight prepacking and the dispatch rule.

`shufflekern::unit_v2` / `shufflekern::unit_v1` (csrc/unit.h, csrc/cpu/unit_ops.cpp) run a whole ShuffleNet
unit (eval mode, BatchNorm folded) in one op, tile by tile, so its intermediates never reach DRAM.  They take
their 1x1 and depthwise weights prepacked (layout: csrc/unit.h); a fused unit packs them once
(`UnitKernelMixin.prepack`: at `sk.fuse` time, and again after `.eval()`, `load_state_dict`, `.to()`, or an
in-place edit of a weight seen in eager mode) into non-persistent buffers, so the state_dict is unchanged.

A unit calls its op only when all of these hold (else the per-op path runs, with the same result):
  * eval mode, and every BatchNorm of the unit folded (nn.Identity) by `sk.fuse` (fold_bn);
  * no gradient is needed (torch.no_grad / inference_mode, or nothing requires grad): the ops have no backward;
  * x is a 4-D float32 / float64 CPU tensor of the packs' dtype.
`unit_kernel_reason(module, x)` says why a unit does not (for tests and sk.info()).
"""
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UnitKernelMixin", "pack_1x1", "pack_dw", "granule", "UNIT_DTYPES"]

UNIT_DTYPES = (torch.float32, torch.float64)


def granule(dtype):
    """Padding granularity of the packed layouts (elements): 64 bytes."""
    return 64 // torch.empty((), dtype=dtype).element_size()


def _rup(v, m):
    return (v + m - 1) // m * m


@torch.no_grad()
def pack_1x1(w, groups=1):
    """[N, K/groups, 1, 1] (or [N, K/groups]) conv weight -> the packed panels of csrc/unit.h (1-D)."""
    w = w.detach().reshape(w.shape[0], -1)
    n, kg = w.shape
    g = granule(w.dtype)
    ng = n // groups
    ngp = _rup(ng, g)
    parts = []
    for i in range(groups):
        wg = F.pad(w[i * ng:(i + 1) * ng], (0, 0, 0, ngp - ng))  # [ngp, kg]
        for j in range(0, ngp, 2 * g):
            parts.append(wg[j:j + 2 * g].t().contiguous().reshape(-1))  # [kg, width]
    return torch.cat(parts)


@torch.no_grad()
def pack_dw(w):
    """[C, 1, 3, 3] depthwise weight -> [9, rup(C, G)] tap-major, zero padded (1-D)."""
    c = w.shape[0]
    wt = w.detach().reshape(c, 9).t()
    return F.pad(wt, (0, _rup(c, granule(w.dtype)) - c)).contiguous().reshape(-1)


def _bias(conv):
    w = conv.weight
    return (conv.bias.detach() if conv.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))


class UnitKernelMixin:
    """For a fused unit class: `_unit_packs()` (the packed tensors, or None when the unit cannot use its op:
    BatchNorm not folded) and `_unit_sources()` (the parameters the packs derive from) are the class's part."""

    _PACK_NAMES = ()

    def _unit_init(self):
        self._unit_ready = False
        self._unit_versions = None
        for name in self._PACK_NAMES:
            self.register_buffer(name, None, persistent=False)
        self.register_load_state_dict_post_hook(lambda module, keys: module._unit_refresh())

    def prepack(self):
        """(Re)build the packed weights if this unit can run its unit op (eval mode, BatchNorm folded)."""
        self._unit_ready = False
        packs = None
        if not self.training:
            p = next(self.parameters(), None)
            if p is not None and p.dtype in UNIT_DTYPES:
                packs = self._unit_packs()
        for name in self._PACK_NAMES:
            setattr(self, name, None if packs is None else packs.get(name))
        if packs is not None:
            self._unit_ready = True
            self._unit_versions = self._versions()
        return self

    def _versions(self):
        return tuple(t._version for t in self._unit_sources())

    def _unit_refresh(self):
        if self._unit_ready or not self.training:
            self.prepack()

    def train(self, mode=True):
        super().train(mode)
        if not mode and getattr(self, "_unit_ready", None) is not None:
            self.prepack()
        elif mode:
            self._unit_ready = False
        return self

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        if getattr(self, "_unit_ready", False):
            self.prepack()
        return out

    def unit_kernel_reason(self, x):
        """None if forward(x) runs the whole-unit op, else why not."""
        if self.training:
            return "training mode"
        if not self._unit_ready:
            return "BatchNorm not folded (sk.fuse of an eval model folds it) or weights not float32/float64"
        if not isinstance(x, torch.Tensor):
            return "input passed as channel halves"
        if x.device.type != "cpu" or x.dtype not in UNIT_DTYPES:
            return f"only float32/float64 CPU tensors (got {x.dtype} on {x.device.type})"
        first = getattr(self, self._PACK_NAMES[0])
        if x.dtype != first.dtype or x.dim() != 4:
            return f"input dtype {x.dtype} differs from the weights' ({first.dtype})"
        if torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in self._unit_sources())):
            return "a gradient is needed (the unit op has no backward; use torch.no_grad())"
        return None

    def _use_unit_kernel(self, x):
        if self.training or not self._unit_ready or not isinstance(x, torch.Tensor):
            return False
        if x.device.type != "cpu" or x.dim() != 4 or x.dtype != getattr(self, self._PACK_NAMES[0]).dtype:
            return False
        if torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in self._unit_sources())):
            return False
        if not torch.compiler.is_compiling() and self._versions() != self._unit_versions:
            self.prepack()  # a weight was edited in place since packing
            return self._unit_ready
        return True
