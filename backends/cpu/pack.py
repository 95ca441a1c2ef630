"""f32 gemm with B in 64-column panels: compile-time packing of constant weights, and the C that reads the layout.

Packed layout: panel j holds B[0:K, 64j:64j+64] as K rows of 64 floats, one panel after the other (panel stride
K*64), the last one zero padded. The micro-kernel (NNF_MK in codegen's prelude, ldb = 64) then streams B
contiguously: the hardware prefetcher follows one stream instead of K rows 4*N bytes apart. A ragged last panel
(N % 64) is computed at full width into a 6x64 tile and only its N % 64 valid columns are copied out, so every
column runs through the vector kernel (no scalar tail loop, no ISA-specific masks: portable to any gcc target).

Weights are packed once per compile (`pack_program`); runtime B operands (a conv's im2col) are written straight
in this layout by the conv writer (backends/cpu/conv.py) into a scratch buffer.
"""
from __future__ import annotations

import os

import numpy as np

from ...ir.dtypes import dtype as to_dtype
from ...ir.kernel import Access, Buffer, Conv, Gemm, Program
from ...passes.lower import cstrides

PANEL = 64
KC = 256   # the K block of nnf_gemm_pk (C): a packed sub-panel layout is per K block

C_SOURCE = r"""
#include <stdio.h>
/* ---- f32 gemm over 64-column panels of B (backends/cpu/pack.py) ---- */
/* rows [0, M) of one 64-column block of C over kc steps of k; b: kc rows of 64 floats. nw < 64 (a ragged last
   panel): computed at full width into a tile, nw columns copied out. */
static void nnf_panel_rows(int64_t M, int64_t nw, int64_t kc, int first, float sc, const float* A, int64_t sab,
                           int64_t sam, int64_t sak, const int64_t* koff, const float* b, int64_t psw, float* C,
                           int64_t ldc) {
  float tile[96 * 64] __attribute__((aligned(64)));
  float* c = C; int64_t lc = ldc;
  if (nw < 64) {   /* ragged: a zero-padded tile (no denormal/NaN garbage in the unused columns) */
    if (M > 96) {
      for (int64_t m = 0; m < M; m += 96)
        nnf_panel_rows(M - m < 96 ? M - m : 96, nw, kc, first, sc, A + (m / 6) * sab, sab, sam, sak, koff, b, psw,
                       C + m * ldc, ldc);
      return;
    }
    memset(tile, 0, sizeof(float) * 64 * M);
    if (!first) for (int64_t r = 0; r < M; r++) for (int64_t j = 0; j < nw; j++) tile[r * 64 + j] = C[r * ldc + j];
    c = tile; lc = 64;
  }
  int linear = sab == 6 * sam;   /* a strided A: any row split; a 6-row-block A: runs stay inside a block */
  /* slices outermost: one slice of B (kc x NNF_SW, 16 KiB at kc 256 on AVX2) stays in L1 across the row blocks */
  for (int s = 0; s < 64; s += NNF_SW) {
    if (s >= nw) break;
    /* slice s: columns s.. of the block; in sub-panels of psw columns (kc*psw floats each) its vectors lie in one
       sub-panel (NNF_VW < psw) or one per sub-panel (NNF_VW == psw, AVX-512 on a 16-wide layout) */
    const float* bs = b + (s / psw) * kc * psw + s % psw;
    const int64_t vs = NNF_VW < psw ? NNF_VW : kc * psw;
    for (int64_t m = 0; m < M;) {
      int64_t rem = M - m;
      int mr = (rem == 7 || rem == 8) && linear ? 4 : rem >= 6 ? 6 : (int)rem;   /* 32 rows: 4 x 6 + 4 + 4, not 5 x 6 + 2 */
      const float* a = A + (m / 6) * sab + (m % 6) * sam;   /* a run of mr rows never crosses a 6-row block */
      float* t = c + m * lc + s;
      if (koff) switch (mr) {   /* a direct convolution: A[r, k] = a[r + koff[k]] */
        case 6: nnf_mkt6(kc, first, sc, a, koff, bs, psw, vs, t, lc); break;
        case 5: nnf_mkt5(kc, first, sc, a, koff, bs, psw, vs, t, lc); break;
        case 4: nnf_mkt4(kc, first, sc, a, koff, bs, psw, vs, t, lc); break;
        case 3: nnf_mkt3(kc, first, sc, a, koff, bs, psw, vs, t, lc); break;
        case 2: nnf_mkt2(kc, first, sc, a, koff, bs, psw, vs, t, lc); break;
        default: nnf_mkt1(kc, first, sc, a, koff, bs, psw, vs, t, lc); break;
      } else switch (mr) {
        case 6: nnf_mks6(kc, first, sc, a, sam, sak, bs, psw, vs, t, lc); break;
        case 5: nnf_mks5(kc, first, sc, a, sam, sak, bs, psw, vs, t, lc); break;
        case 4: nnf_mks4(kc, first, sc, a, sam, sak, bs, psw, vs, t, lc); break;
        case 3: nnf_mks3(kc, first, sc, a, sam, sak, bs, psw, vs, t, lc); break;
        case 2: nnf_mks2(kc, first, sc, a, sam, sak, bs, psw, vs, t, lc); break;
        default: nnf_mks1(kc, first, sc, a, sam, sak, bs, psw, vs, t, lc); break;
      }
      m += mr;
    }
  }
  if (nw < 64) for (int64_t r = 0; r < M; r++) for (int64_t j = 0; j < nw; j++) C[r * ldc + j] = tile[r * 64 + j];
}
/* C[0:M, 64*p0 : min(64*p1, N)] = alpha * A @ B with B packed (K rows per panel). A[m, k] is at
   (m / 6) * sab + (m % 6) * sam + k * sak: a strided matrix (sab = 6 * sam), or a weight packed in 6-row blocks
   (sab = 6K, sam = 1, sak = 6) so that the micro-kernel reads it as one contiguous stream; with koff (a direct
   convolution: sab = 6, sam = 1) at m + koff[k]. K blocked by 256 (a panel block,
   64 KiB, stays in L2), rows blocked by 96 (an A block, 96 KiB, stays in L2 across the panels of the call). */
static void nnf_gemm_pk(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t sab, int64_t sam,
                        int64_t sak, const int64_t* koff, const float* Bp, int64_t psw, int64_t p0, int64_t p1,
                        float* C, int64_t ldc) {
  const int64_t KC = 256, MC = 96;
  if (K <= 0) {
    for (int64_t m = 0; m < M; m++) for (int64_t n = p0 * 64; n < p1 * 64 && n < N; n++) C[m * ldc + n] = 0;
    return;
  }
  for (int64_t k0 = 0; k0 < K; k0 += KC) {
    int64_t kc = K - k0 < KC ? K - k0 : KC;
    int first = k0 == 0;
    float sc = k0 + kc >= K ? alpha : 1.0f;
    for (int64_t m0 = 0; m0 < M; m0 += MC) {
      int64_t mc = M - m0 < MC ? M - m0 : MC;
      for (int64_t p = p0; p < p1; p++) {
        int64_t n = p * 64, nw = N - n < 64 ? N - n : 64;
        nnf_panel_rows(mc, nw, kc, first, sc, A + (m0 / 6) * sab + (koff ? 0 : k0 * sak), sab, sam, sak,
                       koff ? koff + k0 : 0, Bp + p * K * 64 + k0 * 64, psw, C + m0 * ldc + n, ldc);
      }
    }
  }
}
/* Write cnt values s[0], s[st], ... (zeros when s is NULL) at positions q.. of one k row of a packed operand
   (d: that row in panel 0; ps: the panel stride). Split at panel edges so the copies are contiguous loops. */
static inline void nnf_row_put(float* d, int64_t ps, int64_t q, int64_t cnt, const float* s, int64_t st) {
  while (cnt > 0) {
    int64_t len = 64 - (q & 63); if (len > cnt) len = cnt;
    float* restrict o = d + (q >> 6) * ps + (q & 63);
    if (!s) for (int64_t i = 0; i < len; i++) o[i] = 0.0f;
    else if (st == 1) for (int64_t i = 0; i < len; i++) o[i] = s[i];
    else if (st == 2) for (int64_t i = 0; i < len; i++) o[i] = s[2 * i];   /* a constant stride: vectorized */
    else for (int64_t i = 0; i < len; i++) o[i] = s[i * st];
    if (s) s += len * st;
    q += len; cnt -= len;
  }
}
/* The outputs o in [o0, o1) of one conv tap whose input index o*st + sh lies in [0, n): [*a, *b), empty as
   a == b (then clamped into [o0, o1], so the zero fills before a and after b stay inside the run). */
static inline void nnf_tap_range(int64_t sh, int64_t st, int64_t n, int64_t o0, int64_t o1, int64_t* a, int64_t* b) {
  int64_t lo = sh >= 0 ? 0 : (-sh + st - 1) / st, hi = n - sh <= 0 ? 0 : (n - sh + st - 1) / st;
  if (lo < o0) lo = o0; if (lo > o1) lo = o1;
  if (hi > o1) hi = o1; if (hi < lo) hi = lo;
  *a = lo; *b = hi;
}
/* Per-thread growing float scratch buffers, one per slot (the pool's tasks each pack their own operand block):
   0 conv panel im2col (conv.py, bf16.py), 1-2 bf16 widening of A and B, 3 the f32 tile of a bf16 gemm or conv. */
static float* nnf_tls(int slot, int64_t n) {
  static __thread float* buf[4]; static __thread int64_t cap[4];
  if (n > cap[slot]) {
    free(buf[slot]);
    buf[slot] = (float*)aligned_alloc(64, (size_t)((n * 4 + 63) / 64 * 64));
    if (!buf[slot]) { fprintf(stderr, "nnfuse cpu: out of memory for a %lld-float scratch\n", (long long)n); abort(); }
    cap[slot] = n;
  }
  return buf[slot];
}
/* One growing scratch buffer for runtime-packed operands, taken by the calling thread before a parallel region
   (kernels run one after the other, so one buffer serves them all). */
static float* nnf_f32_buf = 0;
static int64_t nnf_f32_cap = 0;
static float* nnf_f32_scratch(int64_t n) {
  if (n > nnf_f32_cap) {
    free(nnf_f32_buf);
    nnf_f32_buf = (float*)aligned_alloc(64, (size_t)((n * 4 + 63) / 64 * 64));
    if (!nnf_f32_buf) { fprintf(stderr, "nnfuse cpu: out of memory for a %lld-float scratch\n", (long long)n); abort(); }
    nnf_f32_cap = n;
  }
  return nnf_f32_buf;
}
"""


