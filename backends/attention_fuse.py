"""Kernel-IR rewrite for the GPU backends: gemm(q, kᵀ) -> softmax row norm -> gemm(p, v) becomes one `Attention`
kernel (flash attention: the [sq, skv] score and probability temps are never written to memory).

The lowering of scaled_dot_product_attention emits exactly that chain; the softmax's input expression carries the
causal test (`where(j <= i, s, -inf)`), boolean masks (`where(m, s, -inf)`) and additive masks (`s + m`), which map
onto Attention.causal / Attention.mask. Anything else (an epilogue on either gemm, other readers of the temps,
other score expressions) leaves the chain as it is.
"""
from __future__ import annotations

from typing import Optional

from ..ir.dtypes import dtype as to_dtype
from ..ir.kernel import Access, Attention, Const, Expr, Gemm, Load, Op, Program, RowNorm, Var, op, verify_program, walk


def _readers(kernels, buf) -> list[int]:
    return [i for i, k in enumerate(kernels) if any(a.buf is buf for a in k.reads())]


def _split_scores(x: Expr, scores: Access, rank: int):
    """(causal, mask) if x is the scores load wrapped in causal/mask layers, else None."""
    causal, adds, keeps = False, [], []
    e = x
    while True:
        if isinstance(e, Load):
            if e.indirect or e.access.key() != scores.key():
                return None
            break
        if not isinstance(e, Op):
            return None
        if e.op == "where" and isinstance(e.args[2], Const) and e.args[2].value == float("-inf"):
            c = e.args[0]
            if (isinstance(c, Op) and c.op == "le" and isinstance(c.args[0], Var) and isinstance(c.args[1], Var)
                    and c.args[0].axis == rank - 1 and c.args[1].axis == rank - 2):
                causal = True
            else:
                keeps.append(c)
            e = e.args[1]
        elif e.op == "add":   # the lowering puts the scores first: s + mask
            adds.append(e.args[1])
            e = e.args[0]
        else:
            return None
    for part in adds + keeps:   # mask parts may not read the scores themselves
        if any(isinstance(n, Load) and n.access.buf is scores.buf for n in walk(part)):
            return None
    f32 = to_dtype("f32")
    mask: Optional[Expr] = None
    for a in adds:
        mask = a if mask is None else op("add", f32, mask, a)
    for c in keeps:
        mask = op("where", f32, c, mask if mask is not None else Const(f32, 0.0), Const(f32, float("-inf")))
    return causal, mask


def fuse_attention(p: Program) -> int:
    """Rewrite every eligible gemm -> softmax -> gemm chain in place; returns how many were fused."""
    ks = p.kernels
    fused = 0
    i = 0
    while i + 2 < len(ks):
        g1 = ks[i]
        if not (isinstance(g1, Gemm) and isinstance(g1.b, Access) and g1.epilogue is None and g1.out.buf.kind == "temp"):
            i += 1
            continue
        r1 = _readers(ks, g1.out.buf)
        if len(r1) != 1 or not isinstance(ks[r1[0]], RowNorm):
            i += 1
            continue
        j = r1[0]
        rn = ks[j]
        bt = tuple(g1.batch)
        if (rn.norm != "softmax" or rn.weight is not None or rn.bias is not None or tuple(rn.domain) != bt + (g1.m,)
                or rn.row != g1.n or rn.out.buf.kind != "temp"):
            i += 1
            continue
        r2 = _readers(ks, rn.out.buf)
        if len(r2) != 1 or not isinstance(ks[r2[0]], Gemm):
            i += 1
            continue
        m2 = r2[0]
        g2 = ks[m2]
        if (not isinstance(g2.b, Access) or g2.epilogue is not None or tuple(g2.batch) != bt or g2.m != g1.m
                or g2.k != g1.n or g2.a.key() != rn.out.key() or g2.alpha != 1.0 or not j < m2):
            i += 1
            continue
        split = _split_scores(rn.x, g1.out, len(bt) + 2)
        if split is None or not rn.x.dtype.is_float:
            i += 1
            continue
        causal, mask = split
        kst = list(g1.b.strides)
        kst[-2], kst[-1] = kst[-1], kst[-2]   # kᵀ [d, skv] viewed back as k [skv, d]
        att = Attention(batch=bt, sq=g1.m, skv=g1.n, d=g1.k, dv=g2.n, q=g1.a, k=Access(g1.b.buf, g1.b.offset, tuple(kst)),
                        v=g2.b, out=g2.out, scale=float(g1.alpha), causal=causal, mask=mask, name=g2.name,
                        meta={"region": "attention", "ops": ["scaled_dot_product_attention"]})
        att.schedule.block = {"BLOCK_M": min(64, 1 << max(4, (g1.m - 1).bit_length())),
                              "BLOCK_N": min(64, 1 << max(4, (g1.n - 1).bit_length()))}
        att.schedule.num_warps = 4 if max(g1.k, g2.n) <= 64 else 8
        ks[m2] = att
        del ks[j]
        del ks[i]
        fused += 1
    if fused:
        for n, k in enumerate(ks):
            k.name = f"k{n}"
        replan(p)
        verify_program(p)
    return fused


def replan(p: Program) -> None:
    """Drop temps no kernel touches any more and place the rest again: the fused kernel reads q/k/mask later and
    writes its output earlier than the chain did, so the old arena plan's liveness no longer holds."""
    from ..passes.lower import plan_memory
    used = {id(a.buf) for k in p.kernels for a in k.reads() + k.writes()}
    p.temps = [b for b in p.temps if id(b) in used]
    for n, b in enumerate(p.temps):
        b.name, b.index = f"t{n}", n
    p.arena_bytes, p.naive_bytes = plan_memory(p.kernels, p.temps)


__all__ = ["fuse_attention"]
