"""ONNX importer: ModelProto or .onnx path -> graph IR.

Every ONNX node goes through a handler in `onnx_ops` that emits IR ops through `Importer.emit`.
`emit` folds a node whose operands are all known at import time (initializers, Constant nodes,
shapes) by running the IR op's own reference semantics, so shape subgraphs
(Shape -> Gather -> Concat -> Reshape, Range, ConstantOfShape, ...) end up as attributes.
Shapes that hold symbolic dims fold too: they are object arrays of ints and dim strings ("B").
"""
from __future__ import annotations

import ast

import os
import re
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..ir import Graph, NnfuseError, TensorType, Value, make_node, verify
from ..ir.evaluate import run_node
from ..ir.types import dim_div, dim_mul

MIN_OPSET, MAX_OPSET = 6, 21   # 6 because the onnx wheel's own test data (pytorch-converted) is opset 6
FOLD_LIMIT = 1 << 16            # fold results up to this many elements; bigger ones (weights) stay ops

# ONNX TensorProto element type -> IR dtype name
ONNX_DTYPES = {1: "f32", 2: "u8", 3: "i8", 5: "i16", 6: "i32", 7: "i64", 9: "bool", 10: "f16", 11: "f64", 16: "bf16",
               17: "f8e4m3", 19: "f8e5m2", 21: "u4", 22: "i4", 23: "f4e2m1"}
ONNX_DTYPE_NAMES = {0: "undefined", 4: "uint16", 8: "string", 12: "uint32", 13: "uint64", 14: "complex64",
                    15: "complex128", 18: "float8e4m3fnuz", 20: "float8e5m2fnuz"}



def module_path(n) -> str:
    """The torch module path the dynamo exporter recorded for a node ('model.layers.3.mlp'), or ''.

    `pkg.torch.onnx.name_scopes` is a Python list literal ending in [..., module path, fx node name]."""
    for p in n.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                return ""
            if isinstance(scopes, list) and len(scopes) >= 2 and all(isinstance(x, str) for x in scopes):
                return scopes[-2]
    return ""

class OnnxImportError(NnfuseError):
    pass


class Sym:
    """A 1-D (or scalar) integer tensor known at import time whose elements may be symbolic dims."""

    __slots__ = ("data",)

    def __init__(self, data: np.ndarray):
        self.data = data


class Seq:
    """An ONNX sequence resolved at import time: a list of tensors."""

    __slots__ = ("items", "dtype")

    def __init__(self, items: list, dtype: Optional[str] = None):
        self.items = list(items)
        self.dtype = dtype


Ref = Union[Value, Sym, Seq]


def sanitize_symbol(s: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_]", "_", s.strip()) or "d"
    return "_" + s if s[0].isdigit() else s


def has_symbols(a: np.ndarray) -> bool:
    return a.dtype == object and any(isinstance(x, str) for x in a.reshape(-1))


def describe(n) -> str:
    """How an error names an ONNX node: its name, else the value it produces."""
    if n.name:
        return f"node {n.name!r} ({n.op_type})"
    return f"node ({n.op_type} producing {n.output[0]!r})" if n.output and n.output[0] else f"node ({n.op_type}, unnamed)"


