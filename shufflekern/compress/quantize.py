"""INT8 post-training static quantization (PT2E, torchao's X86InductorQuantizer) and a half-precision option.

Flow: `sk.unfuse` (the fused ops are custom ops that the quantizer knows nothing of; the unfused model is
plain torch, with the same weights) -> `torch.export` with a dynamic batch -> `prepare_pt2e` (observers
where X86InductorQuantizer wants them: per-channel symmetric weights, per-tensor affine activations) ->
calibration on training images -> `convert_pt2e` (quantize/dequantize pairs around float ops) ->
`torch.compile`, whose Inductor pattern-matches the pairs into oneDNN INT8 convolutions (with
`freezing`, so that weights are pre-packed once).  The converted program is saved with
`torch.export.save`; loading it back needs `import torchao` (its ops).
"""
import contextlib

import torch

__all__ = ["require_torchao", "quantize_int8", "export_program", "load_program", "compile_int8",
           "half_supported", "to_half"]


def require_torchao():
    """The torchao PT2E entry points, or a RuntimeError that names the package to install."""
    try:
        import torchao  # noqa: F401
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError as e:
        raise RuntimeError(
            "INT8 quantization needs the 'torchao' package (PT2E quantization moved there from torch.ao): "
            f"pip install torchao (0.18 with torch 2.14); import failed with: {e}") from None
    return prepare_pt2e, convert_pt2e, xiq


def _batch_dim():
    return {"x": {0: torch.export.Dim("batch", min=1, max=4096)}}


def _export(model, example):
    class _In(torch.nn.Module):  # names the input "x" for dynamic_shapes whatever the model calls it
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x)

    return torch.export.export(_In(model), (example,), dynamic_shapes=_batch_dim())


@torch.no_grad()
def quantize_int8(model, calib_batches, example):
    """The INT8 GraphModule (quantize/dequantize ops around float ops; run it as is for the reference
    numerics, or `compile_int8` it for speed) of `model` (fused or not), calibrated on `calib_batches`."""
    prepare_pt2e, convert_pt2e, xiq = require_torchao()
    from ..fuse import unfuse

    eager = unfuse(model).eval()
    gm = _export(eager, example).module()
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(gm, quantizer)
    for x in calib_batches:
        prepared(x)
    return _drop_unused(convert_pt2e(prepared))


def _drop_unused(gm):
    """Delete the parameters and buffers that no graph node reads: after conversion the fp32 weights (and
    the folded BatchNorms) are still registered beside their int8 replacements, and torch.export would
    save them too (twice the size on disk)."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name in [n for n, _ in gm.named_parameters()] + [n for n, _ in gm.named_buffers()]:
        if name not in used:
            *path, leaf = name.split(".")
            owner = gm.get_submodule(".".join(path)) if path else gm
            if leaf in owner._parameters:
                del owner._parameters[leaf]
            else:
                del owner._buffers[leaf]
    gm.recompile()
    return gm


def export_program(qmodel, example):
    """An ExportedProgram of the converted model (dynamic batch), for torch.export.save."""
    return _export(qmodel, example)


def load_program(path):
    require_torchao()  # registers the quantized ops the program calls
    return torch.export.load(path)


@contextlib.contextmanager
def _freezing():
    import torch._inductor.config as cfg
    old = cfg.freezing
    cfg.freezing = True
    try:
        yield
    finally:
        cfg.freezing = old


def compile_int8(qmodel, example):
    """torch.compile the converted model with Inductor freezing (pre-packed INT8 weights); compiled on the
    first call, here, with `example`."""
    require_torchao()
    with _freezing(), torch.no_grad():
        fn = torch.compile(qmodel)
        fn(example)
    return fn


def half_supported(dtype):
    """Whether this CPU has native support for `dtype` (oneDNN's check: AVX-512 BF16 / AMX, AVX-512 FP16)."""
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if dtype == torch.float16:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    raise ValueError(f"half precision dtype must be torch.bfloat16 or torch.float16, got {dtype}")


def to_half(model, dtype):
    """An unfused eval copy of `model` in `dtype` (a plain cast: BatchNorm and the classifier too)."""
    from ..fuse import unfuse
    if not half_supported(dtype):
        raise RuntimeError(f"this CPU has no native {dtype} support (oneDNN), so {dtype} would be emulated "
                           "and slow; try the other half type or INT8")
    return unfuse(model).eval().to(dtype)
