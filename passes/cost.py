"""A roofline cost model for graph nodes: FLOPs, bytes moved, and an estimated time
(used by skip-layers to turn a target speedup into a number of skipped blocks).

time(node) = max(flops / PEAK_FLOPS, bytes / PEAK_BYTES) + PER_NODE. The peaks are those of a
2-core AVX-512 machine (~300-400 GFLOP/s fp32 GEMM, ~30 GB/s DRAM); only ratios of costs are
used (predicted speedup of a rewrite), so the absolute scale matters little. FLOPs come from
ir/analysis.py (the `nnfuse inspect` estimate). Symbolic dims are bound from `dims` (e.g. from
the calibration inputs); unbound ones count as 1, as `inspect` does.
"""
from __future__ import annotations

from typing import Iterable, Optional

from ..ir import Graph, Node, analysis
from ..ir.ops import OPS

PEAK_FLOPS = 300e9
PEAK_BYTES = 30e9
PER_NODE = 2e-6           # dispatch overhead per op (runtime interpreters, kernel launches)


def node_flops(n: Node, dims: Optional[dict] = None) -> float:
    return float(analysis.node_flops(n, analysis._Dims(dims)))


def node_bytes(n: Node, dims: Optional[dict] = None) -> float:
    if n.body is None and n.op in OPS and OPS[n.op].kind == "shape" and n.op not in ("concat", "gather", "transpose"):
        return 0.0      # views: reshape/squeeze/slice move little or nothing
    d = analysis._Dims(dims)
    return float(sum(d.nbytes(v.type) for v in list(n.inputs) + list(n.outputs)))


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

