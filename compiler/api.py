"""`nnfuse.compile()` and `CompiledModel`: frontend -> passes -> backend, behind one call."""
from __future__ import annotations

import importlib
import os
import time
from typing import Any, Optional, Sequence

import numpy as np

from .ir import Graph, NnfuseError
from .ir import serialize as ir_serialize

BACKENDS = {"reference": "nnfuse.backends.reference", "cpu": "nnfuse.backends.cpu", "triton": "nnfuse.backends.triton",
            "cuda": "nnfuse.backends.cuda", "onnx": "nnfuse.backends.onnx", "mlir": "nnfuse.backends.mlir"}


def backend_module(name: str):
    if name not in BACKENDS:
        raise NnfuseError(f"unknown backend '{name}'; valid: {', '.join(BACKENDS)}")
    try:
        return importlib.import_module(BACKENDS[name])
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("nnfuse"):
            raise NnfuseError(f"backend '{name}' is not available in this build of nnfuse") from None
        raise NnfuseError(f"backend '{name}' needs the package '{e.name}': pip install {e.name}") from None


def to_graph(model: Any, example_inputs: Optional[Sequence] = None, **frontend_options) -> Graph:
    """Any supported model form -> graph IR (dispatch on type or file extension)."""
    if isinstance(model, Graph):
        return model
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.exists(path):
            raise NnfuseError(f"{path}: no such file")
        ext = os.path.splitext(path)[1].lower()
        if ext == ".nnir":
            return ir_serialize.load(path)
        if ext == ".onnx":
            from .frontends import onnx as onnx_frontend
            return onnx_frontend.load(path, **frontend_options)
        if ext == ".mlir":
            from .frontends import mlir as mlir_frontend
            return mlir_frontend.load(path, **frontend_options)
        raise NnfuseError(f"{path}: unknown model format '{ext}' (expected .onnx, .nnir or .mlir)")
    mod = type(model).__module__
    if mod.startswith("onnx"):
        from .frontends import onnx as onnx_frontend
        return onnx_frontend.load(model, **frontend_options)
    if mod.startswith("torch_mlir") or type(model).__name__ == "Module" and hasattr(model, "operation"):
        from .frontends import mlir as mlir_frontend
        return mlir_frontend.load(model, **frontend_options)
    if _is_torch_module(model):
        from .frontends import torch as torch_frontend
        if example_inputs is None:
            raise NnfuseError("compiling a torch.nn.Module needs example_inputs (a tuple of tensors)")
        if hasattr(example_inputs, "shape"):   # one tensor, not a tuple: tuple() would split it along dim 0
            example_inputs = (example_inputs,)
        return torch_frontend.load(model, tuple(example_inputs), **frontend_options)
    raise NnfuseError(f"cannot compile a {type(model).__name__}: pass a torch.nn.Module, an ONNX model or path, "
                      "a .nnir/.mlir path or an nnfuse.ir.Graph")


def _is_torch_module(m: Any) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return isinstance(m, torch.nn.Module)


class CompiledModel:
    """A compiled model: call it with torch tensors or numpy arrays."""

    def __init__(self, graph: Graph, executable: Any, backend: str, report: Any = None, compile_seconds: float = 0.0,
                 options: Optional[dict] = None):
        self.graph = graph
        self.executable = executable
        self.backend = backend
        self.report = report
        self.compile_seconds = compile_seconds
        self.options = options or {}

    @property
    def program(self):
        return getattr(self.executable, "program", None)

    def __call__(self, *args):
        torch_out = any(type(a).__module__.startswith("torch") for a in args)
        arrays = self._check_inputs(args)
        outs = self.executable(arrays)
        if torch_out:
            from .frontends.torch_fx import numpy_to_tensor  # bf16/fp8-safe, no copy
            outs = [numpy_to_tensor(o) if isinstance(o, np.ndarray) else o for o in outs]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _check_inputs(self, args) -> list[np.ndarray]:
        g = self.graph
        if len(args) != len(g.inputs):
            raise NnfuseError(f"model takes {len(g.inputs)} inputs ({', '.join(v.name for v in g.inputs)}), got {len(args)}")
        arrays, binding = [], {}
        for v, a in zip(g.inputs, args):
            if hasattr(a, "detach"):
                from .frontends.torch_fx import tensor_to_numpy  # bf16/fp8-safe, no copy
                a = tensor_to_numpy(a)
            a = np.asarray(a)
            want = v.type
            if a.dtype != want.dtype.np:
                raise NnfuseError(f"input '{v.name}': expected {want}, got {a.dtype.name}{list(a.shape)}")
            if a.ndim != want.rank:
                raise NnfuseError(f"input '{v.name}': expected {want}, got rank {a.ndim} {list(a.shape)}")
            for d, n in zip(want.shape, a.shape):
                if isinstance(d, int):
                    if d != n:
                        raise NnfuseError(f"input '{v.name}': expected {want}, got {a.dtype.name}{list(a.shape)}")
                elif "*" not in d:
                    if binding.setdefault(d, n) != n:
                        raise NnfuseError(f"input '{v.name}': dim {d} is {n} here but {binding[d]} in another input")
            arrays.append(a)
        return arrays

    def source(self) -> str:
        src = getattr(self.executable, "source", None)
        return src() if callable(src) else str(self.graph)

    def stats(self) -> dict:
        s = {"backend": self.backend, "compile_seconds": round(self.compile_seconds, 3), "nodes": len(self.graph.nodes),
             "ops": self.graph.op_histogram(), "param_bytes": self.graph.param_bytes()}
        if self.report is not None and hasattr(self.report, "as_dict"):
            s["passes"] = self.report.as_dict()
        if getattr(self, "accuracy", None):
            s["accuracy"] = self.accuracy
        extra = getattr(self.executable, "stats", None)
        if callable(extra):
            s.update(extra())
        return s

    def dump(self, level: str = "graph") -> str:
        if level == "graph":
            return str(self.graph)
        if level == "kernel":
            if self.program is None:
                raise NnfuseError(f"backend '{self.backend}' has no kernel IR")
            return str(self.program)
        if level == "source":
            return self.source()
        raise NnfuseError(f"unknown dump level '{level}'; valid: graph, kernel, source")

    def save(self, path: str) -> None:
        """Save the optimized graph (.nnir + weights); `nnfuse.load` recompiles it for the same backend."""
        self.graph.meta["backend"] = self.backend
        ir_serialize.save(self.graph, path)
        side = os.path.splitext(path)[0] + ".backend"
        with open(f"{side}.tmp{os.getpid()}", "w") as f:
            f.write(self.backend)
        os.replace(f"{side}.tmp{os.getpid()}", side)

    def __repr__(self) -> str:
        return f"CompiledModel(@{self.graph.name}, backend={self.backend}, {len(self.graph.nodes)} nodes)"


