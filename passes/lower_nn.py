"""Lowerings of the CNN / misc ops onto the kernel IR (registered into lower.LOWERINGS).

Index tricks used here: padding and tiling are loads whose index goes through an `indirect` expression
(clamped or wrapped loop variables) guarded by `where`; pooling is a Reduce over the window axes of a padded
view; channel norms are row norms plus a lazy per-channel affine; attention is gemm -> softmax -> gemm.
"""
from __future__ import annotations

import numpy as np

from ..ir.dtypes import dtype as to_dtype
from ..ir.kernel import Access, Arg, Const, Conv, Load, Var, op as mkop
from ..ir.ops.nn import window_out
from ..ir.ops.registry import norm_axis
from ..ir.types import TensorType
from .lower import (LOWERINGS, Tensor, _gemm_core, _reduce_kernel, _reshape, _rownorm, broadcast,
                    cstrides, numel, remap)

I64 = to_dtype("i64")
BOOL = to_dtype("bool")


def _i(v: int) -> Const:
    return Const(I64, int(v))


def _clamp(e, lo, hi):
    return mkop("min", I64, mkop("max", I64, e, _i(lo)), _i(hi))


def _indexed(L, t: Tensor, shape: tuple, idx_fn) -> Load:
    """A load of t at per-axis index expressions idx_fn(axis) (over the vars of `shape`), via indirect terms."""
    acc = L.access(t)
    ind = tuple((idx_fn(k), s) for k, s in enumerate(acc.strides) if s)
    return Load(t.dtype, Access(acc.buf, acc.offset, (0,) * len(shape)), ind)


def pad_tensor(L, t: Tensor, before, after, mode="constant", value=0.0) -> Tensor:
    shape = tuple(d + b + a for d, b, a in zip(t.shape, before, after))
    if not any(before) and not any(after):
        return t
    rank = len(shape)
    # crop negative pads first (a plain view), then pad the non-negative rest
    if min(before) < 0 or min(after) < 0:
        from .lower import _slice_tensor
        spec = {k: (max(0, -before[k]), 1) for k in range(rank)}
        cshape = tuple(d - max(0, -b) - max(0, -a) for d, b, a in zip(t.shape, before, after))
        t = _slice_tensor(t, spec, cshape)
        before = [max(0, b) for b in before]
        after = [max(0, a) for a in after]

    def idx(k):
        d, b = t.shape[k], before[k]
        i = mkop("sub", I64, Var(I64, k), _i(b)) if b else Var(I64, k)
        if mode == "reflect" and d > 1:
            a = mkop("abs", I64, i)
            return mkop("sub", I64, _i(d - 1), mkop("abs", I64, mkop("sub", I64, _i(d - 1), a)))
        return _clamp(i, 0, d - 1)
    ld = _indexed(L, t, shape, idx)
    if mode != "constant":
        return Tensor(shape, ld)
    cond = None
    for k in range(rank):
        if before[k] or after[k]:
            c = mkop("and", BOOL, mkop("ge", BOOL, Var(I64, k), _i(before[k])), mkop("lt", BOOL, Var(I64, k), _i(before[k] + t.shape[k])))
            cond = c if cond is None else mkop("and", BOOL, cond, c)
    return Tensor(shape, mkop("where", t.dtype, cond, ld, Const(t.dtype, value)))


def _pad(L, n, ins):
    t = ins[0]
    a = n.attrs
    rank = len(t.shape)
    axes = tuple(range(rank)) if a.get("axes") is None else tuple(norm_axis(x, rank, "pad") for x in a["axes"])
    pads = a["pads"]
    before, after = [0] * rank, [0] * rank
    for i, ax in enumerate(axes):
        before[ax], after[ax] = pads[i], pads[len(axes) + i]
    return [pad_tensor(L, t, before, after, a.get("mode", "constant"), a.get("value", 0.0))]


def _tile(L, n, ins):
    t = ins[0]
    shape = tuple(n.outputs[0].shape)
    return [Tensor(shape, _indexed(L, t, shape, lambda k: mkop("mod", I64, Var(I64, k), _i(t.shape[k]))))]


def _gather_elements(L, n, ins):
    x, idx = ins
    ax = norm_axis(n.attrs.get("axis", 0), len(x.shape), n.op)
    shape = tuple(n.outputs[0].shape)
    acc = L.access(x)
    ie = L.checked_index(idx.expr, idx.shape, int(x.shape[ax]), f"{n.op} axis {ax}")
    strides = tuple(0 if k == ax else s for k, s in enumerate(acc.strides))
    return [Tensor(shape, Load(x.dtype, Access(acc.buf, acc.offset, strides), ((ie, acc.strides[ax]),)))]


