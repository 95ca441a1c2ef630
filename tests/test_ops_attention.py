"""scaled_dot_product_attention vs torch.nn.functional.scaled_dot_product_attention."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close, infer, rand, run_op

from nnfuse.ir import OpError, TensorType


def f32(a):
    return torch.from_numpy(a.astype(np.float32))


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("hq,hk,lq,lk,causal,scale", [
    (4, 4, 5, 5, False, None), (4, 4, 5, 5, True, None), (4, 2, 3, 6, True, 0.3), (6, 1, 4, 4, False, None), (4, 2, 6, 3, True, None),
])
def test_sdpa_vs_torch(hq, hk, lq, lk, causal, scale, dtype, rng):
    q, k, v = rand(rng, (2, hq, lq, 8), dtype), rand(rng, (2, hk, lk, 8), dtype), rand(rng, (2, hk, lk, 6), dtype)
    got = run_op("scaled_dot_product_attention", q, k, v, causal=causal, scale=scale)
    want = F.scaled_dot_product_attention(f32(q), f32(k), f32(v), is_causal=causal, scale=scale, enable_gqa=hq != hk)
    assert_close(got, want.numpy().astype(q.dtype).astype(np.float32), dtype, atol=1e-5 if dtype == "f32" else 3e-2)


@pytest.mark.parametrize("mask_shape", [(5, 7), (2, 1, 5, 7), (1, 4, 1, 7)])
def test_sdpa_masks(mask_shape, rng):
    q, k, v = rand(rng, (2, 4, 5, 8)), rand(rng, (2, 4, 7, 8)), rand(rng, (2, 4, 7, 8))
    bmask = rng.random(mask_shape) < 0.7
    bmask[..., 0] = True  # every row attends somewhere
    want = F.scaled_dot_product_attention(f32(q), f32(k), f32(v), attn_mask=torch.from_numpy(bmask))
    assert_close(run_op("scaled_dot_product_attention", q, k, v, bmask), want)
    fmask = rand(rng, mask_shape, "f32", -3, 0)
    want = F.scaled_dot_product_attention(f32(q), f32(k), f32(v), attn_mask=torch.from_numpy(fmask))
    assert_close(run_op("scaled_dot_product_attention", q, k, v, fmask), want)


def test_sdpa_rank3_and_causal_with_mask(rng):
    q, k, v = rand(rng, (3, 4, 8)), rand(rng, (3, 4, 8)), rand(rng, (3, 4, 8))
    want = F.scaled_dot_product_attention(f32(q), f32(k), f32(v), is_causal=True)
    assert_close(run_op("scaled_dot_product_attention", q, k, v, causal=True), want)
    # causal and a mask together: both apply
    m = rng.random((4, 4)) < 0.8
    np.fill_diagonal(m, True)
    tri = torch.tril(torch.ones(4, 4, dtype=torch.bool)) & torch.from_numpy(m)
    want = F.scaled_dot_product_attention(f32(q), f32(k), f32(v), attn_mask=tri)
    assert_close(run_op("scaled_dot_product_attention", q, k, v, m, causal=True), want)


def test_sdpa_inference_symbolic():
    t = infer("scaled_dot_product_attention", (["B", 8, "S", 64], "bf16"), (["B", 2, "S", 64], "bf16"), (["B", 2, "S", 32], "bf16"),
              causal=True)
    assert t == TensorType(["B", 8, "S", 32], "bf16")
    t = infer("scaled_dot_product_attention", (["B", 4, "S", 16], "f32"), (["B", 4, "T", 16], "f32"), (["B", 4, "T", 16], "f32"),
              ([1, 1, "S", "T"], "bool"))
    assert t.shape == ("B", 4, "S", 16)
    assert infer("scaled_dot_product_attention", (["S", 16], "f32"), (["T", 16], "f32"), (["T", 4], "f32")).shape == ("S", 4)


@pytest.mark.parametrize("types,attrs,rule", [
    ([([1, 4, 5, 8], "f32"), ([1, 3, 5, 8], "f32"), ([1, 3, 5, 8], "f32")], {}, "Hk to divide Hq"),
    ([([1, 4, 5, 8], "f32"), ([1, 2, 5, 8], "f32"), ([1, 2, 5, 8], "f32")], {"enable_gqa": False}, "enable_gqa"),
    ([([1, 4, 5, 8], "f32"), ([1, 4, 5, 6], "f32"), ([1, 4, 5, 8], "f32")], {}, "E 8 vs 6"),
    ([([1, 4, 5, 8], "f32"), ([1, 4, 5, 8], "f32"), ([1, 4, 6, 8], "f32")], {}, "Lk 5 vs 6"),
    ([([1, 4, 5, 8], "f32"), ([1, 4, 5, 8], "f16"), ([1, 4, 5, 8], "f32")], {}, "one float dtype"),
    ([([1, 4, 5, 8], "f32"), ([1, 4, 5, 8], "f32"), ([1, 4, 5, 8], "f32"), ([5, 4], "bool")], {}, "does not broadcast"),
    ([([1, 4, 5, 8], "f32"), ([1, 4, 5, 8], "f32"), ([1, 4, 5, 8], "f32"), ([5, 5], "i64")], {}, "mask must be bool"),
    ([([1, 4, 5, 8], "f32"), ([1, 5, 8], "f32"), ([1, 4, 5, 8], "f32")], {}, "same rank"),
])
def test_sdpa_errors(types, attrs, rule):
    with pytest.raises(OpError) as e:
        infer("scaled_dot_product_attention", *types, **attrs)
    msg = str(e.value)
    assert "op 'scaled_dot_product_attention'" in msg and rule in msg and all(str(TensorType(*t)) in msg for t in types), msg
