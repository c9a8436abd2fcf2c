"""INT8 post-training static quantization (PT2E, torchao's X86InductorQuantizer) and a half-precision option.

Flow: `sk.unfuse` (the fused ops are custom ops that the quantizer knows nothing of; the unfused model is
plain torch, with the same weights) -> `torch.export` with a dynamic batch -> `prepare_pt2e` (observers
where X86InductorQuantizer wants them: per-channel symmetric weights, per-tensor affine activations) ->
calibration on training images -> `convert_pt2e` (quantize/dequantize pairs around float ops) ->
`torch.compile`, whose Inductor pattern-matches the pairs into oneDNN INT8 convolutions (with
`freezing`, so that weights are pre-packed once).  The converted program is saved with
`torch.export.save`; loading it back needs `import torchao` (its ops).

ShuffleNet units (`shuffle_aware=True`, the default).  X86InductorQuantizer quantizes a `cat` only when
all its inputs come from quantized ops, so in a stride-1 ShuffleNetV2 unit -- `cat(x1, branch2(x2))`, x1
the pass-through half of the previous unit's shuffled output -- the cat, the shuffle (reshape / transpose
/ reshape) and the chunk ran in fp32 between a dequantize and a quantize.  `ShuffleAwareX86Quantizer`
annotates every channel cat with one shared set of quantization parameters for its inputs and output
(`SharedQuantizationSpec`), and the quantized consumers of tensors that only moved from such a cat (the
next unit's 1x1 conv behind a chunk, the pass-through half, a stride-2 unit's convs) share them too: one
observer per stage.  After `convert_pt2e`, `int8_data_movement` moves each dequantize below the ops that
only move data (cat, reshape, transpose, chunk, ...) and drops the quantize(dequantize(x)) pairs with equal
parameters, which is exact: the int8 graph computes what the converted one computes, bit for bit.  So the
last 1x1 conv of a branch writes uint8, and the cat, shuffle and chunk copy 1-byte data.
"""
import contextlib
import operator

import torch

__all__ = ["require_torchao", "quantize_int8", "shuffle_aware_quantizer", "int8_data_movement", "export_program",
           "load_program", "compile_int8", "half_supported", "to_half"]

aten = torch.ops.aten


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
def quantize_int8(model, calib_batches, example, *, shuffle_aware=True):
    """The INT8 GraphModule (quantize/dequantize ops around float ops; run it as is for the reference
    numerics, or `compile_int8` it for speed) of `model` (fused or not), calibrated on `calib_batches`.

    shuffle_aware: annotate with `shuffle_aware_quantizer()` and run `int8_data_movement` on the converted
    graph (cat / channel shuffle / chunk on int8); False: torchao's X86InductorQuantizer as it is."""
    prepare_pt2e, convert_pt2e, xiq = require_torchao()
    from ..fuse import unfuse

    eager = unfuse(model).eval()
    gm = _export(eager, example).module()
    quantizer = shuffle_aware_quantizer() if shuffle_aware else xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(gm, quantizer)
    for x in calib_batches:
        prepared(x)
    q = convert_pt2e(prepared)
    if shuffle_aware:
        int8_data_movement(q)
    return _drop_unused(q)


# Ops that only move data: a (de)quantize commutes with them exactly.  chunk / split return a tuple, read
# with operator.getitem.
_MOVE_OPS = frozenset([aten.reshape.default, aten.view.default, aten.transpose.int, aten.permute.default,
                       aten.contiguous.default, aten.clone.default, aten.flatten.using_ints,
                       aten.unsqueeze.default, aten.squeeze.dim, aten.slice.Tensor, aten.narrow.default,
                       aten.chunk.default, aten.split.Tensor, aten.split_with_sizes.default])
_TUPLE_OPS = frozenset([aten.chunk.default, aten.split.Tensor, aten.split_with_sizes.default])


def _is_move(n):
    if n.op != "call_function":
        return False
    if n.target is operator.getitem:
        src = n.args[0]
        return isinstance(src, torch.fx.Node) and src.op == "call_function" and src.target in _TUPLE_OPS
    return n.target in _MOVE_OPS


def _moved_from(n, cats):
    """The cat in `cats` that `n` is, or only moved data from (through `_MOVE_OPS`), else None."""
    while isinstance(n, torch.fx.Node) and _is_move(n):
        n = n.args[0]
    return n if isinstance(n, torch.fx.Node) and n in cats else None


def _cat_dim(n):
    return n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)


_QUANTIZER_CLS = None


