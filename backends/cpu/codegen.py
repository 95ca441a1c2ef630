"""C source from a kernel IR Program: one static function per kernel plus the exported `nnf_run`.

Only generated identifiers (k0, t3, w1, in0, out0) reach the source; model names appear nowhere in it.
Loops are shaped for the auto-vectorizer: contiguous innermost loops, restrict pointers, a 64-byte aligned
arena, and polynomial exp/tanh/erf written as plain arithmetic so they vectorize.
"""
from __future__ import annotations

import math

from ...ir.dtypes import DType
from ...ir.kernel import (Access, Arg, Buffer, Const, Conv, Expr, Gemm, Kernel, Load, Op, Pointwise, Program, Reduce,
                          RowNorm, Var, loads)
from ...ir.errors import NnfuseError

CTYPE = {"f64": "double", "f32": "float", "f16": "_Float16", "bf16": "uint16_t", "i64": "int64_t", "i32": "int32_t",
         "i16": "int16_t", "i8": "int8_t", "u8": "uint8_t", "bool": "uint8_t", "i4": "int8_t", "u4": "uint8_t",
         "f8e4m3": "uint8_t", "f8e5m2": "uint8_t", "f4e2m1": "uint8_t"}
TABLED = ("f8e4m3", "f8e5m2", "f4e2m1")   # read through a 256-entry decode table (one byte per element in numpy)
ABI_VERSION = 1


class CodegenError(NnfuseError):
    pass


def ctype(dt: DType) -> str:
    if dt.name not in CTYPE:
        raise CodegenError(f"dtype {dt.name} is not supported on the cpu backend (supported: {', '.join(CTYPE)})")
    return CTYPE[dt.name]


def comp(dt: DType) -> str:
    """The C type arithmetic happens in."""
    return "float" if dt.name in ("f16", "bf16") + TABLED else ctype(dt)


