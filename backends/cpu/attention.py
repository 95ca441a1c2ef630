"""C for the `Attention` kernel on the cpu backend: softmax(scale * q kᵀ + mask) v without the [.., sq, skv] score
tensor in memory.

One pool task per (batch..., chunk of query rows); ~8 tasks in all when the batch (heads) allows. A task packs kᵀ
once (16x16 register transposes: nnf_tblock16) unless k's key axis already has unit stride, then walks its rows in tiles of MR:
scores of the tile into a stack buffer with the prelude's gemm micro-kernel (nnf_gemm_np: q tile @ kᵀ), the mask
and softmax row by row (vectorized nnf_exp; same arithmetic as the unfused row-norm kernel), then p @ v with the same
micro-kernel straight into the output rows. With `causal` a tile only computes the keys its last row can see,
rounded up to whole 64-column panels (those extra scores read as -inf): about 3/4 of the work at 128 tokens.

`fuse(program)` is the cpu backend's step after lowering: the shared gemm -> softmax -> gemm fusion
(backends/attention_fuse.py) for the f32 chains this kernel covers, then `relayout_keys`.
"""
from __future__ import annotations

import math

from ...ir.dtypes import dtype as to_dtype
from ...ir.kernel import Access, Attention, Const, Expr, Load, Op, Pointwise, Program, Var, op, verify_program
from ..attention_fuse import fuse_attention, replan
from .codegen import CodegenError

STACK_FLOATS = 1 << 16   # per-task scratch above this many floats (256 KiB) comes from malloc, not the stack


def supported(k: Attention) -> bool:
    """f32 operands only: the micro-kernel is f32 (other dtypes keep the unfused gemm/softmax/gemm chain)."""
    mask_ok = k.mask is None or k.mask.dtype.name == "f32"
    return mask_ok and all(a.buf.dtype.name == "f32" for a in (k.q, k.k, k.v, k.out))


def fuse(p: Program) -> int:
    """The cpu's attention step on a lowered program: fuse the chains, then give keys a layout the kernel reads well."""
    n = fuse_attention(p, when=supported)
    if n and relayout_keys(p):
        replan(p)
        verify_program(p)
    return n


def _permute_axes(e: Expr, order: list) -> Expr:
    """`e` with domain axes renumbered: new axis i is old axis order[i] (Vars and per-axis Access strides)."""
    new_of = {old: new for new, old in enumerate(order)}
    if isinstance(e, Var):
        return Var(e.dtype, new_of[e.axis])
    if isinstance(e, Load):
        a = e.access
        acc = Access(a.buf, a.offset, tuple(a.strides[o] for o in order))
        return Load(e.dtype, acc, tuple((_permute_axes(ie, order), st) for ie, st in e.indirect))
    if isinstance(e, Op):
        return Op(e.dtype, e.op, tuple(_permute_axes(x, order) for x in e.args), e.attrs)
    return e


