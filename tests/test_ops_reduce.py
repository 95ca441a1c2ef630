"""Reductions, arg-reductions, softmax/log_softmax, cumsum: inference and semantics vs PyTorch."""
import numpy as np
import pytest
import torch
from conftest import assert_close, infer, rand, run_op, torch_of

from nnfuse.ir import OpError, TensorType

REDUCE = {
    "reduce_sum": lambda t, d, k: torch.sum(t, dim=d, keepdim=k),
    "reduce_mean": lambda t, d, k: torch.mean(t, dim=d, keepdim=k),
    "reduce_max": lambda t, d, k: torch.amax(t, dim=d, keepdim=k),
    "reduce_min": lambda t, d, k: torch.amin(t, dim=d, keepdim=k),
    "reduce_prod": lambda t, d, k: _prod(t, d, k),
    "reduce_l2": lambda t, d, k: torch.linalg.vector_norm(t, 2, dim=d, keepdim=k),
    "reduce_log_sum_exp": lambda t, d, k: torch.logsumexp(t, dim=d if d is not None else tuple(range(t.ndim)), keepdim=k),
}


def _prod(t, dims, keep):
    dims = range(t.ndim) if dims is None else dims
    for d in sorted((d % t.ndim for d in dims), reverse=True):
        t = torch.prod(t, dim=d, keepdim=keep) if keep else torch.prod(t, dim=d)
    return t


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("axes,keepdims", [((1,), False), ((0, 2), True), ((-1,), True), (None, False)])
@pytest.mark.parametrize("op", sorted(REDUCE))
def test_reduce_vs_torch(op, axes, keepdims, dtype, rng):
    x = rand(rng, (3, 4, 5), dtype, 0.5 if op == "reduce_prod" else -2, 1.5 if op == "reduce_prod" else 2)
    got = run_op(op, x, axes=axes, keepdims=keepdims)
    want = REDUCE[op](torch.from_numpy(x.astype(np.float32)), list(axes) if axes else None, keepdims)
    assert_close(got, want.numpy().astype(x.dtype).astype(np.float32), dtype, rtol=1e-4 if dtype == "f32" else None)


@pytest.mark.parametrize("op,fn", [("reduce_sum", torch.sum), ("reduce_max", torch.amax), ("reduce_min", torch.amin)])
def test_reduce_int(op, fn, rng):
    x = rand(rng, (4, 6), "i64", -50, 50)
    got = run_op(op, x, axes=[1])
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, fn(torch.from_numpy(x), dim=1).numpy())


@pytest.mark.parametrize("op,fn", [("argmax", torch.argmax), ("argmin", torch.argmin)])
@pytest.mark.parametrize("axis,keepdims", [(0, True), (-1, False), (1, True)])
def test_arg_reduce(op, fn, axis, keepdims, rng):
    x = rand(rng, (3, 5, 4), "f32")
    got = run_op(op, x, axis=axis, keepdims=keepdims)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, fn(torch.from_numpy(x), dim=axis, keepdim=keepdims).numpy())


def test_arg_reduce_ties_and_last_index():
    x = np.array([[1, 3, 3, 0], [2, 2, 1, 1]], np.float32)
    np.testing.assert_array_equal(run_op("argmax", x, axis=1, keepdims=False), [1, 0])
    np.testing.assert_array_equal(run_op("argmax", x, axis=1, keepdims=False, select_last_index=True), [2, 1])
    np.testing.assert_array_equal(run_op("argmin", x, axis=-1, keepdims=True, select_last_index=True), [[3], [3]])


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("op,fn", [("softmax", torch.softmax), ("log_softmax", torch.log_softmax)])
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax(op, fn, axis, dtype, rng):
    x = rand(rng, (3, 7, 2), dtype, -4, 4)
    want = fn(torch.from_numpy(x.astype(np.float32)), dim=axis).numpy().astype(x.dtype).astype(np.float32)
    assert_close(run_op(op, x, axis=axis), want, dtype)


@pytest.mark.parametrize("exclusive", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", ["f32", "i64", "bf16"])
def test_cumsum(exclusive, reverse, dtype, rng):
    x = rand(rng, (4, 6), dtype, -5, 5)
    t = torch_of(x).float() if dtype == "bf16" else torch.from_numpy(x)
    for axis in (1, -2):
        tt = t.flip(axis) if reverse else t
        want = torch.cumsum(tt, dim=axis)
        if exclusive:
            want = want - tt
        want = want.flip(axis) if reverse else want
        got = run_op("cumsum", x, axis=axis, exclusive=exclusive, reverse=reverse)
        assert got.dtype == x.dtype
        if dtype == "i64":
            np.testing.assert_array_equal(got, want.numpy())
        else:
            assert_close(got, want.numpy(), dtype, atol=5e-2 if dtype == "bf16" else None)


def test_cumsum_exclusive_exact():
    x = np.array([1e8, 1.0, 1.0, 1.0], np.float32)  # exclusive by subtraction would lose the small terms
    np.testing.assert_array_equal(run_op("cumsum", x, axis=0, exclusive=True), np.array([0, 1e8, 1e8 + 1, 1e8 + 2], np.float32))


def test_reduce_inference_symbolic():
    assert infer("reduce_sum", (["B", "S", 8], "f32"), axes=[-1]).shape == ("B", "S")
    assert infer("reduce_mean", (["B", "S", 8], "f32"), axes=[1], keepdims=True).shape == ("B", 1, 8)
    assert infer("reduce_max", (["B", 3], "f16")) == TensorType([], "f16")
    assert infer("argmax", (["B", "S", 8], "bf16"), axis=-1, keepdims=False) == TensorType(["B", "S"], "i64")
    assert infer("softmax", (["B", "H", "S", "S"], "f32"), axis=-1).shape == ("B", "H", "S", "S")
    assert infer("cumsum", (["N", 4], "i32"), axis=0) == TensorType(["N", 4], "i32")
    assert infer("reduce_log_sum_exp", (["B", 4], "f32"), axes=[0, 1], keepdims=True).shape == (1, 1)


@pytest.mark.parametrize("op,types,attrs,rule", [
    ("reduce_sum", [([2, 3], "f32")], {"axes": [2]}, "out of range"),
    ("argmax", [([2, 3], "f32")], {"axis": -3}, "out of range"),
    ("softmax", [([2, 3], "i32")], {}, "float"),
    ("reduce_l2", [([2, 3], "i64")], {}, "float"),
    ("cumsum", [([2], "f32")], {"axis": 1}, "out of range"),
])
def test_reduce_errors(op, types, attrs, rule):
    with pytest.raises(OpError) as e:
        infer(op, *types, **attrs)
    assert f"op '{op}'" in str(e.value) and rule in str(e.value) and str(TensorType(*types[0])) in str(e.value)
