"""Print graph IR as MLIR-flavoured text; `parser.parse` reads it back to an identical print."""
from __future__ import annotations

import json
import re

import numpy as np

from .graph import Graph, Node, Value
from .types import TensorType

INLINE_MAX = 16  # constants with at most this many elements print their values inline
_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
_BARE_GLOBAL = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")


def quote(s: str) -> str:
    return json.dumps(s, ensure_ascii=True)


def local_name(name: str) -> str:
    return "%" + (name if _BARE.match(name) else quote(name))


def global_name(name: str) -> str:
    return "@" + (name if _BARE_GLOBAL.match(name) else quote(name))


def fmt_type(t: TensorType) -> str:
    return str(t)


def fmt_scalar(x) -> str:
    if isinstance(x, (bool, np.bool_)):
        return "true" if x else "false"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, np.float32):
        s = str(x)
    else:
        s = repr(float(x))
    if s in ("nan", "inf", "-inf") or any(c in s for c in ".e"):
        return s
    return s + ".0"


def fmt_attr(v) -> str:
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(fmt_attr(x) for x in v) + "]"
    if isinstance(v, str):
        return quote(v)
    return fmt_scalar(v)


def fmt_literal(data: np.ndarray) -> str:
    """Inline constant values: ints and bools as such (int4 included), floats in their shortest exact form."""
    from .dtypes import dtype as to_dtype
    flat = data.reshape(-1)
    dt = to_dtype(flat.dtype)
    if dt.kind == "bool":
        items = [fmt_scalar(bool(x)) for x in flat]
    elif dt.is_int:
        items = [str(int(x)) for x in flat]
    elif dt.name == "f32":
        items = [fmt_scalar(x) for x in flat]
    else:
        items = [fmt_scalar(float(x)) for x in flat]
    return items[0] if data.ndim == 0 else "[" + ", ".join(items) + "]"


def _escape_loc(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


class _Namer:
    def __init__(self):
        self.names: dict[int, str] = {}
        self.count = 0

    def define(self, v: Value) -> str:
        if v.id not in self.names:
            self.names[v.id] = f"%{self.count}"
            self.count += 1
        return self.names[v.id]

    def __getitem__(self, v: Value) -> str:
        try:
            return self.names[v.id]
        except KeyError:
            return f"%<undefined {v.name or v.id}>"


def print_graph(g: Graph, indent: int = 0) -> str:
    lines: list[str] = []
    _print(g, indent, lines)
    return "\n".join(lines) + ("\n" if indent == 0 else "")


def _signature(g: Graph, namer: _Namer) -> str:
    args = []
    for v in g.inputs:
        namer.names[v.id] = local_name(v.name)
        args.append(f"{namer.names[v.id]}: {fmt_type(v.type)}")
    res = []
    for i, v in enumerate(g.outputs):
        name = g.output_names[i] if i < len(g.output_names) and g.output_names[i] else ""
        res.append((quote(name) + ": " if name else "") + fmt_type(v.type))
    return f"graph {global_name(g.name)}({', '.join(args)}) -> ({', '.join(res)})"


def _print(g: Graph, indent: int, lines: list[str]) -> None:
    pad = "  " * indent
    namer = _Namer()
    lines.append(pad + _signature(g, namer) + " {")
    for name, v in g.constants.items():
        namer.names[v.id] = global_name(name)
        s = f"{pad}  const {global_name(name)} : {fmt_type(v.type)}"
        if v.data is not None and v.data.size <= INLINE_MAX and v.data.dtype.itemsize > 0:
            s += " = " + fmt_literal(v.data)
        lines.append(s)
    for n in g.nodes:
        _print_node(n, namer, pad + "  ", lines, indent + 1)
    lines.append(f"{pad}  return" + (" " + ", ".join(namer[v] for v in g.outputs) if g.outputs else ""))
    lines.append(pad + "}")


def _print_node(n: Node, namer: _Namer, pad: str, lines: list[str], depth: int) -> None:
    outs = ", ".join(namer.define(v) for v in n.outputs)
    args = ", ".join(namer[v] for v in n.inputs)
    from .ops import OPS
    od = OPS.get(n.op)
    attrs = {k: v for k, v in n.attrs.items() if v is not None and not (od and k in od.attrs and od.attrs[k].default == v)}
    a = (" {" + ", ".join(f"{k} = {fmt_attr(v)}" for k, v in attrs.items()) + "}") if attrs else ""
    types = ", ".join(fmt_type(v.type) for v in n.outputs)
    head = f"{pad}{outs} = {n.op}({args}){a} : {types}"
    loc = f"  # {_escape_loc(n.meta['loc'])}" if n.meta.get("loc") else ""
    if n.body is None:
        lines.append(head + loc)
        return
    sub: list[str] = []
    _print(n.body, depth, sub)
    lines.append(head + " " + sub[0].strip() + loc)
    lines.extend(sub[1:])
