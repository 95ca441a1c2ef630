"""Quantized gemm kernels of the cpu backend (issue 10): C source, compile-time weight packing, and the C body of
a Gemm kernel whose meta["quant"] is set by passes/lower_quant.py.

- "w8a8": s8 activations x s8 weights, exact int32 accumulation. With AVX-512 VNNI (`vpdpbusd`, u8 x s8) the
  activations are shifted to u8 on load (x ^ 0x80 = x + 128) and 128*colsum(W), precomputed at compile time,
  is subtracted at the end. Weights packed in panels of 64 columns, [ceil(K/4)][64][4] bytes per panel (4
  consecutive k per 32-bit lane: the vpdpbusd operand), zero padded; the int32 colsums follow the panels.
  Without VNNI: a scalar loop over the same layout (signed products, no correction) - the same int32 result.
- "w4" / "w8": weight-only, f32 activations, f32 accumulation; the codes are unpacked in registers. Panels of
  32 columns: int4 = [ceil(K/8)][32] uint32 lanes, lane j holding 8 consecutive k of column j (nibble i = k % 8,
  two's complement; a shift pair sign-extends it, no table, no byte shuffles); int8 = [K][32] bytes. Scales
  [G][32] f32 per panel (G = K / group; per-channel: G = 1). Each group's partial sums are scaled once:
  sum_g s[g, n] * sum_{k in g} x[k] * q[k, n].
  int8 paths: AVX-512 VNNI (6x64 register tile), AVX-VNNI (256-bit, 16 registers: MR x 32 per half panel, same
  packed layout), AVX2 without VNNI (exact: the activation as s16, vpmovsxbw'd weights, vpmaddwd; 6 x 8 slices of
  the same packed layout, no u8 shift so no colsum correction), else a scalar loop; no AMX tile path yet (the
  int8 AMX kernel would take the same packed B). Weight-only: AVX-512, AVX2 (16-column halves), else scalar.
The path is chosen by the compiler's target macros under -march=native (`nnf_q8_path` / `nnf_wq_path` report it);
define NNF_NO_VNNI / NNF_NO_AVX512_WQ / NNF_NO_AVX2_Q to force a lower path (the tests compare them).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

Q8_PANEL = 64
WQ_PANEL = 32

def _q8_microkernel(mr: int) -> str:
    """MR rows x 64 columns of vpdpbusd over one K block, 4*MR named accumulators, raw sums stored to a 64-wide
    tile. Kept minimal on purpose: with flags or masked loads in it, or arrays of __m512i, gcc spilled the
    accumulators to the stack (measured 2x slower); the caller merges the tile (nnf_q8_merge)."""
    acc = [[f"c{r}{j}" for j in range(4)] for r in range(mr)]
    decl = "  __m512i " + ", ".join(f"{c} = _mm512_setzero_si512()" for row in acc for c in row) + ";\n"
    step = ("    const int8_t* bb = bp + g * 256;\n"
            "    __m512i b0 = _mm512_loadu_si512(bb), b1 = _mm512_loadu_si512(bb + 64);\n"
            "    __m512i b2 = _mm512_loadu_si512(bb + 128), b3 = _mm512_loadu_si512(bb + 192);\n")
    for r in range(mr):
        step += (f"    {{ int32_t w; memcpy(&w, a + {r} * lda + 4 * g, 4); __m512i av = _mm512_set1_epi32(w);\n"
                 + "".join(f"      NNF_DPBUSD({acc[r][j]}, av, b{j});\n" for j in range(4)) + "    }\n")
    store = "".join(f"  _mm512_storeu_si512(t + {64 * r + 16 * j}, {acc[r][j]});\n" for r in range(mr) for j in range(4))
    # noinline/noclone: cloned with the call site's constants, gcc spilled the accumulators too
    return (f"static __attribute__((noinline, noclone)) void nnf_q8mk{mr}(int64_t KG, const uint8_t* a, int64_t lda, "
            f"const int8_t* bp, int32_t* t) {{\n{decl}"
            f"  for (int64_t g = 0; g < KG; g++) {{\n{step}  }}\n{store}}}\n")


def _q8_microkernel_avx(mr: int) -> str:
    """AVX-VNNI (256-bit, 16 ymm registers): MR rows x 32 columns (half h of a 64-column panel), 4*MR accumulators."""
    acc = [[f"c{r}{j}" for j in range(4)] for r in range(mr)]
    decl = "  __m256i " + ", ".join(f"{c} = _mm256_setzero_si256()" for row in acc for c in row) + ";\n"
    step = ("    const int8_t* bb = bp + g * 256 + h * 128;\n"
            + "".join(f"    __m256i b{j} = _mm256_loadu_si256((const __m256i*)(bb + {32 * j}));\n" for j in range(4)))
    for r in range(mr):
        step += (f"    {{ int32_t w; memcpy(&w, a + {r} * lda + 4 * g, 4); __m256i av = _mm256_set1_epi32(w);\n"
                 + "".join(f"      {acc[r][j]} = _mm256_dpbusd_avx_epi32({acc[r][j]}, av, b{j});\n" for j in range(4)) + "    }\n")
    store = "".join(f"  _mm256_storeu_si256((__m256i*)(t + {64 * r} + 32 * h + {8 * j}), {acc[r][j]});\n"
                    for r in range(mr) for j in range(4))
    return (f"static __attribute__((noinline, noclone)) void nnf_q8mk{mr}(int64_t KG, const uint8_t* a, int64_t lda, "
            f"const int8_t* bp, int32_t* t) {{\n  for (int h = 0; h < 2; h++) {{\n{decl}"
            f"  for (int64_t g = 0; g < KG; g++) {{\n{step}  }}\n{store}  }}\n}}\n")


def _wq_microkernel(bits: int, mr: int) -> str:
    """MR rows x 32 columns, f32 FMAs on codes unpacked in registers; `sets` k-interleaved accumulator sets keep
    enough FMA chains in flight. int4: a 32-bit lane holds 8 consecutive k of one column (sign-extended by a shift
    pair); int8: 32 bytes per k row (vpmovsxbd)."""
    sets = 4 if mr == 1 else 2
    acc = [[[f"a{r}_{s}_{h}" for h in range(2)] for s in range(sets)] for r in range(mr)]
    tot = [[f"t{r}_{h}" for h in range(2)] for r in range(mr)]
    zero = lambda names: "    __m512 " + ", ".join(f"{n} = _mm512_setzero_ps()" for n in names) + ";\n"  # noqa: E731

    def fma(i: int, kexpr: str, f0: str, f1: str, ind: str) -> str:
        out = ""
        for r in range(mr):
            out += (f"{ind}{{ __m512 xv = _mm512_set1_ps(x[{r} * lda + {kexpr}]); "
                    f"{acc[r][i % sets][0]} = _mm512_fmadd_ps(xv, {f0}, {acc[r][i % sets][0]}); "
                    f"{acc[r][i % sets][1]} = _mm512_fmadd_ps(xv, {f1}, {acc[r][i % sets][1]}); }}\n")
        return out
    if bits == 4:
        body = ("    int64_t k = k0;\n"
                "    for (; k + 8 <= ke; k += 8) {\n"
                "      const uint8_t* bb = bp + k * 16;\n"
                "      __m512i w0 = _mm512_loadu_si512(bb), w1 = _mm512_loadu_si512(bb + 64);\n")
        for i in range(8):
            # the nibble indexes a 16-float table (vpermps reads the low 4 bits of each lane): one shift and one
            # permute per vector instead of shift, arithmetic shift and convert
            sh = (f"_mm512_srli_epi32(w0, {4 * i})", f"_mm512_srli_epi32(w1, {4 * i})") if i else ("w0", "w1")
            body += (f"      {{ __m512 f0 = _mm512_permutexvar_ps({sh[0]}, tab), f1 = _mm512_permutexvar_ps({sh[1]}, tab);\n"
                     + fma(i, f"k + {i}", "f0", "f1", "        ") + "      }\n")
        body += ("    }\n"
                 "    if (k < ke) {   /* a ragged last block (per-channel scales, K % 8 != 0) */\n"
                 "      const uint8_t* bb = bp + k * 16;\n"
                 "      __m512i w0 = _mm512_loadu_si512(bb), w1 = _mm512_loadu_si512(bb + 64);\n"
                 "      for (int64_t i = 0; k + i < ke; i++) {\n"
                 "        __m128i c = _mm_cvtsi32_si128((int)(28 - 4 * i));\n"
                 "        __m512 f0 = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_sll_epi32(w0, c), 28));\n"
                 "        __m512 f1 = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_sll_epi32(w1, c), 28));\n"
                 + fma(0, "k + i", "f0", "f1", "        ") + "      }\n    }\n")
    else:
        body = ("    int64_t k = k0;\n"
                f"    for (; k + {sets} <= ke; k += {sets}) {{\n")
        for i in range(sets):
            body += (f"      {{ const __m128i* bb = (const __m128i*)(bp + (k + {i}) * 32);\n"
                     "        __m512 f0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(bb)));\n"
                     "        __m512 f1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(bb + 1)));\n"
                     + fma(i, f"k + {i}", "f0", "f1", "        ") + "      }\n")
        body += ("    }\n"
                 "    for (; k < ke; k++) {\n"
                 "      const __m128i* bb = (const __m128i*)(bp + k * 32);\n"
                 "      __m512 f0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(bb)));\n"
                 "      __m512 f1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(bb + 1)));\n"
                 + fma(0, "k", "f0", "f1", "      ") + "    }\n")
    fold = "    __m512 s0 = _mm512_loadu_ps(sp), s1 = _mm512_loadu_ps(sp + 16);\n"
    for r in range(mr):
        for h in range(2):
            ssum = " + ".join(acc[r][s][h] for s in range(sets)).split(" + ")
            e = ssum[0]
            for t in ssum[1:]:
                e = f"_mm512_add_ps({e}, {t})"
            fold += f"    {tot[r][h]} = _mm512_fmadd_ps({e}, s{h}, {tot[r][h]});\n"
    store = ("  __mmask16 m0 = nv >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nv) - 1);\n"
             "  __mmask16 m1 = nv >= 32 ? (__mmask16)0xffff : nv > 16 ? (__mmask16)((1u << (nv - 16)) - 1) : (__mmask16)0;\n"
             + "".join(f"  _mm512_mask_storeu_ps(o + {r} * ldo, m0, {tot[r][0]}); _mm512_mask_storeu_ps(o + {r} * ldo + 16, m1, {tot[r][1]});\n"
                       for r in range(mr)))
    tab = ("  const __m512 tab = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1);   /* int4 codes */\n"
           if bits == 4 else "")
    return (f"static __attribute__((noinline, noclone)) void nnf_w{bits}mk{mr}(int64_t K, int64_t grp, const float* x, int64_t lda, const uint8_t* bp,\n"
            f"                                const float* sp, float* o, int64_t ldo, int64_t nv) {{\n"
            + tab + zero([t for row in tot for t in row])
            + f"  for (int64_t k0 = 0; k0 < K; k0 += grp, sp += 32) {{\n    int64_t ke = k0 + grp;\n"
            + zero([a for r in acc for s in r for a in s]) + body + fold + "  }\n" + store + "}\n")


def _q8_microkernel_avx2(mr: int) -> str:
    """AVX2 without VNNI: MR rows x 64 columns as 8 slices of 8 columns, exact. The activation is prepared as s16
    (nnf_q8_prep), 4 k of a row broadcast as one 64-bit lane; the 4 k of 4 columns are sign-extended to s16 in
    registers (vpmovsxbw) and vpmaddwd sums s16 x s16 pairs into s32 lanes (k01 and k23 of a column side by side,
    added at the end by vphaddd). vpmaddubsw (u8 x s8) would be twice as dense but saturates at 16 bits: not
    exact for 8-bit weights. 2*MR accumulators + 2 B vectors + the broadcast: 15 registers at MR = 6."""
    acc = [[f"c{r}{h}" for h in range(2)] for r in range(mr)]
    decl = "    __m256i " + ", ".join(f"{c} = _mm256_setzero_si256()" for row in acc for c in row) + ";\n"
    step = ("      const int8_t* bb = bp + g * 256 + 32 * s;\n"
            "      __m256i b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)bb));\n"
            "      __m256i b1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(bb + 16)));\n")
    for r in range(mr):
        step += (f"      {{ int64_t w; memcpy(&w, a + {r} * lda + 8 * g, 8); __m256i av = _mm256_set1_epi64x(w);\n"
                 f"        NNF_MADD({acc[r][0]}, av, b0); NNF_MADD({acc[r][1]}, av, b1); }}\n")
    # lanes: c.0 = [n0 k01, n0 k23, n1 k01, n1 k23 | n2.., n3..], c.1 the same for n4..n7; hadd + a 64-bit permute
    store = "".join(f"    _mm256_storeu_si256((__m256i*)(t + {64 * r} + 8 * s), "
                    f"_mm256_permute4x64_epi64(_mm256_hadd_epi32({acc[r][0]}, {acc[r][1]}), 0xD8));\n" for r in range(mr))
    return (f"static __attribute__((noinline, noclone)) void nnf_q8mk{mr}(int64_t KG, const uint8_t* a, int64_t lda, "
            f"const int8_t* bp, int32_t* t) {{\n  for (int s = 0; s < 8; s++) {{\n{decl}"
            f"    for (int64_t g = 0; g < KG; g++) {{\n{step}    }}\n{store}  }}\n}}\n")


def _wq_microkernel_avx2(bits: int, mr: int) -> str:
    """AVX2 weight-only: MR rows x 32 columns as two 16-column halves (2 vectors), f32 FMAs on codes unpacked in
    registers as in the AVX-512 kernel; `sets` k-interleaved accumulator sets keep 8 FMA chains in flight.
    Registers at MR = 2: 8 accumulators, 4 running totals, the raw codes, one unpacked vector, the broadcast."""
    sets = 4 if mr == 1 else 2
    acc = [[[f"a{r}_{s}_{j}" for j in range(2)] for s in range(sets)] for r in range(mr)]
    tot = [[f"t{r}_{j}" for j in range(2)] for r in range(mr)]
    zero = lambda names: "      __m256 " + ", ".join(f"{n} = _mm256_setzero_ps()" for n in names) + ";\n"  # noqa: E731

    def fma(i: int, kexpr: str, fs: list, ind: str) -> str:
        out = ""
        for r in range(mr):
            out += f"{ind}{{ __m256 xv = _mm256_set1_ps(x[{r} * lda + {kexpr}]);"
            for j, f in enumerate(fs):
                out += f" {acc[r][i % sets][j]} = _mm256_fmadd_ps(xv, {f}, {acc[r][i % sets][j]});"
            out += " }\n"
        return out
    if bits == 4:   # lanes of 8 k: [ceil(K/8)][32 columns] uint32; this half's 16 lanes at + 64 * h bytes
        def unpack(shift: str) -> list:
            return [f"_mm256_cvtepi32_ps(_mm256_srai_epi32({shift.format(w=w)}, 28))" for w in ("w0", "w1")]
        body = ("      int64_t k = k0;\n"
                "      for (; k + 8 <= ke; k += 8) {\n"
                "        const uint8_t* bb = bp + k * 16 + 64 * h;\n"
                "        __m256i w0 = _mm256_loadu_si256((const __m256i*)bb), w1 = _mm256_loadu_si256((const __m256i*)(bb + 32));\n")
        for i in range(8):
            sh = f"_mm256_slli_epi32({{w}}, {28 - 4 * i})" if i < 7 else "{w}"
            body += fma(i, f"k + {i}", unpack(sh), "        ")
        body += ("      }\n"
                 "      if (k < ke) {   /* a ragged last block (per-channel scales, K % 8 != 0) */\n"
                 "        const uint8_t* bb = bp + k * 16 + 64 * h;\n"
                 "        __m256i w0 = _mm256_loadu_si256((const __m256i*)bb), w1 = _mm256_loadu_si256((const __m256i*)(bb + 32));\n"
                 "        for (int64_t i = 0; k + i < ke; i++) {\n"
                 "          __m128i c = _mm_cvtsi32_si128((int)(28 - 4 * i));\n"
                 + fma(0, "k + i", unpack("_mm256_sll_epi32({w}, c)"), "          ") + "        }\n      }\n")
    else:   # int8: [K][32] bytes; this half's 16 bytes at + 16 * h
        def unpack8(kexpr: str) -> list:
            return [f"_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(bp + ({kexpr}) * 32 + 16 * h + {8 * j}))))"
                    for j in range(2)]
        body = ("      int64_t k = k0;\n"
                f"      for (; k + {sets} <= ke; k += {sets}) {{\n")
        for i in range(sets):
            body += fma(i, f"k + {i}", unpack8(f"k + {i}"), "        ")
        body += "      }\n      for (; k < ke; k++) {\n" + fma(0, "k", unpack8("k"), "        ") + "      }\n"
    fold = "      __m256 s0 = _mm256_loadu_ps(sp + 16 * h), s1 = _mm256_loadu_ps(sp + 16 * h + 8);\n"
    for r in range(mr):
        for j in range(2):
            e = acc[r][0][j]
            for st in range(1, sets):
                e = f"_mm256_add_ps({e}, {acc[r][st][j]})"
            fold += f"      {tot[r][j]} = _mm256_fmadd_ps({e}, s{j}, {tot[r][j]});\n"
    store = "".join(f"    _mm256_storeu_ps(tile + {32 * r} + 16 * h, {tot[r][0]}); _mm256_storeu_ps(tile + {32 * r} + 16 * h + 8, {tot[r][1]});\n"
                    for r in range(mr))
    head = zero([t for row in tot for t in row]).replace("      __m256", "    __m256")
    return (f"static __attribute__((noinline, noclone)) void nnf_w{bits}mk{mr}(int64_t K, int64_t grp, const float* x, int64_t lda, const uint8_t* bp,\n"
            f"                                const float* sp0, float* o, int64_t ldo, int64_t nv) {{\n"
            f"  float tile[{32 * mr}];\n"
            f"  for (int h = 0; h < 2; h++) {{\n" + head
            + "    const float* sp = sp0;\n"
            + "    for (int64_t k0 = 0; k0 < K; k0 += grp, sp += 32) {\n      int64_t ke = k0 + grp;\n"
            + zero([a for r in acc for st in r for a in st]) + body + fold + "    }\n" + store + "  }\n"
            + f"  for (int r = 0; r < {mr}; r++) for (int64_t j = 0; j < nv; j++) o[r * ldo + j] = tile[32 * r + j];\n}}\n")


C_SOURCE = r"""
/* ---- quantized gemm kernels (backends/cpu/quant_kernels.py) ---- */
typedef int32_t nnf_i32a __attribute__((may_alias));   /* int32 sums read back from a float output row */
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && !defined(NNF_NO_VNNI)
#define NNF_Q8_VNNI 1
const char* nnf_q8_path(void) { return "avx512vnni"; }
#elif defined(__AVXVNNI__) && !defined(NNF_NO_VNNI)
#define NNF_Q8_VNNI 1
#define NNF_Q8_AVXVNNI 1
const char* nnf_q8_path(void) { return "avxvnni"; }
#elif defined(__AVX2__) && !defined(NNF_NO_AVX2_Q)
#define NNF_Q8_AVX2 1
const char* nnf_q8_path(void) { return "avx2"; }
#else
const char* nnf_q8_path(void) { return "scalar"; }
#endif
/* the prepared activation (nnf_q8_prep): u8 (a + 128) for vpdpbusd, s16 for the AVX2 vpmaddwd kernel */
#if defined(NNF_Q8_VNNI)
#define NNF_Q8_ES 1
#elif defined(NNF_Q8_AVX2)
#define NNF_Q8_ES 2
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__) && !defined(NNF_NO_AVX512_WQ)
#define NNF_WQ_AVX512 1
const char* nnf_wq_path(void) { return "avx512"; }
#elif defined(__AVX2__) && defined(__FMA__) && !defined(NNF_NO_AVX2_Q)
#define NNF_WQ_AVX2 1
const char* nnf_wq_path(void) { return "avx2"; }
#else
const char* nnf_wq_path(void) { return "scalar"; }
#endif
#if defined(NNF_Q8_AVX2)
/* c += vpmaddwd(a, b), as asm with the accumulator in-out: with the intrinsics gcc kept 9 of the 12 accumulators
   on the stack (it gave every row's broadcast and products registers of their own) */
