"""Quantized gemm kernels of the cpu backend (issue 10): C source, compile-time weight packing, and the C body of
a Gemm kernel whose meta["quant"] is set by passes/lower_quant.py.

- "w8a8": s8 activations x s8 weights, exact int32 accumulation. With AVX-512 VNNI (`vpdpbusd`, u8 x s8) the
  activations are shifted to u8 on load (x ^ 0x80 = x + 128) and 128*colsum(W), precomputed at compile time,
  is subtracted at the end. Weights packed in panels of 64 columns, [ceil(K/4)][64][4] bytes per panel (4
  consecutive k per 32-bit lane: the vpdpbusd operand), zero padded; the int32 colsums follow the panels.
  Without VNNI: a scalar loop over the same layout (signed products, no correction) - the same int32 result.
- "w4" / "w8": weight-only, f32 activations, f32 accumulation; the codes are unpacked in registers. Panels of
  32 columns: int4 = [K][16] bytes, byte j holding column j (low nibble) and j+16 (high nibble) as code + 8;
  int8 = [K][32] bytes. Scales [G][32] f32 per panel (G = K / group; per-channel: G = 1). Each group's partial
  sums are scaled once: sum_g s[g, n] * sum_{k in g} x[k] * q[k, n].
The path is chosen by the compiler's target macros under -march=native (`nnf_q8_path` / `nnf_wq_path` report it);
define NNF_NO_VNNI / NNF_NO_AVX512_WQ to force the fallback (the tests compare both).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

Q8_PANEL = 64
WQ_PANEL = 32

C_SOURCE = r"""
/* ---- quantized gemm kernels (backends/cpu/quant_kernels.py) ---- */
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && !defined(NNF_NO_VNNI)
#define NNF_Q8_VNNI 1
const char* nnf_q8_path(void) { return "avx512vnni"; }
#else
const char* nnf_q8_path(void) { return "scalar"; }
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__) && !defined(NNF_NO_AVX512_WQ)
#define NNF_WQ_AVX512 1
const char* nnf_wq_path(void) { return "avx512"; }
#else
const char* nnf_wq_path(void) { return "scalar"; }
#endif

/* 4 bytes of an s8 row starting at k = 4g; past K the bytes are 0 (their packed weights are 0 too) */
static inline int32_t nnf_q8_word(const int8_t* a, int64_t g, int64_t K) {
  int32_t v = 0; int64_t k = 4 * g, r = K - k;
  memcpy(&v, a + k, r >= 4 ? 4 : (size_t)r);
  return v;
}
#if defined(NNF_Q8_VNNI)
#define NNF_Q8_STEP(MR, WORD)                                                                                     \
  { const int8_t* bb = bp + g * 256;                                                                             \
    __m512i b0 = _mm512_loadu_si512(bb), b1 = _mm512_loadu_si512(bb + 64);                                       \
    __m512i b2 = _mm512_loadu_si512(bb + 128), b3 = _mm512_loadu_si512(bb + 192);                               \
    _Pragma("GCC unroll 8")                                                                                      \
    for (int r = 0; r < MR; r++) {                                                                               \
      __m512i av = _mm512_xor_si512(_mm512_set1_epi32(WORD), x80);                                               \
      acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], av, b0); acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], av, b1);    \
      acc[r][2] = _mm512_dpbusd_epi32(acc[r][2], av, b2); acc[r][3] = _mm512_dpbusd_epi32(acc[r][3], av, b3);    \
    } }
