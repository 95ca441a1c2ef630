"""The `mlir` backend: graph IR -> linalg-on-tensors (mlir_export) -> torch-mlir's pass manager
(bufferize -> loops -> LLVM) -> MLIR's ExecutionEngine, run in-process.

Weights are memref arguments of the compiled function (passed by pointer, never copied into the
module), outputs are written in place into numpy arrays the executable allocates. `.source()` is the
self-contained export (weights as `dense_resource` blobs) for MLIR toolchains.
"""
from __future__ import annotations

import ctypes
import time
from typing import Sequence

import numpy as np

from ..ir import Graph, NnfuseError
from .mlir_export import export

try:
    from torch_mlir import ir, passmanager
    import torch_mlir.dialects.torch  # noqa: F401  (registers torch-mlir's passes, refback-munge-memref-copy among them)
    from torch_mlir.execution_engine import ExecutionEngine
    from torch_mlir.runtime import get_ranked_memref_descriptor
except ImportError as e:
    raise NnfuseError(f"backend 'mlir' needs torch-mlir ({e}): pip install 'nnfuse[mlir]'") from None

# one-shot bufferization, loops, LLVM (ExecutionEngine -O3 vectorizes the inner loops it can).
# Not linalg-fuse-elementwise-ops: it fuses elementwise producers *into* contractions, recomputing them per
# reduction step (a GELU feeding a matmul ran 4096x too often: 350 ms -> 22 ms on the bar's MLP without it).
LOWERING = ("builtin.module("
            "one-shot-bufferize{bufferize-function-boundaries=1 function-boundary-type-conversion=identity-layout-map},"
            "buffer-deallocation-pipeline,"
            "func.func(refback-munge-memref-copy, convert-linalg-to-loops),"
            "expand-strided-metadata, lower-affine, convert-scf-to-cf,"
            "convert-math-to-llvm, convert-math-to-libm, convert-arith-to-llvm, convert-cf-to-llvm,"
            "finalize-memref-to-llvm, convert-func-to-llvm, convert-index-to-llvm, reconcile-unrealized-casts)")


def parse_and_verify(text: str, ctx=None):
    """Parse MLIR text with torch-mlir's bindings and run the verifier; NnfuseError with MLIR's diagnostics."""
    ctx = ctx or ir.Context()
    try:
        m = ir.Module.parse(text, ctx)
        m.operation.verify()
    except ir.MLIRError as e:
        msgs = [f"{d.location}: {d.message}" for d in e.error_diagnostics] or [str(e)]
        raise NnfuseError("exported MLIR does not verify:\n  " + "\n  ".join(msgs[:5])) from None
    return m


class MlirExecutable:
    name = "mlir"

    def __init__(self, graph: Graph, opt_level: int = 2):
        self.graph = graph
        t0 = time.perf_counter()
        text, self.weights = export(graph, for_execution=True)
        self.ctx = ir.Context()
        module = parse_and_verify(text, self.ctx)
        try:
            with self.ctx:
                passmanager.PassManager.parse(LOWERING).run(module.operation)
        except ir.MLIRError as e:
            raise NnfuseError(f"lowering the exported MLIR to LLVM failed: {e}") from None
        self.engine = ExecutionEngine(module, opt_level=opt_level)
        self.module = module
        self._weights = [np.ascontiguousarray(w.data) for w in self.weights]
        self._weight_args = [_arg(w) for w in self._weights]
        self.compile_seconds = time.perf_counter() - t0

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        g = self.graph
        ins = [np.ascontiguousarray(x, dtype=v.type.dtype.np) for x, v in zip(inputs, g.inputs)]
        outs = [np.empty(v.type.shape, dtype=v.type.dtype.np) for v in g.outputs]
        args = [_arg(x) for x in ins] + self._weight_args + [_arg(o) for o in outs]
        self.engine.invoke("main", *args)
        return outs

    def source(self) -> str:
        return export(self.graph)[0]

    def stats(self) -> dict:
        return {"mlir_compile_seconds": round(self.compile_seconds, 3)}


def _arg(a: np.ndarray):
    if a.dtype == np.bool_:
        a = a.view(np.uint8)  # i1 memrefs hold one byte per element
    return ctypes.pointer(ctypes.pointer(get_ranked_memref_descriptor(a)))


def compile_graph(graph: Graph, **options) -> MlirExecutable:
    return MlirExecutable(graph, opt_level=int(options.get("mlir_opt_level", 2)))


def export_mlir(graph: Graph, dialect: str = "linalg") -> str:
    """A self-contained MLIR module for `graph`, verified with torch-mlir's bindings.

    dialect="linalg": linalg-on-tensors (every op the exporter knows); "tosa": TOSA, an ExportError
    naming the ops without a TOSA form when not every op maps."""
    if dialect == "tosa":
        from .mlir_tosa import export_tosa
        text = export_tosa(graph)
    elif dialect == "linalg":
        text = export(graph)[0]
    else:
        raise NnfuseError(f"unknown MLIR export dialect '{dialect}'; valid: linalg, tosa")
    parse_and_verify(text)
    return text