def _read_model(model: Any):
    import onnx
    from google.protobuf.message import DecodeError
    if isinstance(model, onnx.ModelProto):
        return model, "<ModelProto>", None
    path = os.fspath(model)
    if not os.path.exists(path):
        raise OnnxImportError(f"{path}: no such file")
    if os.path.isdir(path):
        raise OnnxImportError(f"{path}: is a directory, not an ONNX file")
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise OnnxImportError(f"{path}: empty file (0 bytes), not an ONNX model")
    try:
        m = onnx.load_model_from_string(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise OnnxImportError(f"{path}: not a valid ONNX file (truncated or corrupt protobuf: {e})") from None
    return m, path, os.path.dirname(os.path.abspath(path))


def _check_model(m, where: str) -> int:
    if not m.HasField("graph") or m.ir_version <= 0 and not m.opset_import:
        raise OnnxImportError(f"{where}: not an ONNX model (no graph / IR version)")
    opset = None
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx"):
            opset = o.version
    if opset is None:
        opset = MIN_OPSET if m.ir_version and m.ir_version < 3 else None
    if opset is None:
        raise OnnxImportError(f"{where}: model imports no default-domain opset (opset_import is empty)")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise OnnxImportError(f"{where}: opset {opset} is out of the supported range {MIN_OPSET}..{MAX_OPSET}")
    return opset


def load(model: Any, input_shapes: Optional[dict] = None, **_ignored: Any) -> Graph:
    """Import an ONNX model (path or ModelProto) as a graph IR `Graph`."""
    m, where, base_dir = _read_model(model)
    opset = _check_model(m, where)
    im = Importer(m, where, base_dir, opset, input_shapes or {})
    g = im.run()
    try:
        verify(g)
    except NnfuseError as e:
        raise OnnxImportError(f"{where}: the imported graph does not verify (nnfuse bug?): {e}") from None
    return g


class Importer:
    def __init__(self, model, where: str, base_dir: Optional[str], opset: int, input_shapes: dict):
        self.model, self.where, self.base_dir, self.opset = model, where, base_dir, opset
        self.input_shapes = {k: list(v) for k, v in input_shapes.items()}
        self.opsets = {o.domain or "": o.version for o in model.opset_import}
        self.g = Graph(model.graph.name or "main")
        self.env: dict[str, Ref] = {}
        self.meta: dict = {}
        self.node = None
        self.declared: dict[str, list] = {}  # value name -> static shape declared in value_info / outputs
        for vi in list(model.graph.value_info) + list(model.graph.output):
            tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
            if tt is not None and tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
                self.declared[vi.name] = [int(d.dim_value) for d in tt.shape.dim]

    # ------------------------------------------------------------ driver
    def run(self) -> Graph:
        from .onnx_ops import HANDLERS, supported
        gp = self.model.graph
        self._constants(gp)
        self._inputs(gp)
        order = self._toposort(gp)
        bad = [n for n in order if not supported(n)]
        if bad:
            kinds: dict[str, list[str]] = {}
            for n in bad:
                key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
                kinds.setdefault(key, []).append(n.name or n.output[0] if n.output else "?")
            listing = "; ".join(f"{k} (nodes: {', '.join(map(repr, v[:5]))}{', ...' if len(v) > 5 else ''})" for k, v in kinds.items())
            raise OnnxImportError(f"{self.where}: {len(kinds)} unsupported ONNX op type(s): {listing}")
        for n in order:
            self.node = n
            self.meta = {"loc": module_path(n) or n.name or n.op_type, "onnx_name": n.name, "onnx_op": n.op_type}
            try:
                outs = HANDLERS[(n.domain if n.domain != "ai.onnx" else "", n.op_type)](self, n)
            except OnnxImportError:
                raise
            except NnfuseError as e:
                raise OnnxImportError(f"{self.where}: {describe(n)}: {e}") from None
            except (ValueError, TypeError, IndexError, KeyError) as e:
                raise OnnxImportError(f"{self.where}: {describe(n)}: {type(e).__name__}: {e}") from None
            outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
            for i, name in enumerate(n.output):
                if not name:
                    continue
                if i >= len(outs) or outs[i] is None:
                    raise self.error(f"output #{i} ({name!r}) is not supported")
                self.env[name] = outs[i]
        self.node, self.meta = None, {}
        outs, names = [], []
        for o in gp.output:
            r = self.env.get(o.name)
            if r is None:
                raise OnnxImportError(f"{self.where}: graph output {o.name!r} is not produced by any node")
            if isinstance(r, Seq):
                raise OnnxImportError(f"{self.where}: graph output {o.name!r} is a sequence; nnfuse graphs return tensors")
            v = self.value(r)
            et = o.type.tensor_type.elem_type if o.type.HasField("tensor_type") else 0
            if et in ONNX_DTYPES and ONNX_DTYPES[et] != v.type.dtype.name:   # onnxruntime refuses these too
                raise OnnxImportError(f"{self.where}: graph output {o.name!r} is declared {ONNX_DTYPES[et]} but its "
                                      f"producer computes {v.type.dtype.name}")
            outs.append(v)
            names.append(o.name)
        self.g.set_outputs(outs, names)
        self._dce()
        self.g.remove_unused_constants()
        return self.g

    def _constants(self, gp) -> None:
        for t in gp.initializer:
            self.env[t.name] = self.g.add_const(t.name, self.tensor(t))
        for t in gp.sparse_initializer:
            raise OnnxImportError(f"{self.where}: sparse initializer {t.values.name!r} is not supported")

    def tensor(self, t) -> np.ndarray:
        from onnx import numpy_helper
        if t.data_type not in ONNX_DTYPES:
            raise OnnxImportError(f"{self.where}: tensor {t.name!r} has element type "
                                  f"{ONNX_DTYPE_NAMES.get(t.data_type, t.data_type)}, which nnfuse does not support")
        try:
            if t.data_location == 1:  # EXTERNAL
                if self.base_dir is None:
                    raise OnnxImportError(f"{self.where}: tensor {t.name!r} has external data; load the model from its path")
                from onnx.external_data_helper import load_external_data_for_tensor
                load_external_data_for_tensor(t, self.base_dir)
            a = numpy_helper.to_array(t)
        except OnnxImportError:
            raise
        except Exception as e:  # noqa: BLE001 - onnx raises assorted errors for bad tensors / missing files
            raise OnnxImportError(f"{self.where}: cannot read tensor {t.name!r}: {e}") from None
        from ..ir import dtype
        want = dtype(ONNX_DTYPES[t.data_type]).np
        return a if a.dtype == want else a.astype(want)

    def _inputs(self, gp) -> None:
        names = {i.name for i in gp.input}
        unknown = set(self.input_shapes) - names
        if unknown:
            raise OnnxImportError(f"{self.where}: --input-shape names unknown input(s) {sorted(unknown)}; inputs: "
                                  f"{', '.join(i.name for i in gp.input if i.name not in self.env)}")
        for i in gp.input:
            if i.name in self.env:  # an initializer listed as input (IR < 4): a constant
                continue
            tt = i.type.tensor_type if i.type.HasField("tensor_type") else None
            if tt is None:
                raise OnnxImportError(f"{self.where}: input {i.name!r} is not a tensor (sequences/maps are not supported)")
            if tt.elem_type not in ONNX_DTYPES:
                raise OnnxImportError(f"{self.where}: input {i.name!r} has element type "
                                      f"{ONNX_DTYPE_NAMES.get(tt.elem_type, tt.elem_type)}, which nnfuse does not support")
            if i.name in self.input_shapes:
                shape = self.input_shapes[i.name]
                self._check_given_shape(i.name, shape, tt)
            elif not tt.HasField("shape"):
                raise OnnxImportError(f"{self.where}: input {i.name!r} has no shape; give one with --input-shape "
                                      f"{i.name}:D1,D2,...")
            else:
                shape = []
                for k, d in enumerate(tt.shape.dim):
                    if d.HasField("dim_value"):
                        shape.append(int(d.dim_value))
                    elif d.dim_param:
                        shape.append(sanitize_symbol(d.dim_param))
                    else:
                        shape.append(sanitize_symbol(f"{i.name}_d{k}"))
            self.env[i.name] = self.g.add_input(i.name, TensorType(shape, ONNX_DTYPES[tt.elem_type]))

    def _check_given_shape(self, name: str, shape: list, tt) -> None:
        """An --input-shape must keep the model's rank and its fixed sizes (it only binds the free dims)."""
        if not tt.HasField("shape"):
            return
        declared = [int(d.dim_value) if d.HasField("dim_value") else None for d in tt.shape.dim]
        fixed_differs = any(d is not None and g != d for d, g in zip(declared, shape))
        if len(declared) != len(shape) or fixed_differs:
            spell = ",".join("?" if d is None else str(d) for d in declared)
            raise OnnxImportError(f"{self.where}: --input-shape {name}:{','.join(map(str, shape))} does not fit the "
                                  f"model's input {name!r} of shape [{spell}] (rank and fixed sizes must agree)")

    def _toposort(self, gp) -> list:
        """Nodes in dependency order; names a missing input or the nodes on a cycle."""
        producer: dict[str, int] = {}
        for k, n in enumerate(gp.node):
            for o in n.output:
                if o:
                    if o in producer or o in self.env:
                        raise OnnxImportError(f"{self.where}: value {o!r} is defined twice (node {n.name or n.op_type!r})")
                    producer[o] = k
        deps: list[set] = []
        users: dict[int, list[int]] = {}
        for k, n in enumerate(gp.node):
            d = set()
            extra = [a.s.decode() for a in n.attribute if n.op_type == "Gradient" and a.name == "y"]
            for i in list(n.input) + extra:  # Gradient reads y through an attribute
                if not i:
                    continue
                if i in producer:
                    d.add(producer[i])
                    users.setdefault(producer[i], []).append(k)
                elif i not in self.env:
                    raise OnnxImportError(f"{self.where}: {describe(n)} reads {i!r}, "
                                          "which no node, graph input or initializer defines (missing input)")
            deps.append(d)
        for o in gp.output:
            if o.name not in producer and o.name not in self.env:
                raise OnnxImportError(f"{self.where}: graph output {o.name!r} is not defined by any node, input or initializer")
        indeg = [len(d) for d in deps]
        ready = [k for k, c in enumerate(indeg) if c == 0]
        order = []
        while ready:
            k = ready.pop(0)
            order.append(k)
            for u in sorted(set(users.get(k, []))):
                indeg[u] -= 1
                if indeg[u] == 0:
                    ready.append(u)
        if len(order) != len(gp.node):
            stuck = [gp.node[k] for k in range(len(gp.node)) if indeg[k] > 0]
            names = ", ".join(describe(n)[5:] for n in stuck[:8])
            raise OnnxImportError(f"{self.where}: the graph has a cycle through {len(stuck)} node(s): {names}")
        return [gp.node[k] for k in order]

    def _dce(self) -> None:
        live = {v.id for v in self.g.outputs}
        keep = []
        for n in reversed(self.g.nodes):
            if any(o.id in live for o in n.outputs):
                keep.append(n)
                live.update(v.id for v in n.inputs)
        self.g.nodes = keep[::-1]

    # ------------------------------------------------------------ handler helpers
    def error(self, msg: str) -> OnnxImportError:
        n = self.node
        head = describe(n) if n is not None else "graph"
        return OnnxImportError(f"{self.where}: {head}: {msg}")

    def inp(self, i: int) -> Optional[Ref]:
        """The i-th input of the current node (None when absent or empty)."""
        n = self.node
        if i >= len(n.input) or not n.input[i]:
            return None
        return self.env[n.input[i]]

    def x(self, i: int) -> Value:
        r = self.inp(i)
        if r is None:
            raise self.error(f"input #{i} is required")
        return self.value(r)

    def const(self, r: Optional[Ref]) -> Optional[np.ndarray]:
        """Data known at import time (numeric, or an object array with symbolic dims), else None."""
        if isinstance(r, Sym):
            return r.data
        if isinstance(r, Value) and r.producer is None and r.data is not None:
            return r.data
        return None

    def const_input(self, i: int, what: str = "", required: bool = True) -> Optional[np.ndarray]:
        r = self.inp(i)
        if r is None:
            if required:
                raise self.error(f"input #{i}{' (' + what + ')' if what else ''} is required")
            return None
        c = self.const(r)
        if c is None:
            raise self.error(f"input #{i}{' (' + what + ')' if what else ''} must be computable at import time "
                             "(a constant or a shape computation); it depends on runtime data")
        return c

    def dims_input(self, i: int, what: str = "", required: bool = True) -> Optional[list]:
        c = self.const_input(i, what, required)
        return None if c is None else [x if isinstance(x, str) else int(x) for x in np.asarray(c).reshape(-1)]

    def declared_shape(self, k: int = 0) -> Optional[list]:
        """The static shape the model declares for output k of the current node (value_info / graph outputs)."""
        n = self.node
        return self.declared.get(n.output[k]) if k < len(n.output) else None

    def attr(self, name: str, default: Any = None) -> Any:
        from onnx import helper
        for a in self.node.attribute:
            if a.name == name:
                if a.type == a.TENSOR:
                    return self.tensor(a.t)
                if a.type in (a.GRAPH, a.GRAPHS):
                    raise self.error(f"attribute {name!r} holds a subgraph, which is not supported")
                v = helper.get_attribute_value(a)
                if isinstance(v, bytes):
                    v = v.decode("utf-8", "replace")
                if isinstance(v, list) and v and isinstance(v[0], bytes):
                    v = [s.decode("utf-8", "replace") for s in v]
                return v
        return default

    def value(self, r: Ref) -> Value:
        if isinstance(r, Value):
            return r
        if isinstance(r, Sym):
            if has_symbols(r.data):
                raise self.error(f"the shape computation {list(r.data.reshape(-1))} is needed as runtime data; its "
                                 "symbolic dims cannot be folded (fix the input shapes with --input-shape)")
            return self.g.add_const(self._cname(), r.data.astype(np.int64))
        if isinstance(r, Seq):
            raise self.error("a sequence is used where a tensor is expected")
        raise TypeError(r)

    def _cname(self, k: int = 0) -> str:
        n = self.node
        if n is not None and k < len(n.output) and n.output[k]:
            return n.output[k]
        return (n.name or n.op_type) if n is not None else "c"

    def constant(self, data: np.ndarray, k: int = 0) -> Ref:
        if data.dtype == object:
            return Sym(data) if has_symbols(data) else self.g.add_const(self._cname(k), data.astype(np.int64))
        return self.g.add_const(self._cname(k), data)

    def emit(self, op: str, inputs: Sequence[Ref], **attrs: Any) -> Any:
        """Add IR op `op` (or fold it when every operand is known); returns its result(s)."""
        datas = [self.const(r) for r in inputs]
        if all(d is not None for d in datas):  # also ops without operands (arange, constant_of_shape)
            if any(d.dtype == object for d in datas):
                return _unwrap(self._sym_fold(op, datas, attrs))
            vals = [self.value(r) for r in inputs]
            n = make_node(op, vals, attrs, self.meta)
            size = sum(o.type.numel if isinstance(o.type.numel, int) else FOLD_LIMIT + 1 for o in n.outputs)
            if size <= FOLD_LIMIT:
                outs = run_node(n, datas)
                return _unwrap([self.constant(np.asarray(o), k) for k, o in enumerate(outs)])
        else:
            vals = [self.value(r) for r in inputs]
            n = make_node(op, vals, attrs, self.meta)
        self.g.add_node(n)
        return _unwrap(n.outputs)

    def _sym_fold(self, op: str, datas: list, attrs: dict) -> list:
        from ..ir import get_op
        if op in _SYM_ARITH:
            f = np.frompyfunc(lambda a, b: _SYM_ARITH[op](self, a, b), 2, 1)
            r = np.asarray(f(*datas), dtype=object)
            return [self.g.add_const(self._cname(), r.astype(bool))] if op in _SYM_CMP else [self.constant(r)]
        if op == "cast":
            return [self.constant(datas[0])] if attrs.get("to") in ("i64", "i32") else self._no_sym(op, datas)
        if op == "where":
            c = datas[0]
            if c.dtype == object:
                return self._no_sym(op, datas)
            return [self.constant(np.where(c, datas[1], datas[2]).astype(object))]
        if op not in _SYM_SAFE:
            return self._no_sym(op, datas)
        od = get_op(op)
        outs = od.run(list(datas), od.normalize_attrs(attrs))
        return [self.constant(np.asarray(o, dtype=object)) for o in outs]

    def _no_sym(self, op, datas):
        raise self.error(f"cannot fold {op} over symbolic shape values {[list(d.reshape(-1)) for d in datas]}; "
                         "fix the input shapes with --input-shape")


def _unwrap(outs):
    return outs[0] if len(outs) == 1 else list(outs)


def _sym_add(im, a, b):
    if isinstance(a, str) or isinstance(b, str):
        if b == 0:
            return a
        if a == 0:
            return b
        raise im.error(f"cannot add symbolic dims {a} + {b}; fix the input shapes with --input-shape")
    return a + b


def _sym_sub(im, a, b):
    if isinstance(a, str) or isinstance(b, str):
        if b == 0:
            return a
        if a == b:
            return 0
        raise im.error(f"cannot subtract symbolic dims {a} - {b}; fix the input shapes with --input-shape")
    return a - b


def _sym_div(im, a, b):
    if isinstance(a, str) or isinstance(b, str):
        r = dim_div(a, b)
        if r is None:
            raise im.error(f"cannot divide symbolic dims {a} / {b}")
        return r
    return int(a / b) if b else 0


def _sym_cmp(fn):
    def run(im, a, b):
        if isinstance(a, str) or isinstance(b, str):
            if a == b:
                return fn(0, 0)
            other = b if isinstance(a, str) else a
            if isinstance(other, int) and other <= 0:  # a symbolic dim is >= 1
                return fn(1, 0) if isinstance(a, str) else fn(0, 1)
            raise im.error(f"cannot compare symbolic dims {a} and {b}; fix the input shapes with --input-shape")
        return fn(a, b)
    return run


_SYM_ARITH = {"add": _sym_add, "sub": _sym_sub, "mul": lambda im, a, b: dim_mul(a, b), "div": _sym_div,
              "eq": _sym_cmp(lambda a, b: a == b), "ne": _sym_cmp(lambda a, b: a != b),
              "lt": _sym_cmp(lambda a, b: a < b), "gt": _sym_cmp(lambda a, b: a > b),
              "le": _sym_cmp(lambda a, b: a <= b), "ge": _sym_cmp(lambda a, b: a >= b)}
_SYM_CMP = {"eq", "ne", "lt", "gt", "le", "ge"}
_SYM_SAFE = {"gather", "concat", "unsqueeze", "squeeze", "reshape", "slice", "identity", "flatten", "transpose",
             "expand", "split"}