/* MR rows x 64 columns: 4*MR int32 accumulators */
#define NNF_Q8MK(MR)                                                                                             \
static inline void nnf_q8mk##MR(int64_t K, const int8_t* a, int64_t lda, const int8_t* bp, const int32_t* cs,     \
                                int32_t* o, int64_t ldo, int64_t nv) {                                           \
  __m512i acc[MR][4];                                                                                            \
  const __m512i x80 = _mm512_set1_epi32((int)0x80808080u);                                                       \
  for (int r = 0; r < MR; r++) for (int j = 0; j < 4; j++) acc[r][j] = _mm512_setzero_si512();                   \
  const int64_t KF = K / 4, KG = (K + 3) / 4;                                                                    \
  int64_t g = 0;                                                                                                 \
  for (; g < KF; g++) NNF_Q8_STEP(MR, ({ int32_t _w; memcpy(&_w, a + r * lda + 4 * g, 4); _w; }))                \
  for (; g < KG; g++) NNF_Q8_STEP(MR, nnf_q8_word(a + r * lda, g, K))                                            \
  for (int j = 0; j < 4; j++) {                                                                                  \
    int64_t cols = nv - 16 * j;                                                                                  \
    if (cols <= 0) break;                                                                                        \
    __m512i c = _mm512_loadu_si512(cs + 16 * j);                                                                 \
    __mmask16 mk = cols >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << cols) - 1);                               \
    for (int r = 0; r < MR; r++) _mm512_mask_storeu_epi32(o + r * ldo + 16 * j, mk, _mm512_sub_epi32(acc[r][j], c)); \
  }                                                                                                              \
}
NNF_Q8MK(6)
NNF_Q8MK(4)
NNF_Q8MK(2)
NNF_Q8MK(1)
#endif
/* O[m, n0:n1] = int32 (A[m, :] @ W[:, n0:n1]); n0 a multiple of 64; B packed (see above), NP panels */
static void nnf_q8_gemm(int64_t M, int64_t n0, int64_t n1, int64_t K, const int8_t* A, int64_t lda,
                        const int8_t* B, int64_t NP, int32_t* O, int64_t ldo) {
  const int64_t KG = (K + 3) / 4;
  const int32_t* cs = (const int32_t*)(B + NP * KG * 256);
  (void)cs;
  for (int64_t n = n0; n < n1; n += 64) {
    const int8_t* bp = B + (n / 64) * KG * 256;
    int64_t nv = n1 - n < 64 ? n1 - n : 64;
#if defined(NNF_Q8_VNNI)
    int64_t m = 0;
    for (; m + 6 <= M; m += 6) nnf_q8mk6(K, A + m * lda, lda, bp, cs + n, O + m * ldo + n, ldo, nv);
    for (; m + 4 <= M; m += 4) nnf_q8mk4(K, A + m * lda, lda, bp, cs + n, O + m * ldo + n, ldo, nv);
    for (; m + 2 <= M; m += 2) nnf_q8mk2(K, A + m * lda, lda, bp, cs + n, O + m * ldo + n, ldo, nv);
    for (; m < M; m++) nnf_q8mk1(K, A + m * lda, lda, bp, cs + n, O + m * ldo + n, ldo, nv);
#else
    for (int64_t m = 0; m < M; m++) {
      int32_t acc[64] = {0};
      const int8_t* a = A + m * lda;
      for (int64_t k = 0; k < K; k++) {
        int32_t av = a[k];
        const int8_t* bb = bp + (k / 4) * 256 + (k % 4);
        for (int j = 0; j < 64; j++) acc[j] += av * (int32_t)bb[4 * j];
      }
      for (int64_t j = 0; j < nv; j++) O[m * ldo + n + j] = acc[j];
    }
#endif
  }
}

/* ---- weight-only int4 / int8 (f32 activations, f32 accumulation) ---- */
#if defined(NNF_WQ_AVX512)
#define NNF_UNPACK_4(P, W0, W1)                                                                                  \
  { __m128i _b = _mm_loadu_si128((const __m128i*)(P));                                                           \
    __m128i _lo = _mm_sub_epi8(_mm_and_si128(_b, m0f), c8);                                                      \
    __m128i _hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(_b, 4), m0f), c8);                                   \
    W0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_lo)); W1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_hi)); }
#define NNF_UNPACK_8(P, W0, W1)                                                                                  \
  { W0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(P))));                         \
    W1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(P) + 1))); }
