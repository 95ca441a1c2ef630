"""Where the quantization passes go in a pipeline when compile() gets quantize= / rotate= / reorder=."""
from __future__ import annotations

from typing import Sequence

from ..manager import PASSES
from .config import parse_config

QUANT_PASSES = ("rotate-hadamard", "reorder-channels", "quantize-weights", "quantize-dynamic", "quantize-static", "fuse-qdq",
                "decompose-quant")
# Backends that run the quantization ops themselves. Any other backend gets `decompose-quant` (same numbers in
# primitive ops, weights dequantized at compile time) until its lowering of the quant ops exists.
NATIVE_QUANT_BACKENDS = {"reference", "onnx", "cpu"}
# Native backends whose kernels take only some forms: this pass keeps those and decomposes the rest.
PREPARE_PASS = {"cpu": "prepare-quant-cpu"}


def add_quant_passes(names: Sequence[str], options: dict) -> list[str]:
    """rotate -> reorder -> quantize, right before the first fusion pass (else at the end), then fuse-qdq.
    An explicit pass list that already names one of these passes is left alone."""
    names = list(names)
    q, rot, reo = options.get("quantize"), options.get("rotate"), options.get("reorder")
    if not (q or rot or reo) or any(n in QUANT_PASSES for n in names):
        return names
    mine = []
    if rot and "recognize-norms" in PASSES and "recognize-norms" not in names:
        mine.append("recognize-norms")          # the rotation folds RMSNorm gains: it needs rms_norm ops
    mine += ["rotate-hadamard"] if rot else []
    mine += ["reorder-channels"] if reo else []
    if q:
        mine.append(parse_config(q, options).pass_name)
    at = next((i for i, n in enumerate(names) if n.startswith("fuse-")), len(names))
    backend = options.get("backend", "reference")
    if backend not in NATIVE_QUANT_BACKENDS:
        mine.append("decompose-quant")
        return names[:at] + mine + names[at:]
    if backend in PREPARE_PASS:
        mine.append(PREPARE_PASS[backend])
    if q and at < len(names):
        mine.append("fuse-qdq")
    return names[:at] + mine + names[at:]
