"""bf16 GEMM on the cpu backend: bf16 A and B, products and sums in f32, f32 result (+ the fused epilogue).

B (a constant weight) is packed once, at compile time, in the layout the micro-kernels read: panels of 64
columns; inside a panel, for each pair of k rows, the 64 columns as (B[2p, n], B[2p+1, n]) pairs — the
operand layout of `vdpbf16ps` (one 512-bit load = 16 columns x 2 k) and of an AMX B tile (rows = k pairs).
N is padded to 64 and K to even with zeros. A (the activation, rounded to bf16 once by the kernel before)
is read row-major; each row's k pair is broadcast as one 32-bit lane.

Three paths, chosen by the compiler's target macros under -march=native (reported by `nnf_bf16_path`):
- `amx-bf16`   (__AMX_TILE__ + __AMX_BF16__): 16x64 output blocks with 4 accumulator tiles; Linux grants the
               tile state once per process via arch_prctl(ARCH_REQ_XCOMP_PERM). Compile-tested here only.
- `avx512bf16` (__AVX512BF16__): 6x64 register tile of `_mm512_dpbf16_ps`, 24 accumulators.
- `widening`   (anything else): the same loops widening bf16 to f32 with shifts (GCC vector extensions).
Define NNF_NO_AMX / NNF_NO_AVX512BF16 to force a lower path (tests compare the paths that way).
"""
from __future__ import annotations

import os
import warnings
from typing import Optional

import numpy as np

from ...ir.dtypes import dtype as to_dtype
from ...ir.kernel import Access, Attention, Buffer, Conv, Gemm, Program
from .pack import add_const, drop_unread

PANEL = 64