/* MR rows x 32 columns; two k-interleaved accumulator sets per row so the FMA chains overlap */
#define NNF_WQMK(BITS, MR)                                                                                       \
static inline void nnf_w##BITS##mk##MR(int64_t K, int64_t grp, const float* x, int64_t lda, const uint8_t* bp,    \
                                      const float* sp, float* o, int64_t ldo, int64_t nv) {                      \
  const __m128i m0f = _mm_set1_epi8(15), c8 = _mm_set1_epi8(8); (void)m0f; (void)c8;                             \
  __m512 tot[MR][2];                                                                                             \
  for (int r = 0; r < MR; r++) tot[r][0] = tot[r][1] = _mm512_setzero_ps();                                      \
  for (int64_t k0 = 0; k0 < K; k0 += grp, sp += 32) {                                                            \
    __m512 a0[MR][2], a1[MR][2];                                                                                 \
    for (int r = 0; r < MR; r++) a0[r][0] = a0[r][1] = a1[r][0] = a1[r][1] = _mm512_setzero_ps();                \
    int64_t k = k0, ke = k0 + grp;                                                                               \
    for (; k + 1 < ke; k += 2) {                                                                                 \
      __m512 w0, w1, w2, w3;                                                                                     \
      NNF_UNPACK_##BITS(bp + k * (BITS * 4), w0, w1);                                                            \
      NNF_UNPACK_##BITS(bp + (k + 1) * (BITS * 4), w2, w3);                                                      \
      _Pragma("GCC unroll 4")                                                                                    \
      for (int r = 0; r < MR; r++) {                                                                             \
        __m512 xv = _mm512_set1_ps(x[r * lda + k]), xw = _mm512_set1_ps(x[r * lda + k + 1]);                     \
        a0[r][0] = _mm512_fmadd_ps(xv, w0, a0[r][0]); a0[r][1] = _mm512_fmadd_ps(xv, w1, a0[r][1]);              \
        a1[r][0] = _mm512_fmadd_ps(xw, w2, a1[r][0]); a1[r][1] = _mm512_fmadd_ps(xw, w3, a1[r][1]);              \
      }                                                                                                          \
    }                                                                                                            \
    if (k < ke) {                                                                                                \
      __m512 w0, w1;                                                                                             \
      NNF_UNPACK_##BITS(bp + k * (BITS * 4), w0, w1);                                                            \
      for (int r = 0; r < MR; r++) {                                                                             \
        __m512 xv = _mm512_set1_ps(x[r * lda + k]);                                                              \
        a0[r][0] = _mm512_fmadd_ps(xv, w0, a0[r][0]); a0[r][1] = _mm512_fmadd_ps(xv, w1, a0[r][1]);              \
      }                                                                                                          \
    }                                                                                                            \
    __m512 s0 = _mm512_loadu_ps(sp), s1 = _mm512_loadu_ps(sp + 16);                                              \
    for (int r = 0; r < MR; r++) {                                                                               \
      tot[r][0] = _mm512_fmadd_ps(_mm512_add_ps(a0[r][0], a1[r][0]), s0, tot[r][0]);                             \
      tot[r][1] = _mm512_fmadd_ps(_mm512_add_ps(a0[r][1], a1[r][1]), s1, tot[r][1]);                             \
    }                                                                                                            \
  }                                                                                                              \
  __mmask16 k0m = nv >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nv) - 1);                                    \
  __mmask16 k1m = nv >= 32 ? (__mmask16)0xffff : nv > 16 ? (__mmask16)((1u << (nv - 16)) - 1) : (__mmask16)0;     \
  for (int r = 0; r < MR; r++) {                                                                                 \
    _mm512_mask_storeu_ps(o + r * ldo, k0m, tot[r][0]); _mm512_mask_storeu_ps(o + r * ldo + 16, k1m, tot[r][1]);  \
  }                                                                                                              \
}
NNF_WQMK(4, 4) NNF_WQMK(4, 2) NNF_WQMK(4, 1)
NNF_WQMK(8, 4) NNF_WQMK(8, 2) NNF_WQMK(8, 1)
#endif
static inline int32_t nnf_wq_code(const uint8_t* row, int bits, int j) {
  if (bits == 8) return (int32_t)(int8_t)row[j];
  return (int32_t)((j < 16 ? row[j] : row[j - 16] >> 4) & 15) - 8;
}
/* O[m, n0:n1] = sum_g S[g, n] * sum_{k in g} X[m, k] * Q[k, n]; n0 a multiple of 32 */
static void nnf_wq_gemm(int bits, int64_t M, int64_t n0, int64_t n1, int64_t K, int64_t grp, const float* X, int64_t lda,
                        const uint8_t* B, const float* S, float* O, int64_t ldo) {
  const int64_t G = K / grp, rowb = bits * 4;
  for (int64_t n = n0; n < n1; n += 32) {
    const uint8_t* bp = B + (n / 32) * K * rowb;
    const float* sp = S + (n / 32) * G * 32;
    int64_t nv = n1 - n < 32 ? n1 - n : 32;
#if defined(NNF_WQ_AVX512)
    int64_t m = 0;
    if (bits == 4) {
      for (; m + 4 <= M; m += 4) nnf_w4mk4(K, grp, X + m * lda, lda, bp, sp, O + m * ldo + n, ldo, nv);
      for (; m + 2 <= M; m += 2) nnf_w4mk2(K, grp, X + m * lda, lda, bp, sp, O + m * ldo + n, ldo, nv);
      for (; m < M; m++) nnf_w4mk1(K, grp, X + m * lda, lda, bp, sp, O + m * ldo + n, ldo, nv);
    } else {
      for (; m + 4 <= M; m += 4) nnf_w8mk4(K, grp, X + m * lda, lda, bp, sp, O + m * ldo + n, ldo, nv);
      for (; m + 2 <= M; m += 2) nnf_w8mk2(K, grp, X + m * lda, lda, bp, sp, O + m * ldo + n, ldo, nv);
      for (; m < M; m++) nnf_w8mk1(K, grp, X + m * lda, lda, bp, sp, O + m * ldo + n, ldo, nv);
    }
#else
    for (int64_t m = 0; m < M; m++) {
      float tot[32] = {0};
      for (int64_t g = 0; g < G; g++) {
        float acc[32] = {0};
        for (int64_t k = g * grp; k < (g + 1) * grp; k++) {
          float xv = X[m * lda + k];
          const uint8_t* row = bp + k * rowb;
          for (int j = 0; j < 32; j++) acc[j] += xv * (float)nnf_wq_code(row, bits, j);
        }
        for (int j = 0; j < 32; j++) tot[j] += acc[j] * sp[g * 32 + j];
      }
      for (int64_t j = 0; j < nv; j++) O[m * ldo + n + j] = tot[j];
    }
#endif
  }
}
"""


# ---------------------------------------------------------------- compile-time packing
def pack_q8(w: np.ndarray) -> np.ndarray:
    """[K, N] int codes (|q| <= 127) -> int8 bytes: panels [ceil(N/64)][ceil(K/4)][64][4], then int32 128*colsum."""
    K, N = w.shape
    KG, NP = -(-K // 4), -(-N // Q8_PANEL)
    buf = np.zeros((KG * 4, NP * Q8_PANEL), np.int8)
    buf[:K, :N] = w.astype(np.int8)
    panels = buf.reshape(KG, 4, NP, Q8_PANEL).transpose(2, 0, 3, 1).reshape(-1)
    cs = (128 * buf.astype(np.int32).sum(axis=0)).astype(np.int32)
    return np.concatenate([panels, cs.view(np.int8)])


def pack_wq(q: np.ndarray, scale: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """[K, N] codes and [G, N] f32 scales -> (u8 panels [ceil(N/32)][K][bits*4], f32 scales [ceil(N/32)][G][32])."""
    K, N = q.shape
    G = scale.shape[0]
    NP = -(-N // WQ_PANEL)
    codes = np.zeros((K, NP * WQ_PANEL), np.int16)
    codes[:, :N] = q.astype(np.int16)
    codes = codes.reshape(K, NP, WQ_PANEL).transpose(1, 0, 2)        # [NP, K, 32]
    if bits == 4:
        u = (codes + 8).astype(np.uint8)
        data = (u[..., :16] | (u[..., 16:] << 4)).astype(np.uint8)
    else:
        data = codes.astype(np.int8).view(np.uint8)
    sc = np.zeros((G, NP * WQ_PANEL), np.float32)
    sc[:, :N] = scale
    return np.ascontiguousarray(data).reshape(-1), np.ascontiguousarray(sc.reshape(G, NP, WQ_PANEL).transpose(1, 0, 2)).reshape(-1)


# ---------------------------------------------------------------- C body of a quantized Gemm kernel
def emit_gemm(w, k) -> str:
    """Threads take chunks of columns (whole panels); each applies the fused epilogue to its own slice."""
    kind = k.meta["quant"]
    A, O = k.a, k.out
    nb = len(k.batch)
    bn_ = [f"b{j}" for j in range(nb)]

    def base(acc) -> str:
        return " + ".join([str(acc.offset)] + [f"{s}*{bn_[j]}" for j, s in enumerate(acc.strides[:nb]) if s])
    lda = A.strides[-2] if k.m > 1 else k.k
    ldo = O.strides[-2] if k.m > 1 else k.n
    epi: Optional[str] = None
    if k.epilogue is not None:
        epi = w.emitter(bn_ + ["_m", "_n"], {"acc": "_acc"}).expr(k.epilogue)
    a_ptr = f"{w.bn(A.buf)} + {base(A)}"
    if kind == "w8a8":
        panel = Q8_PANEL
        np_ = -(-k.n // Q8_PANEL)
        call = (f"nnf_q8_gemm({k.m}, _n0, _n1, {k.k}, {a_ptr}, {lda}, {w.bn(k.b.buf)}, {np_}, (int32_t*)_O, {ldo});")
        # the kernel left exact int32 sums in the output slice; the epilogue (cast, scales, bias, ...) reads them back
        ld = "int32_t _acc; memcpy(&_acc, &_row[_n], 4);"
        otype = "float" if O.buf.dtype.name == "f32" else "int32_t"
    else:
        panel = WQ_PANEL
        bits = 4 if kind == "w4" else 8
        q = k.b
        call = (f"nnf_wq_gemm({bits}, {k.m}, _n0, _n1, {k.k}, {q.group}, {a_ptr}, {lda}, {w.bn(q.data.buf)}, "
                f"{w.bn(q.scale.buf)}, _O, {ldo});")
        ld = "float _acc = _row[_n];"
        otype = "float"
    epi_loop = ""
    if epi is not None:
        epi_loop = (f"for (int64_t _m = 0; _m < {k.m}; _m++) {{ {otype}* restrict _row = _O + _m*{ldo}; "
                    f"for (int64_t _n = _n0; _n < _n1; _n++) {{ {ld} _row[_n] = {epi}; }} }}")
    # ~8 chunks per call (whole panels), at least 2 panels each unless N is small
    per = max(1, -(-(-(-k.n // panel)) // 8))
    chunk = per * panel
    nch = -(-k.n // chunk)
    work = k.m * k.n * k.k
    body = (f"  for (int64_t _ch = _lo; _ch < _hi; _ch++) {{\n"
            f"    {otype}* _O = {w.bn(O.buf)} + {base(O)};\n"
            f"    int64_t _n0 = _ch * {chunk}, _n1 = _n0 + {chunk} < {k.n} ? _n0 + {chunk} : {k.n};\n"
            f"    {call}\n    {epi_loop}\n  }}\n")
    call_s = w.parallel(nch, 1 if work >= 32768 else nch, body, tuple(bn_))
    out = ""
    for j, d in enumerate(k.batch):
        out += f"  for (int64_t {bn_[j]} = 0; {bn_[j]} < {d}; {bn_[j]}++)\n"
    return out + "  " + call_s.lstrip()