def compile(model: Any, example_inputs: Optional[Sequence] = None, *, backend: str = "reference", opt_level: int = 2,
            passes: Optional[Sequence[str]] = None, disable: Sequence[str] = (), dynamic: bool = False,
            verify_each: bool = False, print_after: Sequence[str] = (), print_after_all: bool = False,
            **options: Any) -> CompiledModel:
    """Compile a model (torch.nn.Module, ONNX path/ModelProto, .nnir/.mlir path, or Graph) for a backend."""
    t0 = time.perf_counter()
    bmod = backend_module(backend)
    frontend_opts = {k: options.pop(k) for k in list(options) if k in ("dynamic_shapes", "strict", "input_shapes")}
    if dynamic:
        frontend_opts["dynamic"] = True
    from .options import check_options
    check_options(options, bmod, backend)
    graph = to_graph(model, example_inputs, **frontend_opts)
    _check_weights(graph)
    fp32_graph = graph
    if "precision" in options:
        from .passes.precision import check_precision
        check_precision(options["precision"])
        if options["precision"] == "fp16" and backend == "cpu":
            import warnings
            warnings.warn("precision='fp16' on the cpu backend stores f16 but computes in f32 (converted per element): "
                          "expect fp32 speed or slower; precision='bf16' is the fast reduced precision on CPUs",
                          stacklevel=2)
    from .passes import optimize
    graph, report = optimize(graph, opt_level=opt_level, passes=passes, disable=disable, verify_each=verify_each,
                             print_after=print_after, print_after_all=print_after_all, backend=backend, **options)
    exe = bmod.compile_graph(graph, **options)
    cm = CompiledModel(graph, exe, backend, report, time.perf_counter() - t0, options)
    if options.get("precision", "fp32") != "fp32" and example_inputs is not None and options.get("accuracy_report", True):
        from .precision import accuracy_report   # reduced precision: error and logit cosine vs f32 (issue 12)
        cm.accuracy = accuracy_report(fp32_graph, cm, example_inputs if not hasattr(example_inputs, "shape") else (example_inputs,),
                                      options["precision"])
    return cm


def _check_weights(g: Graph) -> None:
    """Every constant needs its data before a backend sees it (a .nnir loaded without its .npz has none)."""
    graphs = [g] + [n.body for n in g.walk() if n.body is not None]
    missing = [v.name for h in graphs for v in h.constants.values() if v.data is None]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise NnfuseError(f"constant(s) {', '.join('@' + m for m in missing[:5])}{more} of graph @{g.name} have no data "
                          "(a .nnir file needs its weights file beside it)")


def load(path: str, backend: Optional[str] = None) -> CompiledModel:
    """Load a model saved by `CompiledModel.save` and compile it (no passes are re-run)."""
    side = os.path.splitext(path)[0] + ".backend"
    if backend is None:
        backend = open(side).read().strip() if os.path.exists(side) else "reference"
    graph = ir_serialize.load(path)
    return compile(graph, backend=backend, opt_level=0)