C_SOURCE = r"""
/* ---- bf16 gemm (backends/cpu/bf16.py) ---- */
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && !defined(NNF_NO_AMX) && !defined(NNF_NO_AVX512BF16)
#define NNF_AMX 1
#endif
#if defined(__AVX512BF16__) && !defined(NNF_NO_AVX512BF16)
#define NNF_AVX512BF16 1
#endif
#include <immintrin.h>
#if defined(NNF_AMX)
#include <unistd.h>
#include <sys/syscall.h>
const char* nnf_bf16_path(void) { return "amx-bf16"; }
#elif defined(NNF_AVX512BF16)
const char* nnf_bf16_path(void) { return "avx512bf16"; }
#else
const char* nnf_bf16_path(void) { return "widening"; }
#endif
/* the k pair (a[2p], a[2p+1]) of one A row as the 32-bit lane dpbf16 wants; the odd tail pair has a zero high half */
static inline int32_t nnf_apair(const uint16_t* a, int64_t p, int odd_tail) {
  if (odd_tail) return (int32_t)(uint32_t)a[2 * p];
  int32_t v; memcpy(&v, a + 2 * p, 4); return v;
}
#if defined(NNF_AVX512BF16) || defined(__AVX512F__)
#if !defined(NNF_AVX512BF16)
typedef uint32_t nnf_u16x2 __attribute__((vector_size(64)));
typedef uint32_t nnf_u16x2u __attribute__((vector_size(64), aligned(2)));
#endif
/* One k pair step of an MR x 64 block: 4 B vectors (16 columns x 2 k each), each A row's pair broadcast. */
#if defined(NNF_AVX512BF16)
#define NNF_BSTEP(MR, P, ODD)                                                                                    \
  { const uint16_t* bb = b + (P) * bs;                                                                          \
    __m512bh b0 = (__m512bh)_mm512_loadu_si512(bb), b1 = (__m512bh)_mm512_loadu_si512(bb + 32);                  \
    __m512bh b2 = (__m512bh)_mm512_loadu_si512(bb + 64), b3 = (__m512bh)_mm512_loadu_si512(bb + 96);             \
    _Pragma("GCC unroll 8")                                                                                      \
    for (int r = 0; r < MR; r++) {                                                                               \
      __m512bh av = (__m512bh)_mm512_set1_epi32(nnf_apair(a + r * lda, (P), ODD));                               \
      acc[r][0] = (nnf_v16)_mm512_dpbf16_ps((__m512)acc[r][0], av, b0);                                           \
      acc[r][1] = (nnf_v16)_mm512_dpbf16_ps((__m512)acc[r][1], av, b1);                                           \
      acc[r][2] = (nnf_v16)_mm512_dpbf16_ps((__m512)acc[r][2], av, b2);                                           \
      acc[r][3] = (nnf_v16)_mm512_dpbf16_ps((__m512)acc[r][3], av, b3); } }
#else
#define NNF_BSTEP(MR, P, ODD)                                                                                    \
  { const uint16_t* bb = b + (P) * bs; nnf_v16 be[4], bo[4];                                                   \
    for (int j = 0; j < 4; j++) { nnf_u16x2 v = *(const nnf_u16x2u*)(bb + 32 * j);                              \
      nnf_u16x2 lo = v << 16, hi = v & 0xffff0000u; memcpy(&be[j], &lo, 64); memcpy(&bo[j], &hi, 64); }           \
    _Pragma("GCC unroll 8")                                                                                      \
    for (int r = 0; r < MR; r++) {                                                                               \
      uint32_t pr = (uint32_t)nnf_apair(a + r * lda, (P), ODD);                                                  \
      nnf_v16 a0 = (nnf_v16){0} + nnf_bf16_to_f((uint16_t)(pr & 0xffffu)), a1 = (nnf_v16){0} + nnf_bf16_to_f((uint16_t)(pr >> 16)); \
      for (int j = 0; j < 4; j++) acc[r][j] += a0 * be[j] + a1 * bo[j]; } }
#endif
/* MR x 64 block of C over k pairs [0, kc) of the micro-panel b (pair p at b + p*bs) and A rows a (pair p at a + 2p).
   While the block runs from L1 it prefetches 64-byte lines [l0, l1) of each pair row of the next micro-panel pf:
   the blocks of one panel share that work, so the next panel streams in from L3/DRAM during this one's compute
   (measured on 32x1024x4096 with the weights in DRAM: 0.66 -> 0.56 ms on one core). */
#define NNF_BMK(MR)                                                                                              \
static inline void nnf_bmk##MR(int64_t kc, int odd, int first, float sc, const uint16_t* a, int64_t lda,           \
                               const uint16_t* b, int64_t bs, float* c, int64_t ldc, const char* pf, int l0, int l1) { \
  nnf_v16 acc[MR][4];                                                                                            \
  for (int r = 0; r < MR; r++) for (int j = 0; j < 4; j++)                                                       \
    acc[r][j] = first ? (nnf_v16){0} : NNF_LD(c + r * ldc + 16 * j);                                             \
  int64_t full = kc - (odd ? 1 : 0);                                                                             \
  for (int64_t p = 0; p < full; p++) {                                                                           \
    for (int l = l0; l < l1; l++) _mm_prefetch(pf + p * bs * 2 + 64 * l, _MM_HINT_T0);                           \
    NNF_BSTEP(MR, p, 0) }                                                                                        \
  if (odd) NNF_BSTEP(MR, full, 1)                                                                                \
  for (int r = 0; r < MR; r++) for (int j = 0; j < 4; j++) NNF_ST(c + r * ldc + 16 * j, acc[r][j] * sc);         \
}
NNF_BMK(6)
NNF_BMK(4)
NNF_BMK(2)
NNF_BMK(1)
#if defined(NNF_AMX)
/* AMX: C[16 x 64] += A[16 x 32k] . B over 16-pair k blocks; 4 accumulator tiles (tmm0-3), A in tmm4, B in tmm5.
   The tile state is requested from Linux once per process; the config is loaded once per thread. */
typedef struct { uint8_t palette, start; uint8_t r0[14]; uint16_t colsb[16]; uint8_t rows[16]; } nnf_tilecfg;
static int nnf_amx_state = -1;
static __thread int nnf_amx_cfg = 0;
static int nnf_amx_ready(void) {
  if (nnf_amx_state < 0) {
    #pragma omp critical(nnf_amx)
    if (nnf_amx_state < 0) nnf_amx_state = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
  }
  if (nnf_amx_state && !nnf_amx_cfg) {
    nnf_tilecfg t; memset(&t, 0, sizeof t); t.palette = 1;
    for (int i = 0; i < 6; i++) { t.rows[i] = 16; t.colsb[i] = 64; }
    _tile_loadconfig(&t); nnf_amx_cfg = 1;
  }
  return nnf_amx_state;
}
static void nnf_amx16(int64_t kc, int first, const uint16_t* a, int64_t lda, const uint16_t* b, int64_t bs, float* c, int64_t ldc) {
  if (first) { _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3); }
  else { _tile_loadd(0, c, ldc * 4); _tile_loadd(1, c + 16, ldc * 4); _tile_loadd(2, c + 32, ldc * 4); _tile_loadd(3, c + 48, ldc * 4); }
  for (int64_t p = 0; p < kc; p += 16) {
    _tile_loadd(4, a + 2 * p, lda * 2);
    _tile_loadd(5, b + p * bs, bs * 2); _tile_dpbf16ps(0, 4, 5);
    _tile_loadd(5, b + p * bs + 32, bs * 2); _tile_dpbf16ps(1, 4, 5);
    _tile_loadd(5, b + p * bs + 64, bs * 2); _tile_dpbf16ps(2, 4, 5);
    _tile_loadd(5, b + p * bs + 96, bs * 2); _tile_dpbf16ps(3, 4, 5);
  }
  _tile_stored(0, c, ldc * 4); _tile_stored(1, c + 16, ldc * 4); _tile_stored(2, c + 32, ldc * 4); _tile_stored(3, c + 48, ldc * 4);
}
#endif
/* One tile: C[0:M, 0:n1-n0] = alpha * A[M, K] @ B[:, n0:n1] (C points at column n0; n0 a multiple of 64) of a
   pair-interleaved B: column block n/64 starts at Bp + (n/64)*ps, k pair p of it at + p*bs (weights packed at
   compile time: ps = KP*128, bs = 128; a conv's B packed per call: ps = 128, bs = 2*Npad).
   Loops: k blocks of 128 pairs (a 32 KiB B micro-panel, read from L1 by every row block) outermost, so the
   A rows of one k block stay in L2 across all the panels of the tile; C is accumulated in place. */
static void nnf_gemm_bf16x(int64_t M, int64_t n0, int64_t n1, int64_t K, float alpha, const uint16_t* A, int64_t lda,
                           const uint16_t* Bp, int64_t ps, int64_t bs, float* C, int64_t ldc, int64_t kcp, const int64_t* aoff) {
  /* k blocks of <= 128 pairs, balanced (K = 576: 3 x 96, not 128 + 128 + 32) and a multiple of 16 (AMX tiles);
     or kcp pairs, with k block b of A row m at A + m*lda + aoff[b] (a direct conv: see nnf_gemm_bf16_pool_off) */
  const int64_t KP = (K + 1) / 2, NKB = (KP + 127) / 128, KCP = kcp ? kcp : ((KP + NKB - 1) / NKB + 15) / 16 * 16;
  const int64_t nblk = M / 6 + (M % 6 >= 4) + (M % 6 % 4 >= 2) + (M % 2);
  if (K <= 0) { for (int64_t m = 0; m < M; m++) for (int64_t n = 0; n < n1 - n0; n++) C[m * ldc + n] = 0; return; }
  for (int64_t kp0 = 0; kp0 < KP; kp0 += KCP) {
    int64_t kc = KP - kp0 < KCP ? KP - kp0 : KCP;
    int first = kp0 == 0, last = kp0 + kc >= KP, odd = last && (K & 1);
    float sc = last ? alpha : 1.0f;
    const uint16_t* a = A + (aoff ? aoff[kp0 / KCP] : 2 * kp0);
    for (int64_t n = n0; n < n1; n += 64) {
      const uint16_t* pan = Bp + (n / 64) * ps + kp0 * bs;
      /* the micro-panel after this one: the next panel, or the first panel of the next k block */
      const char* pf = (const char*)(n + 64 < n1 ? pan + ps : (!last ? Bp + (n0 / 64) * ps + (kp0 + KCP) * bs : pan));
      int64_t nw = n1 - n < 64 ? n1 - n : 64, m = 0, i = 0;
      float* cp = C + (n - n0);
#define NNF_PFL int l0 = nblk >= 4 ? (i < 4 ? (int)i : 0) : (int)(4 * i / nblk), l1 = nblk >= 4 ? (i < 4 ? (int)i + 1 : 0) : (int)(4 * (i + 1) / nblk)
      if (nw == 64) {
#if defined(NNF_AMX)
        if (!odd && kc % 16 == 0 && nnf_amx_ready()) {
          for (; m + 16 <= M; m += 16) nnf_amx16(kc, first, a + m * lda, lda, pan, bs, cp + m * ldc, ldc);
          if (last && alpha != 1.0f) for (int64_t r = 0; r < m; r++) for (int j = 0; j < 64; j++) cp[r * ldc + j] *= alpha;
        }
#endif
        for (; m + 6 <= M; m += 6, i++) { NNF_PFL; nnf_bmk6(kc, odd, first, sc, a + m * lda, lda, pan, bs, cp + m * ldc, ldc, pf, l0, l1); }
        for (; m + 4 <= M; m += 4, i++) { NNF_PFL; nnf_bmk4(kc, odd, first, sc, a + m * lda, lda, pan, bs, cp + m * ldc, ldc, pf, l0, l1); }
        for (; m + 2 <= M; m += 2, i++) { NNF_PFL; nnf_bmk2(kc, odd, first, sc, a + m * lda, lda, pan, bs, cp + m * ldc, ldc, pf, l0, l1); }
        for (; m < M; m++, i++) { NNF_PFL; nnf_bmk1(kc, odd, first, sc, a + m * lda, lda, pan, bs, cp + m * ldc, ldc, pf, l0, l1); }
        continue;
      }
      for (; m < M; m++) {   /* a ragged last panel: through a 64-wide row buffer (the packed B is zero-padded) */
        float t[64];
        float* cr = cp + m * ldc;
        for (int j = 0; j < 64; j++) t[j] = (!first && j < nw) ? cr[j] : 0.0f;
        nnf_bmk1(kc, odd, first, sc, a + m * lda, lda, pan, bs, t, 64, pf, 0, 0);
        for (int64_t j = 0; j < nw; j++) cr[j] = t[j];
      }
    }
  }
}
#else
/* Widening on a 16-register target (AVX2 and below), where neither the bf16 dot product nor 32 vector registers
   exist: the 64-byte vectors of the kernels above would live on the stack (a bf16 GPT-2 ran 12x slower than f32
   on a Zen 3). Instead each k block of the tile's A rows and each micro-panel of B are widened to f32 scratch once
   (a shift and a mask per pair lane) and the f32 micro-kernel (nnf_panel_rows) runs on them: the weights still
   cost half the bytes of f32, the arithmetic is the f32 kernel's. Same packed layout, same results (bf16 values
   are exact in f32; only the f32 summation order differs). */
static void nnf_gemm_bf16x(int64_t M, int64_t n0, int64_t n1, int64_t K, float alpha, const uint16_t* A, int64_t lda,
                           const uint16_t* Bp, int64_t ps, int64_t bs, float* C, int64_t ldc, int64_t kcp, const int64_t* aoff) {
  if (K <= 0) { for (int64_t m = 0; m < M; m++) for (int64_t n = 0; n < n1 - n0; n++) C[m * ldc + n] = 0; return; }
  const int64_t KP = (K + 1) / 2, KCP = kcp ? kcp : 128;   /* 256 k per block: the f32 kernel's K block (kcp <= 128) */
  float* af = nnf_tls(1, M * 256);
  float* bf = nnf_tls(2, 256 * 64);
  for (int64_t kp0 = 0; kp0 < KP; kp0 += KCP) {
    int64_t kc = KP - kp0 < KCP ? KP - kp0 : KCP, k0 = 2 * kp0, kk = K - k0 < 2 * kc ? K - k0 : 2 * kc;
    int first = kp0 == 0;
    float sc = kp0 + kc >= KP ? alpha : 1.0f;
    for (int64_t m = 0; m < M; m++) {
      const uint16_t* restrict ar = A + m * lda + (aoff ? aoff[kp0 / KCP] : k0); float* restrict ad = af + m * 256;
      for (int64_t k = 0; k < kk; k++) ad[k] = nnf_bf16_to_f(ar[k]);
    }
    for (int64_t n = n0; n < n1; n += 64) {
      const uint32_t* pan = (const uint32_t*)(Bp + (n / 64) * ps + kp0 * bs);
      for (int64_t p = 0; p < kc; p++) {
        const uint32_t* restrict lane = pan + p * (bs / 2);
        uint32_t* restrict ev = (uint32_t*)(bf + 2 * p * 64); uint32_t* restrict od = ev + 64;
        for (int j = 0; j < 64; j++) { ev[j] = lane[j] << 16; od[j] = lane[j] & 0xffff0000u; }
      }
      int64_t nw = n1 - n < 64 ? n1 - n : 64;
      nnf_panel_rows(M, nw, kk, first, sc, af, 6 * 256, 256, 1, 0, bf, 64, C + (n - n0), ldc);
    }
  }
}
#endif
static void nnf_gemm_bf16s(int64_t M, int64_t n0, int64_t n1, int64_t K, float alpha, const uint16_t* A, int64_t lda,
                           const uint16_t* Bp, int64_t ps, int64_t bs, float* C, int64_t ldc) {
  nnf_gemm_bf16x(M, n0, n1, K, alpha, A, lda, Bp, ps, bs, C, ldc, 0, 0);
}
/* C[M, N] = A[M, K] @ B (alpha 1), B packed (panel stride ps, pair stride bs as above), in mb x nb tiles handed
   out by the thread pool (tile sizes from bf16.py:tiles). With aoff, k block b (kcp pairs) of row m is read at
   A + m*lda + aoff[b]: a direct conv over an NHWC input, whose k = (ky, kx, c) runs are contiguous per ky. */
typedef struct { int64_t M, N, K, lda, ldc, ps, bs, mb, nb, nt, kcp; const uint16_t* A; const uint16_t* Bp; float* C;
                 const int64_t* aoff; } nnf_bf16_job;
static void nnf_bf16_job_run(void* v, int64_t lo, int64_t hi) {
  const nnf_bf16_job* j = (const nnf_bf16_job*)v;
  for (int64_t t = lo; t < hi; t++) {
    int64_t m0 = (t / j->nt) * j->mb, n0 = (t % j->nt) * j->nb;
    int64_t m1 = m0 + j->mb < j->M ? m0 + j->mb : j->M, n1 = n0 + j->nb < j->N ? n0 + j->nb : j->N;
    nnf_gemm_bf16x(m1 - m0, n0, n1, j->K, 1.0f, j->A + m0 * j->lda, j->lda, j->Bp, j->ps, j->bs, j->C + m0 * j->ldc + n0,
                   j->ldc, j->kcp, j->aoff);
  }
}
static void nnf_gemm_bf16_pool_off(int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda, const uint16_t* Bp,
                                   int64_t ps, int64_t bs, float* C, int64_t ldc, int64_t mb, int64_t nb, int64_t kcp,
                                   const int64_t* aoff) {
  nnf_bf16_job j = { M, N, K, lda, ldc, ps, bs, mb, nb, (N + nb - 1) / nb, kcp, A, Bp, C, aoff };
  nnf_parallel(nnf_bf16_job_run, &j, ((M + j.mb - 1) / j.mb) * j.nt, 1);
}
static void nnf_gemm_bf16_pool(int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda, const uint16_t* Bp,
                               int64_t ps, int64_t bs, float* C, int64_t ldc, int64_t mb, int64_t nb) {
  nnf_gemm_bf16_pool_off(M, N, K, A, lda, Bp, ps, bs, C, ldc, mb, nb, 0, 0);
}
/* Conv scratch (the per-call operand, the gemm result, NHWC input): grown on demand, kept across calls. */
static void* nnf_bf16_scratch(int slot, size_t bytes) {
  static void* buf[4]; static size_t cap[4];
  if (cap[slot] < bytes) { free(buf[slot]); buf[slot] = aligned_alloc(64, (bytes + 63) / 64 * 64); cap[slot] = bytes; }
  return buf[slot];
}
"""