#define NNF_MADD(c, a, b) { __m256i _t; __asm__("vpmaddwd %[bv], %[av], %[tv]\n\tvpaddd %[tv], %[cv], %[cv]" \
                                               : [cv] "+x"(c), [tv] "=&x"(_t) : [av] "x"(a), [bv] "x"(b)); }
""" + "".join(_q8_microkernel_avx2(r) for r in (6, 4, 2, 1)) + r"""#elif defined(NNF_Q8_AVXVNNI)
""" + "".join(_q8_microkernel_avx(r) for r in (2, 1)) + r"""#elif defined(NNF_Q8_VNNI)
/* c += dot4(u8 a, s8 b) per 32-bit lane. As asm with the accumulator in-out: with the intrinsic gcc copied the
   accumulators around and spilled them to the stack. */
#define NNF_DPBUSD(c, a, b) __asm__("vpdpbusd %[bv], %[av], %[cv]" : [cv] "+v"(c) : [av] "v"(a), [bv] "v"(b))
""" + "".join(_q8_microkernel(r) for r in (6, 4, 2, 1)) + r"""#endif
#if defined(NNF_Q8_ES)
/* o (+)= tile - (last ? 128*colsum : 0), on the nv valid columns (cs NULL: no u8 shift to undo) */
static inline void nnf_q8_merge(int mr, const int32_t* t, int32_t* o, int64_t ldo, int64_t nv, const int32_t* cs,
                                int first, int last) {
  if (!cs) last = 0;   /* nothing to subtract */
  for (int r = 0; r < mr; r++) {
    int32_t* restrict orow = o + r * ldo; const int32_t* restrict tr = t + 64 * r;
    if (first && last) for (int64_t j = 0; j < nv; j++) orow[j] = tr[j] - cs[j];
    else if (first) for (int64_t j = 0; j < nv; j++) orow[j] = tr[j];
    else if (last) for (int64_t j = 0; j < nv; j++) orow[j] += tr[j] - cs[j];
    else for (int64_t j = 0; j < nv; j++) orow[j] += tr[j];
  }
}
#endif
/* A + 128 as u8 (vpdpbusd's unsigned operand), rows padded to 4*ceil(K/4) with zeros (their weights are 0), in a
   scratch buffer grown on demand and kept. Done once per gemm, before the threads split N. Model calls do not
   overlap (they share the arena), so one buffer serves every kernel. */
