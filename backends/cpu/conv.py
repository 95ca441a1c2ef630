"""f32 conv on the cpu backend: one packed gemm per (image, group) on the pool, the epilogue fused into each task;
conv_transpose by gemm + col2im.

Two forms of the gemm (SP = output positions, K = Cg * taps), chosen per conv by which fills the 64-wide panels
of the micro-kernel better (`rows_are_positions`):
- O_g[Mg, SP] = W_g[Mg, K] @ col[K, SP]: col is written by the im2col straight in the panel layout of
  backends/cpu/pack.py (64 positions per panel, K rows each, zero padded; a 1x1 stride-1 conv copies its input
  the same way), W is packed at compile time in 6-row blocks (one contiguous stream for the micro-kernel).
- C^T[SP, Mg] = col^T[SP, K] @ W_g^T[K, Mg]: W^T packed in 64-channel panels at compile time, col^T read in
  place from a row-major im2col (or the input itself for a 1x1 stride-1 conv). ResNet's 7x7 (49 positions) and
  14x14 (196) stages take this form: their channels (256..2048) fill every lane where positions fill 77%.
Tasks are (row block) x (group of panels), split so a weight is read by one task where possible. Each task applies
the epilogue (bias / folded BN, ReLU, residual add; in the second form also the transpose to NCHW) to the block it
just computed, while it is in cache, instead of a separate pass over the output.
"""
from __future__ import annotations

import math
import os

from ...ir.kernel import Conv
from .pack import task_split


def emit_conv(w, k: Conv) -> str:
    from .codegen import CodegenError, comp, ctype
    if comp(k.out.buf.dtype) != "float" or ctype(k.x.buf.dtype) != "float" or ctype(k.w.buf.dtype) != "float":
        raise CodegenError("conv is supported for f32 only on the cpu backend")
    geo = k.geometry()
    return emit_transpose(w, k, geo) if geo.transpose else emit_forward(w, k, geo)


