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


def first_empty(g: Graph) -> Optional[tuple[Value, Optional[Node]]]:
    """The first zero-size value (input, constant or result, regions included) and its producer, else None."""
    def empty(v: Value) -> bool:
        return any(d == 0 for d in v.type.shape)
    for v in list(g.inputs) + list(g.constants.values()):
        if empty(v):
            return v, None
    for n in g.walk():
        for v in list(n.outputs) + (list(n.body.constants.values()) if n.body is not None else []):
            if empty(v):
                return v, n
    return None


def check_lowerable(g: Graph, backend: str) -> None:
    """Refuse, naming the input or node, what a static-shape GPU backend cannot compile: symbolic input dims, and
    zero-size tensors (its kernels size grids, masks and buffers for at least one element, so an empty tensor would
    be read or written out of bounds)."""
    for v in g.inputs:
        if not all(isinstance(d, int) for d in v.type.shape):
            raise NnfuseError(f"input '{v.name}' has symbolic shape {v.type}: the {backend} backend needs static shapes "
                              "(compile with example inputs or --input-shape)")
    hit = first_empty(g)
    if hit is not None:
        v, n = hit
        where = f"node {n.op}{' (' + n.loc + ')' if n.loc else ''} produces" if n is not None else f"'{v.name}' is"
        raise NnfuseError(f"{where} a zero-size tensor {v.type}: the {backend} backend does not support zero-size "
                          "tensors; use backend='reference', 'cpu' or 'onnx'")