def _embedding(L, n, ins):
    from .lower import _gather

    class _N:  # the gather lowering with operands swapped
        attrs = {"axis": 0}
        outputs = n.outputs
        op = "gather"
    return _gather(L, _N, [ins[0], ins[1]])


def _cumsum(L, n, ins):
    t = ins[0]
    rank = len(t.shape)
    ax = norm_axis(n.attrs["axis"], rank, "cumsum")
    ex, rev = n.attrs.get("exclusive"), n.attrs.get("reverse")
    outer = list(range(rank))
    body = remap(t.expr, [(k if k != ax else rank, 1, 0) for k in range(rank)], rank + 1)
    j, i = Var(I64, rank), Var(I64, ax)
    cmp = ("gt" if ex else "ge") if rev else ("lt" if ex else "le")
    body = mkop("where", t.dtype, mkop(cmp, BOOL, j, i), body, Const(t.dtype, 0))
    return [_reduce_raw(L, n, t, body, tuple(t.shape), (t.shape[ax],), "sum")]


def _reduce_raw(L, n, t, body, odom, rdom, combine, post=None) -> Tensor:
    from ..ir.kernel import Reduce
    out = n.outputs[0].type
    b = L.temp(out.dtype, numel(out.shape))
    acc = Access(b, 0, cstrides(odom))
    L.emit(Reduce(domain=tuple(odom), rdomain=tuple(rdom), combine=combine, body=body, out=acc, post=post))
    return Tensor(tuple(out.shape), Load(out.dtype, Access(b, 0, cstrides(tuple(out.shape)))))


def _arange(L, n, ins):
    a = n.attrs
    out = n.outputs[0].type
    f64 = to_dtype("f64")
    e = mkop("add", f64, Const(f64, float(a["start"])), mkop("mul", f64, mkop("cast", f64, Var(I64, 0), to="f64"), Const(f64, float(a["step"]))))
    return [Tensor(tuple(out.shape), mkop("cast", out.dtype, e, to=out.dtype.name))]


def _constant_of_shape(L, n, ins):
    out = n.outputs[0].type
    return [Tensor(tuple(out.shape), Const(out.dtype, out.dtype.np.type(n.attrs.get("value", 0.0)).item()))]


def _shape(L, n, ins):
    from ..ir.graph import Value
    x = n.inputs[0]
    arr = np.array(x.shape[n.attrs.get("start", 0):n.attrs.get("end")], dtype=np.int64)
    v = Value(TensorType(arr.shape, "i64"), "shape", data=arr)
    return [L.const(v)]


def _reduce_special(L, n, ins):
    t = ins[0]
    rank = len(t.shape)
    axes = n.attrs.get("axes")
    axes = tuple(range(rank)) if not axes else tuple(sorted({norm_axis(a, rank, n.op) for a in axes}))
    outer = [k for k in range(rank) if k not in axes]
    dt = t.dtype
    if n.op == "reduce_l2":
        sq = Tensor(t.shape, mkop("mul", dt, t.expr, t.expr))
        return [_reduce_kernel(L, n, sq, outer, list(axes), "sum", mkop("sqrt", dt, Arg(dt, "red")))]
    # log-sum-exp, stable: m = max; log(sum(exp(x - m))) + m
    keep = tuple(1 if k in axes else d for k, d in enumerate(t.shape))
    mx = _reduce_kernel(L, _Out(n, TensorType(keep, dt)), t, outer, list(axes), "max", None)
    safe = Tensor(mx.shape, mkop("where", dt, mkop("eq", BOOL, mkop("abs", dt, mx.expr), Const(dt, float("inf"))), Const(dt, 0.0), mx.expr))
    sh = broadcast(safe, tuple(t.shape))
    ex = Tensor(t.shape, mkop("exp", dt, mkop("sub", dt, t.expr, sh.expr)))
    s = _reduce_kernel(L, _Out(n, TensorType(keep, dt)), ex, outer, list(axes), "sum", None)
    r = Tensor(keep, mkop("add", dt, mkop("log", dt, s.expr), safe.expr))
    return [_reshape(L, r, tuple(n.outputs[0].shape))]


class _Out:
    """A stand-in node with another result type (for intermediate kernels of a multi-kernel lowering)."""
    def __init__(self, n, t: TensorType):
        self.op, self.attrs, self.inputs = n.op, n.attrs, n.inputs
        from ..ir.graph import Value
        self.outputs = [Value(t)]


