"""Turn a group of top-level nodes into one fused region node (Node op "fused", body Graph).

The body is isolated from above: every value it reads from outside becomes an explicit operand,
except scalar constants (eps, 0.5, a scale), which are copied into the body by reference so a kernel
can inline them. Member results read outside the group
(or returned by the graph) become the region's results. `dups` are nodes cloned into the body
but also kept outside (cheap recomputation instead of a second region output). A member that is
itself a fused region is inlined, so regions never nest.
"""
from __future__ import annotations

from typing import Sequence

from ..ir import Graph, Node, Value, make_fused
from .graphutil import topo_sort

INLINE_CONST = 1  # scalars (eps, 0.5, a scale) live in the body; vectors and weights are operands


def _clone_into(body: Graph, n: Node, vmap: dict[int, Value], get) -> None:
    m = Node(n.op, [get(v) for v in n.inputs], n.attrs, [o.type for o in n.outputs], n.meta,
             n.body.clone() if n.body is not None else None)
    for a, b in zip(n.outputs, m.outputs):
        vmap[a.id] = b
    body.nodes.append(m)


def _inline_into(body: Graph, n: Node, vmap: dict[int, Value], get) -> None:
    """A fused member's body joins the new body flat (regions never nest)."""
    inner: dict[int, Value] = {bi.id: get(v) for bi, v in zip(n.body.inputs, n.inputs)}
    for name, c in n.body.constants.items():
        k = 0
        while (name if k == 0 else f"{name}_{k}") in body.constants:
            k += 1
        inner[c.id] = body.add_const_decl(name if k == 0 else f"{name}_{k}", c.type, c.data)
    for bn in n.body.nodes:
        _clone_into(body, bn, inner, lambda v: inner[v.id])
    for o, bo in zip(n.outputs, n.body.outputs):
        vmap[o.id] = inner[bo.id]


def make_region(g: Graph, members: Sequence[Node], kind: str, dups: Sequence[Node] = ()) -> Node:
    """Replace `members` (a legal, cycle-free group) by one fused node of `kind`; returns that node."""
    pos = {id(n): i for i, n in enumerate(g.nodes)}
    order = sorted(list(members) + list(dups), key=lambda n: pos[id(n)])
    member_ids = {id(n) for n in members}
    inside = {id(n) for n in order}
    body = Graph(kind)
    vmap: dict[int, Value] = {}
    operands: list[Value] = []

    def get(v: Value) -> Value:
        if v.id in vmap:
            return vmap[v.id]
        if v.producer is None and v.data is not None and v.data.size <= INLINE_CONST:
            name = v.name if v.name not in body.constants else ""
            b = body.add_const_decl(name or f"c{len(body.constants)}", v.type, v.data)
        else:
            b = body.add_input(f"a{len(operands)}", v.type)
            operands.append(v)
        vmap[v.id] = b
        return b

    for n in order:
        if n.op == "fused" and n.body is not None and id(n) in member_ids:
            _inline_into(body, n, vmap, get)
        else:
            _clone_into(body, n, vmap, get)
    read_outside = {v.id for n in g.nodes if id(n) not in member_ids for v in n.inputs} | {v.id for v in g.outputs}
    results = [o for n in order if id(n) in member_ids for o in n.outputs if o.id in read_outside]
    body.set_outputs([vmap[o.id] for o in results])
    seed = next(n for n in order if id(n) in member_ids)
    fused = make_fused(kind, operands, body, dict(seed.meta))
    for old, new in zip(results, fused.outputs):
        g.replace_uses(old, new)
    last = max(pos[id(n)] for n in members)
    nodes = [n for n in g.nodes if id(n) not in member_ids or n is g.nodes[last]]
    nodes[nodes.index(g.nodes[last])] = fused
    g.nodes = nodes
    topo_sort(g)
    return fused
