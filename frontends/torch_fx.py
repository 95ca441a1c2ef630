"""ATen-level FX graph -> graph IR. Shared by `torch.export` (frontends/torch.py) and `torch.compile`
(compiler/dynamo.py): both hand over an FX graph whose nodes carry `meta["val"]` (fake tensors / SymInts).

Conventions:
- `meta["loc"]` is the module path relative to the model that was compiled, exactly as
  `model.named_modules()` spells it ("model.layers.3.mlp.down_proj"); "" for code in the root
  module's own forward. torch.export's and dynamo's spellings (`L['self'].layers[0]`,
  `L['self']._modules['fc']`) are normalized to that form by `module_path`.
- `meta["src"]` is "file.py:line" of the innermost user frame of the node's stack trace.
- A torch symbolic size becomes an IR dim: a symbol ("B", "S"), or a product of symbols and an int.
  Anything else (S+1, S//2, ...) cannot be an IR dim and raises an NnfuseError naming the node.
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Iterable, Optional

import numpy as np
import sympy
import torch
import torch.fx

from ..ir import Graph, NnfuseError, OpError, TensorType, Value, make_node
from ..ir.types import Dim, dim_mul

TORCH_DTYPES = {torch.float32: "f32", torch.float64: "f64", torch.float16: "f16", torch.bfloat16: "bf16",
                torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8",
                torch.bool: "bool", torch.float8_e4m3fn: "f8e4m3", torch.float8_e5m2: "f8e5m2"}
IR_TO_TORCH = {v: k for k, v in TORCH_DTYPES.items()}
# torch dtypes numpy cannot view directly: reinterpret the bits through a same-width integer type
_BITCAST = {torch.bfloat16: (torch.int16, "bf16"), torch.float8_e4m3fn: (torch.uint8, "f8e4m3"),
            torch.float8_e5m2: (torch.uint8, "f8e5m2")}


class Unsupported(NnfuseError):
    """A node the importer cannot lower (collected, then reported all at once)."""


def ir_dtype(dt: torch.dtype) -> str:
    try:
        return TORCH_DTYPES[dt]
    except KeyError:
        raise Unsupported(f"dtype {dt} has no nnfuse equivalent") from None


def tensor_to_numpy(t: torch.Tensor) -> np.ndarray:
    """A numpy view sharing memory with `t` (a copy only for non-CPU or non-contiguous tensors)."""
    from ..ir.dtypes import dtype as to_dtype
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if not t.is_contiguous():
        t = t.contiguous()  # backends take weights by pointer: give them dense memory
    if t.dtype in _BITCAST:
        as_int, name = _BITCAST[t.dtype]
        return t.view(as_int).numpy().view(to_dtype(name).np)
    ir_dtype(t.dtype)
    return t.numpy()


def numpy_to_tensor(a: np.ndarray) -> torch.Tensor:
    """A torch tensor sharing memory with `a` (bf16/fp8 through a same-width integer view)."""
    a = np.asarray(a)
    if not (a.flags.c_contiguous and a.flags.writeable):  # (np.ascontiguousarray would make 0-d arrays 1-d)
        a = a.copy(order="C")  # torch tensors are writable: never hand out a view of read-only memory
    for tdt, (as_int, name) in _BITCAST.items():
        if a.dtype == _np(name):
            return torch.from_numpy(a.view(IR_TO_TORCH_INT[as_int])).view(tdt)
    return torch.from_numpy(a)


def _np(name: str) -> np.dtype:
    from ..ir.dtypes import dtype as to_dtype
    return to_dtype(name).np


IR_TO_TORCH_INT = {torch.int16: np.int16, torch.uint8: np.uint8}


def module_path(raw: str) -> str:
    """Normalize an nn_module_stack path to `named_modules()` form (see module docstring)."""
    if not raw or raw.startswith("_empty"):
        return ""
    s = re.sub(r"^L\['[^']*'\]", "", raw)                   # dynamo: L['self'] is the root
    s = re.sub(r"^(self|L__self__)(?=[._\[]|$)", "", s)
    s = re.sub(r"\._modules\['([^']*)'\]", r".\1", s)       # dynamo: ._modules['fc']
    s = re.sub(r"\['([^']*)'\]|\[(\d+)\]", lambda m: "." + (m.group(1) or m.group(2)), s)
    s = re.sub(r"getattr\([^,]*,\s*'([^']*)'\)", r"\1", s)
    return s.strip(".").replace("..", ".")


def node_loc(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path = list(stack.values())[-1]
    return module_path(path[0] if isinstance(path, tuple) else str(path))


_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep


def node_src(node: torch.fx.Node) -> str:
    """The innermost frame outside torch itself (the model's line, not nn.Linear's)."""
    frames = _FRAME.findall(node.meta.get("stack_trace") or "")
    if not frames:
        return ""
    user = [f for f in frames if not f[0].startswith(_TORCH_DIR)]
    f, line = (user or frames)[-1]
    return f"{os.path.basename(f)}:{line}"


def where(node: torch.fx.Node) -> str:
    loc, src = node_loc(node), node_src(node)
    parts = [f"module '{loc}'" if loc else "the root module", src]
    return " at ".join(p for p in parts if p)


def op_name(target: Any) -> str:
    """Registry key of an FX call target: 'aten.add.Tensor', 'getitem', 'sym_size'..."""
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    return getattr(target, "__name__", str(target))


LOWER: dict[str, Callable] = {}  # aten op name -> fn(importer, *args, **kwargs); filled by torch_aten*.py


def lower(*names: str) -> Callable:
    """Register a lowering for one or more FX targets (spelled as `op_name` spells them)."""
    def deco(fn):
        for n in names:
            if n in LOWER:
                raise RuntimeError(f"lowering for {n} registered twice")
            LOWER[n] = fn
        return fn
    return deco


class _Failed:
    """The env entry of a node that could not be lowered (its dependents are skipped, not re-reported)."""


class SymExpr:
    """A symbolic int torch knows but the IR cannot spell (S+1): an error only when actually used as a dim."""

    def __init__(self, expr, err: str):
        self.expr, self.err = expr, err

    def __repr__(self) -> str:
        return f"SymExpr({self.expr})"


class Importer:
    """Converts one FX graph; lowering rules (torch_aten.LOWER) call back into its helpers."""

    def __init__(self, name: str, sym_names: Optional[dict] = None):
        self.g = Graph(name)
        self.env: dict[torch.fx.Node, Any] = {}
        self.sym_names: dict[sympy.Symbol, str] = dict(sym_names or {})
        self.node: Optional[torch.fx.Node] = None
        self.meta: dict = {}
        self._scalars: dict = {}   # (dtype, value) -> constant: one per distinct scalar
        self._dim_values: dict = {}  # (dim, dtype) -> value computed once

    # ---- dims and types
    def dim(self, d: Any) -> Dim:
        if isinstance(d, SymExpr):
            raise Unsupported(d.err)
        if isinstance(d, (int, np.integer)) and not isinstance(d, bool):
            return int(d)
        if isinstance(d, str):
            return d
        if isinstance(d, torch.SymInt):
            d = d.node.expr
        if not isinstance(d, sympy.Expr):
            raise Unsupported(f"expected a size, got {type(d).__name__} {d!r}")
        return self._sym_dim(d)

    def _sym_dim(self, e) -> Dim:
        if e.is_Integer:
            return int(e)
        if e.is_Symbol:
            return self.sym_names.setdefault(e, str(e))
        if e.is_Mul and all(a.is_Integer or a.is_Symbol or (a.is_Pow and a.exp.is_Integer and a.exp > 0) for a in e.args):
            return dim_mul(*[self._sym_dim(a) for a in e.args])
        if e.is_Pow and e.base.is_Symbol and e.exp.is_Integer and e.exp > 0:
            return dim_mul(*[self._sym_dim(e.base)] * int(e.exp))
        shown = e.xreplace({s: sympy.Symbol(self.sym_names.get(s, str(s))) for s in e.free_symbols})
        raise Unsupported(f"symbolic size {shown} cannot be an nnfuse dim (only products of symbols and integers); "
                          "mark fewer dims dynamic (e.g. only the batch dim)")

    def shape(self, s: Iterable) -> tuple:
        return tuple(self.dim(d) for d in s)

    def ttype(self, val: torch.Tensor) -> TensorType:
        return TensorType(self.shape(val.shape), ir_dtype(val.dtype))

    def val(self, node: Optional[torch.fx.Node] = None):
        """The fake value torch recorded for a node (the current one by default)."""
        return (node or self.node).meta.get("val")

    def target_name(self) -> str:
        return op_name(self.node.target)

    def out_type(self) -> TensorType:
        return self.ttype(self.val())

    # ---- building IR
    def op(self, name: str, *inputs: Value, **attrs: Any):
        try:
            n = make_node(name, inputs, attrs, dict(self.meta))
        except OpError as e:
            raise Unsupported(str(e)) from None
        self.g.add_node(n)
        return n.outputs[0] if len(n.outputs) == 1 else n.outputs

    def const(self, data: Any, name: str = "c") -> Value:
        return self.g.add_const(name, data)

    def scalar(self, x: Any, dtype: str) -> Value:
        from ..ir.dtypes import dtype as to_dtype
        arr = np.asarray(x).astype(to_dtype(dtype).np)
        key = (dtype, arr.tobytes())
        if key not in self._scalars:
            self._scalars[key] = self.g.add_const("c", arr)
        return self._scalars[key]

    def cast(self, v: Value, dtype: str) -> Value:
        return v if v.type.dtype.name == dtype else self.op("cast", v, to=dtype)

    def value(self, x: Any, dtype: str) -> Value:
        """A tensor operand of the given dtype from a Value, a python scalar or a (symbolic) size."""
        if isinstance(x, Value):
            return self.cast(x, dtype)
        if isinstance(x, (bool, int, float, np.number)):
            return self.scalar(x, dtype)
        d = self.dim(x)
        if isinstance(d, int):
            return self.scalar(d, dtype)
        if (d, dtype) not in self._dim_values:
            # a symbolic size as data: count the elements of a broadcast 1 (the IR keeps shapes in types only)
            ones = self.op("expand", self.scalar(1, "i64"), shape=[d])
            self._dim_values[d, dtype] = self.cast(self.op("reduce_sum", ones, axes=[0], keepdims=False), dtype)
        return self._dim_values[d, dtype]

    # ---- driving
    def resolve(self, a: Any) -> Any:
        if isinstance(a, torch.fx.Node):
            return self.env[a]
        if isinstance(a, (list, tuple)):
            return type(a)(self.resolve(x) for x in a)
        if isinstance(a, dict):
            return {k: self.resolve(v) for k, v in a.items()}
        return a

    def run(self, graph: torch.fx.Graph, lower: dict[str, Callable]) -> list[Value]:
        """Convert every call_function node (placeholders must already be in `env`); returns the flat outputs."""
        missing: dict[str, list[str]] = {}
        for n in graph.nodes:
            if n.op == "call_function" and not self._symbolic(n) and op_name(n.target) not in lower:
                missing.setdefault(op_name(n.target), []).append(where(n))
            elif n.op in ("call_module", "call_method"):
                missing.setdefault(f"{n.op} {n.target}", []).append(where(n))
        if missing:
            raise Unsupported(unsupported_message(missing))
        outputs: list[Value] = []
        errors: list[str] = []  # every node that fails on its own (its dependents are skipped), reported at once
        for n in graph.nodes:
            self.node = n
            self.meta = {k: v for k, v in (("loc", node_loc(n)), ("src", node_src(n))) if v}
            if n.op == "placeholder":
                if n not in self.env:
                    raise Unsupported(f"graph input '{n.name}' was not bound")
            elif n.op == "get_attr":
                self.env[n] = self._get_attr(graph, n)
            elif n.op == "call_function":
                if any(isinstance(self.env.get(a), _Failed) for a in n.all_input_nodes):
                    self.env[n] = _Failed()
                    continue
                try:
                    self.env[n] = self._call(n, lower)
                except Unsupported as e:
                    errors.append(str(e))
                    self.env[n] = _Failed()
            elif n.op == "output" and not errors:
                outputs = self._outputs(n.args[0])
        if errors:
            raise Unsupported(errors[0] if len(errors) == 1 else f"{len(errors)} nodes cannot be lowered:\n  " + "\n  ".join(errors))
        return outputs

    def _symbolic(self, n: torch.fx.Node) -> bool:
        """Size arithmetic (sym_size, python operators on SymInts): torch recorded the result as an expression."""
        if op_name(n.target).startswith(("aten.sym_size", "aten.sym_numel", "aten.sym_stride")):
            return True
        v = n.meta.get("val")
        return isinstance(v, (torch.SymInt, int)) and not isinstance(v, bool) and not isinstance(n.target, torch._ops.OpOverload)

    def _get_attr(self, graph, n):
        t = getattr(graph.owning_module, n.target)
        if not isinstance(t, torch.Tensor):
            raise Unsupported(f"get_attr '{n.target}' is not a tensor")
        return self.const(tensor_to_numpy(t), n.target)

    def _call(self, n: torch.fx.Node, lower: dict[str, Callable]) -> Any:
        v = n.meta.get("val")
        if self._symbolic(n):  # size arithmetic: torch already knows the result as a sympy expression
            try:
                return self.dim(v)
            except Unsupported as e:
                return SymExpr(v.node.expr if isinstance(v, torch.SymInt) else v, f"{e} ({op_name(n.target)} at {where(n)})")
        args, kwargs = self.resolve(n.args), self.resolve(n.kwargs)
        try:
            out = lower[op_name(n.target)](self, *args, **kwargs)
            if isinstance(out, Value) and isinstance(v, torch.Tensor):
                out = self._check(out, v)
            elif isinstance(out, list) and isinstance(v, (list, tuple)):
                out = [self._check(o, t) if isinstance(o, Value) and isinstance(t, torch.Tensor) else o for o, t in zip(out, v)]
        except Unsupported as e:
            raise Unsupported(f"{op_name(n.target)} at {where(n)}: {e}") from None
        except (NnfuseError, ValueError, TypeError, IndexError, KeyError) as e:  # a lowering that did not expect these args
            raise Unsupported(f"{op_name(n.target)} at {where(n)}: cannot lower it ({type(e).__name__}: {e})") from None
        return out

    def _check(self, out: Value, v: torch.Tensor) -> Value:
        want = self.ttype(v)
        if out.type.dtype != want.dtype:
            out = self.cast(out, want.dtype.name)
        if out.type.shape != want.shape:
            raise Unsupported(f"nnfuse inferred {out.type} but torch says {want} (an importer bug: please report)")
        return out

    def _outputs(self, args) -> list[Value]:
        flat: list[Value] = []

        def walk(r):
            if isinstance(r, (list, tuple)):
                for x in r:
                    walk(x)
            elif isinstance(r, Value):
                flat.append(r)
            else:
                raise Unsupported(f"a graph output is a {type(r).__name__}, not a tensor; nnfuse graphs return tensors")
        walk(self.resolve(args))
        return flat


def unsupported_message(missing: dict[str, list[str]]) -> str:
    lines = [f"{len(missing)} unsupported op{'s' if len(missing) > 1 else ''} (nnfuse cannot lower them):"]
    for op, wheres in sorted(missing.items()):
        uniq = list(dict.fromkeys(wheres))
        shown = "; ".join(uniq[:4]) + (f"; and {len(uniq) - 4} more places" if len(uniq) > 4 else "")
        lines.append(f"  {op} ({len(wheres)}x): {shown}")
    return "\n".join(lines)
