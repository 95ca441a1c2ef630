"""The fusion cost model: memory traffic plus arithmetic, in one unit ("cost").

- moving one byte to or from memory costs BYTE_COST (a CPU streams ~30 GB/s while it computes
  ~500 GFLOP/s, so a byte is worth several flops);
- an elementwise op costs FLOPS[op] per element it is evaluated at (transcendentals more);
- unfused, each op reads its operands and writes its result;
- fused, a region reads its external operands once and writes only the results read outside it, but
  every member is evaluated at every point of the region's domain (its largest result): a member
  with a smaller (broadcast) result is recomputed domain/numel times.

A candidate is added to a region only when cost(region + candidate) <= cost(region) + cost(candidate
alone); anything else is refused and counted as "refused_cost". A region also may not read more than
MAX_OPERANDS distinct operands (register/cache footprint of one kernel).
"""
from __future__ import annotations

from typing import Iterable

from ..ir import Node
from .graphutil import numel_est

BYTE_COST = 4.0
MAX_OPERANDS = 16
TRANSCENDENTAL = {"exp", "log", "tanh", "sigmoid", "erf", "gelu", "silu", "softplus", "pow", "sin", "cos", "elu", "hard_swish"}
SLOW = {"div", "sqrt", "rsqrt", "reciprocal", "mod"}


def flops(op: str) -> float:
    return 8.0 if op in TRANSCENDENTAL else 4.0 if op in SLOW else 1.0


def _bytes(v) -> float:
    return numel_est(v.type.shape) * max(v.type.dtype.bits, 8) / 8


def node_cost(n: Node) -> float:
    """An op run alone: read every operand, write every result, compute each result element."""
    io = sum(_bytes(v) for v in n.inputs) + sum(_bytes(o) for o in n.outputs)
    return BYTE_COST * io + flops(n.op) * sum(numel_est(o.type.shape) for o in n.outputs)


def region_io(members: Iterable[Node], read_outside) -> tuple[list, list]:
    """External operands (distinct values read from outside) and results read outside the group."""
    ms = list(members)
    ids = {id(n) for n in ms}
    produced = {o.id for n in ms for o in n.outputs}
    ins, seen = [], set()
    for n in ms:
        for v in n.inputs:
            if v.id not in produced and v.id not in seen:
                seen.add(v.id)
                ins.append(v)
    outs = [o for n in ms for o in n.outputs if read_outside(o, ids)]
    return ins, outs


def region_cost(members: Iterable[Node], read_outside) -> float:
    ms = list(members)
    ins, outs = region_io(ms, read_outside)
    domain = max(numel_est(o.type.shape) for n in ms for o in n.outputs)
    return BYTE_COST * (sum(map(_bytes, ins)) + sum(map(_bytes, outs))) + sum(flops(n.op) for n in ms) * domain
