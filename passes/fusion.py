"""Operator fusion: groups of ops become fused regions (Node op "fused", attrs {"kind": ...}, body Graph).

Kinds (the lowering and the backends key on these strings):
  attention   one scaled_dot_product_attention (recognize-attention makes it from primitives)
  gemm, conv  matmul/gemm (conv) + an epilogue: the chain of pointwise ops that alone read its result
              and keep its shape (bias add, activation, residual add, scale)
  softmax, layer_norm, rms_norm, reduction
              the reduction op + pointwise producers read only by it (prologue) + pointwise epilogue
  pointwise   connected unary/binary/where/cast/clip ops (any length, broadcasting operands); several
              results allowed when they share the region's domain shape

Legality (legality.py): no group may create a cycle; a producer read outside the group is not pulled
into a reduction (that would duplicate it) unless it is cheap pointwise and small (DUP_MAX elements),
in which case it is recomputed inside. Cost (fusion_cost.py): a candidate joins only if the fused
cost does not exceed the separate costs. Every refusal is counted in the pass statistics.
"""
from __future__ import annotations

from typing import Callable, Optional

from ..ir import Graph, Node
from ..ir.ops import OPS
from .fusion_cost import BYTE_COST, MAX_OPERANDS, flops, node_cost, region_cost, region_io
from .graphutil import is_pointwise, numel_est
from .legality import View
from .manager import PassContext, register_pass
from .regions import INLINE_CONST, make_region

DUP_MAX = 4096  # elements: a multi-reader producer this small and cheap may be recomputed inside a region
GEMM_KINDS = {"matmul": "gemm", "gemm": "gemm", "conv": "conv", "conv_transpose": "conv"}
NAMED_REDUCTIONS = {"softmax": "softmax", "layer_norm": "layer_norm", "rms_norm": "rms_norm", "log_softmax": "reduction"}


def reduction_kind(n: Node) -> Optional[str]:
    if n.op in NAMED_REDUCTIONS:
        return NAMED_REDUCTIONS[n.op]
    od = OPS.get(n.op)
    return "reduction" if od is not None and od.kind == "reduce" and "axes" in od.attrs and "keepdims" in od.attrs else None


class Grower:
    """Grows one group on a fixed view, counting refusals in `stats`."""

    def __init__(self, view: View, stats: dict, max_operands: int):
        self.view, self.stats, self.max_operands = view, stats, max_operands

    def refuse(self, why: str) -> bool:
        self.stats[why] = self.stats.get(why, 0) + 1
        return False

    def read_outside(self, o, ids) -> bool:
        return o.id in self.view.returned or any(id(u) not in ids for u in self.view.readers.get(o.id, ()))

    def legal(self, cand: list[Node]) -> bool:
        """Operand footprint, then the cycle rule."""
        ins, _ = region_io(cand, self.read_outside)
        if sum(1 for v in ins if not (v.producer is None and v.data is not None and v.data.size <= INLINE_CONST)) > self.max_operands:
            return self.refuse("refused_cost")
        if self.view.creates_cycle(cand):
            return self.refuse("refused_cycle")
        return True

    def epilogue(self, members: list[Node], start: Optional[Node] = None) -> list[Node]:
        """Follow the single-reader chain of pointwise ops that keep `start`'s (default: the last member's) result shape."""
        cur = start or members[-1]
        shape = cur.outputs[0].type.shape
        while len(cur.outputs) == 1 and cur.outputs[0].id not in self.view.returned:
            us = self.view.users(cur)
            if len(us) != 1 or not is_pointwise(us[0]) or us[0].outputs[0].type.shape != shape:
                break
            if not self.legal(members + [us[0]]):
                break
            members = members + [us[0]]
            cur = us[0]
        return members

    def prologue(self, seed: Node) -> tuple[list[Node], list[Node]]:
        """Pointwise producers of the reduction's data operand read only inside the group."""
        members, dups = [seed], []
        domain = numel_est(seed.inputs[0].type.shape)
        frontier, tried = [seed.inputs[0]], set()
        while frontier:
            v = frontier.pop()
            p = v.producer
            if p is None or id(p) in tried or not is_pointwise(p) or len(p.outputs) != 1:
                continue
            tried.add(id(p))
            n = numel_est(p.outputs[0].type.shape)
            if n != domain:
                continue  # broadcast operands (a scale vector) stay outside: recomputing them per element costs more
            ids = {id(m) for m in members + dups}
            dup = not self.view.only_read_by(p, ids)
            if dup and (n > DUP_MAX or flops(p.op) > 1):
                self.refuse("refused_dup")
                continue
            # a multi-pass reduction reads its input twice: fuse when 2x the compute costs less than a write + read
            if not dup and 2 * flops(p.op) * n > BYTE_COST * 2 * n * p.outputs[0].type.dtype.bits / 8:
                self.refuse("refused_cost")
                continue
            cand = members + dups + [p]
            if not self.legal(cand):
                continue
            if dup:  # recomputed inside from its operands; its own producers stay outside
                dups.append(p)
                self.stats["duplicated"] = self.stats.get("duplicated", 0) + 1
            else:
                members.append(p)
                frontier.extend(p.inputs)
        return members, dups

    def pointwise(self, seed: Node) -> list[Node]:
        """Breadth-first over pointwise neighbours; each joins if legal and the cost model agrees."""
        members = [seed]
        queue, tried = self._neighbours(seed), {id(seed)}
        while queue:
            c = queue.pop(0)
            if id(c) in tried or not is_pointwise(c):
                continue
            tried.add(id(c))
            cand = members + [c]
            ids = {id(m) for m in cand}
            _, outs = region_io(cand, self.read_outside)
            if len({o.type.shape for o in outs}) > 1:
                self.refuse("refused_shape")
                continue
            if region_cost(cand, self.read_outside) > region_cost(members, self.read_outside) + node_cost(c):
                self.refuse("refused_cost")
                continue
            if not self.legal(cand):
                continue
            members = cand
            queue.extend(u for u in self._neighbours(c) if id(u) not in ids)
        return members

    def _neighbours(self, n: Node) -> list[Node]:
        prods = [v.producer for v in n.inputs if v.producer is not None and v.producer.body is None]
        return prods + [u for u in self.view.users(n) if u.body is None]


