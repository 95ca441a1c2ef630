"""matmul, gemm, layer_norm, rms_norm: inference and semantics vs PyTorch."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close, infer, rand, run_op

from nnfuse.ir import OpError, TensorType


def f32(a):
    return torch.from_numpy(a.astype(np.float32))


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (5, 4, 6)), ((4,), (4, 5)),
                                   ((3, 4), (4,)), ((4,), (4,)), ((7, 2, 3), (7, 3, 2))])
def test_matmul(sa, sb, dtype, rng):
    a, b = rand(rng, sa, dtype), rand(rng, sb, dtype)
    want = torch.matmul(f32(a), f32(b)).numpy()
    assert_close(run_op("matmul", a, b), want.astype(a.dtype).astype(np.float32), dtype, rtol=1e-4 if dtype == "f32" else None)


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("bias", [None, (5,), (3, 1), (3, 5)])
def test_gemm(trans_a, trans_b, bias, rng):
    a = rand(rng, (4, 3) if trans_a else (3, 4))
    b = rand(rng, (5, 4) if trans_b else (4, 5))
    ta, tb = f32(a).T if trans_a else f32(a), f32(b).T if trans_b else f32(b)
    attrs = dict(alpha=0.5, beta=2.0, trans_a=trans_a, trans_b=trans_b)
    if bias is None:
        assert_close(run_op("gemm", a, b, **attrs), 0.5 * ta @ tb, rtol=1e-4)
    else:
        c = rand(rng, bias)
        assert_close(run_op("gemm", a, b, c, **attrs), 0.5 * ta @ tb + 2.0 * f32(c), rtol=1e-4)


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("affine", [0, 1, 2])
def test_layer_norm(affine, dtype, rng):
    x = rand(rng, (2, 5, 8), dtype)
    w, b = rand(rng, (8,), dtype), rand(rng, (8,), dtype)
    args = [w, b][:affine]
    want = F.layer_norm(f32(x), (8,), *[f32(t) for t in args], eps=1e-5)
    assert_close(run_op("layer_norm", x, *args), want.numpy().astype(x.dtype).astype(np.float32), dtype, atol=1e-4 if dtype == "f32" else None)
    # normalizing the last two dims (axis=-2)
    w2 = rand(rng, (5, 8), dtype)
    want = F.layer_norm(f32(x), (5, 8), f32(w2), eps=1e-3)
    assert_close(run_op("layer_norm", x, w2, axis=-2, eps=1e-3), want.numpy().astype(x.dtype).astype(np.float32), dtype,
                 atol=1e-4 if dtype == "f32" else None)


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_rms_norm(dtype, rng):
    x, w = rand(rng, (3, 4, 16), dtype), rand(rng, (16,), dtype)
    want = F.rms_norm(f32(x), (16,), f32(w), eps=1e-6)
    assert_close(run_op("rms_norm", x, w), want.numpy().astype(x.dtype).astype(np.float32), dtype, atol=1e-4 if dtype == "f32" else None)
    want = F.rms_norm(f32(x), (4, 16), eps=1e-5)
    assert_close(run_op("rms_norm", x, axis=1, eps=1e-5), want.numpy().astype(x.dtype).astype(np.float32), dtype,
                 atol=1e-4 if dtype == "f32" else None)


def test_linalg_inference_symbolic():
    assert infer("matmul", (["B", "S", 64], "f32"), ([64, 128], "f32")).shape == ("B", "S", 128)
    assert infer("matmul", (["B", "H", "S", 64], "bf16"), (["B", "H", 64, "S"], "bf16")).shape == ("B", "H", "S", "S")
    assert infer("matmul", ([1, "S", 8], "f32"), (["B", 8, 2], "f32")).shape == ("B", "S", 2)
    assert infer("matmul", ([4], "f32"), ([4], "f32")).shape == ()
    assert infer("gemm", (["N", 8], "f32"), ([16, 8], "f32"), trans_b=True).shape == ("N", 16)
    assert infer("layer_norm", (["B", "S", 32], "f16"), ([32], "f16"), ([32], "f16")) == TensorType(["B", "S", 32], "f16")
    assert infer("rms_norm", (["B", 32], "f32"), ([32], "f32")).shape == ("B", 32)


@pytest.mark.parametrize("op,types,attrs,rule", [
    ("matmul", [([2, 3], "f32"), ([4, 5], "f32")], {}, "inner dims differ"),
    ("matmul", [([2, 3], "f32"), ([3, 5], "f16")], {}, "dtypes differ"),
    ("matmul", [([], "f32"), ([3], "f32")], {}, "rank"),
    ("matmul", [([2, 2, 3], "f32"), (["B", 3, 4], "f32")], {}, "broadcast"),
    ("gemm", [([2, 3, 1], "f32"), ([3, 4], "f32")], {}, "2-D"),
    ("gemm", [([2, 3], "f32"), ([4, 5], "f32")], {}, "inner dims differ"),
    ("gemm", [([2, 3], "f32"), ([3, 5], "f32"), ([3], "f32")], {}, "broadcast"),
    ("layer_norm", [([2, 8], "i32")], {}, "float"),
    ("layer_norm", [([2, 8], "f32"), ([4], "f32")], {}, "broadcast"),
    ("rms_norm", [([2, 8], "f32"), ([2, 8], "f32")], {}, "normalized dims"),
])
def test_linalg_errors(op, types, attrs, rule):
    with pytest.raises(OpError) as e:
        infer(op, *types, **attrs)
    msg = str(e.value)
    assert f"op '{op}'" in msg and rule in msg and all(str(TensorType(*t)) in msg for t in types)
