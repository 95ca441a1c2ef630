"""The verifier: named rules, each error naming the rule, the node and its printed line."""
from __future__ import annotations

from typing import Optional

from .errors import NnfuseError
from .graph import Graph, Node
from .ops import OPS, OpError
from .types import TensorType


class VerifyError(NnfuseError, ValueError):
    def __init__(self, rule: str, msg: str, node: Optional[Node] = None, graph: Optional[Graph] = None, where: str = ""):
        line = _node_line(node, graph) if node is not None else ""
        head = f"[{rule}]" + (f" after pass '{where}'" if where else "")
        super().__init__(f"{head} {msg}" + (f"\n  {line}" if line else ""))
        self.rule, self.node = rule, node


RULES = {
    "ssa-order": "every operand is defined (graph input, constant, or an earlier node) before use",
    "ssa-single-def": "every value is defined once",
    "known-op": "every op is in the registry",
    "attrs": "attributes match the op's schema",
    "type-agreement": "result types equal what the op's inference gives for the operand types",
    "region": "a fused node has a body whose inputs match its operands and whose outputs match its results",
    "region-isolated": "a body reads only its own inputs and constants",
    "outputs-defined": "graph outputs are defined values",
    "unique-names": "graph inputs have distinct names (the text format names them)",
    "const-data": "constant data matches its declared type",
}


def _node_line(n: Node, g: Optional[Graph]) -> str:
    """The node's line as the printer writes it (value numbers as in `print_graph(g)`)."""
    from .printer import _Namer, _print_node, global_name, local_name
    namer = _Namer()
    if g is not None:
        for v in g.inputs:
            namer.names[v.id] = local_name(v.name)
        for k, v in g.constants.items():
            namer.names[v.id] = global_name(k)
        for m in g.nodes:
            if m is n:
                break
            for o in m.outputs:
                namer.define(o)
    try:
        lines: list[str] = []
        _print_node(n, namer, "", lines, 0)
        return lines[0]
    except Exception:  # a node too broken to print (e.g. unprintable attrs): fall back to a plain summary
        args = ", ".join(v.name or f"#{v.id}" for v in n.inputs)
        return f"{n.op}({args}) : {', '.join(str(o.type) for o in n.outputs)}"


def verify(g: Graph, where: str = "", check_types: bool = True, _region: bool = False) -> None:
    """Raise VerifyError on the first broken rule."""
    later = {o.id for n in g.nodes for o in n.outputs}  # values this graph defines somewhere (for ssa-order)
    defined: set[int] = set()
    names: set[str] = set()
    for v in g.inputs:
        if v.name in names:
            raise VerifyError("unique-names", f"graph @{g.name} has two inputs named %{v.name}", graph=g, where=where)
        names.add(v.name)
        defined.add(v.id)
    for name, v in g.constants.items():
        defined.add(v.id)
        if v.data is not None:
            if tuple(v.data.shape) != v.type.shape or v.data.dtype != v.type.dtype.np:
                raise VerifyError("const-data", f"constant @{name}: data is {v.data.dtype}{list(v.data.shape)}, type says {v.type}", where=where)
    for n in g.nodes:
        for v in n.inputs:
            if v.id not in defined:
                if _region and v.id not in later:
                    raise VerifyError("region-isolated", f"operand {v!r} of {n.op} comes from outside the fused body", n, g, where)
                raise VerifyError("ssa-order", f"operand {v!r} of {n.op} is not defined before use", n, g, where)
        od = OPS.get(n.op)
        if od is None:
            raise VerifyError("known-op", f"unknown op '{n.op}'", n, g, where)
        if n.op == "fused":
            _verify_region(n, g, where)
        else:
            try:
                attrs = od.normalize_attrs(n.attrs)
            except OpError as e:
                raise VerifyError("attrs", str(e), n, g, where) from None
            if check_types:
                try:
                    want = od.infer_types([v.type for v in n.inputs], attrs)
                except OpError as e:
                    raise VerifyError("type-agreement", str(e), n, g, where) from None
                got = [o.type for o in n.outputs]
                if want != got:
                    raise VerifyError("type-agreement", f"{n.op} results are {_fmt(got)} but inference gives {_fmt(want)}", n, g, where)
        for o in n.outputs:
            if o.id in defined:
                raise VerifyError("ssa-single-def", f"value {o!r} defined twice", n, g, where)
            defined.add(o.id)
    for v in g.outputs:
        if v.id not in defined:
            raise VerifyError("outputs-defined", f"graph output {v!r} is not defined", graph=g, where=where)


def _fmt(ts: list[TensorType]) -> str:
    return ", ".join(map(str, ts))


def _verify_region(n: Node, g: Graph, where: str) -> None:
    b = n.body
    if b is None:
        raise VerifyError("region", "fused node without a body", n, g, where)
    if [v.type for v in n.inputs] != [v.type for v in b.inputs]:
        raise VerifyError("region", f"operands {_fmt([v.type for v in n.inputs])} do not match body inputs {_fmt([v.type for v in b.inputs])}", n, g, where)
    if [v.type for v in n.outputs] != [v.type for v in b.outputs]:
        raise VerifyError("region", f"results {_fmt([v.type for v in n.outputs])} do not match body outputs {_fmt([v.type for v in b.outputs])}", n, g, where)
    verify(b, where, _region=True)
