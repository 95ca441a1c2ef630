"""Kernel-IR rewrite for the GPU backends: gemm(q, kᵀ) -> softmax row norm -> gemm(p, v) becomes one `Attention`
kernel (flash attention: the [sq, skv] score and probability temps are never written to memory).

The lowering of scaled_dot_product_attention emits exactly that chain; the softmax's input expression carries the
causal test (`where(j <= i, s, -inf)`), boolean masks (`where(m, s, -inf)`) and additive masks (`s + m`), which map
onto Attention.causal / Attention.mask. Anything else (an epilogue on either gemm, other readers of the temps,
other score expressions) leaves the chain as it is.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np

from ..ir.dtypes import dtype as to_dtype
from ..ir.kernel import Access, Attention, Const, Expr, Gemm, Load, Op, Program, RowNorm, Var, op, verify_program, walk


def _readers(kernels, buf) -> list[int]:
    return [i for i, k in enumerate(kernels) if any(a.buf is buf for a in k.reads())]


def _axis(e: Expr) -> Optional[int]:
    """The domain axis `e` is, seen through the `i * 1 + 0` index arithmetic remapped views leave behind."""
    while isinstance(e, Op) and len(e.args) == 2 and isinstance(e.args[1], Const):
        if not ((e.op == "add" and e.args[1].value == 0) or (e.op == "mul" and e.args[1].value == 1)):
            return None
        e = e.args[0]
    return e.axis if isinstance(e, Var) else None


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
            if (isinstance(c, Op) and c.op == "le" and _axis(c.args[0]) == rank - 1 and _axis(c.args[1]) == rank - 2):
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


def _const_mask_kind(mask: Optional[Expr], p: Program, bt: tuple, sq: int, skv: int) -> Optional[str]:
    """"all" when `mask` is where(c, 0, -inf) over a constant bool `c` that is true everywhere, "causal" when `c` is
    exactly j <= i for every batch index (the lower-triangular masks models build), else None."""
    if not (isinstance(mask, Op) and mask.op == "where" and isinstance(mask.args[0], Load)
            and isinstance(mask.args[1], Const) and mask.args[1].value == 0.0
            and isinstance(mask.args[2], Const) and mask.args[2].value == float("-inf")):
        return None
    ld = mask.args[0]
    acc = ld.access
    if ld.indirect or acc.buf.kind != "const" or acc.buf.dtype.name != "bool":
        return None
    data = next((d for b, d in zip(p.consts, p.const_data) if b is acc.buf), None)
    dims = tuple(bt) + (sq, skv)
    # read the mask only along the axes it varies on (broadcast axes have stride 0): extent 1 there
    ext = [n if s and n > 1 else 1 for n, s in zip(dims, acc.strides)]
    if data is None or math.prod(ext[:-2]) * sq * skv > (1 << 24):
        return None
    flat = np.asarray(data).reshape(-1)
    idx = np.full((1,) * len(dims), acc.offset, dtype=np.int64)
    for ax, (n, s) in enumerate(zip(ext, acc.strides)):
        shape = [1] * len(dims)
        shape[ax] = n
        idx = idx + (np.arange(n, dtype=np.int64) * s).reshape(shape)
    cond = flat[idx]
    if cond.all():
        return "all"
    tri = np.tri(sq, skv, dtype=bool).reshape((1,) * len(bt) + (sq, skv))
    both = np.broadcast_shapes(cond.shape, tri.shape)
    if np.array_equal(np.broadcast_to(cond, both), np.broadcast_to(tri, both)):
        return "causal"
    return None


def fuse_attention(p: Program, when: Optional[Callable[[Attention], bool]] = None) -> int:
    """Rewrite every eligible gemm -> softmax -> gemm chain in place; returns how many were fused.
    `when` lets a backend keep chains its attention kernel does not cover (other dtypes) unfused."""
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
        kind = _const_mask_kind(mask, p, bt, g1.m, g1.n)
        if kind is not None:   # a constant all-true or lower-triangular mask: no mask loads, causal skips blocks
            att.mask, att.causal = None, causal or kind == "causal"
        if when is not None and not when(att):
            i += 1
            continue
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
