"""Lowering: graph IR (level 1) -> kernel IR Program (level 2).

How it works:
- Fused regions are inlined (their kind is kept in each kernel's meta); every op then lowers one at a time.
- Every tensor is a `Tensor(shape, expr)`: a scalar expression over its own index variables. Elementwise ops
  build bigger expressions lazily; views (transpose, slice, expand, squeeze, split, most reshapes, gather)
  only remap index variables or strides. A tensor is materialized into a buffer (a Pointwise kernel) only
  when a structured kernel needs memory, when it is read more than once, or when it is a graph output.
- Structured ops become Gemm / Reduce / RowNorm kernels whose prologue is the lazy input expression.
- After lowering: pointwise consumers fold into the gemm before them as an epilogue, pointwise domains
  coalesce, and temps are placed in one arena by liveness (greedy best-fit, 64-byte aligned).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..ir import Graph, NnfuseError, Value
from ..ir.dtypes import DType, dtype as to_dtype
from ..ir.kernel import (Access, Arg, Buffer, Const, Conv, Expr, Gemm, Kernel, Load, Op, Pointwise, Program, Reduce,
                         RowNorm, Schedule, Var, loads, op as mkop, verify_program)
from ..ir.ops import OPS
from ..ir.ops.registry import norm_axis
from ..ir.ops.shape import _perm, slice_bounds

PARALLEL_MIN = 16384   # elements below which a loop runs on one thread
ALIGN = 64


class LowerError(NnfuseError):
    pass


@dataclass
class Tensor:
    shape: tuple
    expr: Expr

    @property
    def dtype(self) -> DType:
        return self.expr.dtype


def cstrides(shape) -> tuple:
    out, s = [], 1
    for d in reversed(shape):
        out.append(s)
        s *= d
    return tuple(reversed(out))


def numel(shape) -> int:
    return int(math.prod(shape))


# ---------------------------------------------------------------- index remapping
def remap(e: Expr, amap: list, rank: int) -> Expr:
    """Rewrite `e` (over old vars) into new vars: old axis k -> new axis amap[k][0] (None: index 0),
    scaled by amap[k][1] and shifted by amap[k][2]."""
    if isinstance(e, Load):
        strides = [0] * rank
        off = e.access.offset
        for k, s in enumerate(e.access.strides):
            nax, coef, shift = amap[k]
            off += s * shift
            if nax is not None:
                strides[nax] += s * coef
        ind = tuple((remap(ie, amap, rank), st) for ie, st in e.indirect)
        return Load(e.dtype, Access(e.access.buf, off, tuple(strides)), ind)
    if isinstance(e, Var):
        nax, coef, shift = amap[e.axis]
        v: Expr = Const(e.dtype, shift)
        if nax is not None:
            v = mkop("add", e.dtype, mkop("mul", e.dtype, Var(e.dtype, nax), Const(e.dtype, coef)), v)
        return v
    if isinstance(e, Op):
        return Op(e.dtype, e.op, tuple(remap(a, amap, rank) for a in e.args), e.attrs)
    return e


def substitute(e: Expr, fn) -> Expr:
    """Bottom-up rewrite: fn(expr) returns a replacement or None."""
    r = fn(e)
    if r is not None:
        return r
    if isinstance(e, Op):
        return Op(e.dtype, e.op, tuple(substitute(a, fn) for a in e.args), e.attrs)
    if isinstance(e, Load) and e.indirect:
        return Load(e.dtype, e.access, tuple((substitute(ie, fn), st) for ie, st in e.indirect))
    return e


def broadcast(t: Tensor, shape: tuple) -> Tensor:
    if tuple(t.shape) == tuple(shape):
        return t
    r, n = len(t.shape), len(shape)
    amap = []
    for k, d in enumerate(t.shape):
        j = k + n - r
        amap.append((j, 1, 0) if d == shape[j] else (None, 0, 0))
    return Tensor(tuple(shape), remap(t.expr, amap, n))


def nocopy_reshape(shape, strides, new_shape) -> Optional[tuple]:
    """Strides that view (shape, strides) as new_shape without a copy, or None (numpy's algorithm)."""
    old = [(d, s) for d, s in zip(shape, strides) if d != 1]
    new = list(new_shape)
    if numel(shape) == 0:
        return cstrides(new_shape)
    out = [0] * len(new)
    oi = ni = 0
    nold = len(old)
    while ni < len(new) and oi < nold:
        if new[ni] == 1:
            out[ni] = 0
            ni += 1
            continue
        np_, op_ = new[ni], old[oi][0]
        nj, oj = ni + 1, oi + 1
        while np_ != op_:
            if np_ < op_:
                np_ *= new[nj]
                nj += 1
            else:
                op_ *= old[oj][0]
                oj += 1
        for k in range(oi, oj - 1):
            if old[k][1] != old[k + 1][0] * old[k + 1][1]:
                return None
        out[nj - 1] = old[oj - 1][1]
        for k in range(nj - 1, ni, -1):
            out[k - 1] = out[k] * new[k]
        ni, oi = nj, oj
    for k in range(ni, len(new)):
        out[k] = 0
    return tuple(out)


# ---------------------------------------------------------------- the lowering
class Lowering:
    def __init__(self, graph: Graph):
        self.g = graph
        self.kernels: list[Kernel] = []
        self.consts: list[Buffer] = []
        self.const_data: list[np.ndarray] = []
        self.temps: list[Buffer] = []
        self.env: dict[int, Tensor] = {}
        self.alias: dict[int, Value] = {}
        self.region = ""
        self.cur_op = ""
        self.uses: dict[int, int] = {}
        self._const_buf: dict[int, Tensor] = {}
        self.checks: list[tuple[Buffer, str]] = []
        self.node = None

    # ---- buffers
    def temp(self, dt: DType, n: int) -> Buffer:
        b = Buffer(f"t{len(self.temps)}", dt, max(n, 1), "temp", len(self.temps))
        self.temps.append(b)
        return b

    def emit(self, k: Kernel) -> Kernel:
        k.name = f"k{len(self.kernels)}"
        k.meta.setdefault("ops", [self.cur_op])
        if self.region:
            k.meta["region"] = self.region
        self.kernels.append(k)
        return k

    def resolve(self, v: Value) -> Value:
        while v.id in self.alias:
            v = self.alias[v.id]
        return v

    def tensor(self, v: Value) -> Tensor:
        v = self.resolve(v)
        if v.id in self.env:
            return self.env[v.id]
        if v.producer is None and v.data is not None:
            return self.const(v)
        raise LowerError(f"value {v!r} is used before it is defined")

    def const(self, v: Value) -> Tensor:
        if v.id in self._const_buf:
            return self._const_buf[v.id]
        arr = v.data
        shape = tuple(int(d) for d in arr.shape)
        dt = to_dtype(arr.dtype)
        if arr.size == 1 and dt.kind in ("float", "int", "uint", "bool") and dt.bits >= 8 and dt.name not in ("bf16", "f16"):
            val = arr.reshape(-1)[0].item()
            t = Tensor(shape, Const(dt, val))
        else:
            if not arr.flags.c_contiguous:
                arr = np.ascontiguousarray(arr)
            b = Buffer(f"w{len(self.consts)}", dt, int(arr.size), "const", len(self.consts), label=v.name)
            self.consts.append(b)
            self.const_data.append(arr)
            t = Tensor(shape, Load(dt, Access(b, 0, cstrides(shape))))
        self._const_buf[v.id] = t
        return t

    def materialize(self, t: Tensor, force: bool = False) -> Tensor:
        """A tensor backed by a contiguous buffer (or an existing strided Load when that suffices)."""
        e = t.expr
        if isinstance(e, Load) and not e.indirect and not force:
            return t
        b = self.temp(t.dtype, numel(t.shape))
        out = Access(b, 0, cstrides(t.shape))
        self.emit(Pointwise(domain=tuple(t.shape), stores=[(out, e)]))
        return Tensor(t.shape, Load(t.dtype, out))

    def contiguous(self, t: Tensor) -> Tensor:
        e = t.expr
        if isinstance(e, Load) and not e.indirect and all(s == c for s, c, d in zip(e.access.strides, cstrides(t.shape), t.shape) if d != 1):
            return t
        return self.materialize(t, force=True)

    def access(self, t: Tensor) -> Access:
        return self.materialize(t).expr.access

    # ---- driver
    def run(self) -> Program:
        g = self.g
        for v in g.inputs:
            if not all(isinstance(d, int) for d in v.shape):
                raise LowerError(f"input '{v.name}' has symbolic shape {v.type}: the cpu backend needs static shapes "
                                 "(compile with example inputs or --input-shape)")
        self.inputs = [Buffer(f"in{i}", v.dtype, numel(v.shape), "input", i, label=v.name) for i, v in enumerate(g.inputs)]
        for v, b in zip(g.inputs, self.inputs):
            self.env[v.id] = Tensor(tuple(v.shape), Load(v.dtype, Access(b, 0, cstrides(v.shape))))
        flat = list(self.flatten(g, ""))
        for n, _ in flat:
            for v in n.inputs:
                rv = self.resolve(v)
                self.uses[rv.id] = self.uses.get(rv.id, 0) + 1
        outs = [self.resolve(v) for v in g.outputs]
        for v in outs:
            self.uses[v.id] = self.uses.get(v.id, 0) + 2
        unsupported = sorted({n.op for n, _ in flat if not self.supported(n)})
        if unsupported:
            raise LowerError(f"not supported on cpu backend: ops {', '.join(unsupported)} "
                             "(use backend='reference' for these models)")
        for n, region in flat:
            self.region, self.cur_op, self.node = region, n.op, n
            ts = self.lower_node(n)
            for v, t in zip(n.outputs, ts):
                if self.uses.get(v.id, 0) > 1 and not isinstance(t.expr, (Load, Const)):
                    from .precision import materialize_rounded
                    t = materialize_rounded(self, t) or self.materialize(t)
                self.env[v.id] = t
        self.region, self.cur_op = "", "output"
        outputs = self.lower_outputs(outs)
        for b, _ in self.checks:
            b.name, b.index = f"out{len(outputs)}", len(outputs)
            outputs.append(b)
        fuse_epilogues(self.kernels)
        for k in self.kernels:
            if isinstance(k, Gemm):
                fold_batch(k)
        for i, k in enumerate(self.kernels):
            k.name = f"k{i}"
        for k in self.kernels:
            if isinstance(k, Pointwise):
                coalesce(k)
            choose_schedule(k)
        inplace(self.kernels)
        temps = [b for b in self.temps if b.kind == "temp" and any(b is a.buf for k in self.kernels for a in k.writes())]
        for i, b in enumerate(temps):
            b.name, b.index = f"t{i}", i
        arena, naive = plan_memory(self.kernels, temps)
        p = Program(g.name, self.kernels, self.inputs, outputs, self.consts, temps, self.const_data, arena, naive,
                    [tuple(v.shape) for v in outs] + [(1,)] * len(self.checks),
                    checks=[(b.index, msg) for b, msg in self.checks])
        verify_program(p)
        return p

    def flatten(self, g: Graph, region: str):
        for n in g.nodes:
            if n.body is not None:
                for bi, v in zip(n.body.inputs, n.inputs):
                    self.alias[bi.id] = self.resolve(v)
                yield from self.flatten(n.body, n.attrs.get("kind", "generic"))
                for no, bo in zip(n.outputs, n.body.outputs):
                    self.alias[no.id] = self.resolve(bo)
            else:
                yield n, region

    def supported(self, n) -> bool:
        return n.op in LOWERINGS or (n.op in OPS and OPS[n.op].kind in ("unary", "binary"))

    def checked_index(self, idx: Expr, shape: tuple, size: int, what: str) -> Expr:
        """`idx` (over `shape`) as an in-range index into an axis of `size`: negatives wrap, and a runtime check reports
        any index outside [-size, size) as an error (the index is clamped, so no kernel reads out of bounds)."""
        i64, b1 = to_dtype("i64"), to_dtype("bool")
        if idx.dtype != i64:
            idx = mkop("cast", i64, idx, to="i64")
        bad = mkop("or", b1, mkop("lt", b1, idx, Const(i64, -size)), mkop("ge", b1, idx, Const(i64, size)))
        flag = Buffer("check", to_dtype("i32"), 1, "output", -1)
        self.emit(Reduce(domain=(), rdomain=tuple(shape) or (1,), combine="max", body=mkop("cast", to_dtype("i32"), bad, to="i32"),
                         out=Access(flag, 0, ())))
        n = self.node
        where = f"node '{n.meta.get('loc') or n.outputs[0].name}' ({n.op})" if n is not None else f"op {self.cur_op}"
        self.checks.append((flag, f"{where}: {what} index out of range [-{size}, {size})"))
        wrapped = mkop("where", i64, mkop("lt", b1, idx, Const(i64, 0)), mkop("add", i64, idx, Const(i64, size)), idx)
        return mkop("clip", i64, wrapped, min=0, max=size - 1)

    def lower_outputs(self, outs: list[Value]) -> list[Buffer]:
        bufs, claimed = [], set()
        for i, v in enumerate(outs):
            t = self.tensor(v)
            shape = tuple(v.shape)
            e = t.expr
            if (isinstance(e, Load) and not e.indirect and e.access.buf.kind == "temp" and id(e.access.buf) not in claimed
                    and e.access.offset == 0 and e.access.buf.numel == max(numel(shape), 1)
                    and all(s == c for s, c, d in zip(e.access.strides, cstrides(shape), shape) if d != 1)):
                b = e.access.buf
                claimed.add(id(b))
                b.kind, b.name, b.index, b.label = "output", f"out{i}", i, v.name
                bufs.append(b)
                continue
            b = Buffer(f"out{i}", t.dtype, max(numel(shape), 1), "output", i, label=v.name)
            self.emit(Pointwise(domain=shape, stores=[(Access(b, 0, cstrides(shape)), e)]))
            bufs.append(b)
        return bufs

    def lower_node(self, n) -> list[Tensor]:
        fn = LOWERINGS.get(n.op)
        ins = [self.tensor(v) for v in n.inputs]
        if fn is None:
            return [elementwise(n, ins)]
        return fn(self, n, ins)


# ---------------------------------------------------------------- op lowerings
def elementwise(n, ins: list[Tensor]) -> Tensor:
    out = n.outputs[0].type
    shape = tuple(out.shape)
    args = [broadcast(t, shape).expr for t in ins]
    attrs = {k: v for k, v in n.attrs.items() if v is not None}
    return Tensor(shape, mkop(n.op, out.dtype, *args, **attrs))


def _identity(L, n, ins):
    return [ins[0]]


def _reshape(L: Lowering, t: Tensor, shape: tuple) -> Tensor:
    shape = tuple(int(d) for d in shape)
    if tuple(t.shape) == shape:
        return t
    big_old = [k for k, d in enumerate(t.shape) if d != 1]
    big_new = [k for k, d in enumerate(shape) if d != 1]
    if [t.shape[k] for k in big_old] == [shape[k] for k in big_new]:   # only 1-dims come or go: a var remap
        amap = [(None, 0, 0)] * len(t.shape)
        for o, nw in zip(big_old, big_new):
            amap[o] = (nw, 1, 0)
        return Tensor(shape, remap(t.expr, amap, len(shape)))
    if isinstance(t.expr, Const):
        return Tensor(shape, t.expr)
    e = t.expr
    if isinstance(e, Load) and not e.indirect:
        st = nocopy_reshape(t.shape, e.access.strides, shape)
        if st is not None:
            return Tensor(shape, Load(e.dtype, Access(e.access.buf, e.access.offset, st)))
    c = L.contiguous(t).expr
    return Tensor(shape, Load(c.dtype, Access(c.access.buf, c.access.offset, cstrides(shape))))


def _reshape_op(L, n, ins):
    return [_reshape(L, ins[0], n.outputs[0].shape)]


def _transpose(L, n, ins):
    t = ins[0]
    perm = _perm(n.attrs.get("perm"), len(t.shape))
    amap = [None] * len(perm)
    for j, p in enumerate(perm):
        amap[p] = (j, 1, 0)
    return [Tensor(tuple(n.outputs[0].shape), remap(t.expr, amap, len(perm)))]


def _slice_tensor(t: Tensor, axes_spec: dict, out_shape) -> Tensor:
    """axes_spec: axis -> (start, step)."""
    amap = [(k, *(lambda s: (s[1], s[0]))(axes_spec[k])) if k in axes_spec else (k, 1, 0) for k in range(len(t.shape))]
    return Tensor(tuple(out_shape), remap(t.expr, amap, len(t.shape)))


def _slice(L, n, ins):
    t = ins[0]
    a = n.attrs
    steps = a.get("steps") or (1,) * len(a["starts"])
    axes = a.get("axes") or tuple(range(len(a["starts"])))
    spec = {}
    for ax, s, e, st in zip(axes, a["starts"], a["ends"], steps):
        ax = norm_axis(ax, len(t.shape), "slice")
        start, _, cnt = slice_bounds(t.shape[ax], s, e, st)
        spec[ax] = (start, st)
    return [_slice_tensor(t, spec, n.outputs[0].shape)]


def _split(L, n, ins):
    t = ins[0]
    ax = norm_axis(n.attrs["axis"], len(t.shape), "split")
    outs, pos = [], 0
    for v, size in zip(n.outputs, n.attrs["sizes"]):
        outs.append(_slice_tensor(t, {ax: (pos, 1)}, v.shape))
        pos += size
    return outs


def _expand(L, n, ins):
    return [broadcast(ins[0], tuple(n.outputs[0].shape))]


def _unsqueeze_like(L, n, ins):
    """squeeze / unsqueeze / flatten / reshape all go through the reshape view logic."""
    return [_reshape(L, ins[0], n.outputs[0].shape)]


def _concat(L, n, ins):
    out = n.outputs[0].type
    shape = tuple(out.shape)
    ax = norm_axis(n.attrs["axis"], len(shape), "concat")
    b = L.temp(out.dtype, numel(shape))
    st = cstrides(shape)
    pos = 0
    for t in ins:
        if t.shape[ax]:
            acc = Access(b, pos * st[ax], st)
            L.emit(Pointwise(domain=tuple(t.shape), stores=[(acc, t.expr)]))
        pos += t.shape[ax]
    return [Tensor(shape, Load(out.dtype, Access(b, 0, st)))]


def _gather(L, n, ins):
    x, idx = ins
    ax = norm_axis(n.attrs.get("axis", 0), len(x.shape), "gather")
    shape = tuple(n.outputs[0].shape)
    r = len(shape)
    xa = L.access(x)
    ir = len(idx.shape)
    strides = list(xa.strides[:ax]) + [0] * ir + list(xa.strides[ax + 1:])
    ie = remap(L.checked_index(idx.expr, idx.shape, int(x.shape[ax]), f"{n.op} axis {ax}"),
               [(ax + j, 1, 0) for j in range(ir)], r)
    return [Tensor(shape, Load(x.dtype, Access(xa.buf, xa.offset, tuple(strides)), ((ie, xa.strides[ax]),)))]


def _reduce(L, n, ins):
    t = ins[0]
    rank = len(t.shape)
    axes = n.attrs.get("axes")
    axes = tuple(range(rank)) if not axes else tuple(sorted({norm_axis(a, rank, n.op) for a in axes}))
    outer = [k for k in range(rank) if k not in axes]
    combine = n.op.replace("reduce_", "")
    post = None
    if combine == "mean":
        combine = "sum"
        cnt = numel([t.shape[k] for k in axes])
        post = mkop("div", t.dtype, Arg(t.dtype, "red"), Const(t.dtype, cnt if not t.dtype.is_float else float(cnt)))
    return [_reduce_kernel(L, n, t, outer, list(axes), combine, post)]


def _reduce_kernel(L, n, t, outer, raxes, combine, post, select_last=False):
    pos = {k: j for j, k in enumerate(outer + raxes)}
    body = remap(t.expr, [(pos[k], 1, 0) for k in range(len(t.shape))], len(pos))
    out = n.outputs[0].type
    b = L.temp(out.dtype, numel(out.shape))
    odom = tuple(t.shape[k] for k in outer)
    acc = Access(b, 0, cstrides(odom))
    L.emit(Reduce(domain=odom, rdomain=tuple(t.shape[k] for k in raxes), combine=combine, body=body, out=acc,
                  post=post, select_last=select_last))
    shape = tuple(out.shape)
    return Tensor(shape, Load(out.dtype, Access(b, 0, cstrides(shape))))


def _argreduce(L, n, ins):
    t = ins[0]
    ax = norm_axis(n.attrs.get("axis", 0), len(t.shape), n.op)
    outer = [k for k in range(len(t.shape)) if k != ax]
    return [_reduce_kernel(L, n, t, outer, [ax], n.op, None, bool(n.attrs.get("select_last_index")))]


def _softmax(L, n, ins):
    t = ins[0]
    rank = len(t.shape)
    ax = norm_axis(n.attrs.get("axis", -1), rank, n.op)
    outer = [k for k in range(rank) if k != ax]
    return [_rownorm(L, n, t, outer, ax, n.op, None, None, 0.0)]


def _rownorm(L, n, t: Tensor, outer, ax, norm, w, b, eps) -> Tensor:
    pos = {k: j for j, k in enumerate(outer + [ax])}
    rank = len(t.shape)
    x = remap(t.expr, [(pos[k], 1, 0) for k in range(rank)], rank)
    out = n.outputs[0].type
    buf = L.temp(out.dtype, numel(out.shape))
    st = cstrides(t.shape)
    acc = Access(buf, 0, tuple(st[k] for k in outer) + (st[ax],))

    def vec(p: Optional[Tensor]):
        if p is None:
            return None
        p = broadcast(p, (t.shape[ax],))
        return remap(p.expr, [(len(outer), 1, 0)], rank)
    L.emit(RowNorm(norm=norm, domain=tuple(t.shape[k] for k in outer), row=t.shape[ax], x=x, out=acc,
                   weight=vec(w), bias=vec(b), eps=eps))
    return Tensor(tuple(t.shape), Load(out.dtype, Access(buf, 0, st)))


def _norm(L, n, ins):
    t, w, b = (list(ins) + [None, None])[:3]
    rank = len(t.shape)
    ax = norm_axis(n.attrs.get("axis", -1), rank, n.op)
    eps = float(n.attrs.get("eps", 1e-5))
    if ax != rank - 1:   # several normalized axes: view them as one row
        R = numel(t.shape[ax:])
        t2 = _reshape(L, t, tuple(t.shape[:ax]) + (R,))
        nshape = tuple(t.shape[ax:])
        w2 = _reshape(L, broadcast(w, nshape), (R,)) if w is not None else None
        b2 = _reshape(L, broadcast(b, nshape), (R,)) if b is not None else None
        r = _rownorm(L, n, t2, list(range(ax)), ax, n.op, w2, b2, eps)
        return [_reshape(L, r, t.shape)]
    return [_rownorm(L, n, t, list(range(rank - 1)), rank - 1, n.op, w, b, eps)]


def _blas_ok(acc: Access, rows: int, cols: int) -> bool:
    sr, sc = acc.strides[-2], acc.strides[-1]
    return (sc == 1 and (sr >= cols or rows == 1)) or (sr == 1 and (sc >= rows or cols == 1))


def _operand(L, t: Tensor, rows: int, cols: int) -> Access:
    acc = L.access(t)
    if not _blas_ok(acc, rows, cols):
        acc = L.contiguous(Tensor(t.shape, Load(t.dtype, acc))).expr.access
    return acc


def _const_row_major(L, t: Tensor, k: int, n: int) -> Optional[Access]:
    """A constant weight read as [k, n] with a non-unit n stride (e.g. x @ W^T) is re-laid out once, at compile
    time, as a row-major copy: the gemm micro-kernel then streams it with vector loads (like a prepack)."""
    e = t.expr
    if not (isinstance(e, Load) and not e.indirect and e.access.buf.kind == "const" and e.access.strides[-1] != 1):
        return None
    acc = e.access
    if any(acc.strides[:-2]) or k * n < 4096:
        return None
    src = L.const_data[acc.buf.index]
    item = src.itemsize
    view = np.lib.stride_tricks.as_strided(src.reshape(-1)[acc.offset:], (k, n), (acc.strides[-2] * item, acc.strides[-1] * item))
    arr = np.ascontiguousarray(view)
    b = Buffer(f"w{len(L.consts)}", acc.buf.dtype, arr.size, "const", len(L.consts), label=acc.buf.label + " (row-major copy)")
    L.consts.append(b)
    L.const_data.append(arr)
    return Access(b, 0, (0,) * (len(acc.strides) - 2) + (n, 1))


def _gemm_core(L, a: Tensor, b: Tensor, out_type, alpha=1.0, epi_fn=None) -> Tensor:
    """Batched a[..., m, k] @ b[..., k, n] (rank >= 2, batch dims broadcast to out_type's)."""
    m, k = a.shape[-2], a.shape[-1]
    n = b.shape[-1]
    batch = tuple(out_type.shape[:-2])
    a = broadcast(a, batch + (m, k))
    b = broadcast(b, batch + (k, n))
    from .precision import gemm_operands_bf16
    a, b = gemm_operands_bf16(a, b) or (a, b)   # bf16-rounded x @ bf16 weight: the gemm reads bf16 (issue 12)
    aa = _operand(L, a, m, k)
    ba = _const_row_major(L, b, k, n) or _operand(L, b, k, n)
    shape = batch + (m, n)
    buf = L.temp(out_type.dtype, numel(shape))
    oacc = Access(buf, 0, cstrides(shape))
    epi = epi_fn(len(shape)) if epi_fn else None
    L.emit(Gemm(batch=batch, m=m, n=n, k=k, a=aa, b=ba, out=oacc, alpha=alpha, epilogue=epi))
    return Tensor(shape, Load(out_type.dtype, oacc))


def _matmul(L, n, ins):
    from ..ir.types import TensorType, broadcast_shapes
    a, b = ins
    out = n.outputs[0].type
    a2 = a if len(a.shape) > 1 else _reshape(L, a, (1,) + tuple(a.shape))
    b2 = b if len(b.shape) > 1 else _reshape(L, b, tuple(b.shape) + (1,))
    batch = tuple(broadcast_shapes(tuple(a2.shape[:-2]), tuple(b2.shape[:-2])))
    r = _gemm_core(L, a2, b2, TensorType(batch + (a2.shape[-2], b2.shape[-1]), out.dtype))
    return [_reshape(L, r, out.shape)]


def _gemm_op(L, n, ins):
    a, b = ins[0], ins[1]
    at = n.attrs
    if at.get("trans_a"):
        a = Tensor((a.shape[1], a.shape[0]), remap(a.expr, [(1, 1, 0), (0, 1, 0)], 2))
    if at.get("trans_b"):
        b = Tensor((b.shape[1], b.shape[0]), remap(b.expr, [(1, 1, 0), (0, 1, 0)], 2))
    out = n.outputs[0].type
    epi = None
    if len(ins) == 3:
        c = broadcast(ins[2], tuple(out.shape))
        beta = float(at.get("beta", 1.0))
        dt = out.dtype
        cexpr = c.expr if beta == 1.0 else mkop("mul", dt, c.expr, Const(dt, beta))
        epi = lambda rank: mkop("add", dt, Arg(dt, "acc"), cexpr)  # noqa: E731
    return [_gemm_core(L, a, b, out, float(at.get("alpha", 1.0)), epi)]


LOWERINGS = {
    "identity": _identity, "reshape": _reshape_op, "flatten": _unsqueeze_like, "squeeze": _unsqueeze_like,
    "unsqueeze": _unsqueeze_like, "transpose": _transpose, "slice": _slice, "split": _split, "expand": _expand,
    "concat": _concat, "gather": _gather,
    "reduce_sum": _reduce, "reduce_mean": _reduce, "reduce_max": _reduce, "reduce_min": _reduce, "reduce_prod": _reduce,
    "argmax": _argreduce, "argmin": _argreduce, "softmax": _softmax, "log_softmax": _softmax,
    "layer_norm": _norm, "rms_norm": _norm, "matmul": _matmul, "gemm": _gemm_op,
}


# ---------------------------------------------------------------- kernel-level rewrites
def fuse_epilogues(kernels: list[Kernel]) -> int:
    """Fold a pointwise kernel into the gemm that produced its only temp input (bias, activation, residual)."""
    fused = 0
    i = 0
    while i < len(kernels):
        g = kernels[i]
        if not isinstance(g, (Gemm, Conv)) or g.out.buf.kind != "temp":
            i += 1
            continue
        t = g.out.buf
        readers = [j for j, k in enumerate(kernels) if j != i and any(a.buf is t for a in k.reads())]
        if len(readers) != 1:
            i += 1
            continue
        j = readers[0]
        p = kernels[j]
        if isinstance(g, Gemm):
            dom = tuple(g.batch) + (g.m, g.n)
            rows, cols = g.m, g.n
        else:
            dom = tuple(g.out_shape)
            rows, cols = 2, g.out_shape[-1]
        ok = (isinstance(p, Pointwise) and len(p.stores) == 1 and tuple(p.domain) == dom and j > i)
        if ok:
            oacc, e = p.stores[0]
            tl = [ld for ld in loads(e) if ld.access.buf is t]
            ok = (all(ld.access.key() == g.out.key() and not ld.indirect for ld in tl)
                  and oacc.strides[-1] == 1 and (oacc.strides[-2] >= cols or rows == 1)
                  and oacc.buf is not t and oacc.buf.dtype == g.out.buf.dtype)
            if isinstance(g, Conv) and tuple(oacc.strides[2:]) != cstrides(g.out_shape[2:]):
                ok = False
            between = kernels[i + 1:j]
            for ld in loads(e):
                b = ld.access.buf
                if b is not t and any(b is a.buf for k in between for a in k.writes()):
                    ok = False
            if any(oacc.buf is a.buf for k in between for a in k.reads() + k.writes()):
                ok = False
            if any(isinstance(x, Var) for ld in loads(e) for ie, _ in ld.indirect for x in [ie]):
                ok = False
        if not ok:
            i += 1
            continue
        prev = g.epilogue if g.epilogue is not None else Arg(g.out.buf.dtype, "acc")
        g.epilogue = substitute(e, lambda x: prev if isinstance(x, Load) and x.access.buf is t else None)
        g.out = oacc
        g.meta["ops"] = g.meta.get("ops", []) + p.meta.get("ops", [])
        del kernels[j]
        fused += 1
    return fused


def fold_batch(g: Gemm) -> None:
    """Fold trailing batch axes into m when the weight is shared (stride 0) and rows stack contiguously:
    one [B*m, k] @ [k, n] call instead of B small ones (Linear layers on [batch, seq, hidden])."""
    from ..ir.kernel import walk
    if g.epilogue is not None and any(isinstance(x, Var) for x in walk(g.epilogue)):
        return
    while g.batch:
        j = len(g.batch) - 1
        a, b, o = g.a, g.b, g.out
        if not isinstance(b, Access) or b.strides[j] != 0 or a.strides[-1] != 1 or o.strides[-1] != 1:
            return
        if a.strides[j] != g.m * a.strides[-2] or o.strides[j] != g.m * o.strides[-2]:
            return
        eps = loads(g.epilogue)
        if any(ld.indirect or ld.access.strides[j] != g.m * ld.access.strides[-2] for ld in eps):
            return

        def drop(acc: Access) -> Access:
            st = list(acc.strides)
            del st[j]
            return Access(acc.buf, acc.offset, tuple(st))
        g.m *= g.batch[j]
        g.batch = tuple(g.batch[:j])
        g.a, g.b, g.out = drop(a), drop(b), drop(o)
        if g.epilogue is not None:
            g.epilogue = substitute(g.epilogue, lambda x: Load(x.dtype, drop(x.access), x.indirect) if isinstance(x, Load) else None)


def _rebuf(k: Kernel, old: Buffer, new: Buffer) -> None:
    """Point every access of `old` in kernel k at `new` (same element layout)."""
    fix = lambda a: Access(new, a.offset, a.strides) if a.buf is old else a  # noqa: E731

    def fe(e):
        return substitute(e, lambda x: Load(x.dtype, fix(x.access), tuple((fe(ie), st) for ie, st in x.indirect))
                          if isinstance(x, Load) and (x.access.buf is old or x.indirect) else None) if e is not None else None
    for f in ("a", "b", "out", "x", "w", "q", "k", "v", "col"):
        if isinstance(getattr(k, f, None), Access):
            setattr(k, f, fix(getattr(k, f)))
    for f in ("body", "post", "epilogue", "mask", "weight", "bias"):
        if isinstance(getattr(k, f, None), Expr):
            setattr(k, f, fe(getattr(k, f)))
    if isinstance(k, RowNorm):
        k.x = fe(k.x)
    if isinstance(k, Pointwise):
        k.stores = [(fix(a), fe(e)) for a, e in k.stores]


def inplace(kernels: list[Kernel]) -> int:
    """A pointwise kernel whose temp input dies here and is read at exactly the element it writes reuses that
    input's buffer for its output (same pointer in the C: no restrict aliasing)."""
    done = 0
    last: dict[int, int] = {}
    for i, k in enumerate(kernels):
        for a in k.reads():
            last[id(a.buf)] = i
    for i, k in enumerate(kernels):
        if not isinstance(k, Pointwise) or len(k.stores) != 1:
            continue
        oacc, e = k.stores[0]
        o = oacc.buf
        if o.kind != "temp" or sum(1 for kk in kernels for a in kk.writes() if a.buf is o) != 1:
            continue
        for ld in loads(e):
            t = ld.access.buf
            if (t is o or t.kind != "temp" or last.get(id(t)) != i or t.dtype != o.dtype or t.numel != o.numel
                    or ld.indirect or ld.access.key()[1:] != oacc.key()[1:]):
                continue
            if any(x.access.buf is t and (x.indirect or x.access.key() != ld.access.key()) for x in loads(e)):
                continue
            for kk in kernels[i:]:
                _rebuf(kk, o, t)
            done += 1
            break
    return done


def _all_accesses(k: Pointwise) -> list[Access]:
    out = [a for a, _ in k.stores]
    for _, e in k.stores:
        for ld in loads(e):
            out.append(ld.access)
    return out


def coalesce(k: Pointwise) -> None:
    """Merge adjacent domain axes that every access walks contiguously; drop extent-1 axes."""
    from ..ir.kernel import walk
    if any(isinstance(x, Var) for _, e in k.stores for x in walk(e)):
        return
    dom = list(k.domain)
    accs = _all_accesses(k)
    strides = {id(a): list(a.strides) for a in accs}
    keep = [d != 1 for d in dom]
    dom2 = [d for d, kp in zip(dom, keep) if kp]
    st2 = {key: [s for s, kp in zip(v, keep) if kp] for key, v in strides.items()}
    ax = len(dom2) - 2
    while ax >= 0:
        if all(st2[key][ax] == st2[key][ax + 1] * dom2[ax + 1] for key in st2):
            dom2[ax] *= dom2[ax + 1]
            del dom2[ax + 1]
            for key in st2:
                del st2[key][ax]
        ax -= 1
    if dom2 == dom:
        return

    def fix(e: Expr) -> Expr:
        def f(x):
            if isinstance(x, Load):
                ind = tuple((substitute(ie, f), s) for ie, s in x.indirect)
                return Load(x.dtype, Access(x.access.buf, x.access.offset, tuple(st2[id(x.access)])), ind)
            return None
        return substitute(e, f)
    k.stores = [(Access(a.buf, a.offset, tuple(st2[id(a)])), fix(e)) for a, e in k.stores]
    k.domain = tuple(dom2)


def choose_schedule(k: Kernel) -> None:
    """Heuristics: parallelize the outer axis when there is enough work; Triton block sizes from extents."""
    if isinstance(k, Pointwise):
        total = numel(k.domain)
        k.schedule = Schedule(parallel_axis=0 if total >= PARALLEL_MIN and k.domain else None, vector=16,
                              block={"BLOCK": min(1024, 1 << max(4, (max(total, 1) - 1).bit_length()))})
    elif isinstance(k, Reduce):
        total = numel(k.domain) * numel(k.rdomain)
        k.schedule = Schedule(parallel_axis=0 if total >= PARALLEL_MIN and k.domain and numel(k.domain) > 1 else None,
                              block={"BLOCK_R": min(4096, 1 << max(4, (max(numel(k.rdomain), 1) - 1).bit_length()))})
    elif isinstance(k, RowNorm):
        total = numel(k.domain) * k.row
        k.schedule = Schedule(parallel_axis=0 if total >= PARALLEL_MIN and k.domain else None,
                              block={"BLOCK_R": min(8192, 1 << max(4, (k.row - 1).bit_length()))})
    elif isinstance(k, Gemm):
        k.schedule = Schedule(parallel_axis=None, tile=(64, 64, 256), block={"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32},
                              num_warps=4, num_stages=3)


def plan_memory(kernels: list[Kernel], temps: list[Buffer]) -> tuple[int, int]:
    """Liveness-based placement of temps in one arena (greedy best-fit by size). Returns (arena, naive) bytes."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for i, k in enumerate(kernels):
        for a in k.writes() + k.reads():
            if a.buf.kind == "temp":
                first.setdefault(id(a.buf), i)
                last[id(a.buf)] = i
    size = lambda b: -(-b.nbytes // ALIGN) * ALIGN  # noqa: E731
    naive = sum(size(b) for b in temps)
    placed: list[Buffer] = []
    arena = 0
    for b in sorted(temps, key=lambda b: (-size(b), first.get(id(b), 0))):
        busy = sorted((c.offset, c.offset + size(c)) for c in placed
                      if not (last[id(c)] < first[id(b)] or last[id(b)] < first[id(c)]))
        off = 0
        for lo, hi in busy:
            if off + size(b) <= lo:
                break
            off = max(off, hi)
        b.offset = off
        placed.append(b)
        arena = max(arena, off + size(b))
    return arena, naive


def _bind_dim(d, binding: dict):
    from ..ir.types import _factors
    if isinstance(d, int):
        return d
    coef, syms = _factors(d)
    for sym in syms:
        if sym not in binding:
            raise LowerError(f"dim {d}: symbol {sym} is not bound by the inputs")
        coef *= binding[sym]
    return coef


def _bind_attrs(attrs: dict, binding: dict) -> dict:
    out = {}
    for k, v in attrs.items():
        if isinstance(v, tuple) and any(isinstance(x, str) for x in v):
            v = tuple(_bind_dim(x, binding) if isinstance(x, str) else x for x in v)
        out[k] = v
    return out


def _reinfer(g: Graph, binding: dict) -> None:
    from ..ir.types import TensorType
    for n in g.nodes:
        n.attrs = _bind_attrs(n.attrs, binding)
        if n.body is not None:
            for bi, v in zip(n.body.inputs, n.inputs):
                bi.type = v.type
            _reinfer(n.body, binding)
            types = [v.type for v in n.body.outputs]
        else:
            types = OPS[n.op].infer_types([v.type for v in n.inputs], n.attrs)
        for v, t in zip(n.outputs, types):
            v.type = TensorType(tuple(_bind_dim(d, binding) for d in t.shape), t.dtype)


def specialize(graph: Graph, shapes: list) -> Graph:
    """A copy of `graph` with every symbolic dim bound from concrete input shapes (types re-inferred)."""
    from ..ir.types import TensorType
    binding: dict = {}
    for v, shp in zip(graph.inputs, shapes):
        if len(shp) != v.type.rank:
            raise LowerError(f"input '{v.name}': expected rank {v.type.rank}, got shape {list(shp)}")
        for d, n in zip(v.shape, shp):
            if isinstance(d, str) and "*" not in d:
                binding.setdefault(d, int(n))
    g = graph.clone()
    for v, shp in zip(g.inputs, shapes):
        v.type = TensorType(tuple(int(x) for x in shp), v.type.dtype)
    _reinfer(g, binding)
    return g


def lower(graph: Graph) -> Program:
    """Graph IR -> kernel IR Program (verified)."""
    return Lowering(graph).run()


from . import lower_nn  # noqa: E402,F401  (registers the CNN/misc lowerings)
from . import lower_quant  # noqa: E402,F401  (quantized gemm lowerings, issue 10)
