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
        elif n.op in DECOMPOSE and (res := DECOMPOSE[n.op](_B(self, n.meta), n, *n.inputs, **n.attrs)) is not None:
            for old, new in zip(n.outputs, res if isinstance(res, list) else [res]):
                self.sub[old.id] = new
        else:  # a primitive, or a composite whose decomposition declined (returned None)
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

    def split(self, x: Value, axis: int, sizes: list) -> list:
        n = make_node("split", [x], {"axis": axis, "sizes": sizes}, self.meta)
        self.prep.visit(n)
        return [self.prep.fix(o) for o in n.outputs]

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


def _reduce_lse(b, n, x, axes=None, keepdims=False):
    m = b("reduce_max", x, axes=axes, keepdims=True)
    y = b("add", b("log", b("reduce_sum", b("exp", b("sub", x, m)), axes=axes, keepdims=True)), m)
    return y if keepdims else b("reshape", y, shape=list(n.output.type.shape))


def _selu(b, n, x, alpha, gamma):
    neg = b("mul", b("sub", b("exp", x), b.const(1.0, x)), b.const(alpha * gamma, x))
    return b("where", b("gt", x, b.const(0.0, x)), b("mul", x, b.const(gamma, x)), neg)


def _instance_norm(b, n, x, scale, bias, eps=1e-5):
    axes = list(range(2, x.type.rank))
    shape = [-1] + [1] * (x.type.rank - 2)
    c = b("sub", x, b("reduce_mean", x, axes=axes, keepdims=True))
    y = b("mul", c, b("rsqrt", b("add", b("reduce_mean", b("mul", c, c), axes=axes, keepdims=True), b.const(eps, x))))
    return b("add", b("mul", y, b("reshape", scale, shape=shape)), b("reshape", bias, shape=shape))


def _arg(b, n, x, axis=0, keepdims=True, select_last_index=False):
    """argmax/argmin: the first (or last) position along `axis` where x equals its max (min)."""
    ax = norm_axis(axis, x.type.rank)
    size = x.type.shape[ax]
    m = b("reduce_max" if n.op == "argmax" else "reduce_min", x, axes=[ax], keepdims=True)
    pos = b.g.add_const("positions", np.arange(size, dtype=np.int64).reshape([size] + [1] * (x.type.rank - ax - 1)))
    miss = b.g.add_const("miss", np.asarray(-1 if select_last_index else size, dtype=np.int64))
    idx = b("where", b("eq", x, m), pos, miss)
    r = b("reduce_max" if select_last_index else "reduce_min", idx, axes=[ax], keepdims=True)
    return r if keepdims else b("reshape", r, shape=list(n.output.type.shape))


def _cumsum(b, n, x, axis, exclusive=False, reverse=False):
    """cumsum as a matmul with a triangular 0/1 matrix along the (moved-last) axis."""
    r, ax = x.type.rank, norm_axis(axis, x.type.rank)
    k = x.type.shape[ax]
    tri = np.triu(np.ones((k, k)), 1 if exclusive else 0)
    tri = tri.T if reverse else tri
    perm = [i for i in range(r) if i != ax] + [ax]
    inv = [perm.index(i) for i in range(r)]
    xt = b("transpose", x, perm=perm) if ax != r - 1 else x
    y = b("matmul", xt, b.g.add_const("tri", tri.astype(x.type.dtype.np)))
    return b("transpose", y, perm=inv) if ax != r - 1 else y


def _conv(b, n, x, w, bias=None, strides=None, pads=None, dilations=None, groups=1):
    """1-D conv as 2-D (H = 1); grouped 2-D conv (not depthwise) as one conv per group, concatenated."""
    r = x.type.rank
    if r == 3:
        x4 = b("unsqueeze", x, axes=[2])
        w4 = b("unsqueeze", w, axes=[2])
        p = list(pads or [0, 0])
        y = b("conv", x4, w4, *([bias] if bias is not None else []), strides=[1] + list(strides or [1]),
              pads=[0, p[0], 0, p[1]], dilations=[1] + list(dilations or [1]), groups=groups)
        return b("squeeze", y, axes=[2])
    cin, cout = x.type.shape[1], w.type.shape[0]
    if r != 4 or groups == 1 or (groups == cin and cout == cin):
        return None  # emitted directly (conv_2d_nchw_fchw / depthwise_conv_2d_nchw_chw)
    ci, co = cin // groups, cout // groups
    xs = b.split(x, axis=1, sizes=[ci] * groups)
    ws = b.split(w, axis=0, sizes=[co] * groups)
    bs = b.split(bias, axis=0, sizes=[co] * groups) if bias is not None else [None] * groups
    ys = [b("conv", xi, wi, *([bi] if bi is not None else []), strides=strides, pads=pads, dilations=dilations)
          for xi, wi, bi in zip(xs, ws, bs)]
    return b("concat", *ys, axis=1)


def _pool1d(b, n, x, **attrs):
    if x.type.rank != 3:
        return None
    p = list(attrs.get("pads") or [0, 0])
    two = dict(attrs, kernel=[1] + list(attrs["kernel"]), strides=[1] + list(attrs.get("strides") or [1] * len(attrs["kernel"])),
               pads=[0, p[0], 0, p[1]])
    if attrs.get("dilations"):
        two["dilations"] = [1] + list(attrs["dilations"])
    return b("squeeze", b(n.op, b("unsqueeze", x, axes=[2]), **two), axes=[2])


DECOMPOSE = {
    "shape": lambda b, n, x, start=0, end=None: b.g.add_const("shape", np.asarray(x.type.shape[start:end], dtype=np.int64)),
    "conv": _conv,
    "max_pool": _pool1d,
    "avg_pool": _pool1d,
    "reduce_l2": lambda b, n, x, axes=None, keepdims=False: b("sqrt", b("reduce_sum", b("mul", x, x), axes=axes, keepdims=keepdims)),
    "reduce_log_sum_exp": _reduce_lse,
    "selu": _selu,
    "instance_norm": _instance_norm,
    "global_max_pool": lambda b, n, x: b("reduce_max", x, axes=list(range(2, x.type.rank)), keepdims=True),
    "argmax": _arg,
    "argmin": _arg,
    "cumsum": _cumsum,
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
