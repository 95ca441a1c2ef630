"""Quantized kernels of the cpu backend (issue 10): the C kernels alone (ctypes, both the SIMD path this machine
compiles and the portable fallback), then whole quantized graphs on cpu vs the reference backend."""
import ctypes

import numpy as np
import pytest
import torch

import nnfuse
from nnfuse.backends.cpu.build import FLAGS, build, find_compiler, load
from nnfuse.backends.cpu.quant_kernels import C_SOURCE, pack_q8, pack_wq
from nnfuse.ir import Builder
from nnfuse.ir.evaluate import evaluate

try:
    find_compiler()
except Exception:   # pragma: no cover - every CI machine has gcc
    pytest.skip("no C compiler", allow_module_level=True)

HARNESS = r"""
#include <stdint.h>
#include <string.h>
""" + C_SOURCE + r"""
void t_q8(int64_t M, int64_t N, int64_t K, const int8_t* A, const int8_t* B, int32_t* O) {
  nnf_q8_gemm(M, 0, N, K, A, K, nnf_q8_prep(M, K, A, K), B, (N + 63) / 64, O, N);
}
void t_wq(int bits, int64_t M, int64_t N, int64_t K, int64_t grp, const float* X, const uint8_t* B, const float* S, float* O) {
  nnf_wq_gemm(bits, M, 0, N, K, grp, X, K, B, S, O, N);
}
"""
P = ctypes.c_void_p
I = ctypes.c_int64


def _macros(flags) -> str:
    import subprocess
    r = subprocess.run([find_compiler(), *[f for f in flags if f.startswith(("-m", "-D"))], "-dM", "-E", "-"],
                       input="", capture_output=True, text=True)
    return r.stdout


# native: what -march=native selects; fallback: the scalar loops; avx2: 256-bit code (AVX-VNNI where the CPU has
# it); avx2-exact: 256-bit without VNNI (the vpmaddwd int8 kernel) - all four run on any AVX2 machine
MODES = {"native": [], "fallback": ["-DNNF_NO_VNNI", "-DNNF_NO_AVX512_WQ", "-DNNF_NO_AVX2_Q"], "avx2": ["-mno-avx512f"],
         "avx2-exact": ["-mno-avx512f", "-DNNF_NO_VNNI"]}


@pytest.fixture(scope="module", params=list(MODES))
def lib(request):
    flags = list(FLAGS) + MODES[request.param]
    if request.param.startswith("avx2") and "__AVX2__" not in _macros(flags):
        pytest.skip("this machine has no AVX2: the 256-bit paths cannot run here")
    path, _, _ = build(HARNESS, flags)
    lib = load(path)
    lib.t_q8.argtypes = [I, I, I, P, P, P]
    lib.t_wq.argtypes = [ctypes.c_int, I, I, I, I, P, P, P, P]
    for f in ("nnf_q8_path", "nnf_wq_path"):
        getattr(lib, f).restype = ctypes.c_char_p
    lib.mode = request.param
    return lib


def _ptr(a):
    return a.ctypes.data_as(P)


SHAPES = [(1, 1, 1), (1, 17, 5), (3, 64, 64), (8, 64, 64), (14, 70, 300), (32, 130, 1030), (7, 100, 131), (13, 129, 4), (6, 64, 259), (2, 33, 2048)]


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_q8_gemm_exact(lib, m, n, k):
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    w = rng.integers(-127, 128, (k, n), dtype=np.int8)
    a[0, :min(k, 4)] = -128                        # the u8 shift's extremes
    w[:min(k, 3), 0] = 127
    out = np.zeros((m, n), np.int32)
    packed = pack_q8(w)
    lib.t_q8(m, n, k, _ptr(a), _ptr(packed), _ptr(out))
    ref = a.astype(np.int64) @ w.astype(np.int64)
    np.testing.assert_array_equal(out, ref)


def test_paths_reported(lib):
    q8, wq = lib.nnf_q8_path().decode(), lib.nnf_wq_path().decode()
    assert q8 in ("avx512vnni", "avxvnni", "avx2", "scalar") and wq in ("avx512", "avx2", "scalar")
    if lib.mode == "fallback":
        assert (q8, wq) == ("scalar", "scalar")
    if lib.mode == "avx2":
        vnni = "__AVXVNNI__" in _macros(list(FLAGS) + MODES["avx2"])
        assert (q8, wq) == ("avxvnni" if vnni else "avx2", "avx2")
    if lib.mode == "avx2-exact":
        assert (q8, wq) == ("avx2", "avx2")


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("m,n,k,grp", [(1, 40, 64, 32), (1, 1024, 256, 128), (3, 70, 192, 64), (5, 33, 37, 37),
                                       (9, 96, 128, 128)])
