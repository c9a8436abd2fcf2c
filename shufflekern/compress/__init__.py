"""Compress a (distilled) ShuffleNet student further: shuffle-aware structured pruning, INT8 PT2E quantization.

    from shufflekern.compress import prune_structured, quantize_int8
    small, plan = prune_structured(student, 0.5)        # a smaller dense ShuffleNetV1/V2
    recalibrate_bn(small, train_batches)                # BatchNorm statistics of the pruned network
    q = quantize_int8(small, calib_batches, example)    # needs torchao

`python -m shufflekern prune|quantize` wrap them with fine-tuning (the distillation trainer), metrics and
checkpoints (see cli.py).  torchao is imported only by the quantization functions.
"""
from .measure import count_mflops, count_nonzero, count_params, interleaved_latency
from .prune import (finalize_unstructured, mid_channels, prune_structured, prune_unstructured,
                    recalibrate_bn, v1_kept_per_block, zero_removed)
from .quantize import compile_int8, export_program, half_supported, load_program, quantize_int8, require_torchao

__all__ = ["prune_structured", "prune_unstructured", "finalize_unstructured", "mid_channels", "zero_removed", "recalibrate_bn",
           "v1_kept_per_block", "count_params", "count_nonzero", "count_mflops", "interleaved_latency",
           "quantize_int8", "export_program", "load_program", "compile_int8", "half_supported", "require_torchao"]