def shuffle_aware_quantizer():
    """An X86InductorQuantizer (torchao) that also quantizes every channel concatenation -- the one in each
    ShuffleNet unit -- with parameters shared by its inputs and output, and makes the quantized consumers
    of data moved from such a cat (shuffle, chunk) share them: see the module docstring."""
    global _QUANTIZER_CLS
    if _QUANTIZER_CLS is None:
        require_torchao()
        from torchao.quantization.pt2e.quantizer import (QuantizationSpec, SharedQuantizationSpec,
                                                         get_input_act_qspec)
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

        key = xiq.QUANT_ANNOTATION_KEY

        class ShuffleAwareX86Quantizer(xiq.X86InductorQuantizer):
            def annotate(self, model):
                super().annotate(model)
                if self.global_config is None:
                    return model
                act = get_input_act_qspec(self.global_config)
                cats = set()
                for node in model.graph.nodes:  # topological order: a cat's sources come first
                    if node.op != "call_function":
                        continue
                    if node.target is aten.cat.default and _cat_dim(node) in (1, -3) and all(
                            isinstance(a, torch.fx.Node) and a.meta.get("val") is not None
                            and a.meta["val"].dtype == torch.float32 and a.meta["val"].dim() == 4
                            for a in node.args[0]):
                        inputs = list(dict.fromkeys(node.args[0]))
                        # one observer for the stage: join the group of a cat this one moves data from
                        src = next((c for c in (_moved_from(a, cats) for a in inputs) if c is not None), None)
                        if src is None:
                            first, rest = act, SharedQuantizationSpec((inputs[0], node))
                        else:
                            first = rest = SharedQuantizationSpec(src)
                        node.meta[key] = xiq._X86InductorQuantizationAnnotation(
                            input_qspec_map={a: first if i == 0 else rest for i, a in enumerate(inputs)},
                            output_qspec=rest, _annotated=True, _is_output_of_quantized_pattern=True)
                        cats.add(node)
                        continue
                    ann = node.meta.get(key)
                    if ann is None or not ann.input_qspec_map:
                        continue
                    for a, spec in list(ann.input_qspec_map.items()):  # e.g. the next unit's 1x1 conv
                        src = _moved_from(a, cats)
                        if src is not None and isinstance(spec, QuantizationSpec) and spec.dtype == act.dtype \
                                and spec.qscheme == act.qscheme:
                            ann.input_qspec_map[a] = SharedQuantizationSpec(src)
                return model

        _QUANTIZER_CLS = ShuffleAwareX86Quantizer
    return _QUANTIZER_CLS()


def _qdq_ops():
    qd = torch.ops.quantized_decomposed
    return qd.quantize_per_tensor.default, qd.dequantize_per_tensor.default


def int8_data_movement(gm):
    """Rewrite a converted (PT2E) GraphModule in place so that data moves as int8: a per-tensor dequantize
    feeding an op of `_MOVE_OPS` moves below it, a cat of dequantizes with equal parameters becomes a
    dequantize of the cat of their int8 inputs, and quantize(dequantize(x)) with equal parameters becomes x.
    Each step is exact (dequantize is elementwise; rounding (x - z) * s / s returns x - z).  Returns the
    number of rewrites of each kind."""
    q_op, dq_op = _qdq_ops()
    g = gm.graph
    counts = {"requant_dropped": 0, "dequant_moved": 0, "cat_int8": 0}

    def is_dq(n):
        return isinstance(n, torch.fx.Node) and n.op == "call_function" and n.target is dq_op and not n.kwargs

    changed = True
    while changed:
        changed = False
        for n in list(g.nodes):
            if n.op != "call_function" or not n.users:
                continue
            if n.target is q_op and not n.kwargs and is_dq(n.args[0]) and tuple(n.args[1:]) == tuple(n.args[0].args[1:]):
                n.replace_all_uses_with(n.args[0].args[0])
                counts["requant_dropped"] += 1
            elif _is_move(n) and n.target is not operator.getitem and is_dq(n.args[0]):
                d = n.args[0]
                with g.inserting_after(n):
                    moved = g.call_function(n.target, (d.args[0], *n.args[1:]), dict(n.kwargs))
                if n.target in _TUPLE_OPS:
                    for u in list(n.users):
                        if u.target is not operator.getitem:  # pragma: no cover (export reads tuples so)
                            raise RuntimeError(f"int8_data_movement: {n} is read by {u}, not getitem")
                        with g.inserting_after(u):
                            item = g.call_function(operator.getitem, (moved, u.args[1]))
                        with g.inserting_after(item):
                            u.replace_all_uses_with(g.call_function(dq_op, (item, *d.args[1:])))
                else:
                    with g.inserting_after(moved):
                        n.replace_all_uses_with(g.call_function(dq_op, (moved, *d.args[1:])))
                counts["dequant_moved"] += 1
            elif n.target is aten.cat.default and n.args[0] and all(is_dq(a) for a in n.args[0]) \
                    and len({tuple(a.args[1:]) for a in n.args[0]}) == 1:
                ins = n.args[0]
                with g.inserting_after(n):
                    cat = g.call_function(aten.cat.default, ([a.args[0] for a in ins], *n.args[1:]), dict(n.kwargs))
                with g.inserting_after(cat):
                    n.replace_all_uses_with(g.call_function(dq_op, (cat, *ins[0].args[1:])))
                counts["cat_int8"] += 1
            else:
                continue
            changed = True
            g.eliminate_dead_code()
    g.lint()
    gm.recompile()
    return counts


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
    """torch.compile the converted model with Inductor freezing (pre-packed INT8 weights, the oneDNN INT8
    convolutions); compiled here for `example`'s shape, under no_grad and under inference_mode.

    Every call runs with freezing on, so a recompilation (another batch size, another grad mode: dynamo
    guards on the dispatch keys, so a call under inference_mode recompiles a graph compiled under no_grad)
    is frozen too -- without it such a graph silently runs without the INT8 convolution lowering.  Shapes
    are static (one graph per batch size): a dynamic-batch graph would also serve the batch compiled first."""
    require_torchao()
    fn = torch.compile(qmodel, dynamic=False)

    def run(x):
        with _freezing():
            return fn(x)

    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            run(example)
    return run


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