def _channel(p: Tensor, rank: int) -> Tensor:
    """A [C] parameter viewed as [1, C, 1, ...] (broadcast over axis 1)."""
    return Tensor((1, p.shape[0]) + (1,) * (rank - 2), remap(p.expr, [(1, 1, 0)], rank))


def _batch_norm(L, n, ins):
    x, scale, bias, mean, var = ins
    r, dt = len(x.shape), x.dtype
    shape = tuple(x.shape)
    # fold the per-channel constants at compile time when they are constants (the usual case), else compute lazily
    consts = [n.inputs[i] for i in range(1, 5)]
    if all(L.resolve(v).data is not None for v in consts):
        s, b, m, v = (np.asarray(L.resolve(c).data, np.float64) for c in consts)
        a = s / np.sqrt(v + n.attrs.get("eps", 1e-5))
        from ..ir.graph import Value
        av = L.const(Value(TensorType(a.shape, dt), "bn_scale", data=a.astype(dt.np)))
        bv = L.const(Value(TensorType(a.shape, dt), "bn_shift", data=(b - m * a).astype(dt.np)))
        y = mkop("add", dt, mkop("mul", dt, x.expr, broadcast(_channel(av, r), shape).expr), broadcast(_channel(bv, r), shape).expr)
        return [Tensor(shape, y)]
    c = lambda p: broadcast(_channel(p, r), shape).expr  # noqa: E731
    inv = mkop("rsqrt", dt, mkop("add", dt, c(var), Const(dt, float(n.attrs.get("eps", 1e-5)))))
    y = mkop("add", dt, mkop("mul", dt, mkop("mul", dt, mkop("sub", dt, x.expr, c(mean)), inv), c(scale)), c(bias))
    return [Tensor(shape, y)]


