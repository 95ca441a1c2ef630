"""CUDA C source from a kernel IR Program: one __global__ kernel per kernel IR kernel plus the exported host
launcher `nnf_run(in, out, w, arena, stream)` that launches them in call order on one stream.

Scalar expressions reuse the cpu backend's C emitter (CUDA C is C++ with the same scalar syntax); this module
provides the device versions of its helper functions and the kernels' parallel structure:
- pointwise: grid-stride loop over the flattened domain (one thread per element);
- reduce / row norms: one block per output row, strided per-thread partials, shared-memory tree reductions;
- gemm: 64x64 shared-memory tiles with a 4x4 register block per thread; for f16/bf16 operands on sm_80+ a
  tensor-core path (WMMA 16x16x16 fragments, f32 accumulate); the fused epilogue runs on the accumulator;
- conv: direct convolution, one thread per output element, epilogue fused;
- attention: one block per (query row, batch), keys streamed in blocks of 128 with an online softmax.
Only generated identifiers reach the source.
"""
from __future__ import annotations

import math

from ...ir.dtypes import DType
from ...ir.errors import NnfuseError
from ...ir.kernel import (Access, Attention, Buffer, Conv, Gemm, Kernel, Pointwise, Program, QuantOperand, Reduce,
                          RowNorm, safe_comment)
from ..cpu.codegen import CEmitter, comp

CUTYPE = {"f64": "double", "f32": "float", "f16": "__half", "bf16": "uint16_t", "i64": "int64_t", "i32": "int32_t",
          "i16": "int16_t", "i8": "int8_t", "u8": "uint8_t", "bool": "uint8_t"}
ABI_VERSION = 1
THREADS = 256


class CudaCodegenError(NnfuseError):
    pass


def cutype(dt: DType) -> str:
    if dt.name not in CUTYPE:
        raise CudaCodegenError(f"dtype {dt.name} is not supported on the cuda backend (supported: {', '.join(CUTYPE)})")
    return CUTYPE[dt.name]


def arch_number(arch: str) -> int:
    try:
        return int(str(arch).lower().replace("sm_", "").replace("compute_", ""))
    except ValueError:
        raise CudaCodegenError(f"bad CUDA target architecture {arch!r} (expected e.g. sm_80 or sm_90)") from None


PRELUDE = r"""#include <stdint.h>
#include <math.h>
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <mma.h>

#define NNF_D __device__ __forceinline__
NNF_D float nnf_bf16_to_f(uint16_t h) { return __uint_as_float(((uint32_t)h) << 16); }
NNF_D uint16_t nnf_f_to_bf16(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
NNF_D float nnf_exp(float x) { return expf(x); }
NNF_D float nnf_tanh(float x) { return tanhf(x); }
NNF_D float nnf_erf(float x) { return erff(x); }
NNF_D float nnf_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
NNF_D double nnf_sigmoid_d(double x) { return 1.0 / (1.0 + exp(-x)); }
NNF_D float nnf_gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }
NNF_D float nnf_gelu_tanh(float x) { return 0.5f * x * (1.0f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x))); }
NNF_D float nnf_maxf(float a, float b) { return (a > b || a != a) ? a : b; }
NNF_D float nnf_minf(float a, float b) { return (a < b || a != a) ? a : b; }
NNF_D double nnf_maxd(double a, double b) { return (a > b || a != a) ? a : b; }
NNF_D double nnf_mind(double a, double b) { return (a < b || a != a) ? a : b; }
NNF_D float nnf_modf(float a, float b) { float r = fmodf(a, b); return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r; }
NNF_D double nnf_modd(double a, double b) { double r = fmod(a, b); return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r; }
NNF_D int64_t nnf_modi(int64_t a, int64_t b) { if (b == 0) return 0; int64_t r = a % b; return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r; }
NNF_D int64_t nnf_divi(int64_t a, int64_t b) { return b == 0 ? a : a / b; }
NNF_D int64_t nnf_powi(int64_t a, int64_t b) { int64_t r = 1; if (b < 0) return a == 1 ? 1 : 0; while (b--) r *= a; return r; }

/* Block-wide reductions over blockDim.x (a power of two <= 1024) threads through shared scratch. */
template <typename T> NNF_D T nnf_block_sum(T v, T* sh) {
  sh[threadIdx.x] = v; __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) { if ((int)threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s]; __syncthreads(); }
  T r = sh[0]; __syncthreads(); return r;
}
template <typename T> NNF_D T nnf_block_max(T v, T* sh) {
  sh[threadIdx.x] = v; __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) { T a = sh[threadIdx.x], b = sh[threadIdx.x + s]; sh[threadIdx.x] = (b > a || b != b) ? b : a; }
    __syncthreads();
  }
  T r = sh[0]; __syncthreads(); return r;
}
"""


