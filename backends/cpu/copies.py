"""Layout copies around attention folded away on the cpu backend (exact: only where each element lands changes).

The lowering materializes head splits and merges as copy kernels: `[tokens, heads*d] -> [heads, tokens, d]` for
q/k/v (under the bf16 policy also rounding them) and the attention output back to `[tokens, heads*d]` for the
output projection. The attention kernel reads and writes any strides, so:
- `fold_into_producers`: a copy of an attention output is dropped and the attention writes the copy's
  destination directly;
- `fold_into_attention`: a copy that attention alone reads is dropped and the attention reads the source in
  place; an elementwise function the copy applies on the way (the bf16 rounding) moves into the gemm that
  produced the source (its epilogue).
Per BERT layer under bf16 that is 4 passes over a [1024, 256] activation fewer.
"""
from __future__ import annotations

import math
from typing import Optional

from ...ir.kernel import Access, Arg, Attention, Buffer, Expr, Gemm, Load, Pointwise, Program, Var, loads, walk


def _copy_of(q) -> Optional[tuple[Access, Access, Expr]]:
    """(store, the one load, value) of a pointwise kernel storing an elementwise function of one load (no Vars,
    no other loads, no gathers) to a buffer it does not read; None otherwise."""
    if not isinstance(q, Pointwise) or len(q.stores) != 1:
        return None
    dst, e = q.stores[0]
    lds = loads(e)
    if not lds or any(ld.indirect or ld.access.key() != lds[0].access.key() for ld in lds):
        return None
    if lds[0].access.buf is dst.buf or any(isinstance(x, Var) for x in walk(e)):
        return None
    if not (dst.buf.dtype == lds[0].access.buf.dtype == e.dtype):   # a copy may round, not change the type
        return None
    return dst, lds[0].access, e


def covers_once(acc: Access, dims: tuple, buf: Buffer) -> bool:
    """`acc` over a domain of extents `dims` visits every element of `buf` exactly once: offset 0, and the strides
    of the axes longer than 1, in decreasing order, are a row-major layout of buf."""
    live = sorted(((s, n) for s, n in zip(acc.strides, dims) if n > 1), reverse=True)
    if acc.offset != 0 or math.prod(dims) != buf.numel:
        return False
    inner = 1
    for s, n in reversed(live):
        if s != inner:
            return False
        inner *= n
    return True


def _remap(x: Access, extents: tuple, src: Access, dst: Access, dims: tuple, exact: bool) -> Optional[Access]:
    """`x` (over a domain of `extents`) reads/writes src's buffer; the copy kernel moves element src(v) to dst(v)
    over its domain v < dims (src bijective). The same elements of dst's buffer as an Access, or None when an axis
    of x does not move along a single copy axis. exact: x must cover the whole buffer."""
    axes = [j for j, n in enumerate(dims) if n > 1]
    digits, off = {}, x.offset
    for j in sorted(axes, key=lambda j: -src.strides[j]):
        digits[j], off = divmod(off, src.strides[j])
        if digits[j] >= dims[j]:
            return None
    if off:
        return None
    used, strides = set(), []
    for s, n in zip(x.strides, extents):
        if n == 1 or s == 0:
            if exact and n > 1:
                return None
            strides.append(0)
            continue
        hit = [j for j in axes if src.strides[j] == s and j not in used]
        if len(hit) != 1 or digits[hit[0]] + n > dims[hit[0]] or (exact and n != dims[hit[0]]):
            return None
        used.add(hit[0])
        strides.append(dst.strides[hit[0]])
    if exact and len(used) != len(axes):
        return None
    return Access(dst.buf, dst.offset + sum(digits[j] * dst.strides[j] for j in axes), tuple(strides))


def _att_axes(att: Attention) -> dict:
    """Extents of the domain each structured access of an attention kernel is strided over."""
    b = tuple(att.batch)
    return {"q": b + (att.sq, att.d), "k": b + (att.skv, att.d), "v": b + (att.skv, att.dv), "out": b + (att.sq, att.dv)}


def _users(p: Program, buf: Buffer) -> tuple[list, list]:
    return ([k for k in p.kernels if any(a.buf is buf for a in k.writes())],
            [k for k in p.kernels if any(a.buf is buf for a in k.reads())])


def _untouched(p: Program, buf: Buffer, lo, hi) -> bool:
    """No kernel strictly between kernels lo and hi reads or writes buf."""
    i, j = p.kernels.index(lo), p.kernels.index(hi)
    a, b = min(i, j), max(i, j)
    return not any(acc.buf is buf for k in p.kernels[a + 1:b] for acc in k.reads() + k.writes())


def fold_into_producers(p: Program) -> int:
    """A pure copy of an attention kernel's output (read by the copy alone) goes: the attention writes the copy's
    destination in the copy's layout."""
    n = 0
    for att in [k for k in p.kernels if isinstance(k, Attention)]:
        t = att.out.buf
        writers, readers = _users(p, t)
        if t.kind != "temp" or writers != [att] or len(readers) != 1:
            continue
        q = readers[0]
        c = _copy_of(q)
        if c is None or not isinstance(c[2], Load) or c[0].buf.kind != "temp":
            continue
        dst, src, _ = c
        ws, _ = _users(p, dst.buf)
        if ws != [q] or not covers_once(src, q.domain, t) or not _untouched(p, dst.buf, att, q):
            continue
        if any(a.buf is dst.buf for a in att.reads()):
            continue
        new = _remap(att.out, _att_axes(att)["out"], src, dst, tuple(q.domain), exact=True)
        if new is None:
            continue
        att.out = new
        p.kernels.remove(q)
        n += 1
    return n


def fold_into_attention(p: Program) -> int:
    """A copy that only attention reads (q, k or v) goes: attention reads the copy's source in place. If the copy
    also applies an elementwise function (the policy's bf16 rounding), that moves into the epilogue of the gemm
    that wrote the source, when the copy is the source's only reader."""
    n = 0
    for att in [k for k in p.kernels if isinstance(k, Attention)]:
        for name, extents in list(_att_axes(att).items())[:3]:
            x = getattr(att, name)
            t = x.buf
            writers, readers = _users(p, t)
            if t.kind != "temp" or len(writers) != 1 or readers != [att]:
                continue
            q = writers[0]
            c = _copy_of(q)
            if c is None or not covers_once(c[0], q.domain, t):
                continue
            dst, src, e = c
            if not isinstance(e, Load):   # the elementwise part goes to the source's producer first
                pw, pr = _users(p, src.buf)
                g = pw[0] if len(pw) == 1 else None
                if not (isinstance(g, Gemm) and pr == [q] and src.buf.kind == "temp"
                        and covers_once(g.out, tuple(g.batch) + (g.m, g.n), src.buf)):
                    continue
                acc = g.epilogue if g.epilogue is not None else Arg(g.out.buf.dtype, "acc")
                from ...passes.lower import substitute
                g.epilogue = substitute(e, lambda y: acc if isinstance(y, Load) else None)
                q.stores = [(dst, Load(e.dtype, src))]
            new = _remap(x, extents, dst, src, tuple(q.domain), exact=False)
            if new is None or not _untouched(p, src.buf, q, att):
                continue
            setattr(att, name, new)
            if not _users(p, t)[1]:
                p.kernels.remove(q)
            n += 1
    return n


def fold_copies(p: Program) -> int:
    """Both folds; the arena is placed again when anything moved."""
    n = fold_into_producers(p) + fold_into_attention(p)
    if n:
        from .bf16_fold import _replan
        _replan(p)
    return n
