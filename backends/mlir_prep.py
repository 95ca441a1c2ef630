"""Graph preparation for MLIR export: a clone where fused regions are inlined (they export as their bodies),
nodes whose operands are all constants are folded with the reference semantics, composite ops are
decomposed into the primitives `mlir_export` emits, and dead nodes are dropped."""
from __future__ import annotations

import math

import numpy as np

from ..ir import Graph, Node, NnfuseError, Value, make_node
from ..ir.evaluate import run_node
from ..ir.ops import norm_axis


def prepare(graph: Graph, fold: bool = True) -> Graph:
    g = graph.clone()
    p = _Prep(g, fold)
    for n in list(g.nodes):
        p.visit(n)
    g.nodes = p.out
    g.outputs = [p.fix(v) for v in g.outputs]
    return _dce(g)


class _Prep:
    def __init__(self, g: Graph, fold: bool):
        self.g, self.fold, self.out = g, fold, []
        self.sub: dict[int, Value] = {}   # value id -> the value that now stands for it

    def fix(self, v: Value) -> Value:
        while v.id in self.sub:
            v = self.sub[v.id]
        return v

    def visit(self, n: Node) -> None:
        n.inputs = [self.fix(v) for v in n.inputs]
        if n.body is not None:  # a fused region exports as its body
            body = n.body.clone()
            for b, v in zip(body.inputs, n.inputs):
                self.sub[b.id] = v
            for name, c in body.constants.items():
                self.sub[c.id] = self.g.add_const(name, c.data)
            for m in body.nodes:
                self.visit(m)
            for outer, inner in zip(n.outputs, body.outputs):
                self.sub[outer.id] = self.fix(inner)
        elif self.fold and all(v.producer is None and v.data is not None for v in n.inputs):
            for v, a in zip(n.outputs, run_node(n, [v.data for v in n.inputs])):
                self.sub[v.id] = self.g.add_const("folded", np.ascontiguousarray(a))
        elif n.op in DECOMPOSE:
            b = _B(self, n.meta)
            res = DECOMPOSE[n.op](b, n, *n.inputs, **n.attrs)
            for old, new in zip(n.outputs, res if isinstance(res, list) else [res]):
                self.sub[old.id] = new
        else:
            self.out.append(n)


def _dce(g: Graph) -> Graph:
    live = {v.id for v in g.outputs}
    keep: list[Node] = []
    for n in reversed(g.nodes):
        if any(o.id in live for o in n.outputs):
            keep.append(n)
            live.update(v.id for v in n.inputs)
    g.nodes = keep[::-1]
    g.remove_unused_constants()
    return g


class _B:
    """Builds the decomposition of one node; every new node keeps that node's meta and is visited in turn."""

    def __init__(self, prep: _Prep, meta: dict):
        self.prep, self.g, self.meta = prep, prep.g, meta

    def __call__(self, op: str, *inputs: Value, **attrs) -> Value:
        n = make_node(op, list(inputs), attrs, self.meta)
        self.prep.visit(n)
        return self.prep.fix(n.outputs[0])

    def const(self, value, like: Value) -> Value:
        return self.g.add_const("k", np.asarray(value, dtype=like.type.dtype.np))


def _softmax(b, n, x, axis, log=False):
    m = b("reduce_max", x, axes=[axis], keepdims=True)
    s = b("sub", x, m)
    e = b("exp", s)
    z = b("reduce_sum", e, axes=[axis], keepdims=True)
    return b("sub", s, b("log", z)) if log else b("div", e, z)


def _layer_norm(b, n, x, w=None, bias=None, axis=-1, eps=1e-5, rms=False):
    axes = list(range(norm_axis(axis, x.type.rank), x.type.rank))
    if not rms:
        x = b("sub", x, b("reduce_mean", x, axes=axes, keepdims=True))
    var = b("reduce_mean", b("mul", x, x), axes=axes, keepdims=True)
    y = b("mul", x, b("rsqrt", b("add", var, b.const(eps, x))))
    if w is not None:
        y = b("mul", y, w)
    if bias is not None:
        y = b("add", y, bias)
    return y