def _split_axes(pw: Pointwise, dims: tuple, strides: tuple) -> bool:
    """Split producer axes that cover several attention axes at once (batch x heads written as one loop) into one
    axis per attention axis, so each can be matched by extent and stride. In place; False when nothing fits."""
    live = [(n, s) for n, s in zip(dims, strides) if n > 1]
    st = pw.stores[0][0]
    plan = []   # per producer axis: extents of the pieces, outermost first
    for n, s in zip(pw.domain, st.strides):
        if n == 1 or (n, s) in live:
            plan.append([n])
            continue
        pieces, stride, left = [], s, n
        while left > 1:
            hit = [m for m, t in live if t == stride and left % m == 0 and m > 1]
            if not hit:
                return False
            pieces.insert(0, hit[0])
            stride, left = stride * hit[0], left // hit[0]
        plan.append(pieces)
    if all(len(x) == 1 for x in plan):
        return True
    i64 = to_dtype("i64")
    new_dom, subst, axis = [], {}, 0
    for old, pieces in enumerate(plan):
        terms = []
        for j, m in enumerate(pieces):
            inner = math.prod(pieces[j + 1:])
            v = Var(i64, axis + j)
            terms.append(v if inner == 1 else op("mul", i64, v, Const(i64, inner)))
        e = terms[0]
        for t in terms[1:]:
            e = op("add", i64, e, t)
        subst[old] = (e, [math.prod(pieces[j + 1:]) for j in range(len(pieces))], axis)
        new_dom += pieces
        axis += len(pieces)

    def strides_of(a: Access) -> Access:
        out = []
        for old, sd in enumerate(a.strides):
            out += [sd * w for w in subst[old][1]]
        return Access(a.buf, a.offset, tuple(out))

    def rw(e: Expr) -> Expr:
        if isinstance(e, Var):
            return subst[e.axis][0]
        if isinstance(e, Load):
            return Load(e.dtype, strides_of(e.access), tuple((rw(ie), k) for ie, k in e.indirect))
        if isinstance(e, Op):
            return Op(e.dtype, e.op, tuple(rw(x) for x in e.args), e.attrs)
        return e
    pw.domain = tuple(new_dom)
    pw.stores = [(strides_of(a), rw(e)) for a, e in pw.stores]
    return True


def relayout_keys(p: Program) -> int:
    """Keys written by a pointwise kernel in kᵀ layout (RoPE'd keys: the lowering materializes them the way the
    unfused q @ kᵀ gemm wanted) get rewritten in natural [.., key, dim] layout with the producer's loop nest
    reordered to match: its loads (rows of the projection, the cos/sin tables) become unit-stride instead of
    strided by a whole row, and the attention kernel packs kᵀ per task from contiguous rows. Exact (a layout)."""
    changed = 0
    for att in [k for k in p.kernels if isinstance(k, Attention)]:
        buf = att.k.buf
        if buf.kind != "temp" or att.k.strides[-1] == 1 or att.k.offset != 0:
            continue
        writers = [k for k in p.kernels if any(a.buf is buf for a in k.writes())]
        readers = [k for k in p.kernels if any(a.buf is buf for a in k.reads())]
        if len(writers) != 1 or readers != [att] or not isinstance(writers[0], Pointwise):
            continue
        pw = writers[0]
        if len(pw.stores) != 1 or pw.stores[0][0].offset != 0:
            continue
        dims = tuple(att.batch) + (att.skv, att.d)
        if math.prod(dims) != buf.numel or math.prod(pw.domain) != buf.numel:
            continue
        if not _split_axes(pw, dims, att.k.strides):
            continue
        st, expr = pw.stores[0]
        # match each attention axis (extent > 1) to the producer axis that writes the same stride
        order, ok = [], True
        for n, s in zip(dims, att.k.strides):
            if n == 1:
                continue
            hit = [j for j, (m, t) in enumerate(zip(pw.domain, st.strides)) if m == n and t == s and j not in order]
            if len(hit) != 1:
                ok = False
                break
            order.append(hit[0])
        if not ok:
            continue
        order = [j for j, m in enumerate(pw.domain) if j not in order] + order   # extent-1 axes outermost
        if any(pw.domain[j] != 1 for j in order[:len(order) - len([n for n in dims if n > 1])]):
            continue
        row_major = [math.prod(dims[a + 1:]) for a in range(len(dims))]
        new_att = tuple(r if n > 1 else 0 for n, r in zip(dims, row_major))
        wstride = {}
        live = [a for a, n in enumerate(dims) if n > 1]
        for a, j in zip(live, order[len(order) - len(live):]):
            wstride[j] = new_att[a]
        pw.domain = tuple(pw.domain[j] for j in order)
        pw.stores = [(Access(buf, 0, tuple(wstride.get(j, 0) for j in order)), _permute_axes(expr, order))]
        att.k = Access(buf, 0, new_att)
        changed += 1
    return changed