PRELUDE = r"""#include <stdint.h>
#include <math.h>
#include <string.h>
#include <stdlib.h>
#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>

typedef void (*nnf_sgemm_t)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*, int);
typedef void (*nnf_dgemm_t)(int, int, int, int, int, int, double, const double*, int, const double*, int, double, double*, int);
static nnf_sgemm_t nnf_sgemm = 0;
static nnf_dgemm_t nnf_dgemm = 0;
void nnf_set_blas(void* s, void* d) { nnf_sgemm = (nnf_sgemm_t)s; nnf_dgemm = (nnf_dgemm_t)d; }
/* Our own small pool for the hot loops. Unlike an OpenMP team, the caller never waits for a worker that has not
   shown up: work is handed out in chunks from atomic counters and the caller only waits for chunks that were
   claimed. On a shared machine (other processes on the cores) a descheduled worker then costs nothing.
   Thread i first takes the chunks of its own contiguous share, [i*n/T, (i+1)*n/T), then those left in the other
   shares: kernel after kernel, a thread mostly reads what it wrote itself (a conv's output rows are the next
   conv's input rows). That matters when the host runs the two vCPUs on distant cores: a cache line written by
   the other core then costs ~350 ns instead of ~60 (measured round trips), and with one shared counter a ResNet
   ran 1.4x slower in those phases. -DNNF_POOL_SHARED: one share for all (the old pool, for A/B runs). */
typedef void (*nnf_body_t)(void*, int64_t, int64_t);
static struct {
  _Atomic long gen; _Atomic int active; _Atomic int64_t done; _Atomic int sleepers;
  nnf_body_t fn; void* ctx; int64_t total, chunk;
  int nw, started, nshares;
  pthread_mutex_t mu; pthread_cond_t cv;
} nnf_pool = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };
static struct { _Atomic int64_t next; int64_t end; } __attribute__((aligned(64))) nnf_share[64];
static inline void nnf_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}
static void nnf_pool_run(int me) {   /* me: 0 the caller, 1.. the workers */
  int ns = nnf_pool.nshares;
  for (int k = 0; k < ns; k++) {
    int v = (me + k) %% ns;   /* its own share first, then the others' */
    for (;;) {
      int64_t c = atomic_fetch_add(&nnf_share[v].next, 1);
      if (c >= nnf_share[v].end) break;
      int64_t lo = c * nnf_pool.chunk, hi = lo + nnf_pool.chunk < nnf_pool.total ? lo + nnf_pool.chunk : nnf_pool.total;
      nnf_pool.fn(nnf_pool.ctx, lo, hi);
      atomic_fetch_add(&nnf_pool.done, hi - lo);
    }
  }
}
static void* nnf_worker(void* arg) {
  int id = (int)(intptr_t)arg;
  long seen = atomic_load(&nnf_pool.gen);
  for (;;) {
    long g; int spins = 0;
    while ((g = atomic_load(&nnf_pool.gen)) == seen || (g & 1)) {   /* odd: the caller is setting a job up */
      if (++spins < 20000) { nnf_relax(); continue; }
      pthread_mutex_lock(&nnf_pool.mu);
      atomic_fetch_add(&nnf_pool.sleepers, 1);
      while (atomic_load(&nnf_pool.gen) == seen) pthread_cond_wait(&nnf_pool.cv, &nnf_pool.mu);
      atomic_fetch_sub(&nnf_pool.sleepers, 1);
      pthread_mutex_unlock(&nnf_pool.mu);
      spins = 0;
    }
    seen = g;
    if (id >= nnf_pool.nw) continue;
    atomic_fetch_add(&nnf_pool.active, 1);
    if (atomic_load(&nnf_pool.gen) == g) nnf_pool_run(id + 1);
    atomic_fetch_sub(&nnf_pool.active, 1);
  }
  return 0;
}
static void nnf_parallel(nnf_body_t fn, void* ctx, int64_t total, int64_t chunk) {
  if (chunk < 1) chunk = 1;
  if (nnf_pool.nw <= 0 || total <= chunk) { fn(ctx, 0, total); return; }
  atomic_fetch_add(&nnf_pool.gen, 1);                       /* odd: closed to new joiners */
  while (atomic_load(&nnf_pool.active) != 0) nnf_relax();   /* stragglers of the previous job leave */
  nnf_pool.fn = fn; nnf_pool.ctx = ctx; nnf_pool.total = total; nnf_pool.chunk = chunk;
  int64_t nch = (total + chunk - 1) / chunk;
#if defined(NNF_POOL_SHARED)
  int ns = 1;
#else
  int ns = nnf_pool.nw + 1;
#endif
  for (int i = 0; i < ns; i++) { atomic_store(&nnf_share[i].next, i * nch / ns); nnf_share[i].end = (i + 1) * nch / ns; }
  nnf_pool.nshares = ns;
  atomic_store(&nnf_pool.done, 0);
  atomic_fetch_add(&nnf_pool.gen, 1);                       /* even: published */
  if (atomic_load(&nnf_pool.sleepers)) { pthread_mutex_lock(&nnf_pool.mu); pthread_cond_broadcast(&nnf_pool.cv); pthread_mutex_unlock(&nnf_pool.mu); }
  nnf_pool_run(0);
  while (atomic_load(&nnf_pool.done) < total) nnf_relax();
}
void nnf_set_threads(int n) {
  if (n <= 0) return;
  omp_set_num_threads(n);
  for (; nnf_pool.started < n - 1 && nnf_pool.started < 63; nnf_pool.started++) {
    pthread_t t; pthread_attr_t at; pthread_attr_init(&at); pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &at, nnf_worker, (void*)(intptr_t)nnf_pool.started) != 0) break;
  }
  nnf_pool.nw = n - 1 < nnf_pool.started ? n - 1 : nnf_pool.started;
}
int nnf_get_threads(void) { return nnf_pool.nw + 1; }
int nnf_abi(void) { return %(abi)d; }

typedef union { float f; int32_t i; uint32_t u; } nnf_fi;
static inline float nnf_bf16_to_f(uint16_t h) { nnf_fi v; v.u = ((uint32_t)h) << 16; return v.f; }
static inline uint16_t nnf_f_to_bf16(float f) {
  nnf_fi v; v.f = f;
  uint32_t nan = (v.u >> 16) | 0x40, rne = (v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16;
  return (uint16_t)(((v.u & 0x7fffffffu) > 0x7f800000u) ? nan : rne);   /* a select, not a branch: loops vectorize */
}
/* exp: Cephes-style range reduction + degree-6 polynomial; arithmetic only, so loops vectorize. */
static inline float nnf_exp(float x) {
  float xc = x < -87.3f ? -87.3f : x;   /* selects, not fminf/fmaxf: those do not vectorize without fast-math */
  xc = xc > 88.3f ? 88.3f : xc;
  float k = nearbyintf(xc * 1.44269504088896341f);
  float r = xc - k * 0.693359375f + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f; p = p * r + 8.3334519073e-3f; p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f; p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  nnf_fi s; s.i = ((int32_t)k + 127) << 23;
  float y = p * s.f;
  y = x < -87.3f ? 0.0f : y;
  y = x > 88.72f ? INFINITY : y;
  return x != x ? x : y;
}
static inline float nnf_tanh(float x) {
  float ax = fabsf(x);
  float e = nnf_exp(-2.0f * ax);
  float t = (1.0f - e) / (1.0f + e);
  float x2 = x * x;
  float small = x * (1.0f + x2 * (-0.333333333f + x2 * (0.133333333f + x2 * -0.053968254f)));
  float big = x < 0 ? -t : t;
  return ax < 0.0625f ? small : big;
}
/* erf: the rational minimax form of Eigen/TensorFlow, x*P(x^2)/Q(x^2) on [-4, 4] (erf is +-1 in float beyond):
   |error| < 5e-7 and relative error < 3e-7 near 0, in ~17 vector ops with no exp (Abramowitz-Stegun 7.1.26 took
   ~50, and lost all relative accuracy near 0: 13 %% at 1e-6). GELU's cost in a BERT FFN is mostly this. */
static inline float nnf_erf(float x) {
  float c = x > 4.0f ? 4.0f : x;
  c = c < -4.0f ? -4.0f : c;
  float x2 = c * c;
  float p = -2.72614225801306e-10f;
  p = p * x2 + 2.77068142495902e-08f; p = p * x2 - 2.10102402082508e-06f; p = p * x2 - 5.69250639462346e-05f;
  p = p * x2 - 7.34990630326855e-04f; p = p * x2 - 2.95459980854025e-03f; p = p * x2 - 1.60960333262415e-02f;
  float q = -1.45660718464996e-05f;
  q = q * x2 - 2.13374055278905e-04f; q = q * x2 - 1.68282697438203e-03f; q = q * x2 - 7.37332916720468e-03f;
  q = q * x2 - 1.42647390514189e-02f;
  return c * p / q;
}
static inline float nnf_sigmoid(float x) { return 1.0f / (1.0f + nnf_exp(-x)); }
static inline float nnf_gelu(float x) { return 0.5f * x * (1.0f + nnf_erf(x * 0.70710678118654752f)); }
static inline float nnf_gelu_tanh(float x) { return 0.5f * x * (1.0f + nnf_tanh(0.79788456080286536f * (x + 0.044715f * x * x * x))); }
static inline double nnf_sigmoid_d(double x) { return 1.0 / (1.0 + exp(-x)); }
static inline float nnf_maxf(float a, float b) { return (a > b || a != a) ? a : b; }
static inline float nnf_minf(float a, float b) { return (a < b || a != a) ? a : b; }
static inline double nnf_maxd(double a, double b) { return (a > b || a != a) ? a : b; }
static inline double nnf_mind(double a, double b) { return (a < b || a != a) ? a : b; }
static inline float nnf_modf(float a, float b) { float r = fmodf(a, b); return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r; }
static inline double nnf_modd(double a, double b) { double r = fmod(a, b); return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r; }
static inline int64_t nnf_modi(int64_t a, int64_t b) { if (b == 0) return 0; int64_t r = a %% b; return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r; }
static inline int64_t nnf_divi(int64_t a, int64_t b) { return b == 0 ? a : a / b; }
/* Generated-C gemm, no packing: C[M, 0:N] = alpha * A @ B with A of any strides (sam, sak) and B row-major.
   B is streamed in 64-column panels, K blocked by 256 so a panel stays in L2. The register tile is sized to the
   target's vector registers (compiler target macros under -march=native): AVX-512 (32 x 16 floats) takes a
   6x64 tile (24 accumulators + 4 B vectors + 1 broadcast); AVX2 and narrower (16 registers) a 6x16 tile
   (12 + 2 + 1) run over the panel's four 16-column slices. A vector wider than the registers is never used in
   the tile: gcc lowers such a vector through the stack (a 6x64 tile of 64-byte vectors ran at 3.6 GFLOP/s on
   an AVX2 Zen 3 core, 20x below its peak). Measured against OpenBLAS in docs/benchmarks.md. */
typedef float nnf_v16 __attribute__((vector_size(64)));
typedef float nnf_v16u __attribute__((vector_size(64), aligned(4)));
typedef float nnf_v8 __attribute__((vector_size(32)));
typedef float nnf_v8u __attribute__((vector_size(32), aligned(4)));
#define NNF_LD(p) (*(const nnf_v16u*)(p))
#define NNF_ST(p, v) (*(nnf_v16u*)(p) = (v))
#if defined(__AVX512F__)
#define NNF_VW 16   /* floats in one vector register */
#define NNF_TV 4    /* vectors across one tile row */
#elif defined(__AVX__)
#define NNF_VW 8
#define NNF_TV 2
#else
#define NNF_VW 4
#define NNF_TV 2
#endif
#if defined(__AVX512F__)
const char* nnf_vector_path(void) { return "avx512: 6x64 f32 tiles"; }
#elif defined(__AVX2__) && defined(__FMA__)
const char* nnf_vector_path(void) { return "avx2+fma: 6x16 f32 slices"; }
#elif defined(__AVX__)
const char* nnf_vector_path(void) { return "avx: 6x16 f32 slices, no fma"; }
#else
const char* nnf_vector_path(void) { return "128-bit vectors: 6x8 f32 slices"; }
#endif
typedef float nnf_vf __attribute__((vector_size(NNF_VW * 4)));
typedef float nnf_vfu __attribute__((vector_size(NNF_VW * 4), aligned(4)));
#define NNF_VLD(p) (*(const nnf_vfu*)(p))
#define NNF_VST(p, v) (*(nnf_vfu*)(p) = (v))
/* A 16 x 16 block transpose: t[i*ldt + j] = s[j*lds + i] for lanes i < ni of rows j < nj of s (nothing else
   of t is written). A bf16 conv's layout changes (NCHW <-> positions x channels) and attention's k^T packing go
   through it: on AVX-512, 16 masked row loads, 64 shuffles in registers and 16 masked stores, instead of a
   scalar strided loop (the conv's two such loops took a fifth of a bf16 56x56x64 conv); elsewhere a full block
   is four 8 x 8 register transposes (GCC vector shuffles), a partial one scalar. */
#if defined(__AVX512F__)
#include <immintrin.h>
static inline void nnf_t16(const float* s, int64_t lds, int ni, int nj, __m512* r) {   /* r[i] = column i */
  __mmask16 mi = (__mmask16)(ni >= 16 ? 0xffffu : (1u << ni) - 1u);
  __m512 u[16];
  _Pragma("GCC unroll 16") for (int j = 0; j < 16; j++) r[j] = j < nj ? _mm512_maskz_loadu_ps(mi, s + j * lds) : _mm512_setzero_ps();
  _Pragma("GCC unroll 8") for (int j = 0; j < 16; j += 2) {
    u[j] = _mm512_unpacklo_ps(r[j], r[j + 1]); u[j + 1] = _mm512_unpackhi_ps(r[j], r[j + 1]); }
  _Pragma("GCC unroll 4") for (int j = 0; j < 16; j += 4) {
    r[j] = _mm512_shuffle_ps(u[j], u[j + 2], 0x44); r[j + 1] = _mm512_shuffle_ps(u[j], u[j + 2], 0xee);
    r[j + 2] = _mm512_shuffle_ps(u[j + 1], u[j + 3], 0x44); r[j + 3] = _mm512_shuffle_ps(u[j + 1], u[j + 3], 0xee); }
  _Pragma("GCC unroll 8") for (int j = 0; j < 8; j++) {   /* 128-bit lanes: j = h + q, h in {0, 8}, q < 4 */
    int a = (j & 4) * 2 + (j & 3);
    u[a] = _mm512_shuffle_f32x4(r[a], r[a + 4], 0x88); u[a + 4] = _mm512_shuffle_f32x4(r[a], r[a + 4], 0xdd); }
  _Pragma("GCC unroll 8") for (int j = 0; j < 8; j++) {
    r[j] = _mm512_shuffle_f32x4(u[j], u[j + 8], 0x88); r[j + 8] = _mm512_shuffle_f32x4(u[j], u[j + 8], 0xdd); }
}
static inline void nnf_tblock16(const float* s, int64_t lds, int ni, int nj, float* t, int64_t ldt) {
  __m512 r[16]; nnf_t16(s, lds, ni, nj, r);
  __mmask16 mj = (__mmask16)(nj >= 16 ? 0xffffu : (1u << nj) - 1u);
  _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) if (i < ni) _mm512_mask_storeu_ps(t + i * ldt, mj, r[i]);
}
#else
typedef int32_t nnf_m8 __attribute__((vector_size(32)));
static inline void nnf_t8(const float* s, int64_t lds, float* t, int64_t ldt) {   /* one full 8 x 8 block */
  static const nnf_m8 lo[3] = {{0, 1, 2, 3, 8, 9, 10, 11}, {0, 1, 8, 9, 4, 5, 12, 13}, {0, 8, 2, 10, 4, 12, 6, 14}};
  static const nnf_m8 hi[3] = {{4, 5, 6, 7, 12, 13, 14, 15}, {2, 3, 10, 11, 6, 7, 14, 15}, {1, 9, 3, 11, 5, 13, 7, 15}};
  nnf_v8 x[8];
  for (int q = 0; q < 8; q++) x[q] = *(const nnf_v8u*)(s + q * lds);
  for (int st = 0, b = 4; st < 3; st++, b /= 2)   /* swap the off-diagonal b x b sub-blocks of each 2b x 2b block */
    for (int q = 0; q < 8; q++) if (!(q & b)) {
      nnf_v8 a = x[q], c = x[q + b];
      x[q] = __builtin_shuffle(a, c, lo[st]); x[q + b] = __builtin_shuffle(a, c, hi[st]);
    }
  for (int q = 0; q < 8; q++) *(nnf_v8u*)(t + q * ldt) = x[q];
}
static inline void nnf_tblock16(const float* s, int64_t lds, int ni, int nj, float* t, int64_t ldt) {
  if (ni == 16 && nj == 16) {
    for (int bi = 0; bi < 16; bi += 8) for (int bj = 0; bj < 16; bj += 8) nnf_t8(s + bj * lds + bi, lds, t + bi * ldt + bj, ldt);
    return;
  }
  for (int i = 0; i < ni; i++) for (int j = 0; j < nj; j++) t[i * ldt + j] = s[j * lds + i];
}
#endif
/* The same transpose into bf16 (rounded as nnf_f_to_bf16): t[i*ldt + j] = bf16(s[j*lds + i]), j < nj only. */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
static inline void nnf_tblock16_bf16(const float* s, int64_t lds, int ni, int nj, uint16_t* t, int64_t ldt) {
  __m512 r[16]; nnf_t16(s, lds, ni, nj, r);
  const __m512i one = _mm512_set1_epi32(1), half = _mm512_set1_epi32(0x7fff), inf = _mm512_set1_epi32(0x7f800000);
  const __m512i abs = _mm512_set1_epi32(0x7fffffff), quiet = _mm512_set1_epi32(0x40);
  __mmask16 mj = (__mmask16)(nj >= 16 ? 0xffffu : (1u << nj) - 1u);
  _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) if (i < ni) {
    __m512i u = _mm512_castps_si512(r[i]), hi = _mm512_srli_epi32(u, 16);
    __m512i rne = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(half, _mm512_and_si512(hi, one))), 16);
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, abs), inf);
    _mm256_mask_storeu_epi16(t + i * ldt, mj, _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(nan, rne, _mm512_or_si512(hi, quiet))));
  }
}
#else
static inline void nnf_tblock16_bf16(const float* s, int64_t lds, int ni, int nj, uint16_t* t, int64_t ldt) {
  for (int i = 0; i < ni; i++) for (int j = 0; j < nj; j++) t[i * ldt + j] = nnf_f_to_bf16(s[j * lds + i]);
}
#endif
static int nnf_gemm_mode = 0;   /* 0: generated kernel where it applies, 1: always BLAS */
void nnf_set_gemm_mode(int m) { nnf_gemm_mode = m; }
/* MR x NNF_SW block (one slice: MR x NNF_TV register vectors) over kc steps of k; vector j of B's row k at
   b + k*ldb + j*vs (vs = NNF_VW for row-major B; a packed panel's sub-panels are kc*16 floats apart). A[r, k] is at
   a[AIDX]: strided (nnf_mks: r*sam + k*sak) or, for a direct convolution, a row of consecutive positions plus a
   per-k offset into the padded input (nnf_mkt: r + koff[k]). Not inlined: inlined into its callers, gcc ran out
   of vector registers and spilled a B vector on every k step. */
#define NNF_SW (NNF_TV * NNF_VW)
#define NNF_MK_DEF(NAME, MR, AIDX, ...)                                                                          \
static __attribute__((noinline)) void NAME(int64_t kc, int first, float sc, const float* a, __VA_ARGS__,          \
                                           const float* b, int64_t ldb, int64_t vs, float* c, int64_t ldc) {     \
  nnf_vf acc[MR][NNF_TV];                                                                                        \
  for (int r = 0; r < MR; r++) for (int j = 0; j < NNF_TV; j++)                                                  \
    acc[r][j] = first ? (nnf_vf){0} : NNF_VLD(c + r * ldc + NNF_VW * j);                                         \
  _Pragma("GCC unroll 4")   /* +5%% on a Zen 3 core (fewer loop-carried increments per FMA) */                \
  for (int64_t k = 0; k < kc; k++) {                                                                             \
    nnf_vf bv[NNF_TV];                                                                                           \
    for (int j = 0; j < NNF_TV; j++) bv[j] = NNF_VLD(b + vs * j);                                                \
    b += ldb;                                                                                                    \
    _Pragma("GCC unroll 8")                                                                                      \
    for (int r = 0; r < MR; r++) {                                                                               \
      nnf_vf av = a[AIDX] - (nnf_vf){0};   /* x - 0 == x exactly (x + 0 is not: -0): a broadcast */              \
      for (int j = 0; j < NNF_TV; j++) acc[r][j] += av * bv[j];                                                  \
    }                                                                                                            \
  }                                                                                                              \
  for (int r = 0; r < MR; r++) for (int j = 0; j < NNF_TV; j++) NNF_VST(c + r * ldc + NNF_VW * j, acc[r][j] * sc); \
}
#define NNF_MK(MR)                                                                                               \
NNF_MK_DEF(nnf_mks##MR, MR, r * sam + k * sak, int64_t sam, int64_t sak)                                         \
NNF_MK_DEF(nnf_mkt##MR, MR, r + koff[k], const int64_t* koff)                                                    \
/* MR x 64: the slices of a 64-column panel one after the other */                                              \
static inline void nnf_mk##MR(int64_t kc, int first, float sc, const float* a, int64_t sam, int64_t sak,          \
                              const float* b, int64_t ldb, float* c, int64_t ldc) {                              \
  for (int s = 0; s < 64; s += NNF_SW) nnf_mks##MR(kc, first, sc, a, sam, sak, b + s, ldb, NNF_VW, c + s, ldc);   \
}
NNF_MK(6)
NNF_MK(5)
NNF_MK(4)
NNF_MK(3)
NNF_MK(2)
NNF_MK(1)
static void nnf_panel_rows(int64_t M, int64_t nw, int64_t kc, int first, float sc, const float* A,
                           int64_t sab, int64_t sam, int64_t sak, const int64_t* koff, const float* b, int64_t psw,
                           float* C, int64_t ldc);   /* pack.py */
static void nnf_gemm_np(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t sam, int64_t sak,
                        const float* B, int64_t ldb, float* C, int64_t ldc) {
  const int64_t KC = 256;
  if (K <= 0) { for (int64_t m = 0; m < M; m++) for (int64_t n = 0; n < N; n++) C[m * ldc + n] = 0; return; }
  for (int64_t n = 0; n < N; n += 64) {
    int64_t nw = N - n < 64 ? N - n : 64;
    for (int64_t k0 = 0; k0 < K; k0 += KC) {
      int64_t kc = K - k0 < KC ? K - k0 : KC;
      int last = k0 + kc >= K, first = k0 == 0;
      float sc = last ? alpha : 1.0f;
      if (nw == 64) {
        int64_t m = 0;
        const float* b = B + k0 * ldb + n;
        for (; m + 6 <= M; m += 6) nnf_mk6(kc, first, sc, A + m * sam + k0 * sak, sam, sak, b, ldb, C + m * ldc + n, ldc);
        for (; m + 4 <= M; m += 4) nnf_mk4(kc, first, sc, A + m * sam + k0 * sak, sam, sak, b, ldb, C + m * ldc + n, ldc);
        for (; m + 2 <= M; m += 2) nnf_mk2(kc, first, sc, A + m * sam + k0 * sak, sam, sak, b, ldb, C + m * ldc + n, ldc);
        for (; m < M; m++) nnf_mk1(kc, first, sc, A + m * sam + k0 * sak, sam, sak, b, ldb, C + m * ldc + n, ldc);
        continue;
      }
      {   /* a ragged last panel (N mod 64 columns): copied into a zero-padded 64-wide block, then the vector kernel */
        float bp[256 * 64] __attribute__((aligned(64)));
        for (int64_t k = 0; k < kc; k++) {
          const float* restrict br = B + (k0 + k) * ldb + n;
          for (int64_t j = 0; j < 64; j++) bp[k * 64 + j] = j < nw ? br[j] : 0.0f;
        }
        nnf_panel_rows(M, nw, kc, first, sc, A + k0 * sak, 6 * sam, sam, sak, 0, bp, 64, C + n, ldc);
      }
    }
  }
}
/* One single-threaded gemm C = alpha * op(A) @ op(B) (row-major; ta/tb are CBLAS 111/112): BLAS or a portable loop. */
#define NNF_GEMM1(NAME, T, BLAS)                                                                                   \
static void NAME(int ta, int tb, int64_t M, int64_t N, int64_t K, double alpha, const T* A, int64_t lda,            \
                 const T* B, int64_t ldb, T* C, int64_t ldc) {                                                      \
  if (sizeof(T) == 4 && tb == 111 && (nnf_gemm_mode == 0 || !BLAS)) {                                            \
    nnf_gemm_np(M, N, K, (float)alpha, (const float*)A, ta == 112 ? 1 : lda, ta == 112 ? lda : 1,                   \
                (const float*)B, ldb, (float*)C, ldc); return; }                                                    \
  if (sizeof(T) == 4 && tb == 112 && (nnf_gemm_mode == 0 || !BLAS) && K * N <= (1 << 20)) {                        \
    float* bp = (float*)malloc(sizeof(float) * K * N);  /* B^T operand (attention q @ k^T): transpose, then stream */ \
    if (bp) {                                                                                                      \
      for (int64_t n0 = 0; n0 < N; n0 += 16) for (int64_t k = 0; k < K; k++)                                        \
        for (int64_t n = n0; n < n0 + 16 && n < N; n++) bp[k * N + n] = (float)B[n * ldb + k];                        \
      nnf_gemm_np(M, N, K, (float)alpha, (const float*)A, ta == 112 ? 1 : lda, ta == 112 ? lda : 1, bp, N, (float*)C, ldc); \
      free(bp); return; } }                                                                                        \
  if (BLAS) { BLAS(101, ta, tb, (int)M, (int)N, (int)K, (T)alpha, A, (int)lda, B, (int)ldb, (T)0, C, (int)ldc); return; } \
  for (int64_t m = 0; m < M; m++) {                                                                                \
    T* restrict c = C + m * ldc;                                                                                   \
    for (int64_t n = 0; n < N; n++) c[n] = 0;                                                                      \
    for (int64_t k = 0; k < K; k++) {                                                                              \
      T a = (T)alpha * (ta == 112 ? A[k * lda + m] : A[m * lda + k]);                                              \
      if (tb == 112) { for (int64_t n = 0; n < N; n++) c[n] += a * B[n * ldb + k]; }                               \
      else { const T* restrict b = B + k * ldb; for (int64_t n = 0; n < N; n++) c[n] += a * b[n]; }                \
    }                                                                                                              \
  }                                                                                                                \
}
NNF_GEMM1(nnf_gemm1_f32, float, nnf_sgemm)
NNF_GEMM1(nnf_gemm1_f64, double, nnf_dgemm)
/* C = op(A) @ B, pool tasks splitting N in 64-column chunks (f32; used by conv). */
struct nnf_g32 { int ta; int64_t M, N, K, lda, ldb, ldc; const float* A; const float* B; float* C; };
static void nnf_gemm_f32_body(void* v, int64_t lo, int64_t hi) {
  struct nnf_g32* g = (struct nnf_g32*)v;
  int64_t n0 = lo * 64, n1 = hi * 64 < g->N ? hi * 64 : g->N;
  nnf_gemm1_f32(g->ta ? 112 : 111, 111, g->M, n1 - n0, g->K, 1.0, g->A, g->lda, g->B + n0, g->ldb, g->C + n0, g->ldc);
}
static void nnf_gemm_f32(int ta, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc) {
  struct nnf_g32 g = {ta, M, N, K, lda, ldb, ldc, A, B, C};
  int64_t chunks = (N + 63) / 64;
  nnf_parallel(nnf_gemm_f32_body, &g, chunks, M * N * K >= 65536 ? (chunks + 7) / 8 : chunks);
}
static inline int64_t nnf_powi(int64_t a, int64_t b) { int64_t r = 1; if (b < 0) return a == 1 ? 1 : 0; while (b--) r *= a; return r; }
"""