def packable(k: Gemm) -> bool:
    """A gemm the bf16 kernel runs: bf16 row-major A, constant bf16 B shared by all rows, f32 row-major output."""
    if any(d != 1 for d in k.batch) or not isinstance(k.b, Access):   # batch axes of extent 1 only (index 0)
        return False
    a, b, o = k.a, k.b, k.out
    return (a.buf.dtype.name == "bf16" and b.buf.dtype.name == "bf16" and b.buf.kind == "const"
            and o.buf.dtype.name == "f32" and a.strides[-1] == 1 and (k.m == 1 or a.strides[-2] >= k.k)
            and o.strides[-1] == 1 and (k.m == 1 or o.strides[-2] >= k.n))


def pack_b(w: np.ndarray) -> np.ndarray:
    """[K, N] bf16 -> panels [ceil(N/64)][ceil(K/2)][64][2] (zero padded), flattened."""
    K, N = w.shape
    KP, NP = (K + 1) // 2, -(-N // PANEL)
    buf = np.zeros((2 * KP, NP * PANEL), dtype=w.dtype)
    buf[:K, :N] = w
    return np.ascontiguousarray(buf.reshape(KP, 2, NP, PANEL).transpose(2, 0, 3, 1)).reshape(-1)


def pack_program(p: Program) -> int:
    """Give every packable bf16 gemm / conv its own packed copy of the weight (a new const buffer), at compile time."""
    done: dict[tuple, Buffer] = {}
    n = 0
    from .bf16_fold import (drop_input_roundings, fold_epilogues, holds_bf16, input_rounded, order_of, read_cast_weights,
                            writers_of)
    read_cast_weights(p)
    writers, order = writers_of(p), order_of(p)
    convs = []
    for k in p.kernels:
        if isinstance(k, Attention) and k.d >= 2 and all(holds_bf16(k, a.buf, writers, order) for a in (k.q, k.k)):
            k.meta["bf16_qk"] = True   # q and k hold bf16 values: q @ kᵀ on the bf16 kernel (p @ v stays f32)
            continue
        if isinstance(k, Conv) and conv_packable(k) and input_rounded(k, writers, order):
            src = p.const_data[k.w.buf.index]
            rows_pos = conv_rows_are_positions(k)
            arr = pack_conv_weight(src.reshape(-1)[k.w.offset:k.w.offset + k.out_shape[1] * k.in_shape[1] * int(np.prod(k.kernel))]
                                   .reshape(k.out_shape[1], k.in_shape[1], *k.kernel), rows_pos)
            k.meta["bf16_rows_are_positions"] = rows_pos
            k.meta["bf16_direct"] = rows_pos and direct_conv(k) and os.environ.get("NNFUSE_CONV_DIRECT", "1") != "0"
            nb = add_const(p, arr, k.w.buf.label + " (bf16 packed)", to_dtype("bf16"))
            k.w = Access(nb, 0, (1,))
            k.meta["bf16_packed"] = True
            convs.append(k)
            n += 1
            continue
        if not (isinstance(k, Gemm) and packable(k)):
            continue
        b = k.b
        key = (id(b.buf), b.offset, b.strides, k.k, k.n)
        nb = done.get(key)
        if nb is None:
            src = p.const_data[b.buf.index]
            item = src.itemsize
            view = np.lib.stride_tricks.as_strided(src.reshape(-1)[b.offset:], (k.k, k.n),
                                                   (b.strides[-2] * item, b.strides[-1] * item))
            arr = pack_b(view)
            nb = done[key] = add_const(p, arr, b.buf.label + " (bf16 packed)", b.buf.dtype)
        k.b = Access(nb, 0, (0,) * len(k.batch) + (k.n, 1))   # the C reads it through the packed layout (meta below), not these strides
        k.meta["bf16_packed"] = True
        n += 1
    if n:   # the unpacked bf16 weights that no kernel reads any more are dropped from the call
        drop_unread(p, ("bf16", "f32"))
        if drop_input_roundings(p, convs):
            from .bf16_fold import _replan
            _replan(p)
        fold_epilogues(p)
    return n