def _gemm(b, n, a, w, c=None, alpha=1.0, beta=1.0, trans_a=False, trans_b=False):
    a = b("transpose", a, perm=[1, 0]) if trans_a else a
    w = b("transpose", w, perm=[1, 0]) if trans_b else w
    y = b("matmul", a, w)
    if alpha != 1.0:
        y = b("mul", y, b.const(alpha, y))
    if c is not None:
        y = b("add", y, c if beta == 1.0 else b("mul", c, b.const(beta, c)))
    return y


def _sdpa(b, n, q, k, v, mask=None, causal=False, scale=None, enable_gqa=True):
    hq, hk = q.type.shape[-3] if q.type.rank >= 3 else 1, k.type.shape[-3] if k.type.rank >= 3 else 1
    if hq != hk:  # grouped-query attention: repeat each K/V head hq/hk times
        rep = hq // hk
        def widen(t):
            s = list(t.type.shape)
            t = b("unsqueeze", t, axes=[t.type.rank - 2])
            t = b("expand", t, shape=s[:-3] + [hk, rep] + s[-2:])
            return b("reshape", t, shape=s[:-3] + [hq] + s[-2:])
        k, v = widen(k), widen(v)
    r = k.type.rank
    kt = b("transpose", k, perm=list(range(r - 2)) + [r - 1, r - 2])
    s = b("mul", b("matmul", q, kt), b.const(scale if scale is not None else 1 / math.sqrt(q.type.shape[-1]), q))
    L, S = q.type.shape[-2], k.type.shape[-2]
    if causal:
        keep = np.tril(np.ones((L, S), dtype=bool), k=S - L)
        s = b("where", b.g.add_const("causal", keep), s, b.const(-np.inf, s))
    if mask is not None:
        s = b("where", mask, s, b.const(-np.inf, s)) if mask.type.dtype.name == "bool" else b("add", s, mask)
    return b("matmul", b("softmax", s, axis=-1), v)


def _batch_norm(b, n, x, w, bias, mean, var, eps=1e-5):
    shape = [-1] + [1] * (x.type.rank - 2)
    def chan(t):
        return b("reshape", t, shape=shape)
    inv = b("rsqrt", b("add", var, b.const(eps, var)))
    y = b("mul", b("sub", x, chan(mean)), chan(b("mul", inv, w)))
    return b("add", y, chan(bias))


DECOMPOSE = {
    "softmax": lambda b, n, x, axis: _softmax(b, n, x, axis),
    "log_softmax": lambda b, n, x, axis: _softmax(b, n, x, axis, log=True),
    "layer_norm": _layer_norm,
    "rms_norm": lambda b, n, x, w=None, axis=-1, eps=1e-6: _layer_norm(b, n, x, w, None, axis, eps, rms=True),
    "gemm": _gemm,
    "scaled_dot_product_attention": _sdpa,
    "batch_norm": _batch_norm,
    "global_avg_pool": lambda b, n, x: b("reduce_mean", x, axes=list(range(2, x.type.rank)), keepdims=True),
    "embedding": lambda b, n, w, ids: b("gather", w, ids, axis=0),
    "flatten": lambda b, n, x, axis: b("reshape", x, shape=list(n.output.type.shape)),
    "squeeze": lambda b, n, x, axes: b("reshape", x, shape=list(n.output.type.shape)),
    "unsqueeze": lambda b, n, x, axes: b("reshape", x, shape=list(n.output.type.shape)),
    "prelu": lambda b, n, x, s: b("where", b("lt", x, b.const(0, x)), b("mul", x, s), x),
}


def check_static(g: Graph) -> None:
    for v in list(g.inputs) + [o for n in g.nodes for o in n.outputs]:
        if not v.type.static:
            raise NnfuseError(f"MLIR export needs static shapes; {v.name or 'a value'} has type {v.type} "
                              "(compile with fixed input shapes)")