def test_weight_only_gemm(lib, bits, m, n, k, grp):
    rng = np.random.default_rng(bits * 7 + m + n + k)
    qmax = 7 if bits == 4 else 127
    q = rng.integers(-qmax - 1, qmax + 1, (k, n)).astype(np.int8)
    s = rng.uniform(0.001, 0.02, (k // grp, n)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    data, sc = pack_wq(q, s, bits)
    out = np.full((m, n), np.nan, np.float32)
    lib.t_wq(bits, m, n, k, grp, _ptr(x), _ptr(data), _ptr(sc), _ptr(out))
    w = q.astype(np.float64) * np.repeat(s.astype(np.float64), grp, axis=0)
    ref = x.astype(np.float64) @ w
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_pack_layouts():
    w = np.arange(-6, 6, dtype=np.int8).reshape(3, 4)
    p = pack_q8(w)
    panel = p[:64 * 4].reshape(64, 4)                   # ceil(3/4) = 1 k group: [64 columns][4 k]
    np.testing.assert_array_equal(panel[:4, :3], w.T)
    np.testing.assert_array_equal(panel[:, 3], 0)       # k padded with zeros
    np.testing.assert_array_equal(p[256:].view(np.int32)[:4], 128 * w.astype(np.int32).sum(0))
    q = np.zeros((3, 32), np.int8)
    q[0, 0], q[1, 0], q[2, 0], q[1, 31] = -8, 7, -1, 3
    data, _ = pack_wq(q, np.ones((1, 32), np.float32), 4)
    lanes = data.view(np.uint32)                        # one 8-k block: 32 lanes, nibble i = row i
    assert lanes[0] == 0x8 | (0x7 << 4) | (0xF << 8) and lanes[31] == 0x3 << 4 and data.size == 128


# ---------------------------------------------------------------- whole graphs: cpu vs reference
def _run(cm, x):
    r = cm(x)
    return np.asarray(r[0] if isinstance(r, (list, tuple)) else r)


def _mlp(k, hid, n):
    torch.manual_seed(k + hid + n)
    return torch.nn.Sequential(torch.nn.Linear(k, hid), torch.nn.GELU(), torch.nn.Linear(hid, n)).eval()


@pytest.mark.parametrize("scheme", ["w8a8", "w8", "w4g32", "w4g64", "w4g128"])
@pytest.mark.parametrize("shape", [(1, 1, 256), (2, 7, 256), (13, 256)])
def test_quantized_mlp_matches_reference(scheme, shape):
    m = _mlp(256, 384, 70)          # N = 70 and 384: not multiples of the 64 / 32-column panels
    x = torch.randn(*shape)
    ref = nnfuse.compile(m, (x,), backend="reference", quantize=scheme)
    cpu = nnfuse.compile(m, (x,), backend="cpu", quantize=scheme)
    src = cpu.source()
    assert ("nnf_q8_gemm(" if scheme == "w8a8" else "nnf_wq_gemm(") in src.split("nnf_run")[-1] or \
        src.count("nnf_q8_gemm(" if scheme == "w8a8" else "nnf_wq_gemm(") >= 2    # the quantized kernel ran
    a, b = _run(ref, x), _run(cpu, x)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=2e-6 * np.abs(a).max())


def test_int_gemm_bit_exact():
    """matmul_integer with an int32 result: the cpu kernel's accumulators equal the reference exactly."""
    rng = np.random.default_rng(3)
    b = Builder("mmi")
    x = b.input("x", [5, 131], "i8")
    w = b.const(rng.integers(-127, 128, (131, 77)).astype(np.int8), "w")
    g = b.output(b.op("matmul_integer", x, w))
    xs = rng.integers(-128, 128, (5, 131)).astype(np.int8)
    cpu = nnfuse.compile(g, backend="cpu", quantize="w8a8", passes=["prepare-quant-cpu"])
    assert "nnf_q8_gemm(" in cpu.source()
    np.testing.assert_array_equal(_run(cpu, xs), evaluate(g, [xs])[0])


def test_w8a8_integer_part_bit_exact():
    """Dynamic W8A8 without an epilogue beyond the two scale multiplies: identical floats to the reference."""
    m = torch.nn.Linear(200, 90, bias=False).eval()
    x = torch.randn(3, 11, 200)
    ref = nnfuse.compile(m, (x,), backend="reference", quantize="w8a8")
    cpu = nnfuse.compile(m, (x,), backend="cpu", quantize="w8a8")
    np.testing.assert_array_equal(_run(cpu, x), _run(ref, x))


def test_unsupported_forms_fall_back():
    """Schemes without a cpu kernel (fp8, MX, w4a4's int4 activations) still run, through decompose-quant's ops."""
    m = _mlp(64, 96, 32)
    x = torch.randn(4, 64)
    for scheme in ("fp8w", "mxint8", "w4a4"):
        ref = nnfuse.compile(m, (x,), backend="reference", quantize=scheme)
        cpu = nnfuse.compile(m, (x,), backend="cpu", quantize=scheme)
        a, b = _run(ref, x), _run(cpu, x)
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * np.abs(a).max())


@pytest.mark.parametrize("shape", [(4, 37), (2, 3, 64), (1, 1000)])
def test_row_quantize_bit_exact(shape):
    """quantize_dynamic per token on cpu (the fused row kernel): codes and scales identical to the reference,
    including an all-zero row (scale 1), ties at .5 (round half to even) and a row of one value."""
    rng = np.random.default_rng(len(shape))
    xs = rng.standard_normal(shape).astype(np.float32) * 3
    flat = xs.reshape(-1, shape[-1])
    flat[0] = 0.0
    if flat.shape[0] > 1:
        flat[1, :] = np.arange(shape[-1], dtype=np.float32) - shape[-1] // 2 + 0.5   # many exact .5 ties after scaling
    b = Builder("qd")
    x = b.input("x", list(shape))
    q, s = b.op("quantize_dynamic", x, dtype="i8")
    g = b.output(q, s)
    cpu = nnfuse.compile(g, backend="cpu", passes=["prepare-quant-cpu"])
    assert "nnf_quant_rows(" in cpu.source()
    got = cpu(xs)
    want = evaluate(g, [xs])
    np.testing.assert_array_equal(np.asarray(got[0]), want[0])
    np.testing.assert_array_equal(np.asarray(got[1]), want[1])
