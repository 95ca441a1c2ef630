"""conv, conv_transpose, pools, channel norms, lrn, prelu: inference and semantics vs PyTorch."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close, infer, rand, run_op

from nnfuse.ir import OpError, TensorType

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONVT = {1: F.conv_transpose1d, 2: F.conv_transpose2d}


def f32(a):
    return torch.from_numpy(np.ascontiguousarray(a).astype(np.float32))


def lowp(want, dtype, like):
    """Round an f32 oracle to the result dtype, as the op does once at the end."""
    w = want.numpy() if hasattr(want, "numpy") else want
    return w.astype(like.dtype).astype(np.float32)


@pytest.mark.parametrize("nd,groups,stride,dil,pad,bias", [
    (1, 1, 1, 1, 0, False), (1, 2, 2, 1, 1, True), (2, 1, 1, 1, 1, True), (2, 3, 2, 2, 2, True), (2, 6, 1, 1, 1, False),
    (3, 1, (1, 2, 1), 1, (0, 1, 1), True),
])
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_conv_vs_torch(nd, groups, stride, dil, pad, bias, dtype, rng):
    spatial = {1: (11,), 2: (9, 10), 3: (5, 6, 7)}[nd]
    k = {1: (3,), 2: (3, 2), 3: (2, 3, 3)}[nd]
    x = rand(rng, (2, 6) + spatial, dtype)
    w = rand(rng, (12, 6 // groups) + k, dtype, -0.5, 0.5)
    b = rand(rng, (12,), dtype) if bias else None
    s = (stride,) * nd if isinstance(stride, int) else stride
    p = (pad,) * nd if isinstance(pad, int) else pad
    got = run_op("conv", x, w, *([b] if bias else []), strides=s, pads=list(p) * 2, dilations=[dil] * nd, groups=groups)
    want = CONV[nd](f32(x), f32(w), f32(b) if bias else None, stride=s, padding=p, dilation=dil, groups=groups)
    assert_close(got, lowp(want, dtype, x), dtype, rtol=1e-4 if dtype == "f32" else None, atol=1e-4 if dtype == "f32" else 5e-2)


def test_conv_asymmetric_pads(rng):
    x, w = rand(rng, (1, 2, 7, 8)), rand(rng, (3, 2, 3, 3))
    got = run_op("conv", x, w, pads=[0, 2, 1, 1], strides=[2, 1])  # top 0, left 2, bottom 1, right 1
    want = F.conv2d(F.pad(f32(x), (2, 1, 0, 1)), f32(w), stride=(2, 1))
    assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("nd,groups,stride,dil,pad,opad,bias", [
    (1, 1, 2, 1, 0, 1, True), (2, 1, 2, 1, 1, 1, True), (2, 2, 3, 2, 2, 0, False), (2, 4, 1, 1, 0, 0, True), (2, 1, (2, 3), 1, 1, (1, 2), False),
])
@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_conv_transpose_vs_torch(nd, groups, stride, dil, pad, opad, bias, dtype, rng):
    spatial = {1: (7,), 2: (5, 6)}[nd]
    k = {1: (4,), 2: (3, 3)}[nd]
    x = rand(rng, (2, 4) + spatial, dtype)
    w = rand(rng, (4, 6 // groups if groups != 4 else 2) + k, dtype, -0.5, 0.5)
    b = rand(rng, (w.shape[1] * groups,), dtype) if bias else None
    s = (stride,) * nd if isinstance(stride, int) else stride
    op = (opad,) * nd if isinstance(opad, int) else opad
    got = run_op("conv_transpose", x, w, *([b] if bias else []), strides=s, pads=[pad] * 2 * nd, dilations=[dil] * nd,
                 groups=groups, output_padding=op)
    want = CONVT[nd](f32(x), f32(w), f32(b) if bias else None, stride=s, padding=pad, output_padding=op, groups=groups, dilation=dil)
    assert_close(got, lowp(want, dtype, x), dtype, rtol=1e-4 if dtype == "f32" else None, atol=1e-4 if dtype == "f32" else 5e-2)


def test_conv_transpose_asymmetric_pads(rng):
    x, w = rand(rng, (1, 2, 4, 5)), rand(rng, (2, 3, 3, 3))
    got = run_op("conv_transpose", x, w, strides=[2, 2], pads=[1, 0, 0, 2])
    full = F.conv_transpose2d(f32(x), f32(w), stride=2)
    assert_close(got, full[:, :, 1:, 0:full.shape[3] - 2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("nd,k,s,p,d,ceil", [
    (1, (3,), (2,), (1,), (1,), False), (1, (2,), (2,), (0,), (1,), True), (2, (3, 3), (2, 2), (1, 1), (1, 1), True),
    (2, (2, 3), (1, 2), (0, 1), (2, 1), False), (2, (3, 3), (3, 3), (1, 1), (1, 1), True), (2, (2, 2), (2, 3), (1, 0), (2, 2), True),
])
@pytest.mark.parametrize("dtype", ["f32", "bf16", "i8"])
def test_max_pool_vs_torch(nd, k, s, p, d, ceil, dtype, rng):
    x = rand(rng, (2, 3) + ((10,) if nd == 1 else (8, 11)), dtype, -100 if dtype == "i8" else -2, 100 if dtype == "i8" else 2)
    got = run_op("max_pool", x, kernel=k, strides=s, pads=list(p) * 2, dilations=d, ceil_mode=ceil)
    fn = F.max_pool1d if nd == 1 else F.max_pool2d
    want = fn(f32(x), k, s, p, d, ceil_mode=ceil)
    np.testing.assert_array_equal(got.astype(np.float32), want.numpy())


@pytest.mark.parametrize("nd,k,s,p,ceil,incl", [
    (1, (3,), (2,), (1,), False, True), (1, (3,), (2,), (1,), True, False), (2, (3, 3), (2, 2), (1, 1), True, True),
    (2, (3, 3), (2, 2), (1, 1), True, False), (2, (2, 3), (2, 1), (0, 1), False, False), (2, (3, 3), (3, 3), (1, 1), True, True),
])
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_avg_pool_vs_torch(nd, k, s, p, ceil, incl, dtype, rng):
    x = rand(rng, (2, 3) + ((10,) if nd == 1 else (8, 11)), dtype)
    got = run_op("avg_pool", x, kernel=k, strides=s, pads=list(p) * 2, ceil_mode=ceil, count_include_pad=incl)
    fn = F.avg_pool1d if nd == 1 else F.avg_pool2d
    want = fn(f32(x), k, s, p, ceil_mode=ceil, count_include_pad=incl)
    assert_close(got, lowp(want, dtype, x), dtype)


def test_pools_asymmetric_pads(rng):
    x = rand(rng, (1, 2, 6, 7))
    got = run_op("max_pool", x, kernel=[2, 2], strides=[2, 2], pads=[1, 0, 0, 1])
    want = F.max_pool2d(F.pad(f32(x), (0, 1, 1, 0), value=-np.inf), 2, 2)
    assert_close(got, want)
    got = run_op("avg_pool", x, kernel=[3, 3], pads=[0, 1, 2, 0], count_include_pad=True)
    want = F.avg_pool2d(F.pad(f32(x), (1, 0, 0, 2)), 3, 1)
    assert_close(got, want)


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_global_pools(dtype, rng):
    for shape in [(2, 3, 5), (2, 3, 4, 5), (1, 2, 3, 4, 2)]:
        x = rand(rng, shape, dtype)
        dims = tuple(range(2, len(shape)))
        assert_close(run_op("global_avg_pool", x), lowp(f32(x).mean(dim=dims, keepdim=True), dtype, x), dtype)
        assert_close(run_op("global_max_pool", x), lowp(f32(x).amax(dim=dims, keepdim=True), dtype, x), dtype)


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_batch_norm(dtype, rng):
    x = rand(rng, (2, 4, 3, 5), dtype)
    scale, bias, mean, var = rand(rng, (4,), dtype), rand(rng, (4,), dtype), rand(rng, (4,), dtype), rand(rng, (4,), dtype, 0.1, 2)
    got = run_op("batch_norm", x, scale, bias, mean, var, eps=1e-3)
    want = F.batch_norm(f32(x), f32(mean), f32(var), f32(scale), f32(bias), training=False, eps=1e-3)
    assert_close(got, lowp(want, dtype, x), dtype)
    x1 = rand(rng, (3, 4), dtype)  # rank 2 (BatchNorm1d)
    want = F.batch_norm(f32(x1), f32(mean), f32(var), f32(scale), f32(bias), training=False)
    assert_close(run_op("batch_norm", x1, scale, bias, mean, var), lowp(want, dtype, x1), dtype)


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_instance_and_group_norm(dtype, rng):
    x = rand(rng, (2, 6, 4, 5), dtype)
    w, b = rand(rng, (6,), dtype), rand(rng, (6,), dtype)
    want = F.instance_norm(f32(x), weight=f32(w), bias=f32(b), eps=1e-5)
    assert_close(run_op("instance_norm", x, w, b), lowp(want, dtype, x), dtype, atol=1e-4 if dtype == "f32" else None)
    for groups in (1, 2, 3, 6):
        want = F.group_norm(f32(x), groups, f32(w), f32(b), eps=1e-4)
        assert_close(run_op("group_norm", x, w, b, groups=groups, eps=1e-4), lowp(want, dtype, x), dtype,
                     atol=1e-4 if dtype == "f32" else None)
    want = F.group_norm(f32(x), 3)
    assert_close(run_op("group_norm", x, groups=3), lowp(want, dtype, x), dtype, atol=1e-4 if dtype == "f32" else None)


def _lrn_onnx(x, size, alpha, beta, bias):
    """The ONNX LRN formula, element by element."""
    c = x.shape[1]
    out = np.empty_like(x, dtype=np.float64)
    for i in range(c):
        lo, hi = max(0, i - (size - 1) // 2), min(c - 1, i + size // 2)
        sq = (x[:, lo:hi + 1].astype(np.float64) ** 2).sum(axis=1)
        out[:, i] = x[:, i] / (bias + alpha / size * sq) ** beta
    return out


def test_lrn(rng):
    x = rand(rng, (2, 7, 3, 4))
    for size in (3, 5):
        assert_close(run_op("lrn", x, size=size, alpha=1e-2, beta=0.6, bias=2.0),
                     F.local_response_norm(f32(x), size, alpha=1e-2, beta=0.6, k=2.0))
    for size in (2, 4):
        assert_close(run_op("lrn", x, size=size, alpha=1e-2, beta=0.75, bias=1.0), _lrn_onnx(x, size, 1e-2, 0.75, 1.0))


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_prelu(dtype, rng):
    x = rand(rng, (2, 3, 4, 5), dtype)
    slope = rand(rng, (3,), dtype, 0, 0.5)
    want = F.prelu(f32(x), f32(slope))
    assert_close(run_op("prelu", x, slope.reshape(3, 1, 1)), lowp(want, dtype, x), dtype)
    one = rand(rng, (1,), dtype, 0, 0.5)
    assert_close(run_op("prelu", x, one), lowp(F.prelu(f32(x), f32(one)), dtype, x), dtype)


# ---------------------------------------------------------------- inference
def test_nn_inference_symbolic():
    assert infer("conv", (["N", 3, 32, 32], "f32"), ([16, 3, 3, 3], "f32"), ([16], "f32")).shape == ("N", 16, 30, 30)
    assert infer("conv", (["N", 3, 32, 32], "f32"), ([16, 3, 3, 3], "f32"), strides=[2, 2], pads=[1, 1, 1, 1]).shape == ("N", 16, 16, 16)
    assert infer("conv", (["N", 3, "H", "W"], "f32"), ([8, 3, 3, 3], "f32"), pads=[1, 1, 1, 1]).shape == ("N", 8, "H", "W")
    assert infer("conv", (["N", 4, "L"], "bf16"), ([4, 1, 5], "bf16"), pads=[4, 0], groups=4) == TensorType(["N", 4, "L"], "bf16")
    assert infer("conv_transpose", (["N", 8, 7, 7], "f32"), ([8, 4, 4, 4], "f32"), strides=[2, 2], pads=[1, 1, 1, 1]).shape == ("N", 4, 14, 14)
    assert infer("conv_transpose", (["N", 8, "H"], "f32"), ([8, 2, 3], "f32"), pads=[1, 1], groups=2).shape == ("N", 4, "H")
    assert infer("max_pool", (["N", 3, 7, 7], "f32"), kernel=[3, 3], strides=[2, 2]).shape == ("N", 3, 3, 3)
    assert infer("max_pool", (["N", 3, 7, 7], "f32"), kernel=[2, 2], strides=[2, 2], ceil_mode=True).shape == ("N", 3, 4, 4)
    assert infer("avg_pool", (["N", "C", "H", 6], "f32"), kernel=[3, 1], pads=[1, 0, 1, 0]).shape == ("N", "C", "H", 6)
    assert infer("global_avg_pool", (["N", 3, "H", "W"], "f32")).shape == ("N", 3, 1, 1)
    assert infer("global_max_pool", (["N", 3, 9], "i8")) == TensorType(["N", 3, 1], "i8")
    assert infer("batch_norm", (["N", 4, "H"], "f32"), *[([4], "f32")] * 4).shape == ("N", 4, "H")
    assert infer("group_norm", (["N", 6, "L"], "f32"), groups=3).shape == ("N", 6, "L")
    assert infer("instance_norm", (["N", 6, 2, 2], "f32"), ([6], "f32"), ([6], "f32")).shape == ("N", 6, 2, 2)
    assert infer("lrn", (["N", 6, 2, 2], "f32"), size=3).shape == ("N", 6, 2, 2)
    assert infer("prelu", (["N", 6, 2], "f32"), ([6, 1], "f32")).shape == ("N", 6, 2)


@pytest.mark.parametrize("op,types,attrs,rule", [
    ("conv", [([1, 3, 8, 8], "f32"), ([4, 2, 3, 3], "f32")], {}, "channels do not match"),
    ("conv", [([1, 4, 8, 8], "f32"), ([6, 2, 3, 3], "f32")], {"groups": 4}, "channels do not match"),
    ("conv", [([1, 3, 8, 8], "f32"), ([4, 3, 3, 3], "f32"), ([3], "f32")], {}, "bias must be [C]"),
    ("conv", [([1, 3, 8, 8], "i32"), ([4, 3, 3, 3], "i32")], {}, "float"),
    ("conv", [([1, 3, 8, 8], "f32"), ([4, 3, 3], "f32")], {}, "same rank"),
    ("conv", [([1, 3, 2, 2], "f32"), ([4, 3, 3, 3], "f32")], {}, "larger than the padded input"),
    ("conv", [([1, 3, 8, 8], "f32"), ([4, 3, 3, 3], "f32")], {"strides": [1]}, "strides"),
    ("conv", [(["N", 3, "H", 8], "f32"), ([4, 3, 3, 3], "f32")], {}, "symbolic dim H"),
    ("conv_transpose", [([1, 3, 8, 8], "f32"), ([4, 2, 3, 3], "f32")], {}, "input channels"),
    ("conv_transpose", [([1, 4, 8, 8], "f32"), ([4, 2, 3, 3], "f32")], {"output_padding": [2, 2], "strides": [2, 2]}, "output_padding"),
    ("max_pool", [([1, 3, 8], "f32")], {"kernel": [2, 2]}, "kernel"),
    ("max_pool", [([1, 3, 8, 8], "f32")], {"kernel": [2, 2], "pads": [2, 2, 2, 2]}, "smaller than the kernel"),
    ("avg_pool", [([1, 3, 8, 8], "i32")], {"kernel": [2, 2]}, "float"),
    ("global_avg_pool", [([3, 8], "f32")], {}, "N,C,*spatial"),
    ("batch_norm", [([2, 4, 3], "f32"), ([4], "f32"), ([4], "f32"), ([3], "f32"), ([4], "f32")], {}, "mean must be [C]"),
    ("group_norm", [([2, 6, 3], "f32")], {"groups": 4}, "divisible"),
    ("instance_norm", [([2, 6], "f32"), ([6], "f32"), ([6], "f32")], {}, "N,C,*spatial"),
    ("prelu", [([2, 3], "f32"), ([2, 3, 1], "f32")], {}, "broadcast"),
    ("prelu", [([1, 3], "f32"), ([2, 3], "f32")], {}, "broadcast onto x"),
])
def test_nn_errors(op, types, attrs, rule):
    with pytest.raises(OpError) as e:
        infer(op, *types, **attrs)
    msg = str(e.value)
    assert f"op '{op}'" in msg and rule in msg and all(str(TensorType(*t)) in msg for t in types), msg


@pytest.mark.parametrize("ceil,incl", [(False, False), (True, False), (True, True)])
def test_avg_pool_dilations_vs_onnxruntime(ceil, incl, rng):
    """torch has no dilated avg pool; ONNX AveragePool-19 does."""
    import onnxruntime as ort
    from onnx import TensorProto, helper
    x = rand(rng, (1, 2, 9, 10))
    attrs = dict(kernel_shape=[2, 3], strides=[2, 2], pads=[1, 0, 0, 1], dilations=[2, 2], ceil_mode=int(ceil), count_include_pad=int(incl))
    node = helper.make_node("AveragePool", ["x"], ["y"], **attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = run_op("avg_pool", x, kernel=[2, 3], strides=[2, 2], pads=[1, 0, 0, 1], dilations=[2, 2], ceil_mode=ceil, count_include_pad=incl)
    assert_close(got, want)
