"""Small graph helpers shared by the passes: use maps, constant values, topological order, dead code."""
from __future__ import annotations

import heapq
from typing import Optional

import numpy as np

from ..ir import Graph, NnfuseError, Node, Value
from ..ir.ops import OPS

POINTWISE_KINDS = ("unary", "binary")


def is_pointwise(n: Node) -> bool:
    """unary/binary/where/cast/clip: one scalar function per element (with numpy broadcasting)."""
    return n.body is None and n.op in OPS and OPS[n.op].kind in POINTWISE_KINDS


def const_data(v: Value) -> Optional[np.ndarray]:
    """The array of a constant value, or None when `v` is not a constant with data."""
    return v.data if v.producer is None and v.data is not None else None


def splat_value(v: Value) -> Optional[float]:
    """The single value of a constant whose elements are all equal (a scalar splat), else None."""
    d = const_data(v)
    if d is None or d.size == 0 or d.size > 1 << 16 or d.dtype.kind not in "fiub":
        return None
    flat = d.reshape(-1)
    first = flat[0]
    if not np.all(flat == first):
        return None
    return float(first)


def topo_sort(g: Graph) -> None:
    """Reorder g.nodes so every operand is defined first; keeps the existing order where it is already valid."""
    producer_pos = {id(n): i for i, n in enumerate(g.nodes)}
    deps: dict[int, list[int]] = {}
    users: dict[int, list[int]] = {}
    for i, n in enumerate(g.nodes):
        ds = {producer_pos[id(v.producer)] for v in n.inputs if v.producer is not None and id(v.producer) in producer_pos}
        deps[i] = list(ds)
        for d in ds:
            users.setdefault(d, []).append(i)
    indeg = {i: len(deps[i]) for i in deps}
    ready = [i for i, d in indeg.items() if d == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users.get(i, ()):
            indeg[u] -= 1
            if indeg[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(g.nodes):
        raise RuntimeError(f"graph @{g.name} has a cycle ({len(g.nodes) - len(order)} nodes on it)")
    g.nodes = [g.nodes[i] for i in order]


def remove_dead(g: Graph) -> int:
    """Drop nodes none of whose results is read (ops are pure); returns how many went."""
    live = {v.id for v in g.outputs}
    keep: list[Node] = []
    removed = 0
    for n in reversed(g.nodes):
        if any(o.id in live for o in n.outputs):
            keep.append(n)
            live.update(v.id for v in n.inputs)
        else:
            removed += 1
    keep.reverse()
    g.nodes = keep
    return removed


def numel_est(shape: tuple, sym: int = 64) -> int:
    """Element count with each symbolic factor estimated as `sym` (for cost models only)."""
    n = 1
    for d in shape:
        if isinstance(d, int):
            n *= d
        else:
            for f in str(d).split("*"):
                n *= int(f) if f.strip().lstrip("-").isdigit() else sym
    return n


def empty_read(g: Graph) -> Optional[Node]:
    """The first node (regions included) that reads a zero-size tensor but produces a non-empty one, else None.
    Such a node needs the empty-reduction identity (sum -> 0, max -> -inf, concat skips the piece), which the
    kernel IR cannot express: lowering gives every dim at least one element."""
    def empty(v: Value) -> bool:
        return any(d == 0 for d in v.type.shape)
    for n in g.walk():   # a fused node's body holds the node that crosses from empty to non-empty
        if n.body is None and any(empty(v) for v in n.inputs) and any(not empty(o) for o in n.outputs):
            return n
    return None


def reject_empty_reads(g: Graph, backend: str) -> None:
    """Refuse, naming the node, a graph the kernel-IR backends would compute wrongly (see empty_read)."""
    n = empty_read(g)
    if n is not None:
        shapes = ", ".join(str(v.type) for v in n.inputs)
        raise NnfuseError(f"node {n.op} ({n.loc or 'no location'}) reads a zero-size tensor ({shapes}) into a non-empty "
                          f"result: the {backend} backend does not support that; use backend='reference' or 'onnx'")
