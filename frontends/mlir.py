"""torch-mlir frontend: an MLIR module in the `torch` or `tosa` dialect -> graph IR.

The module is parsed and walked with MLIR's Python bindings (the ones torch-mlir ships); each op is
converted by a handler from `mlir_torch.HANDLERS` or `mlir_tosa.HANDLERS`. Every node keeps the op's
source location in `meta["loc"]` (`file:line:col` when the module came from a file). Ops without a
handler are collected and reported together in one error, each with its location.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence

import numpy as np

try:
    from torch_mlir import ir
    from torch_mlir.dialects import torch as torch_dialect
except ImportError as e:  # the optional extra
    from ..ir import NnfuseError
    raise NnfuseError(f"the MLIR frontend needs torch-mlir ({e}): pip install 'nnfuse[mlir]'") from None

from ..ir import Graph, NnfuseError, TensorType, Value, make_node
from . import mlir_types as mt


class MlirImportError(NnfuseError):
    pass


def context() -> ir.Context:
    ctx = ir.Context()
    torch_dialect.register_dialect(ctx)
    return ctx


def parse(text_or_path: str, ctx: Optional[ir.Context] = None, is_path: bool = False) -> ir.Module:
    """Parse MLIR text (or a file); a syntax error raises NnfuseError with MLIR's `file:line:col: message`."""
    ctx = ctx or context()
    try:
        if is_path:
            return ir.Module.parseFile(text_or_path, ctx)
        return ir.Module.parse(text_or_path, ctx)
    except ir.MLIRError as e:
        where = text_or_path if is_path else "<mlir>"
        diags = [f"{mt.location(d.location)}: error: {d.message}" for d in e.error_diagnostics] or [f"{where}: {e}"]
        raise MlirImportError("invalid MLIR:\n  " + "\n  ".join(diags)) from None


class Importer:
    """Walks one function; `env` maps MLIR values to nnfuse Values or Python constants (ints, lists, None)."""

    def __init__(self, func, graph: Graph, ctx: ir.Context):
        self.func, self.graph, self.ctx = func, graph, ctx
        self.env: dict[Any, Any] = {}
        self.loc = ""
        self.op = None

    # ---- helpers for handlers
    def emit(self, op: str, *inputs: Value, **attrs: Any):
        """Append a node; returns its result (or results)."""
        n = make_node(op, list(inputs), attrs, {"loc": self.loc} if self.loc else None)
        self.graph.add_node(n)
        return n.outputs[0] if len(n.outputs) == 1 else list(n.outputs)

    def const(self, data: Any, dtype: str, name: str = "c") -> Value:
        from ..ir import dtype as to_dtype
        return self.graph.add_const(name, np.asarray(data, dtype=to_dtype(dtype).np))

    def cast(self, v: Value, dtype: str) -> Value:
        return v if v.type.dtype.name == dtype else self.emit("cast", v, to=dtype)

    def tensor(self, x: Any, dtype: str) -> Value:
        """A tensor operand: nnfuse Values pass through, Python scalars become constants of `dtype`."""
        return x if isinstance(x, Value) else self.const(x, dtype)

    def result_type(self, i: int = 0) -> Optional[TensorType]:
        return mt.tensor_type(self.op.results[i].type)


def _find_func(module: ir.Module, name: Optional[str]):
    funcs = [op for op in module.body.operations if op.operation.name == "func.func"]
    if not funcs:
        raise MlirImportError("the MLIR module has no func.func to import")
    if name:
        for f in funcs:
            if ir.StringAttr(f.attributes["sym_name"]).value == name:
                return f
        raise MlirImportError(f"no function @{name} in the module")
    public = [f for f in funcs if "sym_visibility" not in f.attributes or ir.StringAttr(f.attributes["sym_visibility"]).value == "public"]
    for f in public:
        if ir.StringAttr(f.attributes["sym_name"]).value in ("main", "forward"):
            return f
    return (public or funcs)[0]


