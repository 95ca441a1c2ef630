"""Quantization passes (issue 10): formats in nnfuse.ir.quant_formats, ops in nnfuse.ir.ops.quant.

Passes: quantize-weights, quantize-dynamic, quantize-static, rotate-hadamard, reorder-channels, fuse-qdq.
`nnfuse.compile(..., quantize=..., rotate=True, reorder=True)` inserts them before the generic fusion passes
(see `pipeline.add_quant_passes`, a hook of the pass manager).
"""
from . import activations, decompose, fuse, reorder, rotate, weights  # noqa: F401  (register the passes)
from . import cpu_prepare  # noqa: F401  (prepare-quant-cpu: the cpu backend keeps the forms its kernels run)
from .config import PRESETS, QuantConfig, parse_config  # noqa: F401
from .pipeline import add_quant_passes  # noqa: F401
from ..manager import PIPELINE_HOOKS

if add_quant_passes not in PIPELINE_HOOKS:
    PIPELINE_HOOKS.append(add_quant_passes)