static uint8_t* nnf_q8_scratch = 0;
static int64_t nnf_q8_cap = 0;
static const uint8_t* nnf_q8_prep(int64_t M, int64_t K, const int8_t* A, int64_t lda) {
#if defined(NNF_Q8_ES)
  const int64_t la = (K + 3) / 4 * 4;
  if (M * la * NNF_Q8_ES > nnf_q8_cap) {
    uint8_t* p = (uint8_t*)realloc(nnf_q8_scratch, (size_t)(M * la * NNF_Q8_ES));
    if (!p) return 0;
    nnf_q8_scratch = p; nnf_q8_cap = M * la * NNF_Q8_ES;
  }
  for (int64_t m = 0; m < M; m++) {
    const int8_t* a = A + m * lda;
#if defined(NNF_Q8_VNNI)
    uint8_t* d = nnf_q8_scratch + m * la;
    for (int64_t k = 0; k < K; k++) d[k] = (uint8_t)(a[k] ^ (int8_t)0x80);
#else
    int16_t* d = (int16_t*)nnf_q8_scratch + m * la;
    for (int64_t k = 0; k < K; k++) d[k] = a[k];
#endif
    for (int64_t k = K; k < la; k++) d[k] = 0;
  }
  return nnf_q8_scratch;
#else
  (void)M; (void)K; (void)A; (void)lda; return (const uint8_t*)1;
#endif
}
/* O[m, n0:n1] = int32 (A[m, :] @ W[:, n0:n1]); n0 a multiple of 64; B packed (see above), NP panels;
   au = nnf_q8_prep(A) (the VNNI path reads it, the fallback reads A) */
