"""Quantization formats: the numpy reference against torch's float8 casts and hand-computed OCP MX / int cases."""
import ml_dtypes
import numpy as np
import pytest
import torch

from nnfuse.ir import quant_formats as qf


@pytest.mark.parametrize("elem,tdt", [("fp8_e4m3", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)])
def test_fp8_matches_torch_cast(elem, tdt):
    rng = np.random.default_rng(0)
    e = qf.ELEMENTS[elem]
    x = (rng.standard_normal(4096) * np.exp(rng.uniform(-12, 12, 4096))).astype(np.float32)
    ours = qf.to_element(x, e).astype(np.float32)
    theirs = torch.from_numpy(np.clip(x, e.qmin, e.qmax)).to(tdt).float().numpy()
    np.testing.assert_array_equal(ours, theirs)
    # a per-channel scheme: codes are the torch cast of x / scale
    w = rng.standard_normal((64, 8)).astype(np.float32)
    t = qf.quantize(w, elem, axis=0)
    want = torch.from_numpy(w / t.scale).to(tdt).float().numpy()
    np.testing.assert_array_equal(t.q.astype(np.float32), want)
    assert t.scale.shape == (1, 8)


def test_mx_hand_cases():
    # OCP MX v1.0: X = 2^(floor(log2(amax)) - emax_elem); fp4 e2m1 emax = 2 -> amax 1.0 gives X = 0.25
    blk = np.zeros((32,), np.float32)
    blk[:4] = [1.0, 0.3, -0.6, 0.1]
    t = qf.quantize(blk, "mxfp4", axis=0)
    assert t.scale.dtype == ml_dtypes.float8_e8m0fnu and float(t.scale[0]) == 0.25
    np.testing.assert_array_equal(t.q.astype(np.float32)[:4], [4.0, 1.0, -2.0, 0.5])
    np.testing.assert_array_equal(t.dequantize()[:4], [1.0, 0.25, -0.5, 0.125])
    # MXINT8: codes are 1.6 fixed point, so the stored scale is X * 2^-6; 1.99 saturates at 127
    for amax, scale in [(1.0, 2.0 ** -6), (3.0, 2.0 ** -5), (1.99, 2.0 ** -6)]:
        b = np.zeros(32, np.float32)
        b[0], b[1] = amax, 0.3
        t = qf.quantize(b, "mxint8", axis=0)
        assert float(t.scale[0]) == scale
        assert int(t.q[0]) == min(127, int(np.rint(amax / scale)))
        assert int(t.q[1]) == int(np.rint(0.3 / scale))
    # MXFP8 (e4m3, emax 8): amax 448 -> X = 1
    b = np.full(32, 448.0, np.float32)
    assert float(qf.quantize(b, "mxfp8", axis=0).scale[0]) == 1.0


def test_int_hand_cases():
    w = np.array([[127.0], [-254.0], [63.5]], np.float32)     # per-channel: scale = 254/127 = 2
    t = qf.quantize(w, "int8", axis=0)
    assert float(t.scale[0, 0]) == 2.0
    np.testing.assert_array_equal(t.q[:, 0], [64, -127, 32])  # 63.5 and 31.75: round half to even
    a = qf.quantize(np.array([-1.0, 3.0, 0.0, 1.0], np.float32), qf.Scheme("uint8", -1, symmetric=False))
    assert a.q.dtype == np.uint8 and int(a.zero.reshape(-1)[0]) == 64      # rne(0 - (-1) / (4/255)) = rne(63.75)
    assert np.abs(a.dequantize() - [-1, 3, 0, 1]).max() <= float(a.scale.reshape(-1)[0]) / 2 + 1e-7
    g = qf.quantize(np.arange(256, dtype=np.float32).reshape(128, 2), "int4_g32", axis=0)
    assert g.scale.shape == (4, 2) and g.q.dtype == ml_dtypes.int4


@pytest.mark.parametrize("name", sorted(qf.FORMATS))
def test_every_format_roundtrip(name):
    s = qf.FORMATS[name]
    rng = np.random.default_rng(1)
    w = rng.standard_normal((128, 16)).astype(np.float32)
    t = qf.quantize(w, s, axis=0)
    assert t.q.dtype == qf.ELEMENTS[s.elem].np
    # re-quantizing the reference dequantized values with the same scales gives the same codes (idempotent)
    again = qf.quantize_with(t.dequantize(), t.scale, t.zero, s.element, 0, t.group, t.global_scale)
    np.testing.assert_array_equal(again.astype(np.float32), t.q.astype(np.float32))
    bits = qf.ELEMENTS[s.elem].bits
    assert qf.sqnr_db(w, t.dequantize()) > {8: 24, 4: 15}[bits]
    assert t.nbytes < w.nbytes * (bits + 1) / 32 + 80


@pytest.mark.parametrize("dt", ["i4", "u4", "f4e2m1"])
def test_pack_nibbles(dt):
    from nnfuse.ir import dtype
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 16, size=(3, 7)).astype(np.uint8)
    q = qf.unpack_nibbles(qf.pack_nibbles(codes.view(np.uint8).astype(np.uint8).view(np.uint8).astype(dtype("u4").np)), 7, dt)
    assert q.dtype == dtype(dt).np and q.shape == (3, 7)
    p = qf.pack_nibbles(q)
    assert p.shape == (3, 4) and p.dtype == np.uint8
    np.testing.assert_array_equal(qf.unpack_nibbles(p, 7, dt).astype(np.float32), q.astype(np.float32))
    # element 2i in the low nibble, 2i+1 in the high nibble
    assert qf.pack_nibbles(np.array([1, 2], np.int8).astype(ml_dtypes.int4))[0] == 0x21
    assert qf.pack_nibbles(np.array([-1, 0], np.int8).astype(ml_dtypes.int4))[0] == 0x0F


def test_bad_schemes():
    with pytest.raises(qf.QuantError, match="does not divide"):
        qf.quantize(np.zeros((48, 4), np.float32), "int4_g32", axis=0)
    with pytest.raises(qf.QuantError, match="asymmetric"):
        qf.Scheme("fp8_e4m3", symmetric=False)
    with pytest.raises(qf.QuantError, match="unknown quantization format"):
        qf.scheme("int3")
    with pytest.raises(qf.QuantError, match="E8M0"):
        qf.Scheme("int8", 0, "f8e8m0")