def task_split(npan: int, rows: int, target: int) -> tuple[int, int, int, int]:
    """(panels per task, panel groups, rows per task, row blocks) for about `target` pool tasks (handed out
    dynamically). Rows are split only when there are fewer than `target` panel groups, since every row block
    reads its panels again (weights, when the panels are a packed weight); row blocks of >= 24 rows, multiples
    of 6 (the micro-kernel's height; 6-row blocks of a packed A start on a block), so A is reused across panels."""
    pt = max(1, npan // target)   # rounded down: rather a few more panel groups than a row split
    ngp = -(-npan // pt)
    nm = max(1, min(-(-target // ngp), -(-rows // 24)))
    mc = min(rows, -(-(-(-rows // nm)) // 6) * 6)
    return pt, ngp, mc, -(-rows // mc)


def packable(k: Gemm) -> bool:
    """An f32 gemm whose B is a constant shared by every batch index (a weight): worth packing once."""
    if k.meta.get("quant") or k.meta.get("bf16_packed") or not isinstance(k.b, Access):
        return False
    a, b, o = k.a, k.b, k.out
    return (a.buf.dtype.name == b.buf.dtype.name == o.buf.dtype.name == "f32" and b.buf.kind == "const"
            and all(s == 0 for s in b.strides[:len(k.batch)]) and k.n >= 1 and k.k >= 1)


def strided_matrix(p: Program, acc: Access, rows: int, cols: int) -> np.ndarray:
    """The [rows, cols] matrix of a constant that an access reads (strides of its last two axes), as a view."""
    src = p.const_data[acc.buf.index].reshape(-1)
    item = src.itemsize
    return np.lib.stride_tricks.as_strided(src[acc.offset:], (rows, cols), (acc.strides[-2] * item, acc.strides[-1] * item))


def sub_panel() -> int:
    """Sub-panel width of compile-time packed f32 panels: the micro-kernel's slice width on this target. AVX-512
    reads a 64-column row per k step (one stream); a 16-register target reads 16-column slices, which in 64-wide
    rows sit 256 bytes apart (L1 set conflicts: the slice is served from L2), so there each K block of a panel
    stores its four 16-column sub-panels one after the other (+7 % on a Zen 3 core, same process).
    NNFUSE_F32_SUBPANEL=64 forces plain rows (A/B runs)."""
    from .build import find_compiler, target_macros
    forced = os.environ.get("NNFUSE_F32_SUBPANEL")
    if forced in ("16", "64"):
        return int(forced)
    return 64 if "__AVX512F__" in target_macros(find_compiler()) else 16


def pack_panels(w: np.ndarray, psw: int = PANEL) -> np.ndarray:
    """[K, N] -> panels [ceil(N/64)][K][64] (zero padded), flattened; with psw < 64 each K block of KC rows (the
    kernel's K block, fewer in the last) holds its 64 / psw sub-panels of [rows][psw] one after the other."""
    K, N = w.shape
    NP = -(-N // PANEL)
    buf = np.zeros((K, NP * PANEL), dtype=np.float32)
    buf[:, :N] = w
    pan = buf.reshape(K, NP, PANEL).transpose(1, 0, 2)                # [NP][K][64]
    if psw < PANEL:
        blocks = [pan[:, k0:k0 + KC].reshape(NP, -1, PANEL // psw, psw).transpose(0, 2, 1, 3).reshape(NP, -1, PANEL)
                  for k0 in range(0, K, KC)]
        pan = np.concatenate(blocks, axis=1)
    return np.ascontiguousarray(pan).reshape(-1)


def aligned(arr: np.ndarray, align: int = 64) -> np.ndarray:
    """`arr` (flattened) at an `align`-byte aligned address: numpy only guarantees 16, and a vector load that crosses
    a cache line costs two (32-byte loads from a 16-byte aligned panel: ~10% of the gemm time on a Zen 3 core)."""
    flat = np.ascontiguousarray(arr).reshape(-1)
    if flat.ctypes.data % align == 0:
        return flat
    raw = np.empty(flat.nbytes + align, np.uint8)
    off = (-raw.ctypes.data) % align
    out = raw[off:off + flat.nbytes].view(flat.dtype)
    out[...] = flat
    return out


def add_const(p: Program, arr: np.ndarray, label: str, dt=None) -> Buffer:
    """A new const buffer of `p` holding a compile-time packed copy `arr` (stored 64-byte aligned)."""
    arr = aligned(arr)
    b = Buffer(f"w{len(p.consts)}", dt or to_dtype(arr.dtype), int(arr.size), "const", len(p.consts), label=label)
    p.consts.append(b)
    p.const_data.append(arr)
    return b


def drop_unread(p: Program, dtypes=("f32",)) -> None:
    """Consts no kernel reads any more (packed copies replaced them) are not passed to the call."""
    used = {id(a.buf) for kk in p.kernels for a in kk.reads()}
    used |= {id(p.consts[j]) for kind, j in p.output_aliases.values() if kind == "const"}
    for i, (b, arr) in enumerate(zip(p.consts, p.const_data)):
        if id(b) not in used and b.dtype.name in dtypes and b.numel > 1:
            p.const_data[i] = np.zeros(1, arr.dtype)
            b.numel = 1


def pack_rows6(w: np.ndarray) -> np.ndarray:
    """[G, M, K] (a conv weight per group) -> [G][ceil(M/6)][K][6] (zero padded rows), flattened: the A operand
    layout of nnf_gemm_pk with sab = 6K, sam = 1, sak = 6."""
    G, M, K = w.shape
    MB = -(-M // 6)
    buf = np.zeros((G, MB * 6, K), dtype=np.float32)
    buf[:, :M] = w
    return np.ascontiguousarray(buf.reshape(G, MB, 6, K).transpose(0, 1, 3, 2)).reshape(-1)


def conv_packable(k: Conv) -> bool:
    """An f32 forward conv with a constant weight (the bf16 path packs its own)."""
    return (not k.meta.get("transpose") and not k.meta.get("bf16_packed") and k.w.buf.kind == "const"
            and k.x.buf.dtype.name == k.w.buf.dtype.name == k.out.buf.dtype.name == "f32"
            and tuple(k.w.strides) == cstrides((k.out_shape[1], k.in_shape[1] // max(k.group, 1)) + tuple(k.kernel)))


def pack_program(p: Program) -> int:
    """Give every packable f32 gemm its weight in 64-column panels and every f32 conv its weight in 6-row blocks
    (new const buffers), at compile time; a weight read by several kernels the same way is packed once."""
    if os.environ.get("NNFUSE_F32_PACK", "1") == "0":   # A/B comparisons: the unpacked kernels, same program otherwise
        return 0
    done: dict[tuple, Buffer] = {}
    n = 0
    psw = sub_panel()
    for k in p.kernels:
        if isinstance(k, Conv) and conv_packable(k):
            geo = k.geometry()
            K = geo.cg * geo.taps
            src = p.const_data[k.w.buf.index].reshape(-1)[k.w.offset:k.w.offset + geo.m * K]
            key = ("conv", id(k.w.buf), k.w.offset, geo.m, K, geo.groups)
            from .conv import direct_conv, rows_are_positions
            form = ("f32_direct" if direct_conv(k) and os.environ.get("NNFUSE_CONV_DIRECT", "1") != "0"
                    else "f32_rows_are_positions" if rows_are_positions(k) else "f32_rows6")
            pos = form != "f32_rows6"   # the direct and positions-as-rows forms read W^T panels
            key += (pos,)
            if key not in done:
                wg = src.reshape(geo.groups, geo.mg, K)
                arr = (np.concatenate([pack_panels(wg[j].T, psw) for j in range(geo.groups)]) if pos else pack_rows6(wg))
                done[key] = add_const(p, arr, k.w.buf.label + (" (f32 W^T panels)" if pos else " (f32 6-row blocks)"))
            k.w = Access(done[key], 0, (1,))
            k.meta[form] = psw if pos else True
            n += 1
            continue
        if not (isinstance(k, Gemm) and packable(k)):
            continue
        b = k.b
        key = (id(b.buf), b.offset, b.strides[-2:], k.k, k.n)
        nb = done.get(key)
        if nb is None:
            nb = done[key] = add_const(p, pack_panels(strided_matrix(p, b, k.k, k.n), psw), b.buf.label + " (f32 panels)")
        k.b = Access(nb, 0, (0,) * len(k.batch) + (PANEL, 1))   # read through the panel layout (meta), not these strides
        k.meta["f32_packed"] = psw   # the sub-panel width the C reads the layout with
        n += 1
    if n:
        drop_unread(p)
    return n