static void nnf_q8_gemm(int64_t M, int64_t n0, int64_t n1, int64_t K, const int8_t* A, int64_t lda, const uint8_t* au,
                        const int8_t* B, int64_t NP, int32_t* O, int64_t ldo) {
  const int64_t KG = (K + 3) / 4;
  if (!au) { for (int64_t m = 0; m < M; m++) for (int64_t n = n0; n < n1; n++) O[m * ldo + n] = 0; return; }
#if defined(NNF_Q8_ES)
#if defined(NNF_Q8_VNNI)
  const int32_t* cs = (const int32_t*)(B + NP * KG * 256);
#else
  const int32_t* cs = 0; (void)NP;
#endif
  const int64_t la = 4 * KG * NNF_Q8_ES;   /* bytes per prepared row */
  (void)A; (void)lda;
#else
  (void)au;
#endif
#if defined(NNF_Q8_ES)
  /* K blocks of 4*QKG bytes: a 64-column panel block (32 KiB) stays in L1 for all the row blocks */
  const int64_t QKG = 128;
  int32_t tile[6 * 64] __attribute__((aligned(64)));
  for (int64_t n = n0; n < n1; n += 64) {
    const int8_t* bp = B + (n / 64) * KG * 256;
    int64_t nv = n1 - n < 64 ? n1 - n : 64;
    for (int64_t g0 = 0; g0 < KG; g0 += QKG) {
      int64_t kg = KG - g0 < QKG ? KG - g0 : QKG;
      int first = g0 == 0, last = g0 + kg >= KG;
      const int8_t* bk = bp + g0 * 256;
      const uint8_t* ak = au + 4 * NNF_Q8_ES * g0;
      int64_t m = 0;
#define NNF_Q8_TILE(MR) { nnf_q8mk##MR(kg, ak + m * la, la, bk, tile); \
        nnf_q8_merge(MR, tile, O + m * ldo + n, ldo, nv, cs ? cs + n : 0, first, last); }
#if !defined(NNF_Q8_AVXVNNI)
      /* 6-row blocks; a remainder of 2 is better as 4 + 4 than 6 + 2 (M = 32: 4x6 + 2x4, no 2-row kernel) */
      int64_t m6 = M % 6 == 2 && M >= 8 ? M - 8 : M;
      for (; m + 6 <= m6; m += 6) NNF_Q8_TILE(6)
      for (; m + 4 <= M; m += 4) NNF_Q8_TILE(4)
#endif
      for (; m + 2 <= M; m += 2) NNF_Q8_TILE(2)
      for (; m < M; m++) NNF_Q8_TILE(1)
#undef NNF_Q8_TILE
    }
  }
