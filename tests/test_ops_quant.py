"""Quantized ops: bit-exact integer paths, dequantize semantics, the online Hadamard, text round trip."""
import ml_dtypes
import numpy as np
import pytest

from nnfuse.ir import Builder, OpError, evaluate, parse, print_graph
from nnfuse.ir import quant_formats as qf
from nnfuse.ir.ops.quant import fwht, hadamard_matrix, hadamard_split


def test_dequantize_is_codes_times_scale_bitexact():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((128, 24)).astype(np.float32)
    for fmt in ("int8", "int4_g32", "mxfp4", "fp8_e4m3", "nvfp4"):
        t = qf.quantize(w, fmt, axis=0)
        b = Builder("dq")
        q, s = b.const(t.q, "q"), b.const(t.scale, "s")
        g = b.output(b.dequantize(q, s, axis=0, group=t.group, global_scale=t.global_scale))
        got = evaluate(g, [])[0]
        s_full = np.repeat(t.scale.astype(np.float32), t.group, axis=0) if t.group > 0 else t.scale.astype(np.float32)
        want = t.q.astype(np.float32) * s_full
        if t.global_scale != 1.0:
            want = want * np.float32(t.global_scale)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dt", ["i8", "i4", "u8"])
def test_matmul_integer_bitexact(dt):
    rng = np.random.default_rng(1)
    from nnfuse.ir import dtype
    lo, hi = {"i8": (-128, 128), "i4": (-8, 8), "u8": (0, 256)}[dt]
    a = rng.integers(lo, hi, (2, 5, 96)).astype(np.int64)
    w = rng.integers(lo, hi, (96, 7)).astype(np.int64)
    b = Builder("mmi")
    x = b.input("x", [2, 5, 96], dt)
    zs = []
    if dt == "u8":
        zs = [b.const(np.array(128, np.uint8), "az"), b.const(np.array(3, np.uint8), "bz")]
    g = b.output(b.matmul_integer(x, b.const(w.astype(dtype(dt).np), "w"), *zs))
    got = evaluate(g, [a.astype(dtype(dt).np)])[0]
    want = (a - (128 if zs else 0)) @ (w - (3 if zs else 0))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


def test_w8a8_integer_path_matches_dequantize_then_fp32():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    w = rng.standard_normal((64, 16)).astype(np.float32)
    t = qf.quantize(w, "int8", axis=0)
    b = Builder("w8a8")
    xi = b.input("x", [3, 64])
    qx, sx = b.quantize_dynamic(xi, dtype="i8", axis=-1)
    acc = b.matmul_integer(qx, b.const(t.q, "wq"))
    y = b.mul(b.mul(b.cast(acc, to="f32"), sx), b.const(t.scale, "ws"))
    xd = b.dequantize(qx, sx, axis=-1)
    g = b.output(y, xd, qx, sx)
    y_int, x_dq, q, s = evaluate(g, [x])
    # the integer result is exact: int64 accumulation of the same codes, then the same two fp32 multiplies
    exact = (q.astype(np.int64) @ t.q.astype(np.int64)).astype(np.float32) * s * t.scale
    np.testing.assert_array_equal(y_int, exact)
    # and it equals dequantize-then-fp32 up to fp32 summation order
    np.testing.assert_allclose(y_int, x_dq @ t.dequantize(), rtol=1e-5, atol=1e-5)
    assert s.shape == (3, 1) and np.all(np.abs(x_dq - x) <= s / 2 + 1e-6)


def test_quantize_op_matches_reference_and_saturates():
    b = Builder("q")
    x = b.input("x", [2, 64])
    s = b.const(np.array([[0.5]], np.float32), "s")
    g = b.output(b.quantize(x, s, dtype="i4"), b.quantize(x, s, dtype="f8e4m3"))
    xv = np.linspace(-300, 300, 128, dtype=np.float32).reshape(2, 64)
    q4, q8 = evaluate(g, [xv])
    np.testing.assert_array_equal(q4.astype(np.int8), np.clip(np.rint(xv / 0.5), -8, 7).astype(np.int8))
    assert q8.dtype == ml_dtypes.float8_e4m3fn and not np.isnan(q8.astype(np.float32)).any()
    assert q8.astype(np.float32).max() == 448.0


@pytest.mark.parametrize("n", [16, 64, 12, 176, 192, 704])
def test_hadamard_op(n):
    m, p = hadamard_split(n)
    assert m * p == n
    h = hadamard_matrix(n)
    np.testing.assert_allclose(h @ h.T, np.eye(n), atol=1e-12)
    x = np.random.default_rng(n).standard_normal((2, 3, n)).astype(np.float32)
    b = Builder("h")
    g = b.output(b.hadamard(b.input("x", [2, 3, n])))
    np.testing.assert_allclose(evaluate(g, [x])[0], x @ h, rtol=1e-5, atol=1e-5)


def test_fwht_matches_sylvester():
    x = np.random.default_rng(3).standard_normal((4, 32)).astype(np.float32)
    np.testing.assert_allclose(fwht(x), x @ (hadamard_matrix(32) * np.sqrt(32)), rtol=1e-5, atol=1e-4)


def test_bad_operands():
    b = Builder("bad")
    x = b.input("x", [4, 48])
    with pytest.raises(OpError, match="group 32 does not divide"):
        b.op("quantize_dynamic", x, dtype="i8", group=32)
    with pytest.raises(OpError, match="no Hadamard matrix of size 22"):
        b.op("hadamard", b.input("y", [4, 22]))
    with pytest.raises(OpError, match="8- or 4-bit integer"):
        b.op("matmul_integer", x, b.const(np.zeros((48, 2), np.float32)))
    with pytest.raises(OpError, match="scale f32\\[4,2\\] does not broadcast"):
        b.op("quantize", x, b.const(np.ones((4, 2), np.float32)), dtype="i8")
    with pytest.raises(OpError, match="dequantize needs quantized codes"):
        b.op("dequantize", x, b.const(np.ones((1, 48), np.float32)))
    with pytest.raises(OpError, match="group 16 does not divide dim 1 of size 48|scale dim 1 is 2, expected 48/16"):
        b.op("dequantize", b.const(np.zeros((4, 48), np.int8)), b.const(np.ones((4, 2), np.float32)), axis=1, group=16)


def test_text_roundtrip_with_quant_ops():
    t = qf.quantize(np.random.default_rng(4).standard_normal((64, 8)).astype(np.float32), "mxfp4", axis=0)
    b = Builder("rt")
    x = b.input("x", ["B", 64])
    qx, sx = b.quantize_dynamic(x, dtype="i8")
    xd = b.dequantize(qx, sx, axis=-1)
    w = b.dequantize(b.const(t.q, "wq"), b.const(t.scale, "ws"), axis=0, group=32)
    g = b.output(b.matmul(b.hadamard(xd), w))
    text = print_graph(g)
    assert "quantize_dynamic" in text and "f8e8m0" in text
    assert print_graph(parse(text)) == text