def rows_are_positions(k: Conv) -> bool:
    """Which gemm a forward conv with a constant weight becomes: W[Mg, K] @ col[K, SP] (columns = positions), or
    col^T[SP, K] @ W^T[K, Mg] (columns = output channels) when the channels fill the 64-wide panels clearly
    better than the positions do (ResNet's 7x7 and 14x14 stages: 49 of 64 and 196 of 256 lanes busy). With equal
    fill, the second form when K >= 256 and the weight fits in L2: its panels then stay in cache while the
    positions stream (measured 6-19% faster on ResNet's 56x56 3x3 64->64 and 1x1 256->64; with K = 64 or the
    K = 147 stem, 25-35% slower)."""
    geo = k.geometry()
    sp = math.prod(geo.out_spatial)
    fill = lambda n: n / (-(-n // 64) * 64)  # noqa: E731
    K = geo.cg * geo.taps
    if geo.transpose or sp < 6:
        return False
    return fill(geo.mg) > fill(sp) + 0.05 or (fill(geo.mg) >= fill(sp) and K >= 256 and K * geo.mg * 4 <= 1 << 20)


def _task_loop(ngp: int, mc: int, rows: int, pt: int, npan: int) -> str:
    """The head of a pool body over (row block) x (panel group) tasks: rows [_m0, _m1), panels [_pa, _pb)."""
    return (f"  for (int64_t _t = _lo; _t < _hi; _t++) {{\n"
            f"    int64_t _tm = _t / {ngp}, _tp = _t % {ngp};\n"
            f"    int64_t _m0 = _tm * {mc}, _m1 = _m0 + {mc} < {rows} ? _m0 + {mc} : {rows};\n"
            f"    int64_t _pa = _tp * {pt}, _pb = _pa + {pt} < {npan} ? _pa + {pt} : {npan};\n")


def emit_forward(w, k: Conv, geo) -> str:
    N, G, Cg, Mg, KK = geo.n, geo.groups, geo.cg, geo.mg, geo.taps
    osp, ks = geo.out_spatial, geo.kernel
    Wt, O = k.w, k.out
    son, som = O.strides[0], O.strides[1]
    wp, o = w.bn(Wt.buf), w.bn(O.buf)
    SP, K = math.prod(osp), Cg * KK
    plain = k.col is None and all(v == 1 for v in ks) and all(v == 1 for v in k.strides) and not any(k.pads)
    if k.meta.get("f32_direct"):
        return emit_direct(w, k, geo)
    if k.meta.get("f32_rows_are_positions"):
        return emit_positions_as_rows(w, k, geo, plain)
    npan = -(-SP // 64)
    panel_ok = os.environ.get("NNFUSE_CONV_PANEL_IM2COL", "1") != "0"   # "0": the whole-image im2col (A/B runs)
    if panel_ok and len(ks) == 2 and not plain and k.meta.get("f32_rows6") and task_split(npan, Mg, 8)[3] == 1:
        return emit_panel_im2col(w, k, geo)
    ps = K * 64                       # panel stride of the packed col
    s = f"  float* _colp = nnf_f32_scratch({npan * ps}); (void)_colp;\n"
    s += f"  for (int64_t _n = 0; _n < {N}; _n++) for (int64_t _g = 0; _g < {G}; _g++) {{\n"
    s += _im2col(w, k, geo, plain, "64", ps, npan * 64)

    # ---- gemm tasks: (row block of output channels) x (group of panels), epilogue on each block
    pt, ngp, mc, nm = task_split(npan, Mg, 8)
    if k.meta.get("f32_rows6"):   # weight packed in 6-row blocks at compile time (pack.py): one contiguous stream
        a = f"{wp} + {Wt.offset} + _g*{-(-Mg // 6) * 6 * K} + (_m0 / 6)*{6 * K}, {6 * K}, 1, 6"
    else:
        a = f"{wp} + {Wt.offset} + _g*{Mg * K} + _m0*{K}, {6 * K}, {K}, 1"
    body = ("  const float* _B = nnf_f32_buf;\n" + _task_loop(ngp, mc, Mg, pt, npan) +
            f"    float* _O = {o} + {O.offset} + _n*{son} + _g*{Mg * som};\n"
            f"    nnf_gemm_pk(_m1 - _m0, {SP}, {K}, 1.0f, {a}, 0, _B, 64, _pa, _pb, "
            f"_O + _m0*{som}, {som});\n")
    if k.epilogue is not None:
        body += _epilogue(w, k, geo, "_m0", "_m1", "_pa * 64", "_pb * 64")
    body += "  }\n"
    work = Mg * K * SP
    s += "  " + w.parallel(nm * ngp, 1 if work >= 65536 else nm * ngp, body, ("_n", "_g")).lstrip()
    return s + "  }\n"


def direct_conv(k: Conv) -> bool:
    """A stride-1 2-D conv computed directly from a zero-padded copy of its input (`emit_direct`): no im2col.
    Chosen where the virtual output grid (padded width) wastes <= 10 % (ResNet's 56x56 and 28x28 3x3 stages:
    1.75 -> 1.33 and 1.53 -> 1.33 ms; 14x14 with pad 1 wastes 14 %, 7x7 29 %: measured no faster, they keep
    the im2col). NNFUSE_CONV_DIRECT=0 turns it off (A/B runs)."""
    geo = k.geometry()
    if geo.transpose or len(geo.kernel) != 2 or tuple(k.strides) != (1, 1) or geo.taps == 1:
        return False
    pw = geo.in_spatial[1] + k.pads[1] + k.pads[3]
    ow = geo.out_spatial[1]
    return ow > 0 and geo.out_spatial[0] > 0 and (pw - ow) <= 0.1 * ow


def emit_direct(w, k: Conv, geo) -> str:
    """C^T[v, Mg] = A[v, K] @ W_g^T[K, Mg] over the virtual grid v = oy*PW + ox of a zero-padded input xp[Cg][PH][PW]
    (ox in [OW, PW) are computed and dropped): A[v, (c, ky, kx)] = xp[v + c*PH*PW + ky*dy*PW + kx*dx], so the
    micro-kernel reads rows of consecutive positions at a per-k offset (nnf_mkt) and no im2col is written (it is
    9x the activations for a 3x3 conv: ~20 % of the layer's time even per panel in L2). W^T in 64-channel panels
    (pack.py); tasks are (position block) x (channel panels); each writes its block to NCHW through the epilogue."""
    N, G, Cg, Mg = geo.n, geo.groups, geo.cg, geo.mg
    (IH, IW), (OH, OW), (KH, KW) = geo.in_spatial, geo.out_spatial, geo.kernel
    (dy, dx), (pt, pl, pb, pr) = k.dilations, k.pads
    PH, PW = IH + pt + pb, IW + pl + pr
    X, Wt = k.x, k.w
    sxn, sxc = X.strides[0], X.strides[1]
    x, wp = w.bn(X.buf), w.bn(Wt.buf)
    K, NV, plane = Cg * KH * KW, (OH - 1) * PW + OW, PH * PW
    npm = -(-Mg // 64)
    ldt = npm * 64 + 16   # rows not a power-of-two apart
    padded = any((pt, pl, pb, pr))
    s = f"  float* _xp = nnf_f32_scratch({(Cg * plane if padded else 0) + NV * ldt}); (void)_xp;\n"
    s += f"  for (int64_t _n = 0; _n < {N}; _n++) for (int64_t _g = 0; _g < {G}; _g++) {{\n"
    if padded:   # the zero-padded input, by rows (all channels): the pool's thread that takes a block of rows
        # here takes the same rows in the gemm below, and wrote them in the conv before (its share of the rows)
        body = (f"  const float* _x = {x} + {X.offset} + _n*{sxn} + _g*{Cg * sxc};\n"
                f"  for (int64_t _y = _lo; _y < _hi; _y++) {{\n"
                f"    int64_t _iy = _y - {pt};\n"
                f"    for (int64_t _c = 0; _c < {Cg}; _c++) {{\n"
                f"      float* restrict _dr = nnf_f32_buf + _c*{plane} + _y*{PW}; const float* restrict _s = _x + _c*{sxc};\n"
                f"      if (_iy < 0 || _iy >= {IH}) {{ for (int64_t _i = 0; _i < {PW}; _i++) _dr[_i] = 0.0f; continue; }}\n"
                f"      for (int64_t _i = 0; _i < {pl}; _i++) _dr[_i] = 0.0f;\n"
                f"      for (int64_t _i = 0; _i < {IW}; _i++) _dr[{pl} + _i] = _s[_iy*{IW} + _i];\n"
                f"      for (int64_t _i = {pl + IW}; _i < {PW}; _i++) _dr[_i] = 0.0f;\n"
                f"    }}\n  }}\n")
        s += "  " + w.parallel(PH, max(1, PH // 16) if Cg * plane >= 16384 else PH, body, ("_n", "_g")).lstrip()
        a_base = "nnf_f32_buf"
    else:
        a_base = f"{x} + {X.offset} + _n*{sxn} + _g*{Cg * sxc}"
    ct = f"nnf_f32_buf + {Cg * plane if padded else 0}"
    pt_, ngp, mc, nm = task_split(npm, NV, 8)
    body = (f"  const float* _A = {a_base}; float* _Ct = {ct};\n"
            f"  int64_t _koff[{K}];   /* A's offset for each k = (c, ky, kx) */\n"
            f"  for (int64_t _c = 0, _r = 0; _c < {Cg}; _c++) for (int64_t _ky = 0; _ky < {KH}; _ky++)\n"
            f"    for (int64_t _kx = 0; _kx < {KW}; _kx++) _koff[_r++] = _c*{plane} + _ky*{dy * PW} + _kx*{dx};\n"
            + _task_loop(ngp, mc, NV, pt_, npm) +
            f"    nnf_gemm_pk(_m1 - _m0, {Mg}, {K}, 1.0f, _A + _m0, 6, 1, 0, _koff, "
            f"{wp} + {Wt.offset} + _g*{npm * K * 64}, {k.meta['f32_direct']}, _pa, _pb, _Ct + _m0*{ldt}, {ldt});\n"
            # the real output positions of virtual rows [_m0, _m1): whole rows of OW, cut at OW within a row
            f"    int64_t _q0 = (_m0 / {PW})*{OW} + (_m0 % {PW} < {OW} ? _m0 % {PW} : {OW});\n"
            f"    int64_t _q1 = (_m1 / {PW})*{OW} + (_m1 % {PW} < {OW} ? _m1 % {PW} : {OW});\n")
    body += _epilogue(w, k, geo, "_pa * 64", f"(_pb * 64 < {Mg} ? _pb * 64 : {Mg})", "_q0", "_q1",
                      src=f"_Ct[(_p0*{PW} + _p1)*{ldt} + _ml]")
    body += "  }\n"
    s += "  " + w.parallel(nm * ngp, 1, body, ("_n", "_g")).lstrip()
    return s + "  }\n"


def emit_panel_im2col(w, k: Conv, geo) -> str:
    """2-D conv, O_g[Mg, SP] = W_g[Mg, K] @ col[K, SP], tasks = groups of 64-position panels: each task writes the
    im2col of its own panels into a per-thread scratch (K x 64 floats a panel, the packed layout) and runs the
    gemm on it at once, while it is in L2. The whole-image im2col is 9x the activations for a 3x3 conv (7 MB for
    ResNet's 56x56 x 64 stage): written to and read back from L3/DRAM it cost about as much as the gemm."""
    N, G, Cg, Mg = geo.n, geo.groups, geo.cg, geo.mg
    (IH, IW), (OH, OW), (KH, KW) = geo.in_spatial, geo.out_spatial, geo.kernel
    (sy, sx), (dy, dx), (py, px) = k.strides, k.dilations, k.pads[:2]
    X, Wt, O = k.x, k.w, k.out
    sxn, sxc = X.strides[0], X.strides[1]
    son, som = O.strides[0], O.strides[1]
    x, wp, o = w.bn(X.buf), w.bn(Wt.buf), w.bn(O.buf)
    SP, K = OH * OW, Cg * KH * KW
    npan = -(-SP // 64)
    pt, ngp, _, _ = task_split(npan, Mg, 8)
    a = f"{wp} + {Wt.offset} + _g*{-(-Mg // 6) * 6 * K}, {6 * K}, 1, 6"
    body = (f"  float* _cp = nnf_tls(0, {pt * K * 64});\n"
            f"  const float* _x = {x} + {X.offset} + _n*{sxn} + _g*{Cg * sxc};\n"
            f"  for (int64_t _t = _lo; _t < _hi; _t++) {{\n"
            f"    int64_t _pa = _t * {pt}, _pb = _pa + {pt} < {npan} ? _pa + {pt} : {npan};\n"
            f"    for (int64_t _p = _pa; _p < _pb; _p++) {{\n"
            f"      float* _d = _cp + (_p - _pa)*{K * 64};\n"
            f"      int64_t _q0 = _p*64, _q1 = _q0 + 64 < {SP} ? _q0 + 64 : {SP};\n"
            f"      for (int64_t _q = _q0; _q < _q1;) {{   /* runs of one output row */\n"
            f"        int64_t _oy = _q / {OW}, _ox = _q % {OW}, _len = {OW} - _ox < _q1 - _q ? {OW} - _ox : _q1 - _q;\n"
            f"        float* _dq = _d + (_q - _q0);\n"
            f"        for (int64_t _c = 0; _c < {Cg}; _c++) for (int64_t _ky = 0; _ky < {KH}; _ky++) {{\n"
            f"          int64_t _iy = _oy*{sy} - {py} + _ky*{dy};\n"
            f"          float* _dc = _dq + ((_c*{KH} + _ky)*{KW})*64;\n"
            f"          if (_iy < 0 || _iy >= {IH}) {{\n"
            f"            for (int64_t _kx = 0; _kx < {KW}; _kx++) for (int64_t _i = 0; _i < _len; _i++) _dc[_kx*64 + _i] = 0.0f;\n"
            f"            continue;\n          }}\n"
            f"          const float* _xr = _x + _c*{sxc} + _iy*{IW};\n"
            f"          for (int64_t _kx = 0; _kx < {KW}; _kx++) {{\n"
            f"            int64_t _sh = _kx*{dx} - {px};   /* input column of output column o: o*{sx} + _sh */\n"
            f"            int64_t _lo, _hi; nnf_tap_range(_sh, {sx}, {IW}, _ox, _ox + _len, &_lo, &_hi);\n"
            f"            float* restrict _dr = _dc + _kx*64 - _ox; const float* restrict _xs = _xr + _sh;\n"
            + _tap_copy("_dr", "_xs", sx, "_ox", "_lo", "_hi", "_ox + _len", "            ") +
            f"          }}\n        }}\n"
            f"        _q += _len;\n      }}\n"
            f"      if (_q1 - _q0 < 64) for (int64_t _r = 0; _r < {K}; _r++) for (int64_t _i = _q1 - _q0; _i < 64; _i++) _d[_r*64 + _i] = 0.0f;\n"
            f"    }}\n"
            f"    float* _O = {o} + {O.offset} + _n*{son} + _g*{Mg * som};\n"
            f"    nnf_gemm_pk({Mg}, {SP} - _pa*64, {K}, 1.0f, {a}, 0, _cp, 64, 0, _pb - _pa, _O + _pa*64, {som});\n")
    if k.epilogue is not None:
        body += _epilogue(w, k, geo, "0", str(Mg), "_pa * 64", "_pb * 64")
    body += "  }\n"
    s = f"  for (int64_t _n = 0; _n < {N}; _n++) for (int64_t _g = 0; _g < {G}; _g++) {{\n"
    s += "  " + w.parallel(ngp, 1, body, ("_n", "_g")).lstrip()
    return s + "  }\n"


def emit_positions_as_rows(w, k: Conv, geo, plain: bool) -> str:
    """C^T[SP, Mg] = col^T[SP, K] @ W_g^T[K, Mg] with W_g^T packed in 64-channel panels at compile time (pack.py):
    chosen when the output channels fill the panels better than the positions do (7x7 = 49, 14x14 = 196 positions,
    256..2048 channels). col^T is read in place (sam = 1, sak = SP; a 1x1 stride-1 conv reads its input
    directly); each task transposes its block into NCHW through the epilogue, while the block is in cache."""
    N, G, Cg, Mg, KK = geo.n, geo.groups, geo.cg, geo.mg, geo.taps
    X, Wt = k.x, k.w
    sxn, sxc = X.strides[0], X.strides[1]
    x, wp = w.bn(X.buf), w.bn(Wt.buf)
    SP, K = math.prod(geo.out_spatial), Cg * KK
    npm = -(-Mg // 64)
    ldt = npm * 64 + 16   # C^T rows not a power-of-two apart (2048 floats: every row in the same L1 sets)
    colsz = 0 if plain else K * SP
    s = f"  float* _colp = nnf_f32_scratch({colsz + SP * ldt}); (void)_colp;\n"
    s += f"  for (int64_t _n = 0; _n < {N}; _n++) for (int64_t _g = 0; _g < {G}; _g++) {{\n"
    if plain:
        a_base, sak = f"{x} + {X.offset} + _n*{sxn} + _g*{Cg * sxc}", sxc
    else:
        s += _im2col_by_rows(w, k, geo) if len(geo.kernel) == 2 else _im2col(w, k, geo, False, str(SP), 64, SP)
        a_base, sak = "nnf_f32_buf", SP
    pt, ngp, mc, nm = task_split(npm, SP, 8)
    body = (f"  const float* _A = {a_base}; float* _Ct = nnf_f32_buf + {colsz};\n" + _task_loop(ngp, mc, SP, pt, npm) +
            f"    nnf_gemm_pk(_m1 - _m0, {Mg}, {K}, 1.0f, _A + _m0, 6, 1, {sak}, 0, "
            f"{wp} + {Wt.offset} + _g*{npm * K * 64}, {k.meta['f32_rows_are_positions']}, _pa, _pb, _Ct + _m0*{ldt}, {ldt});\n")
    body += _epilogue(w, k, geo, "_pa * 64", f"(_pb * 64 < {Mg} ? _pb * 64 : {Mg})", "_m0", "_m1",
                      src=f"_Ct[_qq*{ldt} + _ml]")
    body += "  }\n"
    work = Mg * K * SP
    s += "  " + w.parallel(nm * ngp, 1 if work >= 65536 else nm * ngp, body, ("_n", "_g")).lstrip()
    return s + "  }\n"


def _tap_copy(dst: str, src: str, st, o0: str, lo: str, hi: str, o1, ind: str) -> str:
    """One im2col row segment of a tap: dst[o] = src[o*st] for o in [lo, hi), zeros on [o0, lo) and [hi, o1)."""
    return (f"{ind}for (int64_t _o = {o0}; _o < {lo}; _o++) {dst}[_o] = 0.0f;\n"
            f"{ind}for (int64_t _o = {lo}; _o < {hi}; _o++) {dst}[_o] = {src}[_o*{st}];\n"
            f"{ind}for (int64_t _o = {hi}; _o < {o1}; _o++) {dst}[_o] = 0.0f;\n")


def _tap_nest(k: Conv, ks: tuple, KK: int, extents: tuple, ind: str) -> tuple[str, str]:
    """For im2col row _r = (c, k0, k1, ...): its channel _c and taps _k{j}, then loops over the tap's positions
    _o{j} on every axis but the last with their input index _i{j}. Returns (code, indent inside the loops)."""
    t = f"{ind}int64_t _c = _r / {KK}; (void)_c;\n"
    rem = KK
    for j in range(len(ks)):
        rem //= ks[j]
        t += f"{ind}int64_t _k{j} = (_r / {rem}) % {ks[j]};\n"
    for j in range(len(ks) - 1):
        t += f"{ind}for (int64_t _o{j} = 0; _o{j} < {extents[j]}; _o{j}++) {{\n"
        ind += "  "
        t += f"{ind}int64_t _i{j} = _o{j}*{k.strides[j]} - {k.pads[j]} + _k{j}*{k.dilations[j]};\n"
    return t, ind


def _im2col(w, k: Conv, geo, plain: bool, rowlen: str, ps: int, padded: int) -> str:
    """col rows (one per (c, tap)) into nnf_f32_buf, row r at r*rowlen, position q at (q/64)*ps + q%64: the panel
    layout (rowlen 64, ps = 64K) or plain row-major (rowlen SP, ps 64). Positions [SP, padded) are zeroed.
    Rows are the pool's tasks."""
    nd = len(geo.kernel)
    Cg, KK = geo.cg, geo.taps
    isp, osp, ks = geo.in_spatial, geo.out_spatial, geo.kernel
    X = k.x
    sxn, sxc = X.strides[0], X.strides[1]
    x = w.bn(X.buf)
    SP, K = math.prod(osp), Cg * KK
    body = (f"  float* _B = nnf_f32_buf;\n  for (int64_t _r = _lo; _r < _hi; _r++) {{\n"
            f"    const float* _x = {x} + {X.offset} + _n*{sxn} + _g*{Cg * sxc};\n"
            f"    float* _d = _B + _r*{rowlen};\n")
    if plain:
        body += f"    nnf_row_put(_d, {ps}, 0, {SP}, _x + _r*{sxc}, 1);\n"
    else:
        nest, ind = _tap_nest(k, ks, KK, osp, "    ")
        body += nest
        L = nd - 1
        sm, st, dl, pd = osp[L], k.strides[L], k.dilations[L], k.pads[L]
        q0 = " + ".join([f"_o{j}*{math.prod(osp[j + 1:])}" for j in range(nd - 1)] + ["0"])
        boff = " + ".join([f"_i{j}*{math.prod(isp[j + 1:])}" for j in range(nd - 1)] + ["0"])
        body += f"{ind}int64_t _q = {q0};\n"
        if nd > 1:
            cond = " || ".join(f"_i{j} < 0 || _i{j} >= {isp[j]}" for j in range(nd - 1))
            body += f"{ind}if ({cond}) {{ nnf_row_put(_d, {ps}, _q, {sm}, 0, 0); continue; }}\n"
        # the valid outputs of this tap along the last axis: 0 <= o*st + sh < in  <=>  o in [lo, hi)
        body += (f"{ind}int64_t _sh = _k{L}*{dl} - {pd};\n"
                 f"{ind}int64_t _a, _b; nnf_tap_range(_sh, {st}, {isp[L]}, 0, {sm}, &_a, &_b);\n")
        src = f"_x + _c*{sxc} + {boff} + _sh"
        if ps == 64:   # row-major col: plain loops with constant strides (they vectorize), no panel bookkeeping
            body += (f"{ind}{{ float* restrict _dq = _d + _q; const float* restrict _xs = {src};\n"
                     + _tap_copy("_dq", "_xs", st, "0", "_a", "_b", sm, ind + "  ") + f"{ind}}}\n")
        else:
            body += (f"{ind}nnf_row_put(_d, {ps}, _q, _a, 0, 0);\n"
                     f"{ind}nnf_row_put(_d, {ps}, _q + _a, _b - _a, {src} + _a*{st}, {st});\n"
                     f"{ind}nnf_row_put(_d, {ps}, _q + _b, {sm} - _b, 0, 0);\n")
        for j in reversed(range(nd - 1)):
            ind = ind[:-2]
            body += f"{ind}}}\n"
    if padded > SP:
        body += f"    nnf_row_put(_d, {ps}, {SP}, {padded - SP}, 0, 0);\n"
    body += "  }\n"
    return "  " + w.parallel(K, max(1, K // 16), body, ("_n", "_g")).lstrip()


def _im2col_by_rows(w, k: Conv, geo) -> str:
    """The row-major col[K, SP] of a 2-D conv (row r = (c, ky, kx) at r*SP) into nnf_f32_buf, the pool's tasks
    being blocks of output rows (all K rows of each): a thread's share is a share of the positions, the same one
    it computes in the positions-as-rows gemm that follows and that it wrote in the conv before (the pool's
    shares), so the im2col reads and the gemm's A come from its own cache, not the other core's."""
    Cg, KK = geo.cg, geo.taps
    (IH, IW), (OH, OW), (KH, KW) = geo.in_spatial, geo.out_spatial, geo.kernel
    (sy, sx), (dy, dx), (py, px) = k.strides, k.dilations, k.pads[:2]
    X = k.x
    sxn, sxc = X.strides[0], X.strides[1]
    SP, K = OH * OW, Cg * KK
    body = (f"  const float* _x = {w.bn(X.buf)} + {X.offset} + _n*{sxn} + _g*{Cg * sxc};\n"
            f"  for (int64_t _oy = _lo; _oy < _hi; _oy++) {{\n"
            f"    for (int64_t _c = 0; _c < {Cg}; _c++) for (int64_t _ky = 0; _ky < {KH}; _ky++) {{\n"
            f"      int64_t _iy = _oy*{sy} - {py} + _ky*{dy};\n"
            f"      float* _dc = nnf_f32_buf + ((_c*{KH} + _ky)*{KW})*{SP} + _oy*{OW};\n"
            f"      if (_iy < 0 || _iy >= {IH}) {{\n"
            f"        for (int64_t _kx = 0; _kx < {KW}; _kx++) for (int64_t _o = 0; _o < {OW}; _o++) _dc[_kx*{SP} + _o] = 0.0f;\n"
            f"        continue;\n      }}\n"
            f"      const float* _xr = _x + _c*{sxc} + _iy*{IW};\n"
            f"      for (int64_t _kx = 0; _kx < {KW}; _kx++) {{\n"
            f"        int64_t _sh = _kx*{dx} - {px}, _a, _b; nnf_tap_range(_sh, {sx}, {IW}, 0, {OW}, &_a, &_b);\n"
            f"        float* restrict _dr = _dc + _kx*{SP}; const float* restrict _xs = _xr + _sh;\n"
            + _tap_copy("_dr", "_xs", sx, "0", "_a", "_b", OW, "        ") +
            f"      }}\n    }}\n  }}\n")
    return "  " + w.parallel(OH, max(1, OH // 16), body, ("_n", "_g")).lstrip()


def _epilogue(w, k: Conv, geo, c0: str, c1: str, q0: str, q1: str, src: str = "") -> str:
    """The epilogue over the block just computed: channels [c0, c1) of group _g, positions [q0, q1), walked row
    by row of the last spatial axis so the innermost loop is contiguous (it vectorizes). src: where the
    accumulator comes from (default: the output element itself); it may use _qq (flat position) and _ml."""
    nd = len(geo.kernel)
    osp, Mg = geo.out_spatial, geo.mg
    O = k.out
    son, som = O.strides[0], O.strides[1]
    SP, W = math.prod(osp), osp[-1]
    names = ["_n", "_m"] + [f"_p{j}" for j in range(nd)]
    em = w.emitter(names, {"acc": "_acc"})
    opos = " + ".join(f"_p{j}*{math.prod(osp[j + 1:])}" for j in range(nd))
    ref = f"{w.bn(O.buf)}[{O.offset} + _n*{son} + _m*{som} + {opos}]"
    dec, rem = "", SP // W
    for j in range(nd - 1):
        rem //= osp[j]
        dec += f"_p{j} = (_row / {rem}) % {osp[j]}; "
    pdecl = ", ".join(f"_p{j}" for j in range(nd - 1))
    val = em.expr(k.epilogue) if k.epilogue is not None else "_acc"
    src = src or ref
    return (f"    for (int64_t _ml = {c0}; _ml < {c1}; _ml++) {{\n"
            f"      int64_t _m = _g*{Mg} + _ml;\n"
            f"      int64_t _q = {q0}, _qe = {q1} < {SP} ? {q1} : {SP};\n"
            f"      while (_q < _qe) {{\n"
            f"        int64_t _row = _q / {W}, _s = _q % {W}, _e = _s + (_qe - _q) < {W} ? _s + (_qe - _q) : {W};\n"
            + (f"        int64_t {pdecl}; {dec}\n" if nd > 1 else "        (void)_row;\n")
            + f"        for (int64_t _p{nd - 1} = _s; _p{nd - 1} < _e; _p{nd - 1}++) {{ int64_t _qq = _q - _s + _p{nd - 1}; (void)_qq; "
              f"float _acc = {src}; {ref} = {val}; }}\n"
            f"        _q += _e - _s;\n      }}\n    }}\n")


def emit_transpose(w, k: Conv, geo) -> str:
    """col[Mg*KK, SP] = W_g^T @ x_g (one gemm into the scratch), then col2im scatter-add into the zeroed output."""
    nd = len(geo.kernel)
    N, M, G, Cg, Mg, KK = geo.n, geo.m, geo.groups, geo.cg, geo.mg, geo.taps
    isp, osp, ks = geo.in_spatial, geo.out_spatial, geo.kernel
    X, Wt, O = k.x, k.w, k.out
    sxn, sxc = X.strides[0], X.strides[1]
    son, som = O.strides[0], O.strides[1]
    x, wp, o = w.bn(X.buf), w.bn(Wt.buf), w.bn(O.buf)
    small, big = isp, osp          # the taps index the input; the output is scattered into
    SP, BP = math.prod(small), math.prod(big)
    col = f"{w.bn(k.col.buf)} + {k.col.offset}"
    s = f"  for (int64_t _n = 0; _n < {N}; _n++) for (int64_t _g = 0; _g < {G}; _g++) {{\n"
    s += f"    const float* _x = {x} + {X.offset} + _n*{sxn} + _g*{Cg * sxc};\n"
    s += f"    float* _O = {o} + {O.offset} + _n*{son} + _g*{Mg * som};\n"
    # W_g is [Cg, Mg*KK] row-major
    s += f"    nnf_gemm_f32(1, {Mg * KK}, {SP}, {Cg}, {wp} + {Wt.offset} + _g*{Cg * Mg * KK}, {Mg * KK}, _x, {sxc}, {col}, {SP});\n"
    s += f"    for (int64_t _m = 0; _m < {Mg}; _m++) for (int64_t _p = 0; _p < {BP}; _p++) _O[_m*{som} + _p] = 0.0f;\n"
    # rows of one output channel must not be scattered by two threads at once: parallel over channels only
    t = f"    #pragma omp parallel for schedule(static) num_threads(nnf_get_threads())\n    for (int64_t _cc = 0; _cc < {Mg}; _cc++) for (int64_t _r = _cc*{KK}; _r < (_cc+1)*{KK}; _r++) {{\n"
    t += f"      float* restrict _d = {col} + _r*{SP};\n"
    nest, ind = _tap_nest(k, ks, KK, small, "      ")
    t += nest
    soff = " + ".join([f"_o{j}*{math.prod(small[j + 1:])}" for j in range(nd - 1)] + ["0"])
    boff = " + ".join([f"_i{j}*{math.prod(big[j + 1:])}" for j in range(nd - 1)] + ["0"])
    L = nd - 1
    st, dl, pd = k.strides[L], k.dilations[L], k.pads[L]
    t += f"{ind}float* restrict _dr = _d + {soff}; (void)_dr;\n"
    if nd > 1:
        cond = " || ".join(f"_i{j} < 0 || _i{j} >= {big[j]}" for j in range(nd - 1))
        t += f"{ind}if ({cond}) {{ continue; }}\n"
    t += f"{ind}int64_t _b0 = {boff}; int64_t _sh = _k{L}*{dl} - {pd};\n"
    t += f"{ind}int64_t _lo, _hi; nnf_tap_range(_sh, {st}, {big[L]}, 0, {small[L]}, &_lo, &_hi);\n"
    t += (f"{ind}float* _orow = _O + _c*{som} + _b0; for (int64_t _o = _lo; _o < _hi; _o++) "
          f"_orow[_o*{st} + _sh] += _dr[_o];\n")
    for j in reversed(range(nd - 1)):
        ind = ind[:-2]
        t += f"{ind}}}\n"
    s += t + "    }\n  }\n"
    if k.epilogue is not None:
        names = ["_n", "_m"] + [f"_p{j}" for j in range(nd)]
        em = w.emitter(names, {"acc": "_acc"})
        opos = " + ".join(f"_p{j}*{math.prod(osp[j + 1:])}" for j in range(nd))
        ref = f"{o}[{O.offset} + _n*{son} + _m*{som} + {opos}]"
        loops = " ".join(f"for (int64_t _p{j} = 0; _p{j} < {osp[j]}; _p{j}++)" for j in range(nd))
        body = (f"  for (int64_t _f = _lo; _f < _hi; _f++) {{\n    int64_t _n = _f / {M}, _m = _f % {M};\n"
                f"    {loops} {{ float _acc = {ref}; {ref} = {em.expr(k.epilogue)}; }}\n  }}\n")
        s += w.parallel(N * M, max(1, N * M // 16), body)
    return s