class CudaEmitter(CEmitter):
    """The cpu backend's C expression emitter; only f16 storage differs (__half converts to float explicitly)."""

    def load(self, e):
        ref = f"{self.bufname(e.access.buf)}[{self.index(e.access, e.indirect)}]"
        if e.dtype.name == "bf16":
            return f"nnf_bf16_to_f({ref})"
        if e.dtype.name == "f16":
            return f"__half2float({ref})"
        return ref


def store(ref: str, buf: Buffer, value: str) -> str:
    if buf.dtype.name == "bf16":
        return f"{ref} = nnf_f_to_bf16({value});"
    if buf.dtype.name == "f16":
        return f"{ref} = __float2half({value});"
    if buf.dtype.name == "bool":
        return f"{ref} = (uint8_t)(({value}) != 0);"
    return f"{ref} = ({cutype(buf.dtype)})({value});"


def unflatten(flat: str, dims, names, indent: str) -> str:
    out, s = [], 1
    st = []
    for d in reversed(dims):
        st.append(s)
        s *= d
    st.reverse()
    for k, (d, s) in enumerate(zip(dims, st)):
        if k == 0:
            out.append(f"{indent}const int64_t {names[k]} = {flat} / {s};")
        else:
            out.append(f"{indent}const int64_t {names[k]} = ({flat} / {s}) % {d};")
    return "\n".join(out) + ("\n" if out else "")


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KernelWriter:
    def __init__(self, k: Kernel, arch: int, prefix: str = ""):
        self.k = k
        self.arch = arch
        self.fname = prefix + k.name
        self.bufs = k.buffers()
        self.pname = {id(b): f"p{j}" for j, b in enumerate(self.bufs)}
        self.written = {id(a.buf) for a in k.writes()}

    def bn(self, b: Buffer) -> str:
        return self.pname[id(b)]

    def emitter(self, names, args=None) -> CudaEmitter:
        return CudaEmitter(self.bn, lambda a: names[a], args or {})

    def signature(self, bounds: int = THREADS) -> str:
        ps = []
        for b in self.bufs:
            const = "" if id(b) in self.written else "const "
            ps.append(f"{const}{cutype(b.dtype)}* __restrict__ {self.pname[id(b)]}")
        return f"__global__ void __launch_bounds__({bounds}) {self.fname}({', '.join(ps)})"

    def write(self) -> tuple[str, str, str]:
        """(kernel source, grid expression, block expression)."""
        fn = getattr(self, self.k.kind, None)
        if fn is None:
            raise CudaCodegenError(f"kernel kind {self.k.kind} is not supported on the cuda backend")
        return fn()

    # ------------------------------------------------------------ pointwise
    def pointwise(self):
        k: Pointwise = self.k
        total = max(math.prod(k.domain), 1)
        names = [f"i{j}" for j in range(len(k.domain))]
        em = self.emitter(names)
        body = "".join(f"    {store(f'{self.bn(a.buf)}[{em.index(a)}]', a.buf, em.expr(e))}\n" for a, e in k.stores)
        src = (f"{self.signature()} {{\n"
               f"  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < {total}LL; "
               f"idx += (int64_t)gridDim.x * blockDim.x) {{\n"
               f"{unflatten('idx', k.domain, names, '    ')}{body}  }}\n}}\n")
        return src, str(min(cdiv(total, THREADS), 65535 * 4)), str(THREADS)

    # ------------------------------------------------------------ reductions
    def reduce(self):
        k: Reduce = self.k
        no, nr = len(k.domain), len(k.rdomain)
        names = [f"i{j}" for j in range(no + nr)]
        nout = max(math.prod(k.domain), 1)
        R = max(math.prod(k.rdomain), 1)
        dt = k.body.dtype
        c = comp(dt) if dt.name != "bool" else "int64_t"
        isf = c in ("float", "double")
        comb = k.combine
        if comb == "sum" and not isf:
            c = "int64_t"
        lo, hi = ("-INFINITY", "INFINITY") if isf else {
            "int64_t": ("INT64_MIN", "INT64_MAX"), "int32_t": ("INT32_MIN", "INT32_MAX"), "int16_t": ("INT16_MIN", "INT16_MAX"),
            "int8_t": ("INT8_MIN", "INT8_MAX"), "uint8_t": ("0", "UINT8_MAX")}.get(c, ("INT64_MIN", "INT64_MAX"))
        em = self.emitter(names)
        v = em.expr(k.body)
        arg = comb in ("argmax", "argmin")
        s = f"{self.signature()} {{\n  __shared__ {c} sh[{THREADS}];\n  __shared__ int64_t shi[{THREADS}];\n"
        s += f"  for (int64_t o = blockIdx.x; o < {nout}LL; o += gridDim.x) {{\n"
        s += unflatten("o", k.domain, names[:no], "    ")
        init = {"sum": "0", "prod": "1", "max": lo, "min": hi, "argmax": lo, "argmin": hi}[comb]
        s += f"    {c} r = {init}; int64_t ri = {R}LL;\n"
        s += f"    for (int64_t rr = threadIdx.x; rr < {R}LL; rr += blockDim.x) {{\n"
        s += unflatten("rr", k.rdomain, names[no:], "      ")
        s += f"      {c} v = ({c})({v});\n"
        nan = " || (v != v && r == r)" if isf else ""
        if arg:
            rel = ">" if comb == "argmax" else "<"
            better = f"(v {rel} r{nan} || ri == {R}LL" + (f" || (v == r)" if k.select_last else "") + ")"
            s += f"      if ({better}) {{ r = v; ri = rr; }}\n    }}\n"
            # tree: the better value wins; ties go to the first (or last) index
            tie = "bi > ai" if k.select_last else "bi < ai"
            bnan = f" || (b != b && (a == a || {tie}))" if isf else ""   # NaN wins; between NaNs the tie rule
            s += (f"    sh[threadIdx.x] = r; shi[threadIdx.x] = ri; __syncthreads();\n"
                  f"    for (int st = blockDim.x / 2; st > 0; st >>= 1) {{\n"
                  f"      if ((int)threadIdx.x < st) {{\n"
                  f"        {c} a = sh[threadIdx.x], b = sh[threadIdx.x + st]; int64_t ai = shi[threadIdx.x], bi = shi[threadIdx.x + st];\n"
                  f"        bool take = bi != {R}LL && (ai == {R}LL || b {rel} a{bnan} || (b == a && {tie}));\n"
                  f"        if (take) {{ sh[threadIdx.x] = b; shi[threadIdx.x] = bi; }}\n"
                  f"      }}\n      __syncthreads();\n    }}\n"
                  f"    const int64_t red = shi[0] == {R}LL ? 0 : shi[0];\n")
        else:
            step = {"sum": "r += v;", "prod": "r *= v;",
                    "max": f"r = (v > r{' || v != v' if isf else ''}) ? v : r;",
                    "min": f"r = (v < r{' || v != v' if isf else ''}) ? v : r;"}[comb]
            s += f"      {step}\n    }}\n"
            tree = {"sum": "sh[threadIdx.x] = a + b;", "prod": "sh[threadIdx.x] = a * b;",
                    "max": f"sh[threadIdx.x] = (b > a{' || b != b' if isf else ''}) ? b : a;",
                    "min": f"sh[threadIdx.x] = (b < a{' || b != b' if isf else ''}) ? b : a;"}[comb]
            s += (f"    sh[threadIdx.x] = r; __syncthreads();\n"
                  f"    for (int st = blockDim.x / 2; st > 0; st >>= 1) {{\n"
                  f"      if ((int)threadIdx.x < st) {{ {c} a = sh[threadIdx.x], b = sh[threadIdx.x + st]; {tree} }}\n"
                  f"      __syncthreads();\n    }}\n"
                  f"    const {c} red = sh[0];\n")
        pe = self.emitter(names, {"red": "red"})
        post = pe.expr(k.post) if k.post is not None else "red"
        s += f"    if (threadIdx.x == 0) {{ {store(f'{self.bn(k.out.buf)}[{pe.index(k.out)}]', k.out.buf, post)} }}\n"
        s += "    __syncthreads();\n  }\n}\n"
        return s, str(min(nout, 65535)), str(THREADS)

    def rownorm(self):
        k: RowNorm = self.k
        if comp(k.x.dtype) != "float":
            raise CudaCodegenError(f"{k.norm} on {k.x.dtype.name} is not supported on the cuda backend")
        no = len(k.domain)
        names = [f"i{j}" for j in range(no)] + ["r"]
        R = k.row
        rows = max(math.prod(k.domain), 1)
        em = self.emitter(names)
        x = em.expr(k.x)
        loop = lambda body: f"    for (int64_t r = threadIdx.x; r < {R}LL; r += blockDim.x) {{ {body} }}\n"  # noqa: E731
        oref = f"{self.bn(k.out.buf)}[{em.index(k.out)}]"

        def out(val: str) -> str:
            if k.weight is not None:
                val = f"({val}) * ({em.expr(k.weight)})"
            if k.bias is not None:
                val = f"({val}) + ({em.expr(k.bias)})"
            return loop(store(oref, k.out.buf, val))
        s = f"{self.signature()} {{\n  __shared__ float sh[{THREADS}];\n"
        s += f"  for (int64_t row = blockIdx.x; row < {rows}LL; row += gridDim.x) {{\n"
        s += unflatten("row", k.domain, names[:no], "    ")
        eps = f"{float(k.eps)!r}f"
        if k.norm in ("softmax", "log_softmax"):
            s += "    float m = -INFINITY;\n" + loop(f"float v = {x}; m = (v > m || v != v) ? v : m;")
            s += "    m = nnf_block_max(m, sh);\n    if (m == -INFINITY) m = 0.0f;\n"
            s += "    float sm = 0.0f;\n" + loop(f"sm += expf(({x}) - m);")
            s += "    sm = nnf_block_sum(sm, sh);\n"
            s += out(f"expf(({x}) - m) / sm" if k.norm == "softmax" else f"({x}) - m - logf(sm)")
        elif k.norm == "layer_norm":
            s += "    float s1 = 0.0f;\n" + loop(f"s1 += {x};")
            s += f"    const float mean = nnf_block_sum(s1, sh) / {R}.0f;\n"
            s += "    float s2 = 0.0f;\n" + loop(f"float d = ({x}) - mean; s2 += d * d;")
            s += f"    const float rs = rsqrtf(nnf_block_sum(s2, sh) / {R}.0f + {eps});\n"
            s += out(f"(({x}) - mean) * rs")
        elif k.norm == "rms_norm":
            s += "    float s2 = 0.0f;\n" + loop(f"float v = {x}; s2 += v * v;")
            s += f"    const float rs = rsqrtf(nnf_block_sum(s2, sh) / {R}.0f + {eps});\n"
            s += out(f"({x}) * rs")
        else:
            raise CudaCodegenError(f"row norm '{k.norm}' is not supported on the cuda backend")
        s += "  }\n}\n"
        return s, str(min(rows, 65535)), str(THREADS)

    # ------------------------------------------------------------ gemm
    def _batch(self, batch, var: str = "blockIdx.z") -> tuple[list, str]:
        names = [f"b{j}" for j in range(len(batch))]
        return names, unflatten(f"((int64_t){var})", batch, names, "  ")

    @staticmethod
    def _base(acc: Access, names) -> str:
        return " + ".join([f"{acc.offset}LL"] + [f"{n} * {s}LL" for n, s in zip(names, acc.strides[:len(names)]) if s])

    def _ld(self, acc_buf: Buffer, ref: str, to: str) -> str:
        if acc_buf.dtype.name == "bf16":
            v = f"nnf_bf16_to_f({ref})"
        elif acc_buf.dtype.name == "f16":
            v = f"__half2float({ref})"
        else:
            v = ref
        return f"({to})({v})"

    def gemm(self):
        k: Gemm = self.k
        if isinstance(k.b, QuantOperand):
            raise CudaCodegenError("quantized gemm operands are not supported on the cuda backend yet")
        adt, bdt = k.a.buf.dtype.name, k.b.buf.dtype.name
        if adt == bdt and adt in ("f16", "bf16") and self.arch >= 80:
            return self.gemm_wmma()
        return self.gemm_tiled()

    def _epilogue(self, names, m: str, n: str, acc: str) -> str:
        k: Gemm = self.k
        em = self.emitter(names + [m, n], {"acc": acc})
        val = em.expr(k.epilogue) if k.epilogue is not None else acc
        return store(f"{self.bn(k.out.buf)}[{em.index(k.out)}]", k.out.buf, val)

    def gemm_tiled(self):
        """64x64 output tile per block of 256 threads, 4x4 outputs per thread, K in steps of 16 through shared memory."""
        k: Gemm = self.k
        M, N, K = k.m, k.n, k.k
        A, B = k.a, k.b
        acc_t = "double" if "f64" in (A.buf.dtype.name, B.buf.dtype.name) else "float"
        bnames, bsrc = self._batch(k.batch)
        sam, sak = A.strides[-2], A.strides[-1]
        sbk, sbn = B.strides[-2], B.strides[-1]
        pa, pb = self.bn(A.buf), self.bn(B.buf)
        epi = self._epilogue(bnames, "gm", "gn", "acc")
        alpha = f" * ({acc_t}){float(k.alpha)!r}" if k.alpha != 1.0 else ""
        s = (f"{self.signature()} {{\n"
             f"  __shared__ {acc_t} As[16][64 + 1];\n  __shared__ {acc_t} Bs[16][64 + 1];\n{bsrc}"
             f"  const int64_t m0 = (int64_t)blockIdx.y * 64, n0 = (int64_t)blockIdx.x * 64;\n"
             f"  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;\n"
             f"  const {self._cptr(A)}* Ab = {pa} + {self._base(A, bnames)};\n"
             f"  const {self._cptr(B)}* Bb = {pb} + {self._base(B, bnames)};\n"
             f"  {acc_t} c[4][4] = {{}};\n"
             f"  for (int64_t k0 = 0; k0 < {K}LL; k0 += 16) {{\n"
             f"    for (int e = threadIdx.x; e < 16 * 64; e += blockDim.x) {{\n"
             f"      const int kk = e / 64, mm = e % 64;\n"
             f"      const int64_t gm = m0 + mm, gk = k0 + kk;\n"
             f"      As[kk][mm] = (gm < {M}LL && gk < {K}LL) ? {self._ld(A.buf, f'Ab[gm * {sam}LL + gk * {sak}LL]', acc_t)} : ({acc_t})0;\n"
             f"      const int64_t gn = n0 + mm;\n"
             f"      Bs[kk][mm] = (gn < {N}LL && gk < {K}LL) ? {self._ld(B.buf, f'Bb[gk * {sbk}LL + gn * {sbn}LL]', acc_t)} : ({acc_t})0;\n"
             f"    }}\n    __syncthreads();\n"
             f"    #pragma unroll\n    for (int kk = 0; kk < 16; kk++) {{\n"
             f"      {acc_t} a[4], b[4];\n"
             f"      #pragma unroll\n      for (int i = 0; i < 4; i++) {{ a[i] = As[kk][ty * 4 + i]; b[i] = Bs[kk][tx * 4 + i]; }}\n"
             f"      #pragma unroll\n      for (int i = 0; i < 4; i++)\n        #pragma unroll\n"
             f"        for (int j = 0; j < 4; j++) c[i][j] += a[i] * b[j];\n"
             f"    }}\n    __syncthreads();\n  }}\n"
             f"  for (int i = 0; i < 4; i++) for (int j = 0; j < 4; j++) {{\n"
             f"    const int64_t gm = m0 + ty * 4 + i, gn = n0 + tx * 4 + j;\n"
             f"    if (gm < {M}LL && gn < {N}LL) {{ const {acc_t} acc = c[i][j]{alpha}; {epi} }}\n"
             f"  }}\n}}\n")
        grid = f"dim3({cdiv(N, 64)}, {cdiv(M, 64)}, {max(math.prod(k.batch), 1)})"
        return s, grid, str(THREADS)

    def _cptr(self, acc: Access) -> str:
        return cutype(acc.buf.dtype)

    def gemm_wmma(self):
        """Tensor cores: 64x64 tile per block of 4 warps (2x2), each warp 2x2 WMMA 16x16x16 fragments, f32 accumulate.
        Tiles are staged through shared memory with bounds checks, so any shape and stride is legal."""
        k: Gemm = self.k
        M, N, K = k.m, k.n, k.k
        A, B = k.a, k.b
        bf = A.buf.dtype.name == "bf16"
        et = "__nv_bfloat16" if bf else "__half"
        conv = (lambda r: f"__ushort_as_bfloat16({r})") if bf else (lambda r: r)  # noqa: E731
        zero = "__float2bfloat16(0.0f)" if bf else "__float2half(0.0f)"
        bnames, bsrc = self._batch(k.batch)
        sam, sak = A.strides[-2], A.strides[-1]
        sbk, sbn = B.strides[-2], B.strides[-1]
        epi = self._epilogue(bnames, "gm", "gn", "acc")
        alpha = f" * {float(k.alpha)!r}f" if k.alpha != 1.0 else ""
        s = (f"{self.signature(128)} {{\n"
             f"  using namespace nvcuda;\n"
             f"  __shared__ __align__(32) {et} As[64][32 + 8];\n  __shared__ __align__(32) {et} Bs[32][64 + 8];\n"
             f"  __shared__ __align__(32) float Cs[64][64 + 4];\n{bsrc}"
             f"  const int64_t m0 = (int64_t)blockIdx.y * 64, n0 = (int64_t)blockIdx.x * 64;\n"
             f"  const int warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;\n"
             f"  const {cutype(A.buf.dtype)}* Ab = {self.bn(A.buf)} + {self._base(A, bnames)};\n"
             f"  const {cutype(B.buf.dtype)}* Bb = {self.bn(B.buf)} + {self._base(B, bnames)};\n"
             f"  wmma::fragment<wmma::accumulator, 16, 16, 16, float> c[2][2];\n"
             f"  for (int i = 0; i < 2; i++) for (int j = 0; j < 2; j++) wmma::fill_fragment(c[i][j], 0.0f);\n"
             f"  for (int64_t k0 = 0; k0 < {K}LL; k0 += 32) {{\n"
             f"    for (int e = threadIdx.x; e < 64 * 32; e += blockDim.x) {{\n"
             f"      const int r = e / 32, q = e % 32;\n"
             f"      const int64_t gm = m0 + r, gk = k0 + q;\n"
             f"      As[r][q] = (gm < {M}LL && gk < {K}LL) ? {conv(f'Ab[gm * {sam}LL + gk * {sak}LL]')} : {zero};\n"
             f"      const int kr = e / 64, nc = e % 64;\n"
             f"      const int64_t gk2 = k0 + kr, gn = n0 + nc;\n"
             f"      Bs[kr][nc] = (gk2 < {K}LL && gn < {N}LL) ? {conv(f'Bb[gk2 * {sbk}LL + gn * {sbn}LL]')} : {zero};\n"
             f"    }}\n    __syncthreads();\n"
             f"    for (int kk = 0; kk < 32; kk += 16) {{\n"
             f"      wmma::fragment<wmma::matrix_a, 16, 16, 16, {et}, wmma::row_major> a[2];\n"
             f"      wmma::fragment<wmma::matrix_b, 16, 16, 16, {et}, wmma::row_major> b[2];\n"
             f"      for (int i = 0; i < 2; i++) wmma::load_matrix_sync(a[i], &As[wm * 32 + i * 16][kk], 32 + 8);\n"
             f"      for (int j = 0; j < 2; j++) wmma::load_matrix_sync(b[j], &Bs[kk][wn * 32 + j * 16], 64 + 8);\n"
             f"      for (int i = 0; i < 2; i++) for (int j = 0; j < 2; j++) wmma::mma_sync(c[i][j], a[i], b[j], c[i][j]);\n"
             f"    }}\n    __syncthreads();\n  }}\n"
             f"  for (int i = 0; i < 2; i++) for (int j = 0; j < 2; j++)\n"
             f"    wmma::store_matrix_sync(&Cs[wm * 32 + i * 16][wn * 32 + j * 16], c[i][j], 64 + 4, wmma::mem_row_major);\n"
             f"  __syncthreads();\n"
             f"  for (int e = threadIdx.x; e < 64 * 64; e += blockDim.x) {{\n"
             f"    const int64_t gm = m0 + e / 64, gn = n0 + e % 64;\n"
             f"    if (gm < {M}LL && gn < {N}LL) {{ const float acc = Cs[e / 64][e % 64]{alpha}; {epi} }}\n"
             f"  }}\n}}\n")
        grid = f"dim3({cdiv(N, 64)}, {cdiv(M, 64)}, {max(math.prod(k.batch), 1)})"
        return s, grid, "128"

    # ------------------------------------------------------------ conv
    def conv(self):
        """Direct convolution (1-3 spatial dims, grouped, optionally transposed): one thread per output element."""
        k: Conv = self.k
        geo = k.geometry()
        tr, N_, C, M, G, Cg, Mg, KK = geo.transpose, geo.n, geo.c, geo.m, geo.groups, geo.cg, geo.mg, geo.taps
        IS, OS, KS = list(geo.in_spatial), list(geo.out_spatial), list(geo.kernel)
        nd = len(OS)
        X, Wt, O = k.x, k.w, k.out
        sx, swt = X.strides, Wt.strides
        total = max(math.prod(k.out_shape), 1)
        onames = [f"y{j}" for j in range(nd)]
        names = ["n", "oc"] + onames
        em = self.emitter(names, {"acc": "acc"})
        val = em.expr(k.epilogue) if k.epilogue is not None else "acc"
        knames = [f"q{j}" for j in range(nd)]
        checks = ""
        for j in range(nd):
            s_, p_, d_ = k.strides[j], k.pads[j], k.dilations[j]
            if not tr:
                checks += f"        const int64_t i{j} = {onames[j]} * {s_} - {p_} + {knames[j]} * {d_};\n"
            else:
                checks += (f"        const int64_t t{j} = {onames[j]} + {p_} - {knames[j]} * {d_};\n"
                           f"        if (t{j} < 0 || t{j} % {s_} != 0) continue;\n"
                           f"        const int64_t i{j} = t{j} / {s_};\n")
            checks += f"        if (i{j} < 0 || i{j} >= {IS[j]}) continue;\n"
        xidx = " + ".join(["xb", f"(g * {Cg} + c) * {sx[1]}LL"] + [f"i{j} * {sx[2 + j]}LL" for j in range(nd)])
        if tr:
            widx = " + ".join([f"{Wt.offset}LL", f"(g * {Cg} + c) * {swt[0]}LL", f"(oc % {Mg}) * {swt[1]}LL"]
                              + [f"{q} * {swt[2 + j]}LL" for j, q in enumerate(knames)])
        else:
            widx = " + ".join([f"{Wt.offset}LL", f"oc * {swt[0]}LL", f"c * {swt[1]}LL"]
                              + [f"{q} * {swt[2 + j]}LL" for j, q in enumerate(knames)])
        xl = self._ld(X.buf, f"{self.bn(X.buf)}[{xidx}]", "float")
        wl = self._ld(Wt.buf, f"{self.bn(Wt.buf)}[{widx}]", "float")
        s = (f"{self.signature()} {{\n"
             f"  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < {total}LL; idx += (int64_t)gridDim.x * blockDim.x) {{\n"
             f"{unflatten('idx', tuple(k.out_shape), names, '    ')}"
             f"    const int64_t g = oc / {Mg};\n    const int64_t xb = {X.offset}LL + n * {sx[0]}LL;\n"
             f"    float acc = 0.0f;\n"
             f"    for (int64_t c = 0; c < {Cg}; c++) {{\n"
             f"      for (int64_t kr = 0; kr < {KK}; kr++) {{\n"
             f"{unflatten('kr', tuple(KS), knames, '        ')}{checks}"
             f"        acc += {xl} * {wl};\n      }}\n    }}\n"
             f"    {store(f'{self.bn(O.buf)}[{em.index(O)}]', O.buf, val)}\n  }}\n}}\n")
        return s, str(min(cdiv(total, THREADS), 65535 * 4)), str(THREADS)

    # ------------------------------------------------------------ attention
    def attention(self):
        """One block of 128 threads per (query row i, batch): thread t scores key j0+t, then accumulates the
        output dims it owns (t, t+128, ...) with the online-softmax rescale."""
        k: Attention = self.k
        SQ, SKV, D, DV = k.sq, k.skv, k.d, k.dv
        T = 128
        Q, Kk, V, O = k.q, k.k, k.v, k.out
        bnames, bsrc = self._batch(k.batch, "blockIdx.y")
        dvt = cdiv(DV, T)
        mask = ""
        if k.mask is not None:
            em = self.emitter(bnames + ["i", "j"])
            mv = em.expr(k.mask)
            mask = (f"      if (!({mv})) s = -INFINITY;\n" if k.mask.dtype.name == "bool" else f"      s += (float)({mv});\n")
        hi = "(i + 1 < %d ? i + 1 : %d)" % (SKV, SKV) if k.causal else str(SKV)
        ql = self._ld(Q.buf, f"{self.bn(Q.buf)}[qb + i * {Q.strides[-2]}LL + d * {Q.strides[-1]}LL]", "float")
        kl = self._ld(Kk.buf, f"{self.bn(Kk.buf)}[kb + j * {Kk.strides[-2]}LL + d * {Kk.strides[-1]}LL]", "float")
        vl = self._ld(V.buf, f"{self.bn(V.buf)}[vb + (j0 + jj) * {V.strides[-2]}LL + d * {V.strides[-1]}LL]", "float")
        oref = f"{self.bn(O.buf)}[ob + i * {O.strides[-2]}LL + d * {O.strides[-1]}LL]"
        s = (f"{self.signature(T)} {{\n"
             f"  __shared__ float qs[{D}];\n  __shared__ float ps[{T}];\n  __shared__ float red[{T}];\n{bsrc}"
             f"  const int64_t i = blockIdx.x;\n"
             f"  const int64_t qb = {self._base(Q, bnames)}, kb = {self._base(Kk, bnames)};\n"
             f"  const int64_t vb = {self._base(V, bnames)}, ob = {self._base(O, bnames)};\n"
             f"  for (int64_t d = threadIdx.x; d < {D}; d += blockDim.x) qs[d] = {ql};\n"
             f"  __syncthreads();\n"
             f"  float m = -INFINITY, l = 0.0f, o[{dvt}];\n"
             f"  for (int t = 0; t < {dvt}; t++) o[t] = 0.0f;\n"
             f"  const int64_t hi = {hi};\n"
             f"  for (int64_t j0 = 0; j0 < hi; j0 += {T}) {{\n"
             f"    const int64_t j = j0 + threadIdx.x;\n"
             f"    float s = -INFINITY;\n"
             f"    if (j < hi) {{\n"
             f"      float dot = 0.0f;\n"
             f"      for (int64_t d = 0; d < {D}; d++) dot += qs[d] * {kl};\n"
             f"      s = dot * {float(k.scale)!r}f;\n{mask}"
             f"    }}\n"
             f"    const float mb = nnf_block_max(s, red);\n"
             f"    const float mn = m > mb ? m : mb;\n"
             f"    const float ms = mn == -INFINITY ? 0.0f : mn;\n"
             f"    const float p = expf(s - ms);\n"
             f"    ps[threadIdx.x] = p;\n"
             f"    const float psum = nnf_block_sum(p, red);\n"
             f"    const float corr = expf(m - ms);\n"
             f"    l = l * corr + psum;\n"
             f"    const int64_t cnt = hi - j0 < {T} ? hi - j0 : {T};\n"
             f"    for (int t = 0; t < {dvt}; t++) {{\n"
             f"      const int64_t d = threadIdx.x + t * {T};\n"
             f"      if (d < {DV}) {{ float a = o[t] * corr; for (int64_t jj = 0; jj < cnt; jj++) a += ps[jj] * {vl}; o[t] = a; }}\n"
             f"    }}\n"
             f"    m = mn;\n    __syncthreads();\n  }}\n"
             f"  for (int t = 0; t < {dvt}; t++) {{\n"
             f"    const int64_t d = threadIdx.x + t * {T};\n"
             f"    if (d < {DV}) {{ {store(oref, O.buf, 'o[t] / l')} }}\n  }}\n}}\n")
        grid = f"dim3({SQ}, {max(math.prod(k.batch), 1)})"
        return s, grid, str(T)


