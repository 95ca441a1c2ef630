"""Program rewrites that put more of a bf16 model on the bf16 kernels of backends/cpu/bf16.py (run by its
`pack_program`): pointwise kernels folded into the gemm epilogue so it stores bf16 directly, and conv weights
widened from a bf16 constant at run time read from the constant itself."""
from __future__ import annotations

from ...ir.kernel import Access, Arg, Buffer, Const, Conv, Expr, Gemm, Load, Op, Pointwise, Program, Reduce, Var, loads


def fold_epilogues(p: Program) -> int:
    """A pointwise kernel right after a packed bf16 gemm that only maps the gemm's f32 result element by element
    (bias, GELU, and above all the rounding to bf16 the next gemm reads) becomes the gemm's epilogue: the gemm stores
    the final values (bf16) from its cache-hot tile, and the f32 result never goes through memory. The arena is
    placed again afterwards (the folded output is written earlier than it was)."""
    readers: dict[int, int] = {}
    for k in p.kernels:
        for b in {id(a.buf) for a in k.reads()}:
            readers[b] = readers.get(b, 0) + 1
    kept = {id(b) for b in p.outputs} | {id(p.consts[j]) for kind, j in p.output_aliases.values() if kind == "const"}
    out, n, i = [], 0, 0
    while i < len(p.kernels):
        k = p.kernels[i]
        q = p.kernels[i + 1] if i + 1 < len(p.kernels) else None
        folded = (isinstance(k, Gemm) and k.meta.get("bf16_packed") and isinstance(q, Pointwise)
                  and k.out.buf.kind == "temp" and id(k.out.buf) not in kept and readers.get(id(k.out.buf)) == 1
                  and _fold(k, q))
        out.append(k)
        i += 2 if folded else 1
        n += bool(folded)
    if n:
        p.kernels = out
        _replan(p)
    return n


def writers_of(p: Program) -> dict[int, list]:
    out: dict[int, list] = {}
    for q in p.kernels:
        for a in q.writes():
            out.setdefault(id(a.buf), []).append(q)
    return out


def input_rounded(k: Conv, writers: dict, order: dict) -> bool:
    """The bf16 conv kernel rounds its input to bf16: allowed only where the graph already rounds it (the policy's
    cast(cast(x, bf16), f32)); a bf16 weight next to an f32 activation keeps the f32 conv (weight widened, exact).
    order: each kernel's position in the program (what the conv reads is what was written before it)."""
    ws = [w for w in writers.get(id(k.x.buf), []) if order[id(w)] < order[id(k)]]
    if ws and rounding_source(ws[-1], k.x.buf) is not None:   # rounded in place after its producer (a max-pool's output)
        return True
    return _rounded(k.x.buf, writers, 3)


def holds_bf16(k, buf: Buffer, writers: dict, order: dict) -> bool:
    """When kernel k runs, buf holds bf16 values widened to f32: every writer stores such values (`_rounded`),
    or the last writer before k overwrites all of buf with one (RoPE: rotate-half copies, then the rounded
    rotation in place)."""
    if _rounded(buf, writers, 3):
        return True
    from .copies import covers_once
    ws = [w for w in writers.get(id(buf), []) if order[id(w)] < order[id(k)]]
    w = ws[-1] if ws else None
    if not (isinstance(w, Pointwise) and len(w.stores) == 1 and w.stores[0][0].buf is buf):
        return False
    dst, e = w.stores[0]
    return (covers_once(dst, tuple(w.domain), buf) and isinstance(e, Op) and e.op == "cast" and e.dtype.name == "f32"
            and e.args[0].dtype.name == "bf16")


def order_of(p: Program) -> dict:
    return {id(k): i for i, k in enumerate(p.kernels)}


def _rounded(buf: Buffer, writers: dict, depth: int) -> bool:
    """Every kernel writing `buf` stores bf16 values widened to f32 — cast(<a bf16 value>, f32) — or copies such
    a buffer (a reshape or slice copy), up to `depth` copies back."""
    ws = writers.get(id(buf), [])
    if not ws or depth < 0:
        return False
    for k in ws:
        if isinstance(k, Pointwise):
            es = [e for a, e in k.stores if a.buf is buf]
        elif isinstance(k, (Conv, Gemm)) and k.out.buf is buf and k.epilogue is not None:
            es = [k.epilogue]
        elif isinstance(k, Reduce) and k.out.buf is buf and k.post is not None:
            es = [k.post]
        else:
            return False
        for e in es:
            if isinstance(e, Op) and e.op == "cast" and e.dtype.name == "f32" and e.args[0].dtype.name == "bf16":
                continue
            if not (isinstance(e, Load) and not e.indirect and e.access.buf.kind == "temp"
                    and _rounded(e.access.buf, writers, depth - 1)):
                return False
    return True