def q_tile(k: Attention) -> int:
    """Rows per score tile: 64 (causal tiles then end on 64-column panel edges), fewer when the tile would not stay in L2."""
    mr = 64 if k.sq > 64 else max(1, k.sq)
    while mr > 6 and mr * k.skv > STACK_FLOATS // 2:
        mr = max(6, mr // 2)
    return mr


def row_chunks(k: Attention, ntile: int) -> int:
    """Tasks per (batch, head): enough for ~8 pool tasks in all, each packing kᵀ/v once for all its tiles."""
    nbatch = math.prod(k.batch) if k.batch else 1
    return max(1, min(ntile, -(-8 // nbatch)))


def emit_attention(w, k: Attention) -> str:
    """Body of the kernel function for writer `w` (a codegen.KernelWriter)."""
    if not supported(k):
        raise CodegenError(f"attention kernel {k.name}: only f32 q/k/v/out/mask are supported on the cpu backend")
    nb = len(k.batch)
    bn_ = [f"b{j}" for j in range(nb)]
    sq, skv, d, dv = k.sq, k.skv, k.d, k.dv
    if sq <= 0 or dv <= 0 or any(b <= 0 for b in k.batch):
        return "  /* empty attention */\n"
    mr = q_tile(k)
    ntile = -(-sq // mr)
    nch = row_chunks(k, ntile)
    tpc = -(-ntile // nch)          # tiles per task
    nch = -(-ntile // tpc)
    nbatch = math.prod(k.batch) if nb else 1
    q, kk, v, o = (w.bn(a.buf) for a in (k.q, k.k, k.v, k.out))

    def base(acc: Access) -> str:
        return " + ".join([str(acc.offset)] + [f"{s}*{bn_[j]}" for j, s in enumerate(acc.strides[:nb]) if s])

    sqi, sqd = k.q.strides[-2:]
    skj, skd = k.k.strides[-2:]
    svj, svd = k.v.strides[-2:]
    soi, sod = k.out.strides[-2:]
    bq = bool(k.meta.get("bf16_qk")) and d > 0   # q @ kᵀ on the bf16 gemm kernel (q and k hold bf16 values)
    kp = (d + 1) // 2                            # k pairs of a head dim (bf16 form)
    ls = -(-skv // 64) * 64 if bq else skv       # score row stride: whole 64-column panels for the bf16 kernel
    k_in_place = not bq and skj == 1 and d > 0     # kᵀ rows (one per head dim) are already contiguous over keys
    v_in_place = svd == 1 or dv == 1
    o_in_place = sod == 1 or dv == 1
    kpack = kp * ls + mr * kp if bq else (0 if k_in_place else d * skv)   # bf16: kᵀ pairs + the q tile's pairs
    scratch = mr * ls + kpack + (0 if v_in_place else skv * dv) + (0 if o_in_place else mr * dv)
    heap = scratch > STACK_FLOATS
    # causal: a tile whose last row is i sees keys j <= i; its key count is rounded up to whole 64-column
    # micro-kernel panels (the extra scores are computed and ignored) so no ragged panel is needed
    visible = (lambda end: f"({end} + 63) / 64 * 64 < {skv} ? ({end} + 63) / 64 * 64 : {skv}") if k.causal \
        else (lambda end: str(skv))

    s = "  for (int64_t _f = _lo; _f < _hi; _f++) {\n"
    s += f"    int64_t _bf = _f / {nch}, _t0 = (_f % {nch}) * {tpc}, _t1 = _t0 + {tpc} < {ntile} ? _t0 + {tpc} : {ntile};\n"
    rem = nbatch
    for j, dim in enumerate(k.batch):
        rem //= dim
        s += f"    int64_t {bn_[j]} = (_bf / {rem}) % {dim};\n"
    s += f"    int64_t _rend = _t1 * {mr} < {sq} ? _t1 * {mr} : {sq};\n"
    s += f"    int64_t _jmax = {visible('_rend')};\n"
    if heap:
        s += f"    float* _scr = (float*)malloc(sizeof(float) * {scratch});\n    if (!_scr) abort();   /* no silent skip */\n"
    else:
        s += f"    float _scr[{scratch}] __attribute__((aligned(64)));\n"
    off = mr * ls
    s += "    float* restrict _S = _scr;\n"
    if bq:   # kᵀ as bf16 pairs [pair p][key j] (the micro-kernel's B layout), keys zero padded to whole panels
        # 16 keys at a time: their rows rounded into 16 rows of bf16 pairs, then transposed (as 32-bit lanes)
        s += (f"    uint32_t* restrict _Kb = (uint32_t*)(_scr + {off}); uint16_t* restrict _Qb = (uint16_t*)(_scr + {off + kp * ls});\n"
              f"    {{ const float* restrict _k = {kk} + {base(k.k)}; float _kt[16 * {kp}];   /* pairs held as float bits */\n"
              f"      for (int64_t _j0 = 0; _j0 < {ls}; _j0 += 16) {{\n"
              f"        for (int _r = 0; _r < 16; _r++) for (int64_t _p = 0; _p < {kp}; _p++) {{\n"
              f"          const float* _kr = _k + (_j0 + _r)*{skj} + 2*_p*{skd}; int _in = _j0 + _r < _jmax; nnf_fi _u;\n"
              f"          float _lo = _in ? _kr[0] : 0.0f, _hi = _in && 2*_p + 1 < {d} ? _kr[{skd}] : 0.0f;\n"
              f"          _u.u = ((uint32_t)nnf_f_to_bf16(_hi) << 16) | (uint32_t)nnf_f_to_bf16(_lo); _kt[_r*{kp} + _p] = _u.f; }}\n"
              f"        for (int64_t _p0 = 0; _p0 < {kp}; _p0 += 16)\n"
              f"          nnf_tblock16(_kt + _p0, {kp}, {kp} - _p0 < 16 ? {kp} - _p0 : 16, 16, (float*)(_Kb + _p0*{ls} + _j0), {ls});\n"
              f"      }}\n    }}\n")
        off += kp * ls + mr * kp
    elif k_in_place:
        s += f"    const float* _Kt = {kk} + {base(k.k)}; const int64_t _ldk = {skd};\n"
    else:   # pack kᵀ once per task: 16x16 blocks transposed in registers, scalar copies at the ragged edges
        s += f"    float* restrict _Kp = _scr + {off}; const float* _Kt = _Kp; const int64_t _ldk = {skv};\n"
        s += f"    {{ const float* restrict _k = {kk} + {base(k.k)};\n"
        if skd == 1:   # 16 x 16 register transposes (nnf_tblock16 in the prelude), partial blocks masked
            s += (f"      for (int64_t _r0 = 0; _r0 < _jmax; _r0 += 16) for (int64_t _c0 = 0; _c0 < {d}; _c0 += 16)\n"
                  f"        nnf_tblock16(_k + _r0*{skj} + _c0, {skj}, {d} - _c0 < 16 ? {d} - _c0 : 16, "
                  f"_jmax - _r0 < 16 ? _jmax - _r0 : 16, _Kp + _c0*{skv} + _r0, {skv});\n")
        else:
            s += (f"      for (int64_t _j = 0; _j < _jmax; _j++) for (int64_t _d = 0; _d < {d}; _d++) "
                  f"_Kp[_d*{skv} + _j] = _k[_j*{skj} + _d*{skd}];\n")
        s += "    }\n"
        off += d * skv
    if v_in_place:
        s += f"    const float* _V = {v} + {base(k.v)}; const int64_t _ldv = {svj};\n"
    else:
        s += f"    float* restrict _Vp = _scr + {off}; const float* _V = _Vp; const int64_t _ldv = {dv};\n"
        s += f"    {{ const float* restrict _vv = {v} + {base(k.v)};\n"
        s += (f"      for (int64_t _j = 0; _j < _jmax; _j++) for (int64_t _d = 0; _d < {dv}; _d++) "
              f"_Vp[_j*{dv} + _d] = _vv[_j*{svj} + _d*{svd}]; }}\n")
        off += skv * dv
    s += f"    for (int64_t _i0 = _t0 * {mr}; _i0 < _rend; _i0 += {mr}) {{\n"
    s += f"    int64_t _mr = _rend - _i0 < {mr} ? _rend - _i0 : {mr};\n"
    s += f"    int64_t _jn = {visible('_i0 + _mr')};\n"
    # scores: S[r, j] = scale * q[i0 + r] . k[j] for j < _jn
    if bq:   # the q tile as bf16 rows of kp pairs, then the bf16 kernel over whole panels (zero keys past _jmax)
        s += (f"    {{ const float* restrict _qq = {q} + {base(k.q)} + _i0*{sqi};\n"
              f"      for (int64_t _r = 0; _r < _mr; _r++) for (int64_t _c = 0; _c < {2 * kp}; _c++)\n"
              f"        _Qb[_r*{2 * kp} + _c] = _c < {d} ? nnf_f_to_bf16(_qq[_r*{sqi} + _c*{sqd}]) : 0; }}\n"
              f"    nnf_gemm_bf16x(_mr, 0, (_jn + 63) / 64 * 64, {d}, {float(k.scale)!r}f, _Qb, {2 * kp}, "
              f"(const uint16_t*)_Kb, 128, {2 * ls}, _S, {ls}, 0, 0);\n")
    else:
        s += (f"    nnf_gemm_np(_mr, _jn, {d}, {float(k.scale)!r}f, {q} + {base(k.q)} + _i0*{sqi}, {sqi}, {sqd}, "
              f"_Kt, _ldk, _S, {skv});\n")
    em = w.emitter(bn_ + ["_i", "_j"])
    val = "_row[_j]" if k.mask is None else f"_row[_j] + ({em.expr(k.mask)})"
    if k.causal:   # keys past the diagonal read as -inf: every row runs the same vector loops over _jn columns
        val = f"(_j <= _i ? {val} : -INFINITY)"
    # softmax exactly as the unfused rownorm computes it (max, exp(x - max), sum, multiply by 1/sum)
    s += ("    for (int64_t _r = 0; _r < _mr; _r++) {\n"
          "      int64_t _i = _i0 + _r; (void)_i;\n"
          f"      float* restrict _row = _S + _r*{ls};\n"
          "      float _m = -INFINITY;\n"
          "      _Pragma(\"omp simd reduction(max:_m)\")\n"
          f"      for (int64_t _j = 0; _j < _jn; _j++) {{ float _x = {val}; _row[_j] = _x; _m = _x > _m ? _x : _m; }}\n"
          "      if (_m == -INFINITY) _m = 0.0f;\n"
          "      float _s = 0.0f;\n"
          "      _Pragma(\"omp simd reduction(+:_s)\")\n"
          "      for (int64_t _j = 0; _j < _jn; _j++) { float _e = nnf_exp(_row[_j] - _m); _row[_j] = _e; _s += _e; }\n"
          "      float _inv = 1.0f / _s;\n"
          "      for (int64_t _j = 0; _j < _jn; _j++) _row[_j] *= _inv;\n"
          "    }\n")
    # out rows = p @ v over the visible keys
    if o_in_place:
        s += f"    nnf_gemm_np(_mr, {dv}, _jn, 1.0f, _S, {ls}, 1, _V, _ldv, {o} + {base(k.out)} + _i0*{soi}, {soi});\n"
    else:
        s += f"    float* restrict _Op = _scr + {off};\n"
        s += f"    nnf_gemm_np(_mr, {dv}, _jn, 1.0f, _S, {ls}, 1, _V, _ldv, _Op, {dv});\n"
        s += (f"    {{ float* restrict _oo = {o} + {base(k.out)} + _i0*{soi};\n"
              f"      for (int64_t _r = 0; _r < _mr; _r++) for (int64_t _d = 0; _d < {dv}; _d++) "
              f"_oo[_r*{soi} + _d*{sod}] = _Op[_r*{dv} + _d]; }}\n")
    s += "    }\n"
    if heap:
        s += "    free(_scr);\n"
    s += "  }\n"
    return w.parallel(nbatch * nch, 1, s)