def _group_rows(L, n, x: Tensor, groups: int, eps: float, scale, bias) -> Tensor:
    shape = tuple(x.shape)
    N, C = shape[0], shape[1]
    rows = _reshape(L, x, (N, groups, numel(shape) // (N * groups)))
    r = _rownorm(L, _Out(n, TensorType(rows.shape, x.dtype)), rows, [0, 1], 2, "layer_norm", None, None, eps)
    y = _reshape(L, r, shape)
    e = y.expr
    if scale is not None:
        e = mkop("mul", x.dtype, e, broadcast(_channel(scale, len(shape)), shape).expr)
    if bias is not None:
        e = mkop("add", x.dtype, e, broadcast(_channel(bias, len(shape)), shape).expr)
    return Tensor(shape, e)


def _instance_norm(L, n, ins):
    x, s, b = ins
    return [_group_rows(L, n, x, x.shape[1], float(n.attrs.get("eps", 1e-5)), s, b)]


def _group_norm(L, n, ins):
    x, s, b = (list(ins) + [None, None])[:3]
    return [_group_rows(L, n, x, int(n.attrs["groups"]), float(n.attrs.get("eps", 1e-5)), s, b)]


def _lrn(L, n, ins):
    x = ins[0]
    a = n.attrs
    size = int(a["size"])
    dt, shape, rank = x.dtype, tuple(x.shape), len(x.shape)
    lo = (size - 1) // 2
    sq = pad_tensor(L, Tensor(shape, mkop("mul", dt, x.expr, x.expr)), [0, lo] + [0] * (rank - 2), [0, size - 1 - lo] + [0] * (rank - 2))
    sq = L.materialize(sq)
    acc = sq.expr.access
    body = Load(dt, Access(acc.buf, acc.offset, tuple(acc.strides) + (acc.strides[1],)))
    xs = L.materialize(x)
    post = mkop("div", dt, xs.expr, mkop("pow", dt, mkop("add", dt, Const(dt, float(a.get("bias", 1.0))),
                                                         mkop("mul", dt, Const(dt, float(a.get("alpha", 1e-4)) / size), Arg(dt, "red"))),
                                          Const(dt, float(a.get("beta", 0.75)))))
    return [_reduce_raw(L, n, x, body, shape, (size,), "sum", post)]


def _pool(L, n, ins):
    x = ins[0]
    a = n.attrs
    shape, rank, dt = tuple(x.shape), len(x.shape), x.dtype
    nd = rank - 2
    k = tuple(a["kernel"])
    s = tuple(a.get("strides") or (1,) * nd)
    p = tuple(a.get("pads") or (0,) * (2 * nd))
    d = tuple(a.get("dilations") or (1,) * nd)
    ceil = bool(a.get("ceil_mode"))
    out = tuple(window_out(n.op, shape[2 + i], k[i], s[i], d[i], p[i], p[nd + i], ceil) for i in range(nd))
    eff = [d[i] * (k[i] - 1) + 1 for i in range(nd)]
    over = [max(0, (out[i] - 1) * s[i] + eff[i] - (shape[2 + i] + p[i] + p[nd + i])) for i in range(nd)]
    is_max = n.op == "max_pool"
    fill = float("-inf") if dt.is_float else int(np.iinfo(dt.np).min)
    xp = pad_tensor(L, x, [0, 0] + list(p[:nd]), [0, 0] + [p[nd + i] + over[i] for i in range(nd)], "constant",
                    fill if is_max else 0.0)
    acc = L.access(xp)
    st = acc.strides
    # window view: vars (n, c, o_1..o_nd, k_1..k_nd)
    strides = (st[0], st[1]) + tuple(st[2 + i] * s[i] for i in range(nd)) + tuple(st[2 + i] * d[i] for i in range(nd))
    body = Load(dt, Access(acc.buf, acc.offset, strides))
    odom = shape[:2] + out
    if is_max:
        return [_reduce_raw(L, n, x, body, odom, k, "max")]
    ones = np.ones((1, 1) + shape[2:], dtype=np.float64)
    inc = bool(a.get("count_include_pad"))
    mask = np.pad(ones, [(0, 0), (0, 0)] + [(p[i], p[nd + i]) for i in range(nd)], constant_values=1 if inc else 0)
    mask = np.pad(mask, [(0, 0), (0, 0)] + [(0, over[i]) for i in range(nd)], constant_values=0)
    from numpy.lib.stride_tricks import sliding_window_view
    v = sliding_window_view(mask, tuple(eff), axis=tuple(range(2, 2 + nd)))
    idx = (slice(None), slice(None)) + tuple(slice(0, (o - 1) * ss + 1, ss) for o, ss in zip(out, s)) + tuple(slice(None, None, dd) for dd in d)
    count = v[idx].sum(axis=tuple(range(-nd, 0))).reshape(out)
    if np.all(count == count.flat[0]):
        post = mkop("div", dt, Arg(dt, "red"), Const(dt, float(count.flat[0])))
    else:
        from ..ir.graph import Value
        cv = L.const(Value(TensorType(out, dt), "pool_count", data=count.astype(dt.np)))
        post = mkop("div", dt, Arg(dt, "red"), remap(cv.expr, [(2 + i, 1, 0) for i in range(nd)], rank))
    return [_reduce_raw(L, n, x, body, odom, k, "sum", post)]


def _global_pool(L, n, ins):
    x = ins[0]
    rank = len(x.shape)
    from .lower import _reduce

    class _N:
        op = "reduce_mean" if n.op == "global_avg_pool" else "reduce_max"
        attrs = {"axes": tuple(range(2, rank)), "keepdims": True}
        outputs = n.outputs
    return _reduce(L, _N, ins)


def _conv(L, n, ins):
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    a = n.attrs
    out = n.outputs[0].type
    tr = n.op == "conv_transpose"
    nd = len(x.shape) - 2
    s = tuple(a.get("strides") or (1,) * nd)
    p = tuple(a.get("pads") or (0,) * (2 * nd))
    d = tuple(a.get("dilations") or (1,) * nd)
    oshape = tuple(out.shape)
    from .precision import widen_const
    wb = widen_const(L, w)   # a bf16 weight (precision="bf16") widened once at compile time, not per run
    w = wb or w
    xs, ws = L.contiguous(x), L.contiguous(w)
    N, C = xs.shape[:2]
    ks = tuple(ws.shape[2:])
    g = int(a.get("groups", 1))
    M = oshape[1]
    KK = numel(ks)
    plain = not tr and all(k == 1 for k in ks) and all(v == 1 for v in s) and not any(p)
    col = None
    if not plain:
        rows = (M // g) * KK if tr else (C // g) * KK
        cb = L.temp(x.dtype, rows * numel(x.shape[2:] if tr else oshape[2:]))
        col = Access(cb, 0, (1,))
    ob = L.temp(out.dtype, numel(oshape))
    oacc = Access(ob, 0, cstrides(oshape))
    epi = None
    if bias is not None:
        bt = broadcast(_channel(bias, len(oshape)), oshape)
        epi = mkop("add", out.dtype, Arg(out.dtype, "acc"), bt.expr)
    L.emit(Conv(x=xs.expr.access, w=ws.expr.access, out=oacc, in_shape=tuple(xs.shape), out_shape=oshape, kernel=ks,
                strides=s, pads=p, dilations=d, group=g, epilogue=epi, col=col, meta={"transpose": tr, "bf16_weight": wb is not None}))
    return [Tensor(oshape, Load(out.dtype, oacc))]


def _sdpa(L, n, ins):
    q, k, v = ins[:3]
    mask = ins[3] if len(ins) > 3 else None
    a = n.attrs
    dt = q.dtype
    out = n.outputs[0].type
    E = q.shape[-1]
    scale = a.get("scale")
    scale = 1.0 / float(np.sqrt(E)) if scale is None else float(scale)
    if len(q.shape) >= 3 and k.shape[-3] not in (q.shape[-3], 1):   # grouped-query: repeat kv heads
        rep = q.shape[-3] // k.shape[-3]

        def repeat(t):
            sh = tuple(t.shape)
            e5 = remap(t.expr, [(j if j < len(sh) - 2 else j + 1, 1, 0) for j in range(len(sh))], len(sh) + 1)
            big = sh[:-2] + (rep,) + sh[-2:]
            exp_ = Tensor(sh[:-3] + (sh[-3], rep) + sh[-2:], e5)
            del big
            m = L.materialize(exp_, force=True)
            return _reshape(L, m, sh[:-3] + (sh[-3] * rep,) + sh[-2:])
        k, v = repeat(k), repeat(v)
    kt_shape = tuple(k.shape[:-2]) + (k.shape[-1], k.shape[-2])
    r = len(k.shape)
    kt = Tensor(kt_shape, remap(k.expr, [(j, 1, 0) for j in range(r - 2)] + [(r - 1, 1, 0), (r - 2, 1, 0)], r))
    from ..ir.types import broadcast_shapes
    batch = tuple(broadcast_shapes(tuple(q.shape[:-2]), tuple(k.shape[:-2])))
    sshape = batch + (q.shape[-2], k.shape[-2])
    st = TensorType(sshape, dt)
    scores = _gemm_core(L, q, kt, st, alpha=scale)
    e = scores.expr
    rs = len(sshape)
    if a.get("causal"):
        e = mkop("where", dt, mkop("le", BOOL, Var(I64, rs - 1), Var(I64, rs - 2)), e, Const(dt, float("-inf")))
    if mask is not None:
        mb = broadcast(mask, sshape)
        if mask.dtype.name == "bool":
            e = mkop("where", dt, mb.expr, e, Const(dt, float("-inf")))
        else:
            e = mkop("add", dt, e, mb.expr)
    sm = _rownorm(L, _Out(n, st), Tensor(sshape, e), list(range(rs - 1)), rs - 1, "softmax", None, None, 0.0)
    return [_gemm_core(L, sm, v, out)]


def _dequantize(L, n, ins):
    """(q - zero) * scale * global_scale in f32; scales repeat `group` times along `axis` (an indirect index)."""
    q, s = ins[0], ins[1]
    z = ins[2] if len(ins) > 2 else None
    a = n.attrs
    shape, rank = tuple(q.shape), len(q.shape)
    f32 = to_dtype("f32")
    ax = norm_axis(a.get("axis", 0), rank, "dequantize") if rank else 0
    group = int(a.get("group", 0))

    def param(t: Tensor):
        if len(t.shape) == 0 or group <= 0 or t.shape[ax] == shape[ax]:
            e = broadcast(t, shape).expr
        else:
            acc = L.access(t)
            st = tuple(0 if (k == ax or t.shape[k] == 1) else s_ for k, s_ in enumerate(acc.strides))
            gi = mkop("div", I64, Var(I64, ax), _i(group))
            e = Load(t.dtype, Access(acc.buf, acc.offset, st), ((gi, acc.strides[ax]),))
        return e if e.dtype == f32 else mkop("cast", f32, e, to="f32")
    v = mkop("cast", f32, q.expr, to="f32")
    if z is not None:
        v = mkop("sub", f32, v, param(z))
    v = mkop("mul", f32, v, param(s))
    gs = float(a.get("global_scale", 1.0))
    if gs != 1.0:
        v = mkop("mul", f32, v, Const(f32, gs))
    return [Tensor(shape, v)]


LOWERINGS.update({
    "dequantize": _dequantize,
    "pad": _pad, "tile": _tile, "gather_elements": _gather_elements, "embedding": _embedding, "cumsum": _cumsum,
    "arange": _arange, "constant_of_shape": _constant_of_shape, "shape": _shape,
    "reduce_l2": _reduce_special, "reduce_log_sum_exp": _reduce_special,
    "batch_norm": _batch_norm, "instance_norm": _instance_norm, "group_norm": _group_norm, "lrn": _lrn,
    "max_pool": _pool, "avg_pool": _pool, "global_avg_pool": _global_pool, "global_max_pool": _global_pool,
    "conv": _conv, "conv_transpose": _conv, "scaled_dot_product_attention": _sdpa,
})