def rounding_source(q, buf: Buffer):
    """The source load of q if q is `buf[i] = cast(cast(src[i], bf16), f32)` over all of buf (src may be buf: in
    place), else None."""
    if not (isinstance(q, Pointwise) and len(q.stores) == 1 and len(q.domain) == 1):
        return None
    dst, e = q.stores[0]
    inner = e.args[0] if isinstance(e, Op) and e.op == "cast" and e.dtype.name == "f32" else None
    src = inner.args[0] if isinstance(inner, Op) and inner.op == "cast" and inner.dtype.name == "bf16" else None
    ok = (dst.buf is buf and isinstance(src, Load) and not src.indirect and src.dtype.name == "f32" and dst.offset == 0
          and dst.strides == (1,) and src.access.offset == 0 and src.access.strides == (1,)
          and q.domain[0] == buf.numel == src.access.buf.numel)
    return src if ok else None


def drop_input_roundings(p: Program, convs: list) -> int:
    """A bf16 conv rounds its input to bf16 itself (the NHWC copy or im2col it builds), so a kernel that only rounds
    that input first — dst = cast(cast(src, bf16), f32), element for element, read by the conv alone — is a second
    pass over the activations that changes nothing (rounding twice is rounding once): the conv reads src and the
    kernel goes. Returns how many."""
    kept = {id(b) for b in p.outputs}
    index = order_of(p)
    writers = writers_of(p)
    readers: dict[int, list] = {}
    for k in p.kernels:
        for b in {id(a.buf): a.buf for a in k.reads()}.values():
            readers.setdefault(id(b), []).append(k)
    dead = []
    for k in convs:
        buf = k.x.buf
        ws = [w for w in writers.get(id(buf), []) if index[id(w)] < index[id(k)]]
        q = ws[-1] if ws else None
        src = rounding_source(q, buf)
        if src is None or buf.kind != "temp" or id(buf) in kept or [r for r in readers.get(id(buf), []) if r is not q] != [k]:
            continue
        sb = src.access.buf
        if sb is not buf:   # out of place: the only writer; src must not change between the rounding and the conv
            if len(ws) != 1 or any(index[id(w)] > index[id(q)] for w in writers.get(id(sb), [])):
                continue
            k.x = Access(sb, k.x.offset, k.x.strides)
        dead.append(q)
    if dead:
        p.kernels = [q for q in p.kernels if all(q is not d for d in dead)]
    return len(dead)


def _replan(p: Program) -> None:
    """Drop the temps no kernel touches any more and place the rest in the arena again (their live ranges moved)."""
    from ...passes.lower import plan_memory
    used = {id(a.buf) for k in p.kernels for a in k.reads() + k.writes()}
    p.temps = [b for b in p.temps if id(b) in used]
    p.arena_bytes, p.naive_bytes = plan_memory(p.kernels, p.temps)