#else
  for (int64_t n = n0; n < n1; n += 64) {
    const int8_t* bp = B + (n / 64) * KG * 256;
    int64_t nv = n1 - n < 64 ? n1 - n : 64;
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
  }
#endif
}

/* ---- per-row dynamic quantization f32 -> s8: scale = absmax / 127 (1 when 0), q = clip(rne(x / scale)).
   Division, not a reciprocal multiply: bit-exact with the reference quantizer. ---- */
static void nnf_quant_rows(int64_t r0, int64_t r1, int64_t K, const float* X, int64_t lda, int8_t* Q, float* S) {
  for (int64_t r = r0; r < r1; r++) {
    const float* x = X + r * lda; int8_t* q = Q + r * K;
    float amax = 0.0f; int64_t k = 0;
#if defined(__AVX512F__)
    __m512 mv = _mm512_setzero_ps();
    for (; k + 16 <= K; k += 16) mv = _mm512_max_ps(mv, _mm512_abs_ps(_mm512_loadu_ps(x + k)));
    amax = _mm512_reduce_max_ps(mv);
#elif defined(__AVX2__)
    __m256 mv = _mm256_setzero_ps();
    const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (; k + 8 <= K; k += 8) mv = _mm256_max_ps(mv, _mm256_and_ps(_mm256_loadu_ps(x + k), absm));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1)));