def load(model: Any, func: Optional[str] = None, **ignored: Any) -> Graph:
    """A .mlir path, MLIR text, or a parsed torch-mlir module -> Graph."""
    from . import mlir_torch, mlir_tosa
    if isinstance(model, (str, os.PathLike)) and os.path.exists(os.fspath(model)):
        path = os.fspath(model)
        module = parse(path, is_path=True)
        gname = os.path.splitext(os.path.basename(path))[0]
    elif isinstance(model, str):
        module, gname = parse(model), "main"
    elif hasattr(model, "operation") and hasattr(model, "body"):
        module, gname = model, "main"
    else:
        raise MlirImportError(f"cannot import a {type(model).__name__} as MLIR (expected a path, text or ir.Module)")
    ctx = module.context
    f = _find_func(module, func)
    g = Graph("".join(c if c.isalnum() or c == "_" else "_" for c in gname) or "main")
    imp = Importer(f, g, ctx)
    block = f.regions[0].blocks[0]
    for i, a in enumerate(block.arguments):
        t = mt.tensor_type(a.type)
        if t is None:
            raise MlirImportError(f"function argument {i} has type {a.type}; only tensor arguments are supported")
        imp.env[a] = g.add_input(f"arg{i}", t)

    ops = list(block.operations)
    handlers = {**mlir_torch.HANDLERS, **mlir_tosa.HANDLERS}
    missing = [(op.operation.name, mt.location(op.location)) for op in ops
               if op.operation.name not in handlers and op.operation.name != "func.return"]
    if missing:
        seen: dict[str, list[str]] = {}
        for name, loc in missing:
            seen.setdefault(name, []).append(loc or "?")
        lines = [f"{name} at {', '.join(locs[:3])}{' (+%d more)' % (len(locs) - 3) if len(locs) > 3 else ''}"
                 for name, locs in seen.items()]
        raise MlirImportError(f"{len(seen)} unsupported MLIR op(s) in @{g.name}:\n  " + "\n  ".join(lines))

    _preload_resources(imp, ops)
    for op in ops:
        name = op.operation.name
        imp.op, imp.loc = op, mt.location(op.location)
        args = [imp.env.get(v) for v in op.operands]
        if name == "func.return":
            outs = [imp.tensor(a, "f32") for a in _flatten(args)]
            g.set_outputs(outs)
            continue
        try:
            res = handlers[name](imp, op, args)
        except NnfuseError as e:
            raise MlirImportError(f"{imp.loc or '?'}: {name}: {e}") from None
        res = res if isinstance(res, (list, tuple)) and len(op.results) != 1 else [res]
        if len(res) != len(op.results):
            raise MlirImportError(f"{imp.loc}: {name}: handler gave {len(res)} results for {len(op.results)}")
        for r, v in zip(op.results, res):
            imp.env[r] = _check(imp, r, v, name)
    if not g.outputs:
        raise MlirImportError(f"@{g.name} has no func.return")
    g.remove_unused_constants()
    return g


def _flatten(xs):
    for x in xs:
        if isinstance(x, (list, tuple)):
            yield from _flatten(x)
        else:
            yield x


def _check(imp: Importer, r, v, name: str):
    """Hold the converted value to the type MLIR declares: same shape, and the declared dtype (cast if needed)."""
    want = mt.tensor_type(r.type)
    if want is None or not isinstance(v, Value):
        return v
    if tuple(v.type.shape) != tuple(want.shape):
        if all(isinstance(d, int) for d in want.shape) and all(isinstance(d, int) for d in v.type.shape):
            raise MlirImportError(f"{imp.loc}: {name}: converted result has shape {list(v.type.shape)}, "
                                  f"MLIR declares {list(want.shape)}")
    return imp.cast(v, want.dtype.name)


def _preload_resources(imp: Importer, ops) -> None:
    """Load every dense_resource weight of the function with one JIT (see mlir_types.read_resources)."""
    attrs, dts, keys = [], [], []
    for op in ops:
        for key in ("value", "values"):
            if key in op.attributes:
                a = op.attributes[key]
                if mt.is_resource(a):
                    attrs.append(a)
                    dts.append(mt.element_dtype(ir.ShapedType(a.type).element_type))
                    keys.append(op)
    arrays = mt.read_resources(attrs, imp.ctx, dts)
    imp.resources = {op: arr for op, arr in zip(keys, arrays)}


def literal(imp: Importer, op, key: str = "value") -> Value:
    """A constant tensor from a literal op's attribute (dense or dense_resource)."""
    a = op.attributes[key]
    dt = mt.element_dtype(ir.ShapedType(a.type).element_type)
    if op in imp.resources:
        arr = imp.resources[op]
        name = mt.resource_name(a)
    else:
        arr, name = mt.dense_to_numpy(a, dt), "c"
    want = imp.result_type()
    if want is not None and want.dtype.name != dt:  # e.g. an si64 vtensor over an i64 attribute
        arr = arr.astype(want.dtype.np)
    return imp.graph.add_const(name, arr)


Handler = Callable[[Importer, Any, Sequence[Any]], Any]


def export_torch(model: Any, *example_inputs: Any, output_type: str = "torch") -> ir.Module:
    """PyTorch module -> torch-mlir module (`torch`, `tosa` or `linalg-on-tensors`), via torch.export.

    Works around llvm/torch-mlir#4744 (open upstream): the frozen-program importer looks non-persistent
    buffers (e.g. HuggingFace RoPE's `inv_freq`, BERT's `position_ids`) up in the state dict, where
    torch.export never puts them. Marking them persistent on the module puts them there; the values
    are unchanged, and the caller's module gets its flags back afterwards.
    """
    from torch_mlir import fx
    saved = [(m, set(m._non_persistent_buffers_set)) for m in model.modules()]
    try:
        for m, _ in saved:
            m._non_persistent_buffers_set.clear()
        return fx.export_and_import(model, *example_inputs, output_type=output_type)
    finally:
        for m, s in saved:
            m._non_persistent_buffers_set.update(s)