def read_cast_weights(p: Program) -> None:
    """A conv whose weight a kernel of its own widens from a bf16 constant at run time (the cast was left outside
    the conv's fused region: a weight the graph computes from constants, as in the onnx wheel's resnet50) reads the
    bf16 constant directly and so takes the bf16 kernel; the widening kernel goes when nothing else reads it."""
    from .bf16 import conv_packable
    writers = writers_of(p)
    changed = False
    for k in p.kernels:
        if not (isinstance(k, Conv) and k.w.buf.kind == "temp" and not k.meta.get("bf16_weight")):
            continue
        ws = writers.get(id(k.w.buf), [])
        q = ws[0] if len(ws) == 1 else None
        if not (isinstance(q, Pointwise) and len(q.stores) == 1 and len(q.domain) == 1):
            continue
        dst, e = q.stores[0]
        if not (isinstance(e, Op) and e.op == "cast" and e.dtype.name == "f32" and isinstance(e.args[0], Load)):
            continue
        s = e.args[0].access
        if e.args[0].indirect or s.buf.kind != "const" or s.buf.dtype.name != "bf16" or s.strides != (1,) \
                or dst.strides != (1,) or dst.offset != 0:
            continue
        if not input_rounded(k, writers, order_of(p)):
            continue
        old = k.w
        k.w, k.meta["bf16_weight"] = Access(s.buf, s.offset + old.offset, old.strides), True
        if not conv_packable(k):   # the f32 conv reads f32 weights only: leave this one as it was
            k.w, k.meta["bf16_weight"] = old, False
            continue
        changed = True
    if changed:
        read = {id(a.buf) for k in p.kernels for a in k.reads()}
        dead = [q for q in p.kernels if isinstance(q, Pointwise) and all(a.buf.kind == "temp" and id(a.buf) not in read
                                                                           for a in q.writes())]
        p.kernels = [q for q in p.kernels if q not in dead]
        _replan(p)


def _fold(k: Gemm, q: Pointwise) -> bool:
    """Rewrite q's single store over gemm k's (batch..., m, n) domain and make it k's epilogue; False if q is not a
    pure elementwise map of k's result."""
    if len(q.stores) != 1:
        return False
    dims = tuple(k.batch) + (k.m, k.n)
    to_gemm = _domain_map(tuple(q.domain), dims)
    if to_gemm is None:
        return False
    dst, e = q.stores[0]
    if dst.buf is k.out.buf or any(ld.indirect or ld.access.buf is dst.buf for ld in loads(e)):
        return False
    dst, e = to_gemm(Load(dst.buf.dtype, dst)).access, _subst(e, to_gemm)
    hits = [ld for ld in loads(e) if ld.access.buf is k.out.buf]
    if not hits or any((ld.access.offset, ld.access.strides) != (k.out.offset, k.out.strides) for ld in hits):
        return False
    acc = k.epilogue if k.epilogue is not None else Arg(k.out.buf.dtype, "acc")
    k.epilogue = _subst(e, lambda x: acc if isinstance(x, Load) and x.access.buf is k.out.buf else None)
    k.out = dst
    k.meta["ops"] = list(k.meta.get("ops", [])) + [o for o in q.meta.get("ops", []) if o not in k.meta.get("ops", [])]
    k.meta["bf16_folded"] = q.name
    return True


def _domain_map(src: tuple, dims: tuple):
    """A rewrite of expressions over the domain `src` into the same elements over `dims` (both row-major over the same
    m x n values): equal up to extent-1 axes, or `src` the flat index m*n + n. None for anything else."""
    s = [j for j, d in enumerate(src) if d != 1]
    t = [j for j, d in enumerate(dims) if d != 1]
    rank = len(dims)
    if [src[j] for j in s] == [dims[j] for j in t]:
        axis = dict(zip(s, t))

        def fn(x: Expr):
            if isinstance(x, Load) and not x.indirect:
                st = [0] * rank
                for j, v in enumerate(x.access.strides):
                    if j in axis:
                        st[axis[j]] += v
                return Load(x.dtype, Access(x.access.buf, x.access.offset, tuple(st)))
            if isinstance(x, Var):
                return Var(x.dtype, axis[x.axis]) if x.axis in axis else Const(x.dtype, 0)
            return None
        return fn
    if len(s) == 1 and len(t) == 2 and src[s[0]] == dims[t[0]] * dims[t[1]]:
        mi, ni, ncols = t[0], t[1], dims[t[1]]

        def fn(x: Expr):
            if isinstance(x, Load) and not x.indirect:
                v = x.access.strides[s[0]]
                st = [0] * rank
                st[mi], st[ni] = v * ncols, v
                return Load(x.dtype, Access(x.access.buf, x.access.offset, tuple(st)))
            if isinstance(x, Var):
                if x.axis != s[0]:
                    return Const(x.dtype, 0)
                return Op(x.dtype, "add", (Op(x.dtype, "mul", (Var(x.dtype, mi), Const(x.dtype, ncols))), Var(x.dtype, ni)))
            return None
        return fn
    return None


def _subst(e: Expr, fn) -> Expr:
    from ...passes.lower import substitute
    return substitute(e, fn)