def _fuse(g: Graph, ctx: PassContext, seed_kind: Callable[[Node], Optional[str]],
          grow: Callable[[Grower, Node], tuple[list[Node], list[Node]]], wrap_single: bool) -> dict:
    stats: dict = {"regions": 0}
    max_ops = int(ctx.get("max_region_operands", MAX_OPERANDS))
    done: set[int] = set()
    while True:
        view = View(g)
        for n in g.nodes:
            if n.body is not None or id(n) in done:
                continue
            kind = seed_kind(n)
            if kind is None:
                continue
            done.add(id(n))
            members, dups = grow(Grower(view, stats, max_ops), n)
            if len(members) + len(dups) > 1 or wrap_single:
                make_region(g, members, kind, dups)
                g.remove_unused_constants()  # constants now copied into the body
                stats["regions"] += 1
                stats[f"kind:{kind}"] = stats.get(f"kind:{kind}", 0) + 1
                stats["ops_fused"] = stats.get("ops_fused", 0) + len(members)
                break
        else:
            return stats


@register_pass("fuse-attention")
def fuse_attention(g: Graph, ctx: PassContext) -> dict:
    """Wrap each scaled_dot_product_attention as a region of kind "attention"."""
    return _fuse(g, ctx, lambda n: "attention" if n.op == "scaled_dot_product_attention" else None,
                 lambda gr, n: ([n], []), wrap_single=True)


@register_pass("fuse-gemm")
def fuse_gemm(g: Graph, ctx: PassContext) -> dict:
    """matmul/gemm/conv + pointwise epilogue (bias, activation, residual add, scale) -> "gemm"/"conv" regions."""
    return _fuse(g, ctx, lambda n: GEMM_KINDS.get(n.op), lambda gr, n: (gr.epilogue([n]), []), wrap_single=True)


@register_pass("fuse-reduction")
def fuse_reduction(g: Graph, ctx: PassContext) -> dict:
    """Reductions (softmax, layer_norm, rms_norm, reduce_*) with pointwise producers and consumers."""
    def grow(gr: Grower, n: Node):
        members, dups = gr.prologue(n)
        return gr.epilogue(members, start=n), dups  # the epilogue follows the reduction's own result
    return _fuse(g, ctx, reduction_kind, grow, wrap_single=True)


@register_pass("fuse-pointwise")
def fuse_pointwise(g: Graph, ctx: PassContext) -> dict:
    """Connected pointwise ops (unary/binary/where/cast) -> "pointwise" regions."""
    return _fuse(g, ctx, lambda n: "pointwise" if is_pointwise(n) else None, lambda gr, n: (gr.pointwise(n), []), wrap_single=False)


MERGE_INTO = ("pointwise", "softmax", "layer_norm", "rms_norm", "reduction", "gemm", "conv")


@register_pass("fuse-producers")
def fuse_producers(g: Graph, ctx: PassContext) -> dict:
    """O3: a region absorbs a pointwise producer (an op or a pointwise region) of a full-size operand even when
    others read it too; the producer's value becomes an extra region result (like a skip-add + layer norm)."""
    stats: dict = {"merged": 0}
    max_ops = int(ctx.get("max_region_operands", MAX_OPERANDS))
    tried: set = set()
    while True:
        view = View(g)
        gr = Grower(view, stats, max_ops)
        for q in g.nodes:
            if q.body is None or q.attrs.get("kind") not in MERGE_INTO:
                continue
            acts = [numel_est(v.type.shape) for v in q.inputs if v.data is None]  # activations, not weights
            domain = max(acts) if acts else 0
            for v in q.inputs:
                p = v.producer
                if p is None or (id(p), id(q)) in tried:
                    continue
                tried.add((id(p), id(q)))
                if not (is_pointwise(p) or (p.body is not None and p.attrs.get("kind") == "pointwise")):
                    continue
                if numel_est(v.type.shape) != domain or not gr.legal([p, q]):
                    continue
                make_region(g, [p, q], q.attrs["kind"])
                g.remove_unused_constants()
                stats["merged"] += 1
                break
            else:
                continue
            break
        else:
            return stats