#endif
    for (; k < K; k++) { float a = fabsf(x[k]); amax = a > amax ? a : amax; }
    float s = amax > 0.0f ? amax / 127.0f : 1.0f;
    S[r] = s;
    k = 0;
#if defined(__AVX512F__)
    const __m512 sv = _mm512_set1_ps(s), lo = _mm512_set1_ps(-128.0f), hi = _mm512_set1_ps(127.0f);
    for (; k + 16 <= K; k += 16) {
      __m512 v = _mm512_roundscale_ps(_mm512_div_ps(_mm512_loadu_ps(x + k), sv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      v = _mm512_max_ps(_mm512_min_ps(v, hi), lo);
      _mm_storeu_si128((__m128i*)(q + k), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
    }
#elif defined(__AVX2__)
    const __m256 sv = _mm256_set1_ps(s), lo = _mm256_set1_ps(-128.0f), hi = _mm256_set1_ps(127.0f);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);   /* undo the per-lane order of the packs */
    for (; k + 32 <= K; k += 32) {
      __m256i iv[4];
      for (int j = 0; j < 4; j++) {
        __m256 v = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(x + k + 8 * j), sv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        iv[j] = _mm256_cvtps_epi32(_mm256_max_ps(_mm256_min_ps(v, hi), lo));
      }
      __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(iv[0], iv[1]), _mm256_packs_epi32(iv[2], iv[3]));
      _mm256_storeu_si256((__m256i*)(q + k), _mm256_permutevar8x32_epi32(p, perm));
    }
#endif
    for (; k < K; k++) { float v = nearbyintf(x[k] / s); v = v < -128.0f ? -128.0f : v > 127.0f ? 127.0f : v; q[k] = (int8_t)v; }
  }
}

