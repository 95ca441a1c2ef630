"""Elementwise ops: inference (static, symbolic, broadcasting), semantics vs PyTorch, type errors."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import NP, assert_close, infer, rand, run_op, torch_of

from nnfuse.ir import OpError, TensorType

# op -> (torch oracle on a float32 tensor, attrs, input range)
POS = (0.1, 3.0)
UNARY = {
    "neg": (torch.neg, {}, None), "abs": (torch.abs, {}, None), "exp": (torch.exp, {}, None),
    "log": (torch.log, {}, POS), "sqrt": (torch.sqrt, {}, POS), "rsqrt": (torch.rsqrt, {}, POS),
    "reciprocal": (torch.reciprocal, {}, POS), "tanh": (torch.tanh, {}, None), "sigmoid": (torch.sigmoid, {}, None),
    "relu": (torch.relu, {}, None), "leaky_relu": (lambda x: F.leaky_relu(x, 0.2), {"alpha": 0.2}, None),
    "elu": (lambda x: F.elu(x, 0.7), {"alpha": 0.7}, None), "gelu": (F.gelu, {}, None),
    "silu": (F.silu, {}, None), "softplus": (F.softplus, {}, None),
    "hard_sigmoid": (F.hardsigmoid, {"alpha": 1 / 6, "beta": 0.5}, (-5, 5)), "hard_swish": (F.hardswish, {}, (-5, 5)),
    "erf": (torch.erf, {}, None), "sin": (torch.sin, {}, None), "cos": (torch.cos, {}, None),
    "floor": (torch.floor, {}, None), "ceil": (torch.ceil, {}, None), "sign": (torch.sign, {}, None),
    "selu": (F.selu, {}, None), "shrink": (lambda x: F.softshrink(x, 0.3), {"bias": 0.3, "lambd": 0.3}, None),
    "identity": (lambda x: x, {}, None), "clip": (lambda x: torch.clamp(x, -0.5, 1.25), {"min": -0.5, "max": 1.25}, None),
}


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary_vs_torch(op, dtype, rng):
    fn, attrs, rng_range = UNARY[op]
    x = rand(rng, (3, 17), dtype, *(rng_range or (-3, 3)))
    got = run_op(op, x, **attrs)
    want = fn(torch.from_numpy(x.astype(np.float32)))
    # lowp results are f32 results rounded once; compare against the f32 oracle rounded the same way
    want = want.numpy().astype(x.dtype).astype(np.float32)
    assert_close(got, want, dtype)


def test_unary_attr_variants(rng):
    x = rand(rng, (64,), "f32", -4, 4)
    t = torch.from_numpy(x)
    assert_close(run_op("gelu", x, approximate="tanh"), F.gelu(t, approximate="tanh"))
    assert_close(run_op("hard_sigmoid", x), np.clip(0.2 * x + 0.5, 0, 1))  # ONNX defaults alpha=0.2 beta=0.5
    assert_close(run_op("shrink", x, lambd=0.5), F.hardshrink(t, 0.5))    # bias 0 = hard shrink
    assert_close(run_op("clip", x, min=0.0), torch.clamp(t, min=0.0))
    assert_close(run_op("round", np.array([0.5, 1.5, 2.5, -0.5, -1.5, 0.4], np.float32)),
                 torch.round(torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 0.4])))  # half to even
    assert_close(run_op("selu", x, alpha=1.5, gamma=2.0), 2.0 * torch.where(t > 0, t, 1.5 * torch.expm1(t)))


@pytest.mark.parametrize("op,fn", [("neg", torch.neg), ("abs", torch.abs), ("relu", torch.relu), ("sign", torch.sign)])
@pytest.mark.parametrize("dtype", ["i32", "i64"])
def test_unary_int(op, fn, dtype, rng):
    x = rand(rng, (4, 5), dtype, -9, 9)
    got = run_op(op, x)
    assert got.dtype == x.dtype
    np.testing.assert_array_equal(got, fn(torch.from_numpy(x)).numpy())


def test_not_and_cast(rng):
    m = rand(rng, (3, 4), "bool")
    np.testing.assert_array_equal(run_op("not", m), torch.logical_not(torch.from_numpy(m)).numpy())
    x = rand(rng, (40,), "f32", -5, 5)
    t = torch.from_numpy(x)
    np.testing.assert_array_equal(run_op("cast", x, to="i32"), t.to(torch.int32).numpy())  # truncates toward zero
    np.testing.assert_array_equal(run_op("cast", x, to="bool"), t.to(torch.bool).numpy())
    np.testing.assert_array_equal(run_op("cast", x, to="bf16").astype(np.float32), t.to(torch.bfloat16).float().numpy())
    np.testing.assert_array_equal(run_op("cast", x, to="f16"), t.to(torch.float16).numpy())
    i = rand(rng, (10,), "i64", -100, 100)
    np.testing.assert_array_equal(run_op("cast", i, to="f32"), torch.from_numpy(i).float().numpy())
    xb = rand(rng, (40,), "bf16", -5, 5)
    np.testing.assert_array_equal(run_op("cast", xb, to="i32"), torch_of(xb).to(torch.int32).numpy())


BINARY = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "max": torch.maximum,
          "min": torch.minimum, "mod": torch.remainder, "pow": torch.pow}
COMPARE = {"eq": torch.eq, "ne": torch.ne, "lt": torch.lt, "le": torch.le, "gt": torch.gt, "ge": torch.ge}
LOGICAL = {"and": torch.logical_and, "or": torch.logical_or, "xor": torch.logical_xor}


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("op", sorted(BINARY))
def test_binary_float_broadcast(op, dtype, rng):
    lo = 0.5 if op in ("pow", "div", "mod") else -3
    a, b = rand(rng, (3, 1, 5), dtype, lo, 3), rand(rng, (4, 5), dtype, lo, 3)
    got = run_op(op, a, b)
    assert got.shape == (3, 4, 5)
    want = BINARY[op](torch.from_numpy(a.astype(np.float32)), torch.from_numpy(b.astype(np.float32)))
    assert_close(got, want.numpy().astype(a.dtype).astype(np.float32), dtype)


@pytest.mark.parametrize("dtype", ["i32", "i64"])
def test_binary_int(dtype, rng):
    a, b = rand(rng, (50,), dtype, -20, 20), rand(rng, (50,), dtype, 1, 7) * np.where(rng.random(50) < 0.5, -1, 1).astype(NP[dtype])
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    np.testing.assert_array_equal(run_op("div", a, b), torch.div(ta, tb, rounding_mode="trunc").numpy())
    np.testing.assert_array_equal(run_op("mod", a, b), torch.remainder(ta, tb).numpy())
    np.testing.assert_array_equal(run_op("mod", a, b, fmod=True), torch.fmod(ta, tb).numpy())
    for op in ("add", "sub", "mul", "max", "min"):
        np.testing.assert_array_equal(run_op(op, a, b), BINARY[op](ta, tb).numpy())
    assert run_op("add", a, b).dtype == a.dtype


def test_int_div_is_exact_for_large_values():
    a = np.array([2**62 + 1, -(2**62) - 3, 7, -7], np.int64)
    b = np.array([3, 5, -2, 2], np.int64)
    np.testing.assert_array_equal(run_op("div", a, b), torch.div(torch.from_numpy(a), torch.from_numpy(b), rounding_mode="trunc").numpy())


def test_float_fmod(rng):
    a, b = rand(rng, (30,), "f32", -5, 5), rand(rng, (30,), "f32", 0.5, 2)
    assert_close(run_op("mod", a, b, fmod=True), torch.fmod(torch.from_numpy(a), torch.from_numpy(b)))


@pytest.mark.parametrize("op", sorted(COMPARE))
@pytest.mark.parametrize("dtype", ["f32", "bf16", "i64"])
def test_compare(op, dtype, rng):
    a, b = rand(rng, (2, 6), dtype, -2, 2), rand(rng, (6,), dtype, -2, 2)
    a[0, :3] = b[:3]  # some ties
    got = run_op(op, a, b)
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, COMPARE[op](torch_of(a), torch_of(b)).numpy())


@pytest.mark.parametrize("op", sorted(LOGICAL))
def test_logical(op, rng):
    a, b = rand(rng, (4, 1), "bool"), rand(rng, (1, 5), "bool")
    np.testing.assert_array_equal(run_op(op, a, b), LOGICAL[op](torch.from_numpy(a), torch.from_numpy(b)).numpy())


@pytest.mark.parametrize("dtype", ["f32", "bf16", "i32"])
def test_where(dtype, rng):
    c, a, b = rand(rng, (3, 1), "bool"), rand(rng, (1, 4), dtype), rand(rng, (3, 4), dtype)
    got = run_op("where", c, a, b)
    np.testing.assert_array_equal(got.astype(np.float64), torch.where(torch.from_numpy(c), torch_of(a), torch_of(b)).float().numpy())


# ---------------------------------------------------------------- inference with symbols
def test_symbolic_broadcasting():
    assert infer("add", (["B", 4], "f32"), ([1, 4], "f32")).shape == ("B", 4)
    assert infer("add", (["B", 1], "f32"), ([1, "S"], "f32")).shape == ("B", "S")
    assert infer("mul", (["B", "S"], "f16"), (["B", "S"], "f16")).shape == ("B", "S")
    assert infer("add", (["B*S", 4], "f32"), (["S*B", 4], "f32")).shape == ("B*S", 4)
    assert infer("eq", ([2, "B", 3], "i64"), (["B", 1], "i64")) == TensorType([2, "B", 3], "bool")
    assert infer("where", ((["B", 1], "bool")), ([1, 7], "f32"), ([7], "f32")).shape == ("B", 7)
    assert infer("gelu", (["B", "S", 8], "bf16")) == TensorType(["B", "S", 8], "bf16")
    assert infer("cast", (["N"], "f32"), to="i8") == TensorType(["N"], "i8")
    with pytest.raises(OpError, match=r"op 'add' on \(f32\[B\], f32\[3\]\).*broadcast"):
        infer("add", (["B"], "f32"), ([3], "f32"))
    with pytest.raises(OpError, match=r"op 'sub' on \(f32\[B,2\], f32\[S,2\]\)"):
        infer("sub", (["B", 2], "f32"), (["S", 2], "f32"))


@pytest.mark.parametrize("op,types,attrs,rule", [
    ("add", [([2], "f32"), ([2], "i32")], {}, "dtypes differ"),
    ("add", [([2, 3], "f32"), ([4], "f32")], {}, "broadcast"),
    ("gelu", [([2], "i32")], {}, "float"),
    ("exp", [([2], "i64")], {}, "float"),
    ("not", [([2], "f32")], {}, "bool"),
    ("and", [([2], "f32"), ([2], "f32")], {}, "bool"),
    ("where", [([2], "f32"), ([2], "f32"), ([2], "f32")], {}, "bool"),
    ("where", [([2], "bool"), ([2], "f32"), ([2], "f16")], {}, "differ"),
    ("add", [([2], "f32")], {}, "takes 2 operands"),
    ("relu", [([2], "f32"), ([2], "f32")], {}, "takes 1 operands"),
])
def test_ill_typed_construction(op, types, attrs, rule):
    with pytest.raises(OpError) as e:
        infer(op, *types, **attrs)
    msg = str(e.value)
    assert f"op '{op}'" in msg and rule in msg
    for shape, dt in types:
        assert str(TensorType(shape, dt)) in msg


def test_bad_attrs():
    from nnfuse.ir import Builder
    b = Builder()
    x = b.input("x", [2], "f32")
    with pytest.raises(OpError, match="gelu.*approximate.*one of"):
        b.gelu(x, approximate="fast")
    with pytest.raises(OpError, match="unknown attribute"):
        b.relu(x, alpha=1.0)
    with pytest.raises(OpError, match="missing required attribute 'to'"):
        b.cast(x)
