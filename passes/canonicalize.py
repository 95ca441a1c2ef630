"""canonicalize and simplify-algebra: exact local rewrites stated as patterns.

canonicalize puts equivalent forms into one shape so later passes see one pattern:
gemm -> matmul (+ transpose / scale / bias add); flatten/squeeze/unsqueeze -> reshape; reshape
chains -> one reshape; transpose pairs -> one transpose or nothing; identity/dropout/no-op
reshape/expand/slice removed; shape ops of a constant_of_shape become a constant_of_shape. simplify-algebra drops neutral elements (x*1, x+0, x-0, x/1, x**1),
double negation, casts to the same dtype and reshape-of-reshape.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..ir import Graph, Value
from ..ir.types import dim_mul
from .manager import PassContext, register_pass
from .rewriter import Const, Match, Op, Rewrite, Rule, Var, apply_rules

X = Var("x")


def _same_as_root(m: Match, rw: Rewrite) -> Optional[Value]:
    """Replace the root by `x` when that keeps the type (a neutral op must not hide a broadcast)."""
    return m["x"] if m["x"].type == m.root.type else None


# ---- reshape family
def reshape_target(src: tuple, dst: tuple) -> Optional[tuple]:
    """A reshape attribute that turns shape `src` into `dst` at run time (0 copies a source dim, -1 infers one)."""
    out, infer = [], 0
    for i, d in enumerate(dst):
        if isinstance(d, int):
            if d == 0:
                return None  # 0 means "copy" in the attribute; empty tensors are left alone
            out.append(d)
        elif i < len(src) and src[i] == d:
            out.append(0)
        else:
            out.append(-1)
            infer += 1
    return tuple(out) if infer <= 1 else None


def _to_reshape(m: Match, rw: Rewrite) -> Optional[Value]:
    x = m["x"]
    tgt = reshape_target(x.shape, m.root.shape)
    if tgt is None:
        return None
    return x if x.shape == m.root.shape else rw.op("reshape", x, shape=tgt)


def _reshape_noop(m: Match, rw: Rewrite) -> Optional[Value]:
    return m["x"] if m["x"].type == m.root.type else None


RESHAPE_CHAIN = Rule("reshape-reshape", Op("reshape", Op(("reshape", "flatten", "squeeze", "unsqueeze"), X)), _to_reshape)


def _transpose_perm(n, rank):
    p = n.attrs.get("perm")
    return tuple(range(rank))[::-1] if p is None else tuple(q % rank for q in p)


def _transpose_pair(m: Match, rw: Rewrite) -> Optional[Value]:
    x, inner, outer = m["x"], m.node("t1"), m.node("t2")
    p1, p2 = _transpose_perm(inner, len(x.shape)), _transpose_perm(outer, len(x.shape))
    perm = tuple(p1[p] for p in p2)
    return x if perm == tuple(range(len(perm))) else rw.op("transpose", x, perm=perm)


def _transpose_id(m: Match, rw: Rewrite) -> Optional[Value]:
    n = m.node("t")
    return m["x"] if _transpose_perm(n, len(m["x"].shape)) == tuple(range(len(m["x"].shape))) else None


def _gemm(m: Match, rw: Rewrite) -> Optional[Value]:
    n = m.node("g")
    a, b = n.inputs[0], n.inputs[1]
    if n.attrs.get("trans_a"):
        a = rw.op("transpose", a, perm=(1, 0))
    if n.attrs.get("trans_b"):
        b = rw.op("transpose", b, perm=(1, 0))
    y = rw.op("matmul", a, b)
    dt = y.dtype.np
    if n.attrs.get("alpha", 1.0) != 1.0:
        y = rw.op("mul", y, rw.const(np.asarray(n.attrs["alpha"], dt), "alpha"))
    if len(n.inputs) == 3:
        c = n.inputs[2]
        if n.attrs.get("beta", 1.0) != 1.0:
            c = rw.op("mul", c, rw.const(np.asarray(n.attrs["beta"], dt), "beta"))
        y = rw.op("add", y, c)
    return y


def _slice_full(m: Match, rw: Rewrite) -> Optional[Value]:
    n = m.node("s")
    steps = n.attrs.get("steps") or (1,) * len(n.attrs["starts"])
    if all(s == 0 for s in n.attrs["starts"]) and all(st == 1 for st in steps):
        return m["x"] if m["x"].type == m.root.type else None
    return None


def _matmul_unflatten(m: Match, rw: Rewrite) -> Optional[Value]:
    """reshape(matmul(reshape(x, [M,K]), W) [+ b], L+[N]) with prod(L) == M -> matmul(x as L+[K], W) [+ b].

    Exporters flatten leading dims around 2-D GEMMs (torch Conv1D/Linear -> Gemm); matmul broadcasts, so
    the flattening is not needed and the pointwise ops after it can fuse with the GEMM."""
    x, w, root = m["x"], m["w"], m.root
    flat = m.node("flat").outputs[0]
    if w.type.rank != 2 or flat.type.rank != 2 or root.type.rank < 2 or root.shape[-1] != w.shape[-1]:
        return None
    lead = root.shape[:-1]
    if dim_mul(*lead) != flat.shape[0]:
        return None
    want = tuple(lead) + (flat.shape[1],)
    if x.shape != want:
        tgt = reshape_target(x.shape, want)
        if tgt is None:
            return None
        x = rw.op("reshape", x, shape=tgt)
    y = rw.op("matmul", x, w)
    return rw.op("add", y, m["b"]) if "b" in m.vals else y


def _transpose_through_flatten(m: Match, rw: Rewrite) -> Optional[Value]:
    """reshape(transpose(reshape(x) merging leading dims, perm fixing axis 0), split back) -> transpose(x)."""
    x, inner, t, root = m["x"], m.node("r1").outputs[0], m.node("t"), m.root
    tail = inner.shape[1:]
    nl = len(x.shape) - len(tail)
    if nl < 1 or tuple(x.shape[nl:]) != tuple(tail) or dim_mul(*x.shape[:nl]) != inner.shape[0]:
        return None
    p = _transpose_perm(t, len(inner.shape))
    if p[0] != 0:
        return None
    perm = tuple(range(nl)) + tuple(nl + q - 1 for q in p[1:])
    if tuple(root.shape) != tuple(x.shape[:nl]) + tuple(x.shape[i] for i in perm[nl:]):
        return None
    return rw.op("transpose", x, perm=perm)


def _splat_view(m: Match, rw: Rewrite) -> Optional[Value]:
    """A shape op of a constant_of_shape is a constant_of_shape of the new shape (no data moves at all)."""
    if not m.root.type.static:
        return None
    c = m.node("c")
    return rw.op("constant_of_shape", shape=m.root.shape, value=c.attrs["value"], dtype=c.attrs["dtype"])


_FLAT = Op("reshape", Var("x"), name="flat")
CANONICAL = [
    Rule("matmul-unflatten", Op("reshape", Op("matmul", _FLAT, Const("w"), one_use=True)), _matmul_unflatten),
    Rule("matmul-unflatten", Op("reshape", Op("add", Op("matmul", _FLAT, Const("w"), one_use=True), Const("b"), one_use=True)),
         _matmul_unflatten),
    Rule("transpose-unflatten", Op("reshape", Op("transpose", Op("reshape", Var("x"), name="r1"), name="t", one_use=True)),
         _transpose_through_flatten),
    Rule("gemm-to-matmul", Op("gemm", Var(), Var(), name="g"), _gemm),
    Rule("gemm-to-matmul", Op("gemm", Var(), Var(), Var(), name="g"), _gemm),
    Rule("identity", Op(("identity", "dropout"), X), _same_as_root),
    Rule("to-reshape", Op(("flatten", "squeeze", "unsqueeze"), X), _to_reshape),
    RESHAPE_CHAIN,
    Rule("reshape-noop", Op("reshape", X), _reshape_noop),
    Rule("expand-noop", Op("expand", X), _same_as_root),
    Rule("transpose-pair", Op("transpose", Op("transpose", X, name="t1"), name="t2"), _transpose_pair),
    Rule("transpose-identity", Op("transpose", X, name="t"), _transpose_id),
    Rule("slice-full", Op("slice", X, name="s"), _slice_full),
    Rule("concat-single", Op("concat", X), _same_as_root),
    Rule("splat-view", Op(("transpose", "reshape", "expand", "squeeze", "unsqueeze", "flatten"), Op("constant_of_shape", name="c")),
         _splat_view),
]


def _neg_neg(m: Match, rw: Rewrite) -> Optional[Value]:
    return m["x"]


def _cast_same(m: Match, rw: Rewrite) -> Optional[Value]:
    return m["x"] if m["x"].dtype == m.root.dtype else None


ALGEBRA = [
    Rule("mul-one", Op("mul", X, Const(value=1.0)), _same_as_root),
    Rule("add-zero", Op("add", X, Const(value=0.0)), _same_as_root),
    Rule("sub-zero", Op("sub", X, Const(value=0.0)), _same_as_root),
    Rule("div-one", Op("div", X, Const(value=1.0)), _same_as_root),
    Rule("pow-one", Op("pow", X, Const(value=1.0)), _same_as_root),
    Rule("neg-neg", Op("neg", Op("neg", X)), _neg_neg),
    Rule("cast-same", Op("cast", X), _cast_same),
    RESHAPE_CHAIN,
]


@register_pass("simplify-algebra")
def simplify_algebra(g: Graph, ctx: PassContext) -> dict:
    """Drop neutral elements (x*1, x+0, x-0, x/1), double negation, same-dtype casts, reshape of reshape."""
    fired = apply_rules(g, ALGEBRA)
    return {"rewrites": sum(fired.values()), **fired}


@register_pass("canonicalize")
def canonicalize(g: Graph, ctx: PassContext) -> dict:
    """gemm -> matmul+add, reshape-family chains -> one reshape, transpose pairs, identity/dropout removal."""
    fired = apply_rules(g, CANONICAL)
    return {"rewrites": sum(fired.values()), **fired}
