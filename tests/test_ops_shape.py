"""Shape ops and tensor makers: inference (static, symbolic) and semantics vs PyTorch."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close, infer, rand, run_op, torch_of

import nnfuse.ir as ir
from nnfuse.ir import OpError, TensorType


def same(got, want):
    want = want.numpy() if hasattr(want, "numpy") else want
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.asarray(got).astype(np.float64), np.asarray(want).astype(np.float64))


@pytest.mark.parametrize("dtype", ["f32", "bf16", "i64", "bool"])
def test_reshape_transpose_flatten(dtype, rng):
    x = rand(rng, (2, 3, 4), dtype)
    t = torch_of(x)
    same(run_op("reshape", x, shape=[0, -1]), t.reshape(2, 12).float() if dtype == "bf16" else t.reshape(2, 12))
    same(run_op("reshape", x, shape=[4, 0, 2]), t.reshape(4, 3, 2).float() if dtype == "bf16" else t.reshape(4, 3, 2))
    same(run_op("transpose", x, perm=[2, 0, 1]).astype(np.float64), t.permute(2, 0, 1).double())
    same(run_op("transpose", x).astype(np.float64), t.permute(2, 1, 0).double())
    same(run_op("flatten", x, axis=2).astype(np.float64), t.reshape(6, 4).double())
    same(run_op("flatten", x, axis=0).astype(np.float64), t.reshape(1, 24).double())


def test_reshape_inference():
    assert infer("reshape", (["B", 12], "f32"), shape=[0, 3, -1]).shape == ("B", 3, 4)
    assert infer("reshape", (["B", "S", 8], "f32"), shape=[-1, 8]).shape == ("B*S", 8)
    assert infer("reshape", (["B*S", 8], "f32"), shape=["B", "S", 2, 4]).shape == ("B", "S", 2, 4)
    assert infer("reshape", (["B", 12], "f32"), shape=[-1, 4]).shape == ("3*B", 4)
    assert infer("reshape", ([0, 3], "f32"), shape=[0, 5], allowzero=True).shape == (0, 5)
    assert infer("flatten", (["B", 3, 4], "f32"), axis=1).shape == ("B", 12)
    assert infer("transpose", (["B", "S", 4], "f32"), perm=[1, 0, 2]).shape == ("S", "B", 4)
    with pytest.raises(OpError, match=r"op 'reshape' on \(f32\[2,3\]\).*6 elements"):
        infer("reshape", ([2, 3], "f32"), shape=[4, 2])
    with pytest.raises(OpError, match="more than one -1"):
        infer("reshape", ([2, 3], "f32"), shape=[-1, -1])
    with pytest.raises(OpError, match="cannot reshape"):
        infer("reshape", (["B", 3], "f32"), shape=[-1, 2])
    with pytest.raises(OpError, match="not a permutation"):
        infer("transpose", ([2, 3], "f32"), perm=[0, 0])


def test_reshape_symbolic_runs():
    """Symbolic dims in a reshape target take their sizes from the inputs at run time."""
    b = ir.Builder()
    x, s = b.input("x", ["B*S", 8]), b.input("s", ["B", "S"])
    g = b.output(b.reshape(x, shape=["B", "S", 2, -1]), b.expand(s, shape=[3, 1, "S"]))
    y, e = ir.evaluate(g, [np.arange(48, dtype=np.float32).reshape(6, 8), np.ones((2, 3), np.float32)])
    assert y.shape == (2, 3, 2, 4) and e.shape == (3, 2, 3)
    np.testing.assert_array_equal(y.reshape(6, 8), np.arange(48).reshape(6, 8))


@pytest.mark.parametrize("dtype", ["f32", "f16", "i32"])
def test_concat_split(dtype, rng):
    a, b, c = rand(rng, (2, 3), dtype), rand(rng, (2, 1), dtype), rand(rng, (2, 4), dtype)
    same(run_op("concat", a, b, c, axis=1), torch.cat([torch_of(a), torch_of(b), torch_of(c)], dim=1))
    same(run_op("concat", a, a, axis=-2), torch.cat([torch_of(a)] * 2, dim=0))
    x = rand(rng, (2, 9, 3), dtype)
    parts = run_op("split", x, axis=1, sizes=[2, 3, 4])
    for got, want in zip(parts, torch.split(torch_of(x), [2, 3, 4], dim=1)):
        same(got, want)
    assert infer("concat", (["B", 3], "f32"), (["B", 5], "f32"), axis=1).shape == ("B", 8)
    assert [t.shape for t in infer("split", (["B", 6], "f32"), axis=-1, sizes=[1, 5])] == [("B", 1), ("B", 5)]
    with pytest.raises(OpError, match=r"op 'concat' on \(f32\[2,3\], f32\[3,3\]\)"):
        infer("concat", ([2, 3], "f32"), ([3, 3], "f32"), axis=1)
    with pytest.raises(OpError, match="do not add up"):
        infer("split", ([2, 6], "f32"), axis=1, sizes=[2, 2])


SLICES = [  # starts, ends, axes, steps
    ([1], [3], None, None), ([0, 1], [2, 5], [1, 2], None), ([-1], [-1000], [1], [-1]), ([4], [0], [2], [-2]),
    ([-3], [2**63 - 1], [-1], None), ([10], [20], [0], None), ([0, 0], [100, 100], [0, 2], [2, 3]),
    ([-100], [100], [1], [-1]), ([3], [-2**63], [2], [-1]),
]


@pytest.mark.parametrize("starts,ends,axes,steps", SLICES)
def test_slice_against_python_slicing(starts, ends, axes, steps, rng):
    """ONNX Slice clamps like Python slicing, negative steps included (torch has no negative steps)."""
    x = rand(rng, (3, 4, 6), "f32")
    idx = [slice(None)] * 3
    for i, (s, e) in enumerate(zip(starts, ends)):
        ax = (axes or range(len(starts)))[i]
        idx[ax] = slice(s, e, (steps or [1] * len(starts))[i])
    want = x[tuple(idx)]
    got = run_op("slice", x, starts=starts, ends=ends, axes=axes, steps=steps)
    same(got, want)


def test_slice_vs_torch_and_symbolic(rng):
    x = rand(rng, (5, 8), "bf16")
    same(run_op("slice", x, starts=[1, 2], ends=[4, 8], steps=[1, 3]), torch_of(x)[1:4, 2:8:3].float())
    same(run_op("slice", x, starts=[-1], ends=[-2**62], axes=[0], steps=[-1]), torch_of(x).flip(0).float())
    assert infer("slice", (["B", 8], "f32"), starts=[2], ends=[6], axes=[1]).shape == ("B", 4)
    assert infer("slice", (["B", 8], "f32"), starts=[0], ends=[2**63 - 1], axes=[0]).shape == ("B", 8)
    with pytest.raises(OpError, match="symbolic"):
        infer("slice", (["B", 8], "f32"), starts=[1], ends=[3], axes=[0])
    with pytest.raises(OpError, match="step cannot be 0"):
        infer("slice", ([4], "f32"), starts=[0], ends=[3], steps=[0])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather(axis, rng):
    x = rand(rng, (4, 5, 6), "f32")
    idx = np.array([[0, -1], [2, 3]], np.int64)
    t = torch.from_numpy(x)
    n = x.shape[axis]
    want = torch.index_select(t, axis, torch.from_numpy(np.where(idx < 0, idx + n, idx).reshape(-1))).reshape(
        x.shape[:axis % 3] + idx.shape + x.shape[axis % 3 + 1:])
    same(run_op("gather", x, idx, axis=axis), want)
    assert infer("gather", (["V", 8], "f32"), (["B", "S"], "i64"), axis=0).shape == ("B", "S", 8)
    with pytest.raises(OpError, match=r"op 'gather' on \(f32\[4\], f32\[2\]\).*integer"):
        infer("gather", ([4], "f32"), ([2], "f32"))


def test_gather_elements(rng):
    x = rand(rng, (3, 5), "f32")
    for axis in (0, 1):
        idx = rng.integers(0, x.shape[axis], size=(3, 4) if axis == 1 else (2, 5)).astype(np.int64)
        same(run_op("gather_elements", x, idx, axis=axis), torch.gather(torch.from_numpy(x), axis, torch.from_numpy(idx)))
    neg = np.array([[-1, 0]], np.int64)
    same(run_op("gather_elements", x, neg, axis=1), x[:1, [4, 0]])
    assert infer("gather_elements", (["B", 5], "f32"), (["B", 2], "i32"), axis=1).shape == ("B", 2)
    with pytest.raises(OpError, match="gather_elements.*rank"):
        infer("gather_elements", ([3, 5], "f32"), ([3], "i64"))


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_embedding(dtype, rng):
    w = rand(rng, (10, 4), dtype)
    ids = rng.integers(0, 10, size=(2, 3)).astype(np.int64)
    want = F.embedding(torch.from_numpy(ids), torch_of(w).float())
    same(run_op("embedding", w, ids), want)
    assert infer("embedding", ([50257, 768], "bf16"), (["B", "S"], "i64")) == TensorType(["B", "S", 768], "bf16")
    with pytest.raises(OpError, match="embedding.*integer ids"):
        infer("embedding", ([10, 4], "f32"), ([3], "f32"))


def test_expand_squeeze_unsqueeze(rng):
    x = rand(rng, (3, 1), "f32")
    same(run_op("expand", x, shape=[2, 3, 4]), torch.from_numpy(x).expand(2, 3, 4))
    same(run_op("expand", x, shape=[1, 1]), torch.from_numpy(x))  # ONNX: a 1 in the target keeps the dim
    y = rand(rng, (1, 3, 1, 2), "f32")
    same(run_op("squeeze", y, axes=[0, -2]), torch.from_numpy(y).squeeze(2).squeeze(0))
    same(run_op("squeeze", y), torch.from_numpy(y).squeeze())
    same(run_op("unsqueeze", x, axes=[0, -1]), torch.from_numpy(x).unsqueeze(0).unsqueeze(-1))
    assert infer("expand", (["B", 1], "f32"), shape=[1, "S"]).shape == ("B", "S")
    assert infer("unsqueeze", (["B", "S"], "f32"), axes=[1]).shape == ("B", 1, "S")
    assert infer("squeeze", (["B", 1, "S"], "f32"), axes=[1]).shape == ("B", "S")
    with pytest.raises(OpError, match=r"op 'squeeze' on \(f32\[B,1\]\).*give axes"):
        infer("squeeze", (["B", 1], "f32"))
    with pytest.raises(OpError, match="squeeze.*not 1"):
        infer("squeeze", ([2, 3], "f32"), axes=[0])
    with pytest.raises(OpError, match="expand.*broadcast"):
        infer("expand", ([3, 2], "f32"), shape=[3, 4])


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad(mode, rng):
    x = rand(rng, (2, 3, 5), "f32")
    pads = [0, 1, 2, 0, 2, 1]  # begin per axis, then end per axis
    got = run_op("pad", x, pads=pads, mode=mode, value=1.5)
    tmode = {"edge": "replicate"}.get(mode, mode)
    want = F.pad(torch.from_numpy(x), (2, 1, 1, 2), mode=tmode, **({"value": 1.5} if mode == "constant" else {}))
    same(got, want)


def test_pad_negative_axes_int(rng):
    x = rand(rng, (4, 6), "i32", -9, 9)
    same(run_op("pad", x, pads=[-1, 2, 0, -3]), F.pad(torch.from_numpy(x), (2, -3, -1, 0)))
    same(run_op("pad", x, pads=[1, 2], axes=[-1], value=7.0), F.pad(torch.from_numpy(x), (1, 2), value=7))
    assert infer("pad", (["B", 6], "f32"), pads=[0, 1, 0, 1]).shape == ("B", 8)
    with pytest.raises(OpError, match="symbolic"):
        infer("pad", (["B", 6], "f32"), pads=[1, 1, 0, 1])
    with pytest.raises(OpError, match="2 entries per padded axis"):
        infer("pad", ([2, 6], "f32"), pads=[1, 1])
    with pytest.raises(OpError, match="reflect"):
        infer("pad", ([2, 3], "f32"), pads=[0, 3, 0, 0], mode="reflect")


def test_tile(rng):
    x = rand(rng, (2, 3), "bf16")
    same(run_op("tile", x, repeats=[3, 2]), torch.tile(torch_of(x), (3, 2)).float())
    assert infer("tile", (["B", 3], "f32"), repeats=[2, 1]).shape == ("2*B", 3)
    with pytest.raises(OpError, match="tile.*repeats"):
        infer("tile", ([2, 3], "f32"), repeats=[2])


@pytest.mark.parametrize("start,end,step,dtype", [(0, 10, 1, "i64"), (2, 11, 3, "i32"), (5, -3, -2, "i64"), (0.5, 2.0, 0.25, "f32"),
                                                   (0, 1, 0.1, "f64"), (3, 3, 1, "i64")])
def test_arange(start, end, step, dtype):
    got = run_op("arange", start=start, end=end, step=step, dtype=dtype)
    tdt = {"i64": torch.int64, "i32": torch.int32, "f32": torch.float32, "f64": torch.float64}[dtype]
    assert_close(got, torch.arange(start, end, step, dtype=tdt).numpy(), dtype if dtype != "f64" else "f32")


def test_constant_of_shape_and_shape(rng):
    got = run_op("constant_of_shape", shape=[2, 3], value=2.5, dtype="bf16")
    same(got, torch.full((2, 3), 2.5, dtype=torch.bfloat16).float())
    assert got.dtype == ir.dtype("bf16").np
    x = rand(rng, (2, 3, 4), "f32")
    same(run_op("shape", x), np.array([2, 3, 4]))
    same(run_op("shape", x, start=1), np.array([3, 4]))
    same(run_op("shape", x, start=-2, end=-1), np.array([3]))
    assert infer("shape", (["B", "S", 4], "f16")) == TensorType([3], "i64")
    assert infer("constant_of_shape", shape=["B", 4], dtype="i64") == TensorType(["B", 4], "i64")
    b = ir.Builder()
    s = b.input("s", ["B", "S"])
    g = b.output(b.constant_of_shape(shape=["S", "B"], value=1.0), b.shape(s))
    c, sh = ir.evaluate(g, [np.zeros((2, 5), np.float32)])
    assert c.shape == (5, 2) and sh.tolist() == [2, 5]
    with pytest.raises(OpError, match=r"op 'arange' on \(\).*step cannot be 0"):
        infer("arange", start=0, end=3, step=0)
