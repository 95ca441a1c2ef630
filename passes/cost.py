"""A roofline cost model for graph nodes: FLOPs, bytes moved, and an estimated time
(used by skip-layers to turn a target speedup into a number of skipped blocks).

time(node) = max(flops / PEAK_FLOPS, bytes / PEAK_BYTES) + PER_NODE. The peaks are those of a
2-core AVX-512 machine (~300-400 GFLOP/s fp32 GEMM, ~30 GB/s DRAM); only ratios of costs are
used (predicted speedup of a rewrite), so the absolute scale matters little.
Symbolic dims are bound from `dims` (e.g. from calibration inputs); unknown ones count as 64.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

from ..ir import Graph, Node, TensorType
from ..ir.ops import OPS

PEAK_FLOPS = 300e9
PEAK_BYTES = 30e9
PER_NODE = 2e-6
_FLOPS_PER_ELEM = {"softmax": 5, "log_softmax": 5, "layer_norm": 8, "rms_norm": 5, "gelu": 8, "silu": 4,
                   "sigmoid": 4, "tanh": 4, "exp": 2, "erf": 4}


def numel(t: TensorType, dims: Optional[dict] = None) -> int:
    n = 1
    for d in t.shape:
        if isinstance(d, int):
            n *= d
            continue
        for f in str(d).split("*"):
            f = f.strip()
            n *= int(f) if f.lstrip("-").isdigit() else int((dims or {}).get(f, 64))
    return n


def _size(d, dims: Optional[dict]) -> int:
    return numel(TensorType((d,), "f32"), dims)


def node_flops(n: Node, dims: Optional[dict] = None) -> float:
    if n.body is not None:
        return sum(node_flops(m, dims) for m in n.body.nodes)
    out = sum(numel(o.type, dims) for o in n.outputs)
    if n.op in ("matmul", "gemm"):
        a = n.inputs[0].type
        k = a.shape[0] if n.op == "gemm" and n.attrs.get("trans_a") else a.shape[-1]
        return 2.0 * out * _size(k, dims)
    if n.op == "scaled_dot_product_attention":
        q, kk = n.inputs[0].type, n.inputs[1].type
        rows = numel(q, dims) / max(_size(q.shape[-1], dims), 1)
        lk = _size(kk.shape[-2], dims)
        return rows * lk * (2.0 * _size(q.shape[-1], dims) + 2.0 * _size(n.inputs[2].type.shape[-1], dims) + 5.0)
    kind = OPS[n.op].kind if n.op in OPS else "misc"
    if kind == "shape":
        return 0.0
    if kind == "reduce":
        return float(numel(n.inputs[0].type, dims)) * _FLOPS_PER_ELEM.get(n.op, 1)
    return float(out) * _FLOPS_PER_ELEM.get(n.op, 1)


def node_bytes(n: Node, dims: Optional[dict] = None) -> float:
    if n.body is None and n.op in OPS and OPS[n.op].kind == "shape" and n.op not in ("concat", "gather", "transpose"):
        return 0.0      # views: reshape/squeeze/slice move little or nothing
    return float(sum(numel(v.type, dims) * v.type.dtype.itemsize for v in list(n.inputs) + list(n.outputs)))


def node_time(n: Node, dims: Optional[dict] = None) -> float:
    return max(node_flops(n, dims) / PEAK_FLOPS, node_bytes(n, dims) / PEAK_BYTES) + PER_NODE


def nodes_time(nodes: Iterable[Node], dims: Optional[dict] = None) -> float:
    return sum(node_time(n, dims) for n in nodes)


def graph_cost(g: Graph, dims: Optional[dict] = None) -> dict:
    """Whole-graph FLOPs, bytes and estimated seconds."""
    return {"flops": sum(node_flops(n, dims) for n in g.nodes), "bytes": sum(node_bytes(n, dims) for n in g.nodes),
            "seconds": nodes_time(g.nodes, dims)}


def dims_from_inputs(g: Graph, sample) -> dict:
    """Bind the symbolic input dims of `g` to the sizes of one sample's arrays."""
    dims: dict = {}
    for v, a in zip(g.inputs, sample):
        for d, n in zip(v.type.shape, getattr(a, "shape", ())):
            if isinstance(d, str) and "*" not in d:
                dims.setdefault(d, int(n))
    return dims


def speedup(total: float, removed: float) -> float:
    return total / (total - removed) if total > removed else math.inf
