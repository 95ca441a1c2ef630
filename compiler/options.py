"""Every keyword option `nnfuse.compile(..., **options)` understands, in one table.

Options flow to the passes (`ctx.get(name)`) and to the backend's `compile_graph(graph, **options)`;
a misspelled one would otherwise be ignored without a word. `tests/test_options.py` checks that
every option the code reads is declared here.
"""
from __future__ import annotations

import difflib
import inspect

from .ir import NnfuseError

PASS_OPTIONS = {
    # cleanup / fusion
    "symbols": "bind symbolic dims for infer-shapes, e.g. {'B': 1}",
    "fold_max_elements": "fold-constants: largest folded result (elements)",
    "max_region_operands": "fusion: most operands a fused region may take",
    "fuse_attention": "fusion: recognize and fuse attention (default on)",
    # FFN fusion, attention removal, layer skipping
    "ffn_fusion": "run ffn-fusion", "ffn_threshold": "ffn-fusion: dependency score below which blocks fuse",
    "ffn_min_run": "ffn-fusion: shortest run to fuse", "ffn_max_run": "ffn-fusion: longest run to fuse",
    "drop_attention": "drop-attention: layer indices or 'auto[:K]'", "auto_drop_attention": "ffn-fusion: drop K attention blocks first",
    "skip_layers": "skip-layers: target speedup", "target_speedup": "skip-layers: target speedup",
    "num_skip": "skip-layers: number of blocks", "skip_granularity": "skip-layers: 'layer' or 'ffn'",
    "skip_measure": "skip-layers: measure the output deviation",
    "calibration": "calibration inputs (a list of input tuples)", "calibration_samples": "random calibration samples",
    "calibration_dims": "sizes for symbolic dims of random calibration inputs", "seed": "random seed for calibration/rotation",
    "progress": "show progress bars",
    # quantization
    "quantize": "scheme: 'w8a8', 'w4g128', 'fp8', 'mxfp4', 'nvfp4', ... or a Scheme", "rotate": "QuaRot Hadamard rotation",
    "reorder": "reorder channels for block formats", "reorder_format": "block format the reordering targets",
    "online_hadamard": "online Hadamard before down_proj", "exclude": "regex of module paths kept in fp32",
    "quant_mode": "'dynamic' or 'static' activations", "calib_method": "static ranges: minmax, percentile, mse",
    "percentile": "percentile for calib_method='percentile'", "act_clip": "activation clipping ratio",
    "granularity": "weight quantization granularity", "fallback_group": "use a smaller group when one does not divide",
    "gptq": "GPTQ error-compensating weight rounding (default: on for <=4-bit int weights with quantized activations)",
    "gptq_samples": "random calibration samples for GPTQ (default 8)", "gptq_damp": "GPTQ Hessian dampening (0.01)",
    # reduced precision
    "precision": "'fp32', 'bf16' or 'fp16'", "accuracy_report": "measure the reduced-precision error vs fp32",
}


def _backend_params(bmod) -> set[str]:
    params = inspect.signature(bmod.compile_graph).parameters.values()
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"graph"}


BACKEND_OPTIONS = {"mlir_opt_level", "interpret", "autotune", "threads", "profile", "device", "arch", "build_only"}


def check_options(options: dict, bmod, backend: str) -> None:
    """Raise on an option no pass and no backend reads, naming the closest valid ones."""
    known = set(PASS_OPTIONS) | BACKEND_OPTIONS | _backend_params(bmod)
    unknown = [k for k in options if k not in known]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, sorted(known), n=2)
            hints.append(f"'{k}'" + (f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""))
        raise NnfuseError(f"nnfuse.compile: unknown option(s) {', '.join(hints)} for backend '{backend}'; "
                          f"see nnfuse.options.PASS_OPTIONS for the list")
