"""Graph IR -> MLIR `tosa` dialect text, where every op of the (prepared) graph maps onto TOSA.

TOSA broadcasts only between operands of equal rank, so lower-rank operands are reshaped first;
integer math stays in the graph's types except gather indices, which TOSA takes as i32.
`export_tosa` raises ExportError naming the ops that have no TOSA form; callers that want
"TOSA if possible" catch it (see `tosa_or_none`).
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph, TensorType, Value
from ..ir.ops import norm_axis
from ..ir.ops.shape import slice_bounds
from .mlir_export import ExportError, dense_literal, elem, flit, ttype
from .mlir_prep import check_static, prepare

UNARY = {"exp": "exp", "log": "log", "tanh": "tanh", "sigmoid": "sigmoid", "erf": "erf", "rsqrt": "rsqrt",
         "reciprocal": "reciprocal", "abs": "abs", "sin": "sin", "cos": "cos", "floor": "floor", "ceil": "ceil",
         "not": "logical_not", "identity": "identity"}
BINARY = {"add": "add", "sub": "sub", "max": "maximum", "min": "minimum", "pow": "pow", "and": "logical_and",
          "or": "logical_or", "xor": "logical_xor", "eq": "equal", "gt": "greater", "ge": "greater_equal"}
REDUCE = {"reduce_sum": "reduce_sum", "reduce_max": "reduce_max", "reduce_min": "reduce_min", "reduce_prod": "reduce_product"}
SUPPORTED = set(UNARY) | set(BINARY) | set(REDUCE) | {"mul", "div", "neg", "relu", "clip", "gelu", "silu", "cast", "where",
                                                      "lt", "le", "ne", "reduce_mean", "matmul", "reshape", "transpose",
                                                      "expand", "slice", "concat", "gather", "tile"}


class _T:
    def __init__(self):
        self.lines: list[str] = []
        self.k = 0

    def fresh(self) -> str:
        self.k += 1
        return f"%t{self.k}"

    def op(self, text: str, ins: list[tuple[str, TensorType]], out: TensorType, attrs: str = "") -> str:
        r = self.fresh()
        args = ", ".join(n for n, _ in ins)
        self.lines.append(f"    {r} = tosa.{text} {args}{' ' + attrs if attrs else ''} : "
                          f"({', '.join(ttype(t) for _, t in ins)}) -> {ttype(out)}")
        return r

    def const(self, a: np.ndarray, t: TensorType) -> str:
        r = self.fresh()
        self.lines.append(f'    {r} = "tosa.const"() <{{values = {dense_literal(np.asarray(a, t.dtype.np), t)}}}> : () -> {ttype(t)}')
        return r

    def shape(self, dims) -> str:
        r = self.fresh()
        self.lines.append(f"    {r} = tosa.const_shape {{values = dense<[{', '.join(map(str, dims))}]> : tensor<{len(dims)}xindex>}} "
                          f": () -> !tosa.shape<{len(dims)}>")
        return r

    def reshape(self, x: str, t: TensorType, shape) -> tuple[str, TensorType]:
        if tuple(t.shape) == tuple(shape):
            return x, t
        nt = t.with_shape(shape)
        s = self.shape(shape)
        r = self.fresh()
        self.lines.append(f"    {r} = tosa.reshape {x}, {s} : ({ttype(t)}, !tosa.shape<{len(shape)}>) -> {ttype(nt)}")
        return r, nt

    def rank_up(self, x: str, t: TensorType, rank: int) -> tuple[str, TensorType]:
        return self.reshape(x, t, [1] * (rank - t.rank) + list(t.shape))

    def scalar(self, v: float, like: TensorType, rank: int) -> tuple[str, TensorType]:
        t = TensorType([1] * rank, like.dtype)
        return self.const(np.full([1] * rank, v), t), t


def _attr_axis(a: int) -> str:
    return f"{{axis = {a} : i32}}"


def export_tosa(graph: Graph) -> str:
    g = prepare(graph)
    check_static(g)
    missing = sorted({n.op for n in g.nodes if n.op not in SUPPORTED})
    if missing:
        raise ExportError(f"no TOSA form for op(s): {', '.join(missing)}")
    em, names = _T(), {}
    for i, v in enumerate(g.inputs):
        names[v.id] = f"%arg{i}"
    for c in g.constants.values():
        names[c.id] = em.const(np.asarray(c.data), c.type)
    for n in g.nodes:
        ins = [(names[v.id], v.type) for v in n.inputs]
        res = _emit(em, n, ins, n.attrs)
        for o, r in zip(n.outputs, res if isinstance(res, list) else [res]):
            names[o.id] = r
    outs = [names[v.id] for v in g.outputs]
    head = (f"  func.func @main({', '.join(f'%arg{i}: {ttype(v.type)}' for i, v in enumerate(g.inputs))}) -> "
            f"({', '.join(ttype(v.type) for v in g.outputs)}) {{")
    tail = f"    return {', '.join(outs)} : {', '.join(ttype(v.type) for v in g.outputs)}"
    return "\n".join(["module {", head] + em.lines + [tail, "  }", "}"]) + "\n"


def tosa_or_none(graph: Graph):
    try:
        return export_tosa(graph)
    except ExportError:
        return None


def _emit(em: _T, n, ins, attrs):
    out = n.outputs[0].type
    op = n.op
    if op in UNARY:
        return em.op(UNARY[op], ins, out)
    if op in BINARY or op in ("mul", "div", "lt", "le", "ne"):
        (a, ta), (b, tb) = [em.rank_up(x, t, out.rank) for x, t in ins]
        if op == "mul":
            shift = em.const(np.zeros(1, np.int8), TensorType([1], "i8"))
            r = em.fresh()
            em.lines.append(f"    {r} = tosa.mul {a}, {b}, {shift} : ({ttype(ta)}, {ttype(tb)}, tensor<1xi8>) -> {ttype(out)}")
            return r
        if op == "div":
            if not ta.dtype.is_float:
                return em.op("intdiv", [(a, ta), (b, tb)], out)
            rb = em.op("reciprocal", [(b, tb)], tb)
            return _emit(em, _fake("mul", out), [(a, ta), (rb, tb)], {})
        if op in ("lt", "le"):  # a < b  ==  b > a
            return em.op("greater" if op == "lt" else "greater_equal", [(b, tb), (a, ta)], out)
        if op == "ne":
            return em.op("logical_not", [(em.op("equal", [(a, ta), (b, tb)], out), out)], out)
        return em.op(BINARY[op], [(a, ta), (b, tb)], out)
    x, t = ins[0] if ins else (None, None)
    if op == "neg":
        zp = em.const(np.zeros(1), TensorType([1], t.dtype))
        r = em.fresh()
        em.lines.append(f"    {r} = tosa.negate {x}, {zp}, {zp} : ({ttype(t)}, {ttype(TensorType([1], t.dtype))}, "
                        f"{ttype(TensorType([1], t.dtype))}) -> {ttype(out)}")
        return r
    if op in ("relu", "clip"):
        lo = 0.0 if op == "relu" else attrs.get("min")
        hi = attrs.get("max") if op == "clip" else None
        et = elem(t)
        if not t.dtype.is_float:
            info = np.iinfo(t.dtype.np)
            lo_s, hi_s = str(int(info.min if lo is None else lo)), str(int(info.max if hi is None else hi))
            return em.op("clamp", ins, out, f"{{max_val = {hi_s} : {et}, min_val = {lo_s} : {et}}}")
        lo_s = flit(-3.4028234663852886e38 if lo is None else lo, et)
        hi_s = flit(3.4028234663852886e38 if hi is None else hi, et)
        return em.op("clamp", ins, out, f"{{max_val = {hi_s} : {et}, min_val = {lo_s} : {et}}}")
    if op == "silu":
        return _emit(em, _fake("mul", out), [(x, t), (em.op("sigmoid", ins, t), t)], {})
    if op == "gelu":
        if attrs.get("approximate") == "tanh":
            raise ExportError("gelu(tanh) has no TOSA form here")
        c, ct = em.scalar(1 / np.sqrt(2), t, t.rank)
        e = em.op("erf", [(_emit(em, _fake("mul", t), [(x, t), (c, ct)], {}), t)], t)
        one, ot = em.scalar(1.0, t, t.rank)
        half, ht = em.scalar(0.5, t, t.rank)
        s = em.op("add", [(e, t), (one, ot)], t)
        return _emit(em, _fake("mul", t), [(_emit(em, _fake("mul", t), [(x, t), (half, ht)], {}), t), (s, t)], {})
    if op == "cast":
        return em.op("cast", ins, out)
    if op == "where":
        rs = [em.rank_up(x_, t_, out.rank) for x_, t_ in ins]
        return em.op("select", rs, out)
    if op in REDUCE or op == "reduce_mean":
        axes = sorted({norm_axis(a, t.rank) for a in attrs["axes"]}) if attrs["axes"] else list(range(t.rank))
        cur, ct = x, t
        for a in axes:
            nt = ct.with_shape([1 if i == a else d for i, d in enumerate(ct.shape)])
            cur, ct = em.op(REDUCE.get(op, "reduce_sum"), [(cur, ct)], nt, _attr_axis(a)), nt
        if op == "reduce_mean":
            k, kt = em.scalar(1.0 / int(np.prod([t.shape[a] for a in axes])), ct, ct.rank)
            cur = _emit(em, _fake("mul", ct), [(cur, ct), (k, kt)], {})
        return em.reshape(cur, ct, out.shape)[0]
    if op == "matmul":
        (a, ta), (b, tb) = ins
        if ta.rank < 2 or tb.rank < 2 or tuple(ta.shape[:-2]) != tuple(tb.shape[:-2]) and tb.rank != 2:
            raise ExportError(f"matmul {ta} @ {tb} has no TOSA form here")
        batch = int(np.prod(ta.shape[:-2]))
        m, k = ta.shape[-2:]
        nn = tb.shape[-1]
        if tb.rank == 2 and ta.rank > 2:  # fold the batch into rows: [B*M, K] @ [K, N]
            a3, at = em.reshape(a, ta, [1, batch * m, k])
            b3, bt = em.reshape(b, tb, [1, k, nn])
            o3 = TensorType([1, batch * m, nn], out.dtype)
        else:
            a3, at = em.reshape(a, ta, [batch, m, k])
            b3, bt = em.reshape(b, tb, [batch, k, nn])
            o3 = TensorType([batch, m, nn], out.dtype)
        zp = em.const(np.zeros(1), TensorType([1], ta.dtype))
        r = em.fresh()
        zt = ttype(TensorType([1], ta.dtype))
        em.lines.append(f"    {r} = tosa.matmul {a3}, {b3}, {zp}, {zp} : ({ttype(at)}, {ttype(bt)}, {zt}, {zt}) -> {ttype(o3)}")
        return em.reshape(r, o3, out.shape)[0]
    if op == "reshape":
        return em.reshape(x, t, out.shape)[0]
    if op == "transpose":
        perm = attrs["perm"] if attrs["perm"] is not None else list(range(t.rank))[::-1]
        return em.op("transpose", ins, out, f"{{perms = array<i32: {', '.join(str(p % t.rank) for p in perm)}>}}")
    if op in ("expand", "tile"):
        x1, t1 = em.rank_up(x, t, out.rank)
        mult = [o // d for o, d in zip(out.shape, t1.shape)] if op == "expand" else list(attrs["repeats"])
        s = em.shape(mult)
        r = em.fresh()
        em.lines.append(f"    {r} = tosa.tile {x1}, {s} : ({ttype(t1)}, !tosa.shape<{len(mult)}>) -> {ttype(out)}")
        return r
    if op == "slice":
        steps = attrs["steps"] or [1] * len(attrs["starts"])
        if any(s != 1 for s in steps):
            raise ExportError("strided slice has no TOSA form")
        start = [0] * t.rank
        for ax, s, e in zip(attrs["axes"] or range(len(attrs["starts"])), attrs["starts"], attrs["ends"]):
            start[norm_axis(ax, t.rank)] = slice_bounds(t.shape[norm_axis(ax, t.rank)], s, e, 1)[0]
        s1, s2 = em.shape(start), em.shape(list(out.shape))
        r = em.fresh()
        em.lines.append(f"    {r} = tosa.slice {x}, {s1}, {s2} : ({ttype(t)}, !tosa.shape<{t.rank}>, !tosa.shape<{t.rank}>) -> {ttype(out)}")
        return r
    if op == "concat":
        return em.op("concat", ins, out, _attr_axis(norm_axis(attrs["axis"], out.rank)))
    if op == "gather":  # TOSA gather: values [N,K,C], indices [N,W] (i32) -> [N,W,C]
        (v, tv), (i, ti) = ins
        ax = norm_axis(attrs["axis"], tv.rank)
        if ax != 0:
            raise ExportError("gather on an axis other than 0 has no TOSA form here")
        kdim, c = tv.shape[0], int(np.prod(tv.shape[1:]))
        w = int(np.prod(ti.shape))
        v3, vt = em.reshape(v, tv, [1, kdim, c])
        i32 = TensorType(ti.shape, "i32")
        ic = em.op("cast", [(i, ti)], i32) if ti.dtype.name != "i32" else i
        i2, it = em.reshape(ic, i32, [1, w])
        o3 = TensorType([1, w, c], tv.dtype)
        r = em.op("gather", [(v3, vt), (i2, it)], o3)
        return em.reshape(r, o3, out.shape)[0]
    raise ExportError(f"no TOSA form for op '{op}'")


def _fake(op: str, out: TensorType):
    """A stand-in node for recursive emission of a helper op."""
    class N:
        pass
    n = N()
    n.op, n.outputs = op, [Value(out)]
    return n