/* ---- weight-only int4 / int8 (f32 activations, f32 accumulation) ---- */
#if defined(NNF_WQ_AVX512)
""" + "".join(_wq_microkernel(b, r) for b in (4, 8) for r in (4, 2, 1)) + r"""#elif defined(NNF_WQ_AVX2)
""" + "".join(_wq_microkernel_avx2(b, r) for b in (4, 8) for r in (2, 1)) + r"""#endif
static inline int32_t nnf_wq_code(const uint8_t* bp, int bits, int64_t k, int j) {
  if (bits == 8) return (int32_t)(int8_t)bp[k * 32 + j];
  uint32_t w; memcpy(&w, bp + (k / 8) * 128 + 4 * j, 4);     /* lane j of the 8-k block: nibble k % 8 */
  return ((int32_t)(w << (28 - 4 * (k % 8)))) >> 28;
}
/* O[m, n0:n1] = sum_g S[g, n] * sum_{k in g} X[m, k] * Q[k, n]; n0 a multiple of 32 */
static void nnf_wq_gemm(int bits, int64_t M, int64_t n0, int64_t n1, int64_t K, int64_t grp, const float* X, int64_t lda,
                        const uint8_t* B, const float* S, float* O, int64_t ldo) {
  const int64_t G = K / grp, pbytes = bits == 4 ? (K + 7) / 8 * 128 : K * 32;
  for (int64_t n = n0; n < n1; n += 32) {
    const uint8_t* bp = B + (n / 32) * pbytes;
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
#elif defined(NNF_WQ_AVX2)
    int64_t m = 0;
    if (bits == 4) {
      for (; m + 2 <= M; m += 2) nnf_w4mk2(K, grp, X + m * lda, lda, bp, sp, O + m * ldo + n, ldo, nv);
      for (; m < M; m++) nnf_w4mk1(K, grp, X + m * lda, lda, bp, sp, O + m * ldo + n, ldo, nv);
    } else {
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
          for (int j = 0; j < 32; j++) acc[j] += xv * (float)nnf_wq_code(bp, bits, k, j);
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
    """[K, N] codes and [G, N] f32 scales -> (u8 panels (layouts above), f32 scales [ceil(N/32)][G][32])."""
    K, N = q.shape
    G = scale.shape[0]
    NP = -(-N // WQ_PANEL)
    codes = np.zeros((K, NP * WQ_PANEL), np.int16)
    codes[:, :N] = q.astype(np.int16)
    codes = codes.reshape(K, NP, WQ_PANEL).transpose(1, 0, 2)        # [NP, K, 32]
    if bits == 4:   # [NP][ceil(K/8)][32 columns] uint32: nibble i of a lane = k % 8 == i, two's complement
        KB = -(-K // 8)
        nib = np.zeros((NP, KB * 8, WQ_PANEL), np.uint32)
        nib[:, :K] = codes.astype(np.uint32) & 15
        nib = nib.reshape(NP, KB, 8, WQ_PANEL)
        lanes = np.zeros((NP, KB, WQ_PANEL), np.uint32)
        for i in range(8):
            lanes |= nib[:, :, i, :] << np.uint32(4 * i)
        data = lanes.view(np.uint8)
    else:
        data = codes.astype(np.int8).view(np.uint8)
    sc = np.zeros((G, NP * WQ_PANEL), np.float32)
    sc[:, :N] = scale
    return np.ascontiguousarray(data).reshape(-1), np.ascontiguousarray(sc.reshape(G, NP, WQ_PANEL).transpose(1, 0, 2)).reshape(-1)


def _matrix(p, acc, rows: int, cols: int) -> np.ndarray:
    """The [rows, cols] matrix an access reads (strides of its last two axes; leading axes are broadcast)."""
    src = p.const_data[acc.buf.index].reshape(-1)
    item = src.itemsize
    view = np.lib.stride_tricks.as_strided(src[acc.offset:], (rows, cols), (acc.strides[-2] * item, acc.strides[-1] * item))
    return np.array(view)


def pack_program(p) -> int:
    """Give every quantized gemm (meta["quant"], set by passes/lower_quant.py) its weights in the kernel's packed
    layout, as new const buffers, at compile time; shared weights are packed once."""
    from ...ir.kernel import Access, QuantOperand
    done: dict = {}

    from .pack import add_const
    n = 0
    for k in p.kernels:
        kind = k.meta.get("quant")
        if not kind or k.meta.get("quant_packed"):
            continue
        z = (0,) * len(k.batch)
        if kind == "w8a8":
            key = ("q8", id(k.b.buf), k.b.offset, k.b.strides, k.k, k.n)
            if key not in done:
                done[key] = add_const(p, pack_q8(_matrix(p, k.b, k.k, k.n).astype(np.int8)), f"{k.b.buf.label} [vnni packed]")
            k.b = Access(done[key], 0, z + (0, 0))
        else:
            q = k.b
            key = ("wq", id(q.data.buf), q.data.offset, id(q.scale.buf), q.scale.offset, k.k, k.n, q.group)
            if key not in done:
                codes = _matrix(p, q.data, k.k, k.n).astype(np.int8)
                scales = _matrix(p, q.scale, k.k // q.group, k.n).astype(np.float32)
                data, sc = pack_wq(codes, scales, 4 if kind == "w4" else 8)
                done[key] = (add_const(p, data, f"{q.data.buf.label} [{kind} packed]"), add_const(p, sc, f"{q.scale.buf.label} [packed]"))
            db, sb = done[key]
            k.b = QuantOperand(Access(db, 0, z + (0, 0)), Access(sb, 0, z + (0, 0)), q.group)
        k.meta["quant_packed"] = True
        n += 1
    return n


# ---------------------------------------------------------------- C body of a quantized Gemm kernel
def emit_gemm(w, k) -> str:
    """Threads take chunks of columns (whole panels); each applies the fused epilogue to its own slice."""
    kind = k.meta["quant"]
    if not k.meta.get("quant_packed"):
        from .codegen import CodegenError
        raise CodegenError(f"kernel {k.name}: quantized gemm weights are not packed (quant_kernels.pack_program runs first)")
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
        call = (f"nnf_q8_gemm({k.m}, _n0, _n1, {k.k}, {a_ptr}, {lda}, (const uint8_t*)(intptr_t)_au, {w.bn(k.b.buf)}, "
                f"{np_}, (int32_t*)_O, {ldo});")
        # the kernel left exact int32 sums in the output slice; the epilogue (cast, scales, bias, ...) reads them back
        # through a may_alias int32 view of the row (a memcpy per element kept gcc from vectorizing the loop: the
        # GELU epilogue of a 32 x 4096 w8a8 gemm cost 0.6 ms of its 3.5)
        ld = "int32_t _acc = ((const nnf_i32a*)_row)[_n];"
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
    extras = tuple(bn_) + (("_au",) if kind == "w8a8" else ())
    call_s = w.parallel(nch, 1 if work >= 32768 else nch, body, extras)
    if kind == "w8a8":   # the activation, shifted to u8 once, before the threads split N
        call_s = (f"  {{ int64_t _au = (int64_t)(intptr_t)nnf_q8_prep({k.m}, {k.k}, {a_ptr}, {lda});\n"
                  f"  {call_s.strip()}\n  }}\n")
    out = ""
    for j, d in enumerate(k.batch):
        out += f"  for (int64_t {bn_[j]} = 0; {bn_[j]} < {d}; {bn_[j]}++)\n"
    return out + "  " + call_s.lstrip()


def emit_quant_rows(w, k) -> str:
    """C body of a QuantRows kernel (passes/lower_quant.py): rows split across the pool."""
    body = (f"  nnf_quant_rows(_lo, _hi, {k.k}, {w.bn(k.x.buf)} + {k.x.offset}, {k.lda}, {w.bn(k.q.buf)} + {k.q.offset}, "
            f"{w.bn(k.out.buf)} + {k.out.offset});\n")
    chunk = max(1, k.rows // 8) if k.rows * k.k >= 16384 else k.rows
    return w.parallel(k.rows, chunk, body)