# ---------------------------------------------------------------- program
def _ptr(b: Buffer) -> str:
    t = cutype(b.dtype)
    return {"input": f"(({t}*)in[{b.index}])", "output": f"(({t}*)out[{b.index}])", "const": f"(({t}*)w[{b.index}])",
            "temp": f"(({t}*)(arena + {b.offset}))"}[b.kind]


def program_source(p: Program, arch: int, prefix: str = "") -> str:
    """The kernels of one program plus its exported launcher `<prefix>nnf_run`."""
    parts, calls = [], []
    for k in p.kernels:
        w = KernelWriter(k, arch, prefix)
        src, grid, block = w.write()
        ops = ", ".join(safe_comment(o, 30) for o in k.meta.get("ops", []))[:100]
        parts.append(f"/* {k.name}: {k.kind} ({ops}) */\n{src}")
        args = ", ".join(_ptr(b) for b in w.bufs)
        calls.append(f"  {w.fname}<<<{grid}, {block}, 0, s>>>({args});\n"
                     f"  if ((e = cudaGetLastError()) != cudaSuccess) return (int)e;")
    parts.append(f'extern "C" int {prefix}nnf_run(void* const* in, void* const* out, void* const* w, char* arena, void* stream) {{\n'
                 "  (void)in; (void)out; (void)w; (void)arena;\n"
                 "  cudaStream_t s = (cudaStream_t)stream;\n  cudaError_t e = cudaSuccess;\n"
                 + "\n".join(calls) + "\n  return 0;\n}\n")
    return "\n".join(parts)


def generate(p: Program, arch: str = "sm_80") -> str:
    """One translation unit: prelude, the program's kernels, `nnf_abi` and `nnf_run`."""
    head = f"/* nnfuse cuda backend: program {safe_comment(p.name)}, target {safe_comment(arch)} */"
    return "\n".join([head, PRELUDE, f'extern "C" int nnf_abi(void) {{ return {ABI_VERSION}; }}',
                      program_source(p, arch_number(arch))])


def generate_many(programs: list, arch: str = "sm_80") -> str:
    """Several programs in one translation unit (entry points p<i>_nnf_run): one nvcc run covers them all."""
    return "\n".join([f"/* nnfuse cuda backend: {len(programs)} programs, target {safe_comment(arch)} */", PRELUDE,
                      f'extern "C" int nnf_abi(void) {{ return {ABI_VERSION}; }}']
                     + [program_source(p, arch_number(arch), f"p{i}_") for i, p in enumerate(programs)])
