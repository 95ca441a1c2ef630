"""Static estimates over a graph: parameter count/bytes, FLOPs, peak activation memory.

Symbolic dims are bound from `bindings` (unbound symbols count as 1, and the result says which were
assumed). FLOPs count a multiply-add as 2; elementwise ops as one flop per result element.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from .graph import Graph, Node
from .types import TensorType


@dataclass
class Analysis:
    params: int
    param_bytes: int
    flops: int
    peak_activation_bytes: int
    flops_by_op: dict = field(default_factory=dict)
    assumed: dict = field(default_factory=dict)   # symbol -> value used for it

    def as_dict(self) -> dict:
        return {"params": self.params, "param_bytes": self.param_bytes, "flops": self.flops,
                "peak_activation_bytes": self.peak_activation_bytes, "flops_by_op": self.flops_by_op, "assumed": self.assumed}


class _Dims:
    def __init__(self, bindings: Optional[dict]):
        self.bindings = dict(bindings or {})
        self.assumed: dict = {}

    def dim(self, d) -> int:
        if isinstance(d, int):
            return d
        out = 1
        for f in str(d).split("*"):
            if f.lstrip("-").isdigit():
                out *= int(f)
            elif f in self.bindings:
                out *= int(self.bindings[f])
            else:
                self.assumed[f] = 1
        return out

    def numel(self, t: TensorType) -> int:
        return math.prod(self.dim(d) for d in t.shape)

    def nbytes(self, t: TensorType) -> int:
        return math.ceil(self.numel(t) * t.dtype.bits / 8)


_FREE = {"reshape", "transpose", "squeeze", "unsqueeze", "flatten", "identity", "slice", "concat", "split", "gather",
         "expand", "tile", "pad", "shape", "cast", "embedding", "gather_elements", "arange", "constant_of_shape"}
_ROW = {"softmax": 5, "log_softmax": 6, "layer_norm": 8, "rms_norm": 5, "batch_norm": 4, "instance_norm": 8,
        "group_norm": 8, "lrn": 6}


def node_flops(n: Node, dims: _Dims) -> int:
    """Estimated floating-point operations of one node (a fused node: the sum over its body)."""
    if n.body is not None:
        return sum(node_flops(m, dims) for m in n.body.nodes)
    op = n.op
    outs = sum(dims.numel(o.type) for o in n.outputs)
    if op in _FREE:
        return 0
    if op == "matmul":
        a = n.inputs[0].type
        k = dims.dim(a.shape[-1])
        return 2 * outs * k
    if op == "gemm":
        a = n.inputs[0].type
        k = dims.dim(a.shape[0] if n.attrs.get("trans_a") else a.shape[1])
        return 2 * outs * k + (outs if len(n.inputs) > 2 else 0)
    if op == "conv":
        w = n.inputs[1].type
        return 2 * outs * math.prod(dims.dim(d) for d in w.shape[1:])
    if op == "conv_transpose":
        w = n.inputs[1].type
        x = n.inputs[0].type
        return 2 * dims.numel(x) * dims.dim(w.shape[1]) * math.prod(dims.dim(d) for d in w.shape[2:])
    if op == "scaled_dot_product_attention":
        q, k = n.inputs[0].type, n.inputs[1].type
        lk, e = dims.dim(k.shape[-2]), dims.dim(q.shape[-1])
        return 4 * dims.numel(q) // max(e, 1) * lk * e + 5 * dims.numel(q) // max(e, 1) * lk
    if op in ("max_pool", "avg_pool"):
        return outs * math.prod(n.attrs["kernel"])
    if op in _ROW:
        return _ROW[op] * dims.numel(n.inputs[0].type)
    if op.startswith("reduce_") or op in ("argmax", "argmin", "cumsum", "global_avg_pool", "global_max_pool"):
        return dims.numel(n.inputs[0].type)
    return outs


def peak_activation_bytes(g: Graph, dims: _Dims) -> int:
    """Largest sum of live activation bytes (inputs and node results, not weights) over the node order."""
    last_use: dict[int, int] = {}
    for i, n in enumerate(g.nodes):
        for v in n.inputs:
            last_use[v.id] = i
    end = len(g.nodes)
    for v in g.outputs:
        last_use[v.id] = end
    live = {v.id: dims.nbytes(v.type) for v in g.inputs}
    cur = peak = sum(live.values())
    for i, n in enumerate(g.nodes):
        for o in n.outputs:
            live[o.id] = dims.nbytes(o.type)
            cur += live[o.id]
        peak = max(peak, cur)
        for v in set(v.id for v in n.inputs) | {o.id for o in n.outputs}:
            if v in live and last_use.get(v, -1) <= i:
                cur -= live.pop(v)
    return peak


def analyze(g: Graph, bindings: Optional[dict] = None) -> Analysis:
    dims = _Dims(bindings)
    params = sum(dims.numel(v.type) for v in g.constants.values())
    pbytes = sum(dims.nbytes(v.type) for v in g.constants.values())
    by_op: dict[str, int] = {}
    total = 0
    for n in g.nodes:
        f = node_flops(n, dims)
        key = f"fused:{n.attrs.get('kind', '?')}" if n.body is not None else n.op
        by_op[key] = by_op.get(key, 0) + f
        total += f
    peak = peak_activation_bytes(g, dims)
    return Analysis(params, pbytes, total, peak, dict(sorted(by_op.items(), key=lambda kv: -kv[1])), dims.assumed)


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23 M' (decimal prefixes)."""
    for p in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or p == "T":
            return f"{n:.3g} {p}{unit}".strip() if p or unit else f"{n:.3g}"
        n /= 1000
    return str(n)