def tiles(m: int, n: int, k: int) -> tuple[int, int]:
    """Rows x columns of one pool task: rows in blocks of <= 96 (a multiple of 6, the micro-kernel's height; one
    block up to 128 rows), columns in whole 64-wide panels grouped so a gemm has >= ~16 tasks: enough for the pool
    to balance two threads, and a task that a descheduled worker holds costs one task, not half the gemm.
    Small gemms (< 2^17 multiply-adds) are one task, run by the caller without a hand-off."""
    panels = _cdiv(n, PANEL)
    if m * n * k < (1 << 17):
        return m, panels * PANEL
    mb = m if m <= 128 else _cdiv(_cdiv(m, _cdiv(m, 96)), 6) * 6
    g = min(8, max(1, panels * _cdiv(m, mb) // 16))
    return mb, g * PANEL


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def emit_gemm(w, k: Gemm, epi: Optional[str]) -> str:
    """C body for a packed bf16 gemm: the pool's threads take (rows x columns) tiles; each applies the epilogue to its
    tile while it is in cache. An f32 row-major result is accumulated in place; any other output (bf16 for the next
    gemm, after `fold_epilogues`) is computed in a per-thread f32 tile and stored through the epilogue."""
    from .codegen import store
    A, O = k.a, k.out
    lda = A.strides[-2] if k.m > 1 else k.k
    mb, nb = tiles(k.m, k.n, k.k)
    mt, nt = -(-k.m // mb), -(-k.n // nb)
    kp = (k.k + 1) // 2
    bvars = "".join(f"    const int64_t b{j} = 0; (void)b{j};\n" for j in range(len(k.batch)))   # extent-1 batch axes
    head = (f"  for (int64_t _t = _lo; _t < _hi; _t++) {{\n{bvars}"
            f"    int64_t _m0 = (_t / {nt}) * {mb}, _n0 = (_t % {nt}) * {nb};\n"
            f"    int64_t _m1 = _m0 + {mb} < {k.m} ? _m0 + {mb} : {k.m}, _n1 = _n0 + {nb} < {k.n} ? _n0 + {nb} : {k.n};\n")
    call = (f"nnf_gemm_bf16s(_m1 - _m0, _n0, _n1, {k.k}, {float(k.alpha)!r}f, {w.bn(A.buf)} + {A.offset} + _m0*{lda}, {lda}, "
            f"{w.bn(k.b.buf)}, {kp * 2 * PANEL}, {2 * PANEL}, ")
    if O.buf.dtype.name == "f32" and O.strides[-1] == 1 and (k.m == 1 or O.strides[-2] >= k.n):
        ldo = O.strides[-2] if k.m > 1 else k.n
        body = head + (f"    float* _O = {w.bn(O.buf)} + {O.offset};\n"
                       f"    {call}_O + _m0*{ldo} + _n0, {ldo});\n")
        if epi is not None:
            body += (f"    for (int64_t _m = _m0; _m < _m1; _m++) {{ float* restrict _row = _O + _m*{ldo}; "
                     f"for (int64_t _n = _n0; _n < _n1; _n++) {{ float _acc = _row[_n]; _row[_n] = {epi}; }} }}\n")
    else:
        names = [f"b{j}" for j in range(len(k.batch))] + ["_m", "_n"]
        ref = f"{w.bn(O.buf)}[{w.emitter(names).index(O)}]"
        body = head + (f"    float* restrict _T = nnf_tls(3, {mb * nb});   /* the tile, in f32 */\n"
                       f"    {call}_T, {nb});\n"
                       f"    for (int64_t _m = _m0; _m < _m1; _m++) for (int64_t _n = _n0; _n < _n1; _n++) {{ "
                       f"float _acc = _T[(_m - _m0)*{nb} + _n - _n0]; {store(w.bn, O.buf, ref, epi if epi is not None else '_acc')} }}\n")
    return w.parallel(mt * nt, 1, body + "  }\n")


def conv_packable(k: Conv) -> bool:
    """A 2-D, ungrouped, non-transposed conv whose weight the policy rounded to bf16 (widened to f32 by the lowering,
    or the bf16 constant itself: `bf16_fold.read_cast_weights`)."""
    return (k.meta.get("bf16_weight", False) and not k.meta.get("transpose") and k.group == 1 and len(k.kernel) == 2
            and k.x.buf.dtype.name == "f32" and k.w.buf.dtype.name in ("f32", "bf16") and k.w.buf.kind == "const"
            and k.out.buf.dtype.name == "f32" and tuple(k.x.strides[2:]) == (k.in_shape[3], 1)
            and tuple(k.out.strides[2:]) == (k.out_shape[3], 1))


def conv_rows_are_positions(k: Conv) -> bool:
    """Which gemm a conv becomes. KxK convs with >= 16 input channels: im2col^T[OH*OW, K] @ W^T[K, O], the rows
    copied C elements at a time from an NHWC bf16 copy of the input, W^T packed at compile time (measured faster on
    every ResNet-18 3x3 conv here: 0.56-0.71 vs 0.75-1.3 ms). 1x1 convs and the RGB stem take W[O, K] @ im2col[K,
    OH*OW] instead, the im2col built directly in the kernel's pair layout and the result already NCHW: for a 1x1
    conv that skips both layout passes (ResNet-50's 1x1 convs, one thread: 0.27-0.35 ms vs 0.33-0.88 ms)."""
    return k.in_shape[1] >= 16 and tuple(k.kernel) != (1, 1)


def pack_conv_weight(w: np.ndarray, rows_are_positions: bool = False) -> np.ndarray:
    """OIHW f32 (holding bf16 values) -> the row-major bf16 A operand [O, C*KH*KW] (k = (c*KH + kh)*KW + kw),
    or, for the NHWC orientation, W^T [KH*KW*C, O] (k = (kh*KW + kw)*C + c) packed like a linear weight."""
    import ml_dtypes
    if rows_are_positions:
        O, C, KH, KW = w.shape
        return pack_b(np.ascontiguousarray(w.transpose(2, 3, 1, 0)).reshape(KH * KW * C, O).astype(ml_dtypes.bfloat16))
    return np.ascontiguousarray(w.reshape(w.shape[0], -1).astype(ml_dtypes.bfloat16)).reshape(-1)


def direct_conv(k: Conv) -> bool:
    """A stride-1, undilated conv over an even channel count computed directly from a zero-padded NHWC bf16 copy
    of its input (`emit_conv_nhwc`): rows = the virtual output grid v = oy*PW + ox of the padded width (ox in
    [OW, PW) computed and dropped), A[v, (ky, kx, c)] = xp[(v + ky*PW)*C + kx*C + c], contiguous over (kx, c), so
    each k block of the gemm is a plain strided A at a per-block offset and no im2col (9x the activations for a
    3x3 conv) is written. Chosen where the padded width wastes <= 10 % (ResNet's 56x56 and 28x28 stages; Zen 4,
    interleaved medians: 56x56x64 1.33 -> 1.07 ms, 28x28x128 0.93 -> 0.90; 14x14 and 7x7, which waste 14 and 29 %,
    measured 5 % slower direct)."""
    C, (KH, KW) = k.in_shape[1], k.kernel
    pw = k.in_shape[3] + k.pads[1] + k.pads[3]
    ow = k.out_shape[3]
    return (tuple(k.strides) == (1, 1) and tuple(k.dilations) == (1, 1) and C % 2 == 0 and KH * KW > 1
            and ow > 0 and k.out_shape[2] > 0 and (pw - ow) <= 0.1 * ow)


def direct_blocks(C: int, KW: int, PW: int, K: int) -> tuple[int, list[int]]:
    """(pairs per k block, A's offset of each block) for `direct_conv`: blocks never cross a ky run of KW*C k."""
    run = KW * C // 2
    kcp = next((d for d in range(128, 0, -16) if run % d == 0), None) or max(d for d in range(1, 129) if run % d == 0)
    offs = []
    for kp0 in range(0, K // 2, kcp):
        ky, r = divmod(2 * kp0, KW * C)
        offs.append(ky * PW * C + r)
    return kcp, offs


def emit_conv_nhwc(w, k: Conv) -> str:
    """Small images: x -> NHWC bf16, im2col rows [OH*OW, KH*KW*C] by contiguous copies (none for 1x1/stride 1),
    one gemm with the packed W^T into [OH*OW, O], then a blocked transpose into NCHW with the epilogue. A
    `direct_conv` reads a zero-padded NHWC copy in place instead of an im2col."""
    from .codegen import store
    N, C, H, W_ = k.in_shape
    _, M, OH, OW = k.out_shape
    KH, KW = k.kernel
    SP, K = OH * OW, KH * KW * C
    X, O = k.x, k.out
    sxn, sxc = X.strides[0], X.strides[1]
    son, som = O.strides[0], O.strides[1]
    x, wp, o = w.bn(X.buf), w.bn(k.w.buf), w.bn(O.buf)
    s0, s1 = k.strides
    p0, p1 = k.pads[0], k.pads[1]
    d0, d1 = k.dilations
    plain = KH == KW == 1 and s0 == s1 == 1 and not any(k.pads)
    direct = not plain and k.meta.get("bf16_direct", False)
    # the NHWC copy: zero padded for a direct conv (PH x PW pixels), else H x W; the gemm rows: SP or the virtual grid
    PT, PL = (p0, p1) if direct else (0, 0)
    PH, PW = (H + p0 + k.pads[2], W_ + p1 + k.pads[3]) if direct else (H, W_)
    NV = (OH - 1) * PW + OW if direct else SP
    TW = PW if direct else OW   # gemm rows per output row
    scr = (f"  uint16_t* _xh = (uint16_t*)nnf_bf16_scratch(2, {PH * PW * C * 2}); (void)_xh;\n"
           f"  float* _T = (float*)nnf_bf16_scratch(1, {NV * M * 4}); (void)_T;\n")
    if not plain and not direct:
        scr += f"  uint16_t* _col = (uint16_t*)nnf_bf16_scratch(3, {SP * K * 2}); (void)_col;\n"
    pre = scr + f"  const float* _x = {x} + {X.offset} + _n*{sxn}; (void)_x;\n"
    s = scr
    if direct:   # the zero border (the scratch is shared by every conv: written each call)
        kcp, offs = direct_blocks(C, KW, PW, K)
        s += f"  static const int64_t _aoff[{len(offs)}] = {{{', '.join(map(str, offs))}}};\n"
        s += (f"  for (int64_t _y = 0; _y < {PH}; _y++) {{\n"
              f"    uint16_t* _r = _xh + _y*{PW * C};\n"
              f"    if (_y < {PT} || _y >= {PT + H}) {{ memset(_r, 0, {PW * C * 2}); continue; }}\n"
              f"    memset(_r, 0, {PL * C * 2}); memset(_r + {(PL + W_) * C}, 0, {(PW - PL - W_) * C * 2});\n  }}\n")
    s += f"  for (int64_t _n = 0; _n < {N}; _n++) {{\n"
    # NCHW -> NHWC by input rows, through 16 x 16 block transposes (channels x columns)
    s += _pooled(w, H, H * W_ * C, pre,
                 f"    uint16_t* _dst = _xh + ((_i + {PT})*{PW} + {PL})*{C};\n"
                 f"    for (int64_t _c0 = 0; _c0 < {C}; _c0 += 16) for (int64_t _w0 = 0; _w0 < {W_}; _w0 += 16)\n"
                 f"      nnf_tblock16_bf16(_x + _c0*{sxc} + _i*{W_} + _w0, {sxc}, {W_} - _w0 < 16 ? {W_} - _w0 : 16,\n"
                 f"                        {C} - _c0 < 16 ? {C} - _c0 : 16, _dst + _w0*{C} + _c0, {C});\n")
    if not plain and not direct:
        s += _pooled(w, SP, SP * K, pre,
                     f"    int64_t _oy = _i / {OW}, _ox = _i % {OW};\n"
                     f"    uint16_t* _d = _col + _i*{K};\n"
                     f"    for (int64_t _kh = 0; _kh < {KH}; _kh++) {{ int64_t _iy = _oy*{s0} - {p0} + _kh*{d0};\n"
                     f"      for (int64_t _kw = 0; _kw < {KW}; _kw++) {{ int64_t _ix = _ox*{s1} - {p1} + _kw*{d1};\n"
                     f"        uint16_t* _dd = _d + (_kh*{KW} + _kw)*{C};\n"
                     f"        if (_iy < 0 || _iy >= {H} || _ix < 0 || _ix >= {W_}) memset(_dd, 0, {C * 2});\n"
                     f"        else memcpy(_dd, _xh + (_iy*{W_} + _ix)*{C}, {C * 2}); }} }}\n")
    mb, nb = tiles(NV, M, K)
    if direct:
        s += (f"    nnf_gemm_bf16_pool_off({NV}, {M}, {K}, _xh, {C}, {wp}, {(K + 1) // 2 * 2 * PANEL}, "
              f"{2 * PANEL}, _T, {M}, {mb}, {nb}, {kcp}, _aoff);\n")
    else:
        s += (f"    nnf_gemm_bf16_pool({SP}, {M}, {K}, {'_xh' if plain else '_col'}, {K}, {wp}, {(K + 1) // 2 * 2 * PANEL}, "
              f"{2 * PANEL}, _T, {M}, {mb}, {nb});\n")
    em = w.emitter(["_n", "_m", "_p0", "_p1"], {"acc": "_acc"})
    val = em.expr(k.epilogue) if k.epilogue is not None else "_acc"
    ref = f"{o}[{O.offset} + _n*{son} + _m*{som} + _p]"
    rb = max(1, 64 // OW)   # blocks of 16 channels x whole output rows (~64 positions): no division per element
    nmb = _cdiv(M, 16)      # row-block major: a thread's share of the blocks is a share of the rows (the pool's shares)
    s += _pooled(w, nmb * _cdiv(OH, rb), SP * M, pre,
                 f"    int64_t _r0 = (_i / {nmb}) * {rb}, _mb = (_i % {nmb}) * 16; float _tt[256];\n"
                 f"    int _nm = {M} - _mb < 16 ? {M} - _mb : 16;\n"
                 f"    for (int64_t _p0 = _r0; _p0 < _r0 + {rb} && _p0 < {OH}; _p0++)\n"
                 f"      for (int64_t _q0 = 0; _q0 < {OW}; _q0 += 16) {{   /* 16 positions x 16 channels, transposed */\n"
                 f"        int _nq = {OW} - _q0 < 16 ? {OW} - _q0 : 16;\n"
                 f"        nnf_tblock16(_T + (_p0*{TW} + _q0)*{M} + _mb, {M}, _nm, _nq, _tt, 16);\n"
                 f"        for (int64_t _m = _mb; _m < _mb + _nm; _m++)\n"
                 f"          for (int64_t _p1 = _q0; _p1 < _q0 + _nq; _p1++) {{\n"
                 f"            int64_t _p = _p0*{OW} + _p1;\n"
                 f"            float _acc = _tt[(_m - _mb)*16 + _p1 - _q0]; {store(w.bn, O.buf, ref, val)} }}\n"
                 f"      }}\n")
    s += "  }\n"
    return s


def _pooled(w, total: int, elems: int, pre: str, body: str) -> str:
    """`body` for _i in [0, total) of image _n on the thread pool (the one the gemms use: no second, OpenMP team
    spinning beside it), inline when it moves < 16K elements; `pre` declares the locals it reads (scratch pointers,
    the image's input), derived again inside the outlined helper."""
    grain = total if elems < 16384 else max(1, total // 16)
    return w.parallel(total, grain, f"{pre}  for (int64_t _i = _lo; _i < _hi; _i++) {{\n{body}  }}\n", ("_n",))


def emit_conv(w, k: Conv) -> str:
    """W[O, K] @ im2col[K, OH*OW] (few input channels: an RGB stem; 1x1 convs). The input is rounded once into a
    zero-padded bf16 copy [C][PH][PW] (a 1x1 conv reads and rounds its f32 input directly); tasks of
    (output-channel block) x (a few 64-position panels) write the im2col of their positions in the
    pair-interleaved layout the micro-kernel reads (two k rows per 32-bit lane: two 16-bit reads of the copy, no
    bounds tests) into a per-thread scratch, run the gemm on it while it is in L2, straight into the NCHW
    output, and apply the epilogue to that block. With few positions (channel blocks share the positions) one
    whole-image im2col is built first instead. (Rounding and bounds-testing every im2col element, and a
    whole-image im2col and f32 result written and read back through L3, took the ResNet stem 0.89 ms; 0.72 now.)"""
    if k.meta.get("bf16_rows_are_positions"):
        return emit_conv_nhwc(w, k)
    from .conv import _epilogue
    N, C, H, W_ = k.in_shape
    _, M, OH, OW = k.out_shape
    KH, KW = k.kernel
    SP, K, KK = OH * OW, KH * KW * C, KH * KW
    KP = (K + 1) // 2
    X, O = k.x, k.out
    sxn, sxc = X.strides[0], X.strides[1]
    son, som = O.strides[0], O.strides[1]
    x, wp, o = w.bn(X.buf), w.bn(k.w.buf), w.bn(O.buf)
    (s0, s1), (d0, d1) = k.strides, k.dilations
    pt, pl, pb, pr = k.pads
    PH, PW = H + pt + pb, W_ + pl + pr
    s = f"  for (int64_t _n = 0; _n < {N}; _n++) {{\n"
    padded = not (KH == KW == 1 and not any(k.pads))
    if not padded:   # a 1x1 conv: the im2col reads the f32 input itself and rounds it
        src, rs, ctyp = f"_x + {X.offset} + _n*{sxn}", sxc, "float"
        xp = f"  const float* _x = {x};\n"
        val = lambda r: f"nnf_f_to_bf16({r})"  # noqa: E731
        (PH, PW) = (H, W_)
    else:   # the zero-padded copy, by rows (c, y): zero rows and borders written each call (the scratch is shared)
        src, rs, ctyp = "_xp", PH * PW, "uint16_t"
        xp = f"  uint16_t* _xp = (uint16_t*)nnf_bf16_scratch(2, {C * PH * PW * 2 + 2}); (void)_xp;\n"
        val = lambda r: r  # noqa: E731
        s += _pooled(w, C * PH, C * PH * PW, xp + f"  const float* _x = {x} + {X.offset} + _n*{sxn};\n",
                     f"    int64_t _ch = _i / {PH}, _y = _i % {PH} - {pt};   /* not _c: the outlined helper's context */\n"
                     f"    uint16_t* restrict _d = _xp + _i*{PW}; const float* restrict _s = _x + _ch*{sxc} + _y*{W_};\n"
                     f"    if (_y < 0 || _y >= {H}) {{ memset(_d, 0, {PW * 2}); continue; }}\n"
                     f"    for (int64_t _j = 0; _j < {pl}; _j++) _d[_j] = 0;\n"
                     f"    for (int64_t _j = 0; _j < {W_}; _j++) _d[{pl} + _j] = nnf_f_to_bf16(_s[_j]);\n"
                     f"    for (int64_t _j = {pl + W_}; _j < {PW}; _j++) _d[_j] = 0;\n")

    def tap(j: str) -> str:   # tap k = 2*_kp + j: (c, kh, kw) -> its row of the source at output row 0
        return (f"int64_t _k{j} = 2*_kp + {j} < {K} ? 2*_kp + {j} : 2*_kp;   /* K odd: the last pair's high half */\n"
                f"      const {ctyp}* _b{j} = {src} + (_k{j} / {KK})*{rs} + ((_k{j} / {KW}) % {KH})*{d0 * PW} + (_k{j} % {KW})*{d1};")
    # tasks: (block of output channels) x (group of position panels), >= 16 where the conv has them
    npan = _cdiv(SP, PANEL)
    ppt = max(1, min(8, npan // 16))
    ngr = _cdiv(npan, ppt)
    mt = max(1, min(_cdiv(M, 6), _cdiv(16, ngr))) if M * K * SP >= (1 << 17) else 1
    mb = _cdiv(_cdiv(M, mt), 6) * 6 if mt > 1 else M
    mt = _cdiv(M, mb)

    def im2col(ind: str, row: str, q0: str, q1: str, stride: str, kps: tuple = ("0", str(KP))) -> str:
        """pair rows kps of positions [q0, q1): row kp at {row} + kp*{stride}, zero padded to whole panels"""
        return (f"{ind}int64_t _nq = {q1} - {q0}, _nqp = (_nq + {PANEL - 1}) / {PANEL} * {PANEL};\n"
                f"{ind}for (int64_t _kp = {kps[0]}; _kp < {kps[1]}; _kp++) {{\n"
                f"{ind}  uint32_t* restrict _row = {row} + _kp*{stride};\n"
                f"{ind}  {tap('0')}\n{ind}  {tap('1')}\n"
                f"{ind}  uint32_t _hm = 2*_kp + 1 < {K} ? 0xffffu : 0u;   /* 0: the high half is the odd K's zero row */\n"
                f"{ind}  for (int64_t _q = {q0}; _q < {q1};) {{   /* runs of one output row */\n"
                f"{ind}    int64_t _oy = _q / {OW}, _oa = _q % {OW}, _ob = _oa + ({q1} - _q) < {OW} ? _oa + ({q1} - _q) : {OW};\n"
                f"{ind}    const {ctyp}* restrict _r0 = _b0 + _oy*{s0 * PW}; const {ctyp}* restrict _r1 = _b1 + _oy*{s0 * PW};\n"
                f"{ind}    uint32_t* restrict _d = _row + (_q - {q0}) - _oa;\n"
                f"{ind}    for (int64_t _ox = _oa; _ox < _ob; _ox++)\n"
                f"{ind}      _d[_ox] = ((uint32_t)({val(f'_r1[_ox*{s1}]')} & _hm) << 16) | (uint32_t){val(f'_r0[_ox*{s1}]')};\n"
                f"{ind}    _q += _ob - _oa;\n{ind}  }}\n"
                f"{ind}  for (int64_t _p = _nq; _p < _nqp; _p++) _row[_p] = 0;\n{ind}}}\n")
    SPP = npan * PANEL
    shared = mt > 1   # channel blocks share one whole-image im2col (few positions: it is small), built once
    bw = f"  uint32_t* _Bw = (uint32_t*)nnf_bf16_scratch(0, {KP * SPP * 4}); (void)_Bw;\n"
    if shared:
        s += "  " + w.parallel(KP, KP if KP * SP < 16384 else max(1, KP // 16),
                               xp + bw + im2col("  ", "_Bw", "0", str(SP), str(SPP), ("_lo", "_hi")), ("_n",)).lstrip()
    body = (f"  const int64_t _g = 0; (void)_g;\n"
            + (bw if shared else f"  uint32_t* _B = (uint32_t*)nnf_tls(0, {KP * ppt * PANEL});\n") +
            f"  for (int64_t _t = _lo; _t < _hi; _t++) {{\n"
            f"    int64_t _m0 = (_t / {ngr})*{mb}, _m1 = _m0 + {mb} < {M} ? _m0 + {mb} : {M}, _tq = _t % {ngr};\n"
            f"    int64_t _q0 = _tq*{ppt * PANEL}, _q1 = _q0 + {ppt * PANEL} < {SP} ? _q0 + {ppt * PANEL} : {SP};\n")
    if shared:
        body += (f"    int64_t _nq = _q1 - _q0, _nqp = (_nq + {PANEL - 1}) / {PANEL} * {PANEL}, _bs = {2 * SPP};\n"
                 f"    const uint32_t* _B = _Bw + _q0;\n")
    else:
        body += im2col("    ", "_B", "_q0", "_q1", "_nqp") + "    int64_t _bs = 2*_nqp;\n"
    body += (
            # a ragged last panel: whole panels into an f32 tile (the 6-row kernels; the ragged-panel path of the
            # gemm runs one row at a time), then its columns copied out
            f"    float* _O = {o} + {O.offset} + _n*{son} + _m0*{som} + _q0;\n"
            f"    float* _C = _nq == _nqp ? _O : nnf_tls(3, {mb} * _nqp); int64_t _ldc = _nq == _nqp ? {som} : _nqp;\n"
            f"    nnf_gemm_bf16x(_m1 - _m0, 0, _nqp, {K}, 1.0f, {wp} + _m0*{K}, {K}, (const uint16_t*)_B, {2 * PANEL}, _bs, "
            f"_C, _ldc, 0, 0);\n"
            f"    if (_C != _O) for (int64_t _r = 0; _r < _m1 - _m0; _r++) memcpy(_O + _r*{som}, _C + _r*_nqp, _nq * 4);\n")
    if k.epilogue is not None:
        body += _epilogue(w, k, k.geometry(), "_m0", "_m1", "_q0", "_q1")
    body += "  }\n"
    # the shared scratch is grown here, by the caller: inside the pool's tasks two threads could both reallocate it
    grow = (xp if padded else "") + (bw if shared else "")
    return grow + s + w.parallel(mt * ngr, 1, xp + body, ("_n",)) + "  }\n"


def cpu_bf16_features() -> dict:
    """What this CPU offers for bf16 (from /proc/cpuinfo; {} elsewhere)."""
    try:
        flags = next((ln.split(":", 1)[1].split() for ln in open("/proc/cpuinfo") if ln.startswith("flags")), [])
    except OSError:
        return {}
    return {"avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags and "amx_tile" in flags}


_warned = False


def report_path(lib, program: Program) -> Optional[str]:
    """The bf16 path the built library took (None without bf16 gemms); one warning when it is emulated."""
    global _warned
    if not any(k.meta.get("bf16_packed") or k.meta.get("bf16_qk") for k in program.kernels):
        return None
    import ctypes
    f = lib.nnf_bf16_path
    f.restype = ctypes.c_char_p
    path = f().decode()
    if path == "widening" and not _warned:
        _warned = True
        warnings.warn("precision='bf16': this CPU has neither AVX512_BF16 (vdpbf16ps) nor AMX-BF16; bf16 GEMMs run "
                      "emulated (bf16 widened to f32)", RuntimeWarning, stacklevel=3)
    return path