def _lit(v, dt: DType) -> str:
    c = comp(dt)
    if dt.is_float:
        v = float(v)
        if math.isnan(v):
            return "NAN" if c == "float" else "(double)NAN"
        if math.isinf(v):
            return ("INFINITY" if v > 0 else "-INFINITY") if c == "float" else ("(double)INFINITY" if v > 0 else "-(double)INFINITY")
        return f"{v!r}f" if c == "float" else f"{v!r}"
    if dt.name == "bool":
        return "1" if v else "0"
    return f"(({c}){int(v)}LL)"


class CEmitter:
    """Expressions -> C strings, given a name for each loop variable and each structured argument."""

    def __init__(self, bufname, varname, args: dict):
        self.bufname = bufname     # Buffer -> C pointer identifier
        self.varname = varname     # axis -> C expression of the loop index
        self.args = args           # Arg name -> C expression

    def index(self, acc: Access, indirect=()) -> str:
        terms = [str(acc.offset)] if acc.offset else []
        for k, s in enumerate(acc.strides):
            if s:
                terms.append(self.varname(k) if s == 1 else f"{s}*{self.varname(k)}")
        for ie, st in indirect:
            terms.append(f"{st}*(int64_t)({self.expr(ie)})")
        return " + ".join(terms) or "0"

    def load(self, e: Load) -> str:
        ref = f"{self.bufname(e.access.buf)}[{self.index(e.access, e.indirect)}]"
        if e.dtype.name == "bf16":
            return f"nnf_bf16_to_f({ref})"
        if e.dtype.name == "f16":
            return f"(float){ref}"
        if e.dtype.name in TABLED:
            return f"nnf_tab_{e.dtype.name}[{ref}]"
        if e.dtype.name == "i4":   # a nibble per byte: sign-extend the low 4 bits
            return f"((int8_t)((uint8_t)({ref} << 4)) >> 4)"
        if e.dtype.name == "u4":
            return f"((uint8_t)({ref} & 15))"
        return ref

    def expr(self, e: Expr) -> str:
        if isinstance(e, Load):
            return self.load(e)
        if isinstance(e, Const):
            return _lit(e.value, e.dtype)
        if isinstance(e, Var):
            return f"(({comp(e.dtype)}){self.varname(e.axis)})"
        if isinstance(e, Arg):
            return self.args[e.name]
        if isinstance(e, Op):
            return self.op(e)
        raise CodegenError(f"cannot emit {type(e).__name__}")

    def op(self, e: Op) -> str:
        a = [self.expr(x) for x in e.args]
        dt = e.dtype
        c = comp(dt)
        src_dt = e.args[0].dtype if e.args else dt
        sc = comp(src_dt)
        isf = sc in ("float", "double")
        dbl = sc == "double"
        name = e.op
        bin_ops = {"add": "+", "sub": "-", "mul": "*"}
        if name in bin_ops:
            return f"(({c})({a[0]} {bin_ops[name]} {a[1]}))"
        if name == "div":
            return f"({a[0]} / {a[1]})" if isf else f"(({c})nnf_divi({a[0]}, {a[1]}))"
        if name in ("eq", "ne", "lt", "le", "gt", "ge"):
            sym = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}[name]
            return f"(({a[0]}) {sym} ({a[1]}))"
        if name in ("and", "or", "xor"):
            sym = {"and": "&&", "or": "||", "xor": "!="}[name]
            return f"((uint8_t)(({a[0]} != 0) {sym} ({a[1]} != 0)))"
        if name == "not":
            return f"((uint8_t)!({a[0]}))"
        if name in ("max", "min"):
            if isf:
                return f"nnf_{name}{'d' if dbl else 'f'}({a[0]}, {a[1]})"
            cmp = ">" if name == "max" else "<"
            return f"({{ {c} _a = {a[0]}, _b = {a[1]}; _a {cmp} _b ? _a : _b; }})"
        if name == "mod":
            return f"nnf_mod{'d' if dbl else 'f'}({a[0]}, {a[1]})" if isf else f"(({c})nnf_modi({a[0]}, {a[1]}))"
        if name == "pow":
            return f"{'pow' if dbl else 'powf'}({a[0]}, {a[1]})" if isf else f"(({c})nnf_powi({a[0]}, {a[1]}))"
        if name == "prelu":
            return f"({{ {c} _x = {a[0]}; _x >= 0 ? _x : _x * ({a[1]}); }})"
        if name == "where":
            return f"(({a[0]}) ? ({a[1]}) : ({a[2]}))"
        if name == "cast":
            if dt.name == "bool":
                return f"((uint8_t)(({a[0]}) != 0))"
            if dt.is_int and isf:   # float -> int: truncation toward zero, like C
                return f"(({c})({a[0]}))"
            # bf16 / f16 values are computed in float: the cast itself rounds (the reference does; a store to a
            # bf16 buffer rounds again, which changes nothing)
            if dt.name == "bf16" and src_dt.name != "bf16":
                return f"nnf_bf16_to_f(nnf_f_to_bf16({a[0]}))"
            if dt.name == "f16" and src_dt.name != "f16":
                return f"((float)(_Float16)({a[0]}))"
            if dt.name in TABLED and src_dt.name != dt.name:   # no rounding to fp8/fp4 in C: say so, never skip it
                raise CodegenError(f"cast to {dt.name} inside a kernel is not supported on the cpu backend "
                                   f"(reading {dt.name} tensors is); use backend='reference'")
            return f"(({c})({a[0]}))"
        if name == "identity":
            return a[0]
        if name == "clip":
            x = a[0]
            lo, hi = e.attr("min"), e.attr("max")
            s = x
            if lo is not None:
                s = f"({{ {c} _x = {s}; _x < {_lit(lo, dt)} ? {_lit(lo, dt)} : _x; }})"
            if hi is not None:
                s = f"({{ {c} _x = {s}; _x > {_lit(hi, dt)} ? {_lit(hi, dt)} : _x; }})"
            return s
        if not isf:
            int_unary = {"neg": f"(({c})-({a[0]}))", "abs": f"({{ {c} _x = {a[0]}; _x < 0 ? ({c})-_x : _x; }})",
                         "relu": f"({{ {c} _x = {a[0]}; _x < 0 ? 0 : _x; }})",
                         "sign": f"({{ {c} _x = {a[0]}; ({c})((_x > 0) - (_x < 0)); }})"}
            if name in int_unary:
                return int_unary[name]
            raise CodegenError(f"op '{name}' on {src_dt.name} is not supported on the cpu backend")
        return self.float_unary(name, a[0], e, dbl)

    def float_unary(self, name: str, x: str, e: Op, dbl: bool) -> str:
        f = "" if dbl else "f"
        T = "double" if dbl else "float"
        one = "1.0" if dbl else "1.0f"
        lib = {"exp": f"exp({x})" if dbl else f"nnf_exp({x})", "log": f"log{f}({x})", "sqrt": f"sqrt{f}({x})",
               "rsqrt": f"({one} / sqrt{f}({x}))", "reciprocal": f"({one} / ({x}))",
               "tanh": f"tanh({x})" if dbl else f"nnf_tanh({x})",
               "sigmoid": f"nnf_sigmoid_d({x})" if dbl else f"nnf_sigmoid({x})",
               "erf": f"erf({x})" if dbl else f"nnf_erf({x})", "sin": f"sin{f}({x})", "cos": f"cos{f}({x})",
               "floor": f"floor{f}({x})", "ceil": f"ceil{f}({x})", "round": f"nearbyint{f}({x})",
               "neg": f"(-({x}))", "abs": f"fabs{f}({x})"}
        if name in lib:
            return lib[name]
        if name == "relu":
            return f"({{ {T} _x = {x}; _x < 0 ? 0 : _x; }})"
        if name == "sign":
            return f"({{ {T} _x = {x}; _x != _x ? _x : ({T})((_x > 0) - (_x < 0)); }})"
        if name == "leaky_relu":
            return f"({{ {T} _x = {x}; _x >= 0 ? _x : _x * ({T}){e.attr('alpha', 0.01)!r}; }})"
        if name == "elu":
            ex = f"exp(_x)" if dbl else "nnf_exp(_x)"
            return f"({{ {T} _x = {x}; _x > 0 ? _x : ({T}){e.attr('alpha', 1.0)!r} * ({ex} - 1); }})"
        if name == "gelu":
            if dbl:
                if e.attr("approximate", "none") == "tanh":
                    return f"({{ double _x = {x}; 0.5 * _x * (1 + tanh(0.79788456080286536 * (_x + 0.044715 * _x * _x * _x))); }})"
                return f"({{ double _x = {x}; 0.5 * _x * (1 + erf(_x * 0.70710678118654752)); }})"
            return f"nnf_gelu_tanh({x})" if e.attr("approximate", "none") == "tanh" else f"nnf_gelu({x})"
        if name == "silu":
            return f"({{ {T} _x = {x}; _x * {'nnf_sigmoid_d' if dbl else 'nnf_sigmoid'}(_x); }})"
        if name == "softplus":
            ex = "exp" if dbl else "nnf_exp"
            return f"({{ {T} _x = {x}; ({T})((_x > 0 ? _x : 0) + log1p{f}({ex}(-fabs{f}(_x)))); }})"
        if name == "hard_sigmoid":
            al, be = e.attr("alpha", 0.2), e.attr("beta", 0.5)
            return f"({{ {T} _x = {x} * ({T}){al!r} + ({T}){be!r}; _x < 0 ? 0 : (_x > 1 ? 1 : _x); }})"
        if name == "selu":
            al, ga = e.attr("alpha", 1.67326319217681884765625), e.attr("gamma", 1.05070102214813232421875)
            ex = "exp(_x)" if dbl else "nnf_exp(_x)"
            return f"({{ {T} _x = {x}; ({T}){ga!r} * (_x > 0 ? _x : ({T}){al!r} * ({ex} - 1)); }})"
        if name == "shrink":
            bi, la = e.attr("bias", 0.0), e.attr("lambd", 0.5)
            return f"({{ {T} _x = {x}; _x < -({T}){la!r} ? _x + ({T}){bi!r} : (_x > ({T}){la!r} ? _x - ({T}){bi!r} : 0); }})"
        if name == "hard_swish":
            return f"({{ {T} _x = {x}; {T} _h = _x / 6 + ({T})0.5; _x * (_h < 0 ? 0 : (_h > 1 ? 1 : _h)); }})"
        raise CodegenError(f"op '{name}' is not supported on the cpu backend")


def store(bufname, acc_buf: Buffer, ref: str, value: str) -> str:
    if acc_buf.dtype.name in TABLED:
        raise CodegenError(f"writing {acc_buf.dtype.name} tensors is not supported on the cpu backend (reading is)")
    if acc_buf.dtype.name in ("i4", "u4"):
        return f"{ref} = (uint8_t)(({value}) & 15);"
    if acc_buf.dtype.name == "bf16":
        return f"{ref} = nnf_f_to_bf16({value});"
    if acc_buf.dtype.name == "f16":
        return f"{ref} = (_Float16)({value});"
    return f"{ref} = {value};"


# ---------------------------------------------------------------- kernels
class KernelWriter:
    def __init__(self, k: Kernel):
        self.k = k
        self.bufs = k.buffers()
        self.pname = {id(b): f"p{j}" for j, b in enumerate(self.bufs)}
        self.written = {id(a.buf) for a in k.writes()}
        self.helpers: list[str] = []

    def signature(self) -> str:
        ps = []
        for b in self.bufs:
            const = "" if id(b) in self.written else "const "
            ps.append(f"{const}{ctype(b.dtype)}* restrict {self.pname[id(b)]}")
        return f"static void {self.k.name}({', '.join(ps) or 'void'})"

    def bn(self, b: Buffer) -> str:
        return self.pname[id(b)]

    def parallel(self, total, chunk: int, body: str, extras: tuple = ()) -> str:
        """Outline `body` (a loop over [_lo, _hi)) into a helper run by nnf_parallel; returns the call."""
        k = self.k
        if not self.helpers:
            fields = " ".join(f"void* {self.pname[id(b)]};" for b in self.bufs)
            self.helpers.append(f"struct {k.name}__ctx {{ {fields} int64_t x[8]; }};\n")
        name = f"{k.name}__b{len(self.helpers)}"
        unpack = "".join(f"  {'' if id(b) in self.written else 'const '}{ctype(b.dtype)}* restrict {self.pname[id(b)]} = "
                         f"({ctype(b.dtype)}*)_c->{self.pname[id(b)]};\n" for b in self.bufs)
        unpack += "".join(f"  int64_t {x} = _c->x[{j}];\n" for j, x in enumerate(extras))
        self.helpers.append(f"static void {name}(void* _v, int64_t _lo, int64_t _hi) {{\n"
                            f"  struct {k.name}__ctx* _c = (struct {k.name}__ctx*)_v;\n{unpack}{body}}}\n")
        init = ", ".join(f"(void*){self.pname[id(b)]}" for b in self.bufs)
        xs = "{" + ", ".join(extras) + "}" if extras else "{0}"
        return (f"  {{ struct {k.name}__ctx _ctx = {{ {init}{', ' if init else ''}{xs} }}; "
                f"nnf_parallel({name}, &_ctx, {total}, {max(1, chunk)}); }}\n")

    def emitter(self, names: list[str], args: dict | None = None) -> CEmitter:
        return CEmitter(self.bn, lambda k: names[k], args or {})

    def write(self) -> str:
        k = self.k
        body = {Pointwise: self.pointwise, Reduce: self.reduce, RowNorm: self.rownorm, Gemm: self.gemm, Conv: self.conv}.get(type(k))
        if body is None and k.kind == "quant_rows":   # dynamic per-token quantization (issue 10)
            from .quant_kernels import emit_quant_rows
            body = lambda: emit_quant_rows(self, k)  # noqa: E731
        if body is None and k.kind == "attention":   # fused attention, scores never in memory (backends/cpu/attention.py)
            from .attention import emit_attention
            body = lambda: emit_attention(self, k)  # noqa: E731
        if body is None:
            raise CodegenError(f"kernel kind {k.kind} is not supported by the cpu backend yet")
        main = f"{self.signature()} {{\n{body()}}}\n"
        return "".join(self.helpers) + main

    def loops(self, dims, names, inner: str, par_axis, indent="  ", keep_inner: bool = True) -> str:
        """The loop nest over `dims`; with par_axis 0 the leading axes, flattened until there are >= 16 tasks
        (not the innermost axis when it is the one that vectorizes: keep_inner), go to the pool in ~16 chunks."""
        if not dims:
            return f"{indent}{{ {inner} }}\n"
        if par_axis == 0:
            nflat, ext = 1, dims[0]
            while nflat < len(dims) - (1 if keep_inner else 0) and ext < 16:   # a batch of 1 (or 8 heads) alone leaves a thread idle
                ext *= dims[nflat]
                nflat += 1
            rest = self.loops(dims[nflat:], names[nflat:], inner, None, "    ")
            idx = []
            for j in range(nflat):
                inner_ext = math.prod(dims[j + 1:nflat])
                q = f"_f / {inner_ext}" if inner_ext > 1 else "_f"
                idx.append(f"{names[j]} = ({q}) % {dims[j]}" if j > 0 else f"{names[j]} = {q}")
            head = f"    int64_t {', '.join(idx)};\n"
            body = f"  for (int64_t _f = _lo; _f < _hi; _f++) {{\n{head}{rest}  }}\n"
            return self.parallel(ext, max(1, ext // 16), body)
        out = ""
        for ax, (d, nm) in enumerate(zip(dims, names)):
            out += f"{indent + '  ' * ax}for (int64_t {nm} = 0; {nm} < {d}; {nm}++) {{\n"
        out += indent + "  " * len(dims) + inner + "\n"
        for ax in reversed(range(len(dims))):
            out += indent + "  " * ax + "}\n"
        return out

    def pointwise(self) -> str:
        k: Pointwise = self.k
        names = [f"i{j}" for j in range(len(k.domain))]
        em = self.emitter(names)
        stmts = []
        for acc, e in k.stores:
            ref = f"{self.bn(acc.buf)}[{em.index(acc)}]"
            stmts.append(store(self.bn, acc.buf, ref, em.expr(e)))
        return self.loops(k.domain, names, " ".join(stmts), k.schedule.parallel_axis)

    def reduce(self) -> str:
        k: Reduce = self.k
        no, nr = len(k.domain), len(k.rdomain)
        names = [f"i{j}" for j in range(no + nr)]
        dt = k.body.dtype
        c = comp(dt)
        em = self.emitter(names)
        isf = c in ("float", "double")
        comb = k.combine
        if isf:
            lim = ("-INFINITY", "INFINITY")
        else:
            lim = {"int64_t": ("INT64_MIN", "INT64_MAX"), "int32_t": ("INT32_MIN", "INT32_MAX"), "int16_t": ("INT16_MIN", "INT16_MAX"),
                   "int8_t": ("INT8_MIN", "INT8_MAX"), "uint8_t": ("0", "UINT8_MAX")}[c]
        init = {"sum": "0", "prod": "1", "max": lim[0], "min": lim[1], "argmax": lim[0], "argmin": lim[1]}[comb]
        v = em.expr(k.body)
        if comb in ("argmax", "argmin"):
            rel = (">=" if k.select_last else ">") if comb == "argmax" else ("<=" if k.select_last else "<")
            nanchk = " || (_v != _v && _r == _r)" if isf else ""
            res = "_idx"
            pre = f"{c} _r = {init}; int64_t _idx = 0; int _seen = 0;"
            inner = (f"{{ {c} _v = {v}; if (!_seen || _v {rel} _r{nanchk}) {{ _r = _v; _idx = {names[no]}; _seen = 1; }} }}")
            red_loops = self.loops(k.rdomain, names[no:], inner, None, "    ")
        else:
            def step(r: str) -> str:   # fold _v into the accumulator r (NaN propagates through max / min)
                return {"sum": f"{r} += _v;", "prod": f"{r} *= _v;",
                        "max": f"{r} = (_v > {r} || _v != _v) ? _v : {r};" if isf else f"{r} = _v > {r} ? _v : {r};",
                        "min": f"{r} = (_v < {r} || _v != _v) ? _v : {r};" if isf else f"{r} = _v < {r} ? _v : {r};"}[comb]
            if window_reduce(k):
                return self.window_reduce(names, c, init, v, step("_ra[_w]"))
            inner = f"{{ {c} _v = {v}; {step('_r')} }}"
            red_loops = self.loops(k.rdomain, names[no:], inner, None, "    ")
            if comb == "sum" and nr:
                red_loops = red_loops.replace(f"for (int64_t {names[-1]}", f"_Pragma(\"omp simd reduction(+:_r)\")\n    for (int64_t {names[-1]}", 1) if nr == 1 else red_loops
            pre = f"{c} _r = {init};"
            res = "_r"
        em2 = self.emitter(names, {"red": res})
        post = em2.expr(k.post) if k.post is not None else res
        ref = f"{self.bn(k.out.buf)}[{em.index(k.out)}]"
        inner_all = f"{pre}\n{red_loops}    {store(self.bn, k.out.buf, ref, post)}"
        return self.loops(k.domain, names[:no], inner_all, k.schedule.parallel_axis, keep_inner=nr == 0)

    def window_reduce(self, names: list[str], c: str, init: str, v: str, combine: str) -> str:
        """`window_reduce` kernels: a row of accumulators along the last output axis, the (few) reduce steps
        outside it, so the innermost loop runs over neighbouring outputs and vectorizes. Each output still
        combines its terms in the same order as the scalar loop."""
        k: Reduce = self.k
        no = len(k.domain)
        last, W = names[no - 1], k.domain[-1]
        em = self.emitter(names, {"red": "_ra[_w]"})
        post = em.expr(k.post) if k.post is not None else "_ra[_w]"
        ref = f"{self.bn(k.out.buf)}[{em.index(k.out)}]"
        row = f"for (int64_t _w = 0; _w < {W}; _w++) {{ int64_t {last} = _w; (void){last}; "
        red = self.loops(k.rdomain, names[no:], f"{row}{c} _v = {v}; {combine} }}", None, "    ")
        inner = (f"{c} _ra[{W}];\n    for (int64_t _w = 0; _w < {W}; _w++) _ra[_w] = {init};\n{red}"
                 f"    {row}{store(self.bn, k.out.buf, ref, post)} }}")
        return self.loops(k.domain[:-1], names[:no - 1], inner, k.schedule.parallel_axis, keep_inner=False)

    def rownorm(self) -> str:
        k: RowNorm = self.k
        no = len(k.domain)
        names = [f"i{j}" for j in range(no + 1)]
        r = names[no]
        em = self.emitter(names)
        R = k.row
        x = em.expr(k.x)
        orf = f"{self.bn(k.out.buf)}[{em.index(k.out)}]"
        heap = R > 16384
        decl = (f"float* restrict _t = (float*)malloc(sizeof(float) * {R});" if heap else f"float _t[{R}];")
        fin = "free(_t);" if heap else ""
        loop = lambda body: f"    for (int64_t {r} = 0; {r} < {R}; {r}++) {{ {body} }}\n"  # noqa: E731
        simd = lambda red: f"    _Pragma(\"omp simd reduction({red})\")\n"  # noqa: E731
        w = em.expr(k.weight) if k.weight is not None else None
        b = em.expr(k.bias) if k.bias is not None else None
        s = f"{decl}\n"
        if k.norm in ("softmax", "log_softmax"):
            s += "    float _m = -INFINITY;\n" + simd("max:_m") + loop(f"float _v = {x}; _t[{r}] = _v; _m = _v > _m ? _v : _m;")
            s += "    float _s = 0.0f;\n"
            if k.norm == "softmax":
                s += "    if (_m == -INFINITY) _m = 0.0f;\n"
                s += simd("+:_s") + loop(f"float _e = nnf_exp(_t[{r}] - _m); _t[{r}] = _e; _s += _e;")
                s += "    float _inv = 1.0f / _s;\n"
                s += loop(store(self.bn, k.out.buf, orf, f"_t[{r}] * _inv"))
            else:
                s += simd("+:_s") + loop(f"_s += nnf_exp(_t[{r}] - _m);")
                s += "    float _ls = _m + logf(_s);\n"
                s += loop(store(self.bn, k.out.buf, orf, f"_t[{r}] - _ls"))
        else:
            s += "    float _s = 0.0f;\n" + simd("+:_s") + loop(f"float _v = {x}; _t[{r}] = _v; _s += _v;")
            if k.norm == "layer_norm":
                s += f"    float _mu = _s / {R}.0f; float _q = 0.0f;\n"
                s += simd("+:_q") + loop(f"float _d = _t[{r}] - _mu; _q += _d * _d;")
                s += f"    float _rs = 1.0f / sqrtf(_q / {R}.0f + {float(k.eps)!r}f);\n"
                val = f"(_t[{r}] - _mu) * _rs"
            else:
                s = f"{decl}\n    float _q = 0.0f;\n" + simd("+:_q") + loop(f"float _v = {x}; _t[{r}] = _v; _q += _v * _v;")
                s += f"    float _rs = 1.0f / sqrtf(_q / {R}.0f + {float(k.eps)!r}f);\n"
                val = f"_t[{r}] * _rs"
            if w is not None:
                val = f"({val}) * ({w})"
            if b is not None:
                val = f"({val}) + ({b})"
            s += loop(store(self.bn, k.out.buf, orf, val))
        s += f"    {fin}"
        if comp(k.x.dtype) != "float":
            raise CodegenError(f"{k.norm} on {k.x.dtype.name} is not supported on the cpu backend")
        return self.loops(k.domain, names[:no], s, k.schedule.parallel_axis, keep_inner=False)

    def gemm(self) -> str:
        k: Gemm = self.k
        nb = len(k.batch)
        bn_ = [f"b{j}" for j in range(nb)]
        dt = k.out.buf.dtype
        c = comp(dt)
        if k.meta.get("quant"):   # int8 / weight-only int4, int8 kernels (backends/cpu/quant_kernels.py, issue 10)
            from .quant_kernels import emit_gemm as emit_qgemm
            return emit_qgemm(self, k)
        if not isinstance(k.b, Access):
            raise CodegenError("quantized gemm operands are not supported on the cpu backend yet")
        A, B, O = k.a, k.b, k.out

        def base(acc: Access) -> str:
            terms = [str(acc.offset)] + [f"{s}*{bn_[j]}" for j, s in enumerate(acc.strides[:nb]) if s]
            return " + ".join(terms)
        ldo = O.strides[-1 - 1] if k.m > 1 else k.n
        names = bn_ + ["_m", "_n"]
        epi_em = self.emitter(names, {"acc": "_acc"})
        oref = f"_O[_m*{O.strides[-2]} + _n]"
        epi = epi_em.expr(k.epilogue) if k.epilogue is not None else None
        s = ""
        if k.meta.get("bf16_packed"):   # bf16 A x packed bf16 weight, f32 accumulate (backends/cpu/bf16.py)
            from .bf16 import emit_gemm
            return emit_gemm(self, k, epi)
        if k.meta.get("f32_packed"):   # f32 weight in 64-column panels (backends/cpu/pack.py)
            return self.gemm_packed(k, base, bn_, epi)
        typed = ctype(A.buf.dtype) == c == ctype(B.buf.dtype) == ctype(O.buf.dtype) and c in ("float", "double")
        if typed:
            return self.gemm_blas(k, c, base, bn_, epi)
        s += f"      {ctype(O.buf.dtype)}* restrict _O = {self.bn(O.buf)} + {base(O)};\n"
        s += self._loop_gemm(k, c, base, "_O", simd=False, direct_epi=epi, oref=oref)
        out = ""
        for j, d in enumerate(k.batch):
            out += f"  {'  ' * j}for (int64_t {bn_[j]} = 0; {bn_[j]} < {d}; {bn_[j]}++) {{\n"
        out += "    {\n" + s + "    }\n"
        for j in reversed(range(nb)):
            out += f"  {'  ' * j}}}\n"
        return out

    def gemm_packed(self, k: Gemm, base, bn_, epi) -> str:
        """f32 gemm, B a weight packed in 64-column panels: tasks own whole panels (each weight byte is read by one
        thread) or, for narrow N, row blocks; each applies the epilogue to its own block while it is in cache."""
        A, O = k.a, k.out
        sam, sak = A.strides[-2], A.strides[-1]   # any strides: the micro-kernel broadcasts A one element at a time
        ldo = max(O.strides[-2] if k.m > 1 else k.n, 1)
        nb = len(k.batch)
        nbatch = math.prod(k.batch) if nb else 1
        npan = -(-k.n // 64)
        a_ptr, b_ptr = f"{self.bn(A.buf)} + {base(A)}", self.bn(k.b.buf)
        epi_loop = (lambda m0, m1, n0, n1: f"for (int64_t _m = {m0}; _m < {m1}; _m++) {{ float* restrict _row = _O + _m*{ldo}; "
                    f"for (int64_t _n = {n0}; _n < {n1}; _n++) {{ float _acc = _row[_n]; _row[_n] = {epi}; }} }}") \
            if epi is not None else (lambda *a: "")
        work = nbatch * k.m * k.n * k.k
        from .pack import task_split   # groups of panels; with few panels and many rows, row blocks too
        pt, ngp, mc, nm = task_split(npan, k.m, 16)
        body = (f"  for (int64_t _t = _lo; _t < _hi; _t++) {{\n"
                f"    int64_t _f = _t / {nm * ngp}, _tm = (_t / {ngp}) % {nm}, _tp = _t % {ngp}; (void)_f;\n")
        rem = nbatch
        for j, d in enumerate(k.batch):
            rem //= d
            body += f"    int64_t {bn_[j]} = (_f / {rem}) % {d};\n"
        body += (f"    float* _O = {self.bn(O.buf)} + {base(O)};\n"
                 f"    int64_t _m0 = _tm * {mc}, _m1 = _m0 + {mc} < {k.m} ? _m0 + {mc} : {k.m};\n"
                 f"    int64_t _p0 = _tp * {pt}, _p1 = _p0 + {pt} < {npan} ? _p0 + {pt} : {npan};\n"
                 f"    nnf_gemm_pk(_m1 - _m0, {k.n}, {k.k}, {float(k.alpha)!r}f, {a_ptr} + _m0*{sam}, {6 * sam}, {sam}, {sak}, "
                 f"0, {b_ptr}, {k.meta['f32_packed']}, _p0, _p1, _O + _m0*{ldo}, {ldo});\n"
                 f"    {{ int64_t _n0 = _p0 * 64, _n1 = _p1 * 64 < {k.n} ? _p1 * 64 : {k.n}; (void)_n0; (void)_n1;\n"
                 f"      {epi_loop('_m0', '_m1', '_n0', '_n1')} }}\n  }}\n")
        total = nbatch * nm * ngp
        return self.parallel(total, 1 if work >= 65536 else total, body)

    def gemm_blas(self, k: Gemm, c: str, base, bn_, epi) -> str:
        """f32/f64 gemm through BLAS (single-threaded calls; we own the threads, so one pool, no oversubscription).
        Many batches: OpenMP over batches. Otherwise each thread takes a slice of N (weights read once) or of M,
        and applies the epilogue to its own slice while it is still in cache."""
        A, B, O = k.a, k.b, k.out
        nb = len(k.batch)
        ta, lda = _blas_layout(A, k.m, k.k)
        tb, ldb = _blas_layout(B, k.k, k.n)
        ldo = max(O.strides[-2] if k.m > 1 else k.n, 1)
        fn = "nnf_gemm1_f32" if c == "float" else "nnf_gemm1_f64"
        nbatch = math.prod(k.batch) if nb else 1
        work = nbatch * k.m * k.n * k.k
        a_ptr, b_ptr = f"{self.bn(A.buf)} + {base(A)}", f"{self.bn(B.buf)} + {base(B)}"
        # a private restrict row pointer: through the shared _O (an OpenMP-captured variable) gcc cannot vectorize
        epi_loop = (lambda m0, m1, n0, n1: f"for (int64_t _m = {m0}; _m < {m1}; _m++) {{ {c}* restrict _row = _O + _m*{ldo}; "
                    f"for (int64_t _n = {n0}; _n < {n1}; _n++) {{ {c} _acc = _row[_n]; _row[_n] = {epi}; }} }}") \
            if epi is not None else (lambda *a: "")
        out = ""
        if nb and nbatch >= 2 and work >= 32768:
            # one task per batch (attention heads): decompose the flat batch index
            dec, rem = "", nbatch
            for j, d in enumerate(k.batch):
                rem //= d
                dec += f"    int64_t {bn_[j]} = (_f / {rem}) % {d};\n"
            body = (f"  for (int64_t _f = _lo; _f < _hi; _f++) {{\n{dec}"
                    f"    {c}* _O = {self.bn(O.buf)} + {base(O)};\n"
                    f"    {fn}({ta}, {tb}, {k.m}, {k.n}, {k.k}, {k.alpha!r}, {a_ptr}, {lda}, {b_ptr}, {ldb}, _O, {ldo});\n"
                    f"    {epi_loop(0, k.m, 0, k.n)}\n  }}\n")
            return self.parallel(nbatch, 1, body)
        split_n = k.n >= 128 or k.n >= k.m
        par = work >= 65536
        # chunks of >= 64 columns (full micro-kernel panels) or 6 rows, handed out from the pool's counter;
        # the epilogue runs on each chunk right after it is computed, while it is in cache
        if split_n:
            chunk = max(64, -(-k.n // 8) // 64 * 64)
            nch = -(-k.n // chunk)
            body = (f"  for (int64_t _ch = _lo; _ch < _hi; _ch++) {{\n"
                    f"    {c}* _O = {self.bn(O.buf)} + {base(O)};\n"
                    f"    int64_t _n0 = _ch * {chunk}, _n1 = _n0 + {chunk} < {k.n} ? _n0 + {chunk} : {k.n};\n"
                    f"    {fn}({ta}, {tb}, {k.m}, _n1 - _n0, {k.k}, {k.alpha!r}, {a_ptr}, {lda}, "
                    f"{b_ptr} + _n0*{ldb if tb == 112 else 1}, {ldb}, _O + _n0, {ldo});\n"
                    f"    {epi_loop(0, k.m, '_n0', '_n1')}\n  }}\n")
        else:
            chunk = max(6, -(-k.m // 8) // 6 * 6)
            nch = -(-k.m // chunk)
            body = (f"  for (int64_t _ch = _lo; _ch < _hi; _ch++) {{\n"
                    f"    {c}* _O = {self.bn(O.buf)} + {base(O)};\n"
                    f"    int64_t _m0 = _ch * {chunk}, _m1 = _m0 + {chunk} < {k.m} ? _m0 + {chunk} : {k.m};\n"
                    f"    {fn}({ta}, {tb}, _m1 - _m0, {k.n}, {k.k}, {k.alpha!r}, {a_ptr} + _m0*{lda if ta == 111 else 1}, {lda}, "
                    f"{b_ptr}, {ldb}, _O + _m0*{ldo}, {ldo});\n"
                    f"    {epi_loop('_m0', '_m1', 0, k.n)}\n  }}\n")
        call = self.parallel(nch, 1 if par else nch, body, tuple(bn_))
        for j, d in enumerate(k.batch):
            out += f"  for (int64_t {bn_[j]} = 0; {bn_[j]} < {d}; {bn_[j]}++)\n"
        return out + "  " + call.lstrip()

    def conv(self) -> str:
        k: Conv = self.k
        if k.meta.get("bf16_packed"):   # bf16 conv: NHWC bf16 im2col x packed bf16 weight (backends/cpu/bf16.py)
            from .bf16 import emit_conv
            return emit_conv(self, k)
        from .conv import emit_conv as emit_f32_conv   # f32: im2col in panel layout + packed gemm (backends/cpu/conv.py)
        return emit_f32_conv(self, k)

    def _loop_gemm(self, k: Gemm, c: str, base, optr: str, simd: bool, direct_epi=None, oref=None) -> str:
        """Portable gemm (row of the output accumulated in a local array; the n loop vectorizes)."""
        A, B, O = k.a, k.b, k.out
        sam, sak = A.strides[-2], A.strides[-1]
        sbk, sbn = B.strides[-2], B.strides[-1]
        som, son = O.strides[-2], O.strides[-1]
        aref = f"{self.bn(A.buf)}[{base(A)} + _m*{sam} + _k*{sak}]"
        bref = f"{self.bn(B.buf)}[{base(B)} + _k*{sbk} + _n*{sbn}]"
        cv = lambda r, dt: f"nnf_bf16_to_f({r})" if dt.name == "bf16" else (f"(float){r}" if dt.name == "f16" else r)  # noqa: E731
        alpha = f" * ({c}){k.alpha!r}" if k.alpha != 1.0 else ""
        val = f"_row[_n]{alpha}"
        if direct_epi is not None:
            val = f"({{ {c} _acc = _row[_n]{alpha}; {direct_epi}; }})"
        st = store(self.bn, O.buf, f"{optr}[_m*{som} + _n*{son}]", val)
        return (f"      #pragma omp parallel for schedule(static) if({k.m * k.n * k.k} >= 65536) num_threads(nnf_get_threads())\n"
                f"      for (int64_t _m = 0; _m < {k.m}; _m++) {{\n"
                f"        {c} _row[{k.n}]; for (int64_t _n = 0; _n < {k.n}; _n++) _row[_n] = 0;\n"
                f"        for (int64_t _k = 0; _k < {k.k}; _k++) {{ {c} _a = {cv(aref, A.buf.dtype)};\n"
                f"          for (int64_t _n = 0; _n < {k.n}; _n++) _row[_n] += _a * {cv(bref, B.buf.dtype)}; }}\n"
                f"        for (int64_t _n = 0; _n < {k.n}; _n++) {st}\n"
                f"      }}\n")


def _blas_layout(acc: Access, rows: int, cols: int) -> tuple[int, int]:
    """(CblasNoTrans=111 | CblasTrans=112, leading dimension) for a row-major strided matrix."""
    sr, sc = acc.strides[-2], acc.strides[-1]
    if sc == 1 and (sr >= cols or rows == 1):
        return 111, max(sr if rows > 1 else cols, cols, 1)
    if sr == 1 and (sc >= rows or cols == 1):
        return 112, max(sc if cols > 1 else rows, rows, 1)
    raise CodegenError(f"gemm operand {acc} is not BLAS-compatible (lowering should have made it contiguous)")


# ---------------------------------------------------------------- program
def _tables(p: Program) -> str:
    import numpy as np
    used = sorted({b.dtype.name for b in p.inputs + p.consts + p.temps + p.outputs if b.dtype.name in TABLED})
    out = []
    for name in used:
        vals = np.arange(256, dtype=np.uint8).view(to_np(name)).astype(np.float32)
        body = ", ".join("NAN" if np.isnan(v) else ("INFINITY" if v == np.inf else "-INFINITY" if v == -np.inf else f"{float(v)!r}f")
                         for v in vals)
        out.append(f"static const float nnf_tab_{name}[256] = {{{body}}};\n")
    return "".join(out)


def to_np(name: str):
    from ...ir.dtypes import dtype as to_dtype
    return to_dtype(name).np


def generate(p: Program, profile: bool = False) -> str:
    """Kernels whose C bodies are identical (the same layer repeated: only the buffers differ, and those are
    parameters) are emitted once and called many times: less C to compile, same machine code."""
    from .pack import C_SOURCE as PACK_C
    parts = [PRELUDE % {"abi": ABI_VERSION}, PACK_C, _tables(p)]
    if any(k.meta.get("bf16_packed") or k.meta.get("bf16_qk") for k in p.kernels):
        from .bf16 import C_SOURCE
        parts.append(C_SOURCE)
    if any(k.meta.get("quant") or k.kind == "quant_rows" for k in p.kernels):
        from .quant_kernels import C_SOURCE as QUANT_C
        parts.append(QUANT_C)
    seen: dict[str, str] = {}
    calls = []
    for k in p.kernels:
        w = KernelWriter(k)
        text = w.write()
        body = text.replace(f"{k.name}(", "@(").replace(f"{k.name}__", "@__")
        fn = seen.get(body)
        if fn is None:
            fn = seen[body] = k.name
            parts.append(text)
        calls.append((fn, [_ptr(b) for b in w.bufs]))
    parts.append(entry(calls, profile))
    return "\n".join(parts)


def window_reduce(k: Reduce) -> bool:
    """A reduce over a small window (<= 64 terms: pooling, a reduce over few channels) whose inputs move by at
    most 4 elements from one output to the next along the last output axis: it vectorizes across outputs
    (`KernelWriter.window_reduce`); the scalar loop over 9 terms of a 3x3 max-pool ran one output at a time."""
    if k.combine not in ("sum", "prod", "max", "min") or not k.rdomain or not k.domain:
        return False
    if math.prod(k.rdomain) > 64 or not 8 <= k.domain[-1] <= 4096:
        return False
    lds = loads(k.body)
    no = len(k.domain)
    return bool(lds) and all(not ld.indirect and abs(ld.access.strides[no - 1]) <= 4 for ld in lds)


def _ptr(b: Buffer) -> str:
    t = ctype(b.dtype)
    if b.kind == "input":
        return f"(({t}*)in[{b.index}])"
    if b.kind == "output":
        return f"(({t}*)out[{b.index}])"
    if b.kind == "const":
        return f"(({t}*)w[{b.index}])"
    return f"(({t}*)(arena + {b.offset}))"


def entry(calls: list, profile: bool = False) -> str:
    lines = []
    if profile:   # seconds spent in each kernel call, accumulated over runs (read by CpuExecutable.profile)
        lines.append(f"double nnf_prof[{max(len(calls), 1)}];")
        lines.append(f"double* nnf_profile(void) {{ return nnf_prof; }}")
    lines += ["int nnf_run(void* const* in, void* const* out, void* const* w, char* arena) {",
              "  (void)in; (void)out; (void)w; (void)arena;"]
    for i, (fn, args) in enumerate(calls):
        call = f"{fn}({', '.join(args)});"
        lines.append(f"  {{ double _t = omp_get_wtime(); {call} nnf_prof[{i}] += omp_get_wtime() - _t; }}" if profile else f"  {call}")
    lines.append("  return 0;\n}\n")
    return "\n".join(lines)
