"""Elementwise ops: unary, binary with broadcasting, where, cast, clip."""
from __future__ import annotations

import numpy as np
from scipy import special

from ..dtypes import DType, dtype as to_dtype, promote
from ..types import TensorType, broadcast_shapes
from .registry import Attr, OpError, register

_LOWP = {"f16", "bf16", "f8e4m3", "f8e5m2", "f4e2m1"}


def _in_f32(fn):
    """Compute low-precision floats in f32 and round back, as hardware kernels do."""
    def run(x, **kw):
        dt = x.dtype
        if np.dtype(dt).name in ("float16",) or str(dt) in ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float4_e2m1fn"):
            return np.asarray(fn(x.astype(np.float32), **kw)).astype(dt)
        return np.asarray(fn(x, **kw)).astype(dt, copy=False)
    return run


def _gelu(x, approximate="none"):
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi).astype(x.dtype) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + special.erf(x / np.sqrt(2).astype(x.dtype)))


def _sigmoid(x):
    return special.expit(x)


UNARY = {
    "neg": (np.negative, {}),
    "abs": (np.abs, {}),
    "exp": (np.exp, {}),
    "log": (np.log, {}),
    "sqrt": (np.sqrt, {}),
    "rsqrt": (lambda x: 1 / np.sqrt(x), {}),
    "reciprocal": (lambda x: 1 / x, {}),
    "tanh": (np.tanh, {}),
    "sigmoid": (_sigmoid, {}),
    "relu": (lambda x: np.maximum(x, 0).astype(x.dtype), {}),
    "leaky_relu": (lambda x, alpha: np.where(x >= 0, x, x * x.dtype.type(alpha)), {"alpha": Attr("float", 0.01)}),
    "elu": (lambda x, alpha: np.where(x > 0, x, x.dtype.type(alpha) * np.expm1(x)), {"alpha": Attr("float", 1.0)}),
    "gelu": (_gelu, {"approximate": Attr("str", "none", ("none", "tanh"))}),
    "silu": (lambda x: x * _sigmoid(x), {}),
    "softplus": (lambda x: np.logaddexp(0, x), {}),
    "hard_sigmoid": (lambda x, alpha, beta: np.clip(x * x.dtype.type(alpha) + x.dtype.type(beta), 0, 1),
                     {"alpha": Attr("float", 0.2), "beta": Attr("float", 0.5)}),
    "hard_swish": (lambda x: x * np.clip(x / 6 + 0.5, 0, 1), {}),
    "erf": (special.erf, {}),
    "sin": (np.sin, {}),
    "cos": (np.cos, {}),
    "floor": (np.floor, {}),
    "ceil": (np.ceil, {}),
    "round": (np.round, {}),   # half to even, as ONNX Round and torch.round
    "sign": (np.sign, {}),
    "selu": (lambda x, alpha, gamma: x.dtype.type(gamma) * np.where(x > 0, x, x.dtype.type(alpha) * np.expm1(x)),
             {"alpha": Attr("float", 1.67326319217681884765625), "gamma": Attr("float", 1.05070102214813232421875)}),
    "shrink": (lambda x, bias, lambd: np.where(x < -lambd, x + x.dtype.type(bias), np.where(x > lambd, x - x.dtype.type(bias), 0)),
               {"bias": Attr("float", 0.0), "lambd": Attr("float", 0.5)}),
}


def _same_type(ts, attrs):
    return ts[0]


def _float_only(name):
    def infer(ts, attrs):
        if not ts[0].dtype.is_float:
            raise OpError(f"op '{name}' needs a float operand, got {ts[0]}")
        return ts[0]
    return infer


_INT_OK = {"neg", "abs", "relu", "sign"}
for _name, (_fn, _attrs) in UNARY.items():
    register(_name, "unary", _same_type if _name in _INT_OK else _float_only(_name),
             _in_f32(_fn) if _name not in _INT_OK else (lambda f: lambda x, **kw: np.asarray(f(x, **kw)).astype(x.dtype))(_fn),
             _attrs, fn=_fn)

register("identity", "unary", _same_type, lambda x: x)
def _not_infer(ts, attrs):
    if ts[0].dtype.name != "bool":
        raise OpError(f"op 'not' needs a bool operand, got {ts[0]}")
    return ts[0]


register("not", "unary", _not_infer, lambda x: np.logical_not(x))


def _cast_ref(x, to):
    dt = to_dtype(to).np
    if x.dtype.kind == "f" and dt.kind in "iu" and dt.itemsize > 0:
        x = np.trunc(x)  # float -> int truncates toward zero (C, ONNX, torch)
    return x.astype(dt)


register("cast", "unary", lambda ts, a: ts[0].with_dtype(a["to"]), _cast_ref, {"to": Attr("dtype")})


def _clip(x, min=None, max=None):
    lo = -np.inf if min is None else min
    hi = np.inf if max is None else max
    return _in_f32(lambda v: np.clip(v, lo, hi))(x) if x.dtype.kind == "f" or x.dtype.kind == "V" else np.clip(x, lo, hi).astype(x.dtype)


register("clip", "unary", _same_type, _clip, {"min": Attr("float", None), "max": Attr("float", None)})


# ---- binary
def _bin_infer(name, result=None, need=None):
    def infer(ts, attrs):
        a, b = ts
        if a.dtype != b.dtype:
            raise OpError(f"op '{name}': operand dtypes differ ({a} vs {b}); insert a cast")
        if need == "bool" and a.dtype.name != "bool":
            raise OpError(f"op '{name}' needs bool operands, got {a}")
        shape = broadcast_shapes(a.shape, b.shape)
        return TensorType(shape, result or a.dtype)
    return infer


def _bin_ref(fn):
    def run(a, b, **kw):
        if a.dtype.kind == "V" or str(a.dtype) in ("bfloat16", "float16", "float8_e4m3fn", "float8_e5m2"):
            return np.asarray(fn(a.astype(np.float32), b.astype(np.float32), **kw)).astype(a.dtype)
        return np.asarray(fn(a, b, **kw)).astype(a.dtype, copy=False)
    return run


def _div(a, b):
    if a.dtype.kind in "iu":  # integer division truncates toward zero (C, ONNX), exactly (no float round trip)
        if np.any(b == 0):
            raise ZeroDivisionError("integer division by zero")
        q = np.floor_divide(a, b)
        return np.where((q < 0) & (q * b != a), q + 1, q).astype(a.dtype)
    return np.true_divide(a, b)


def _mod(a, b, fmod=False):
    """fmod=False: the result takes the divisor's sign (Python, torch.remainder); True: the dividend's (C fmod)."""
    return np.fmod(a, b) if fmod else np.mod(a, b)


def _pow(a, b):
    return np.power(a, b)


BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": _div, "pow": _pow,
          "max": np.maximum, "min": np.minimum, "mod": _mod}
COMPARE = {"eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal}
LOGICAL = {"and": np.logical_and, "or": np.logical_or, "xor": np.logical_xor}

for _name, _fn in BINARY.items():
    register(_name, "binary", _bin_infer(_name), _bin_ref(_fn), {"fmod": Attr("bool", False)} if _name == "mod" else None,
             arity=(2, 2), fn=_fn)
for _name, _fn in COMPARE.items():
    register(_name, "binary", _bin_infer(_name, result="bool"), (lambda f: lambda a, b: np.asarray(f(a, b)))(_fn), arity=(2, 2), fn=_fn)
for _name, _fn in LOGICAL.items():
    register(_name, "binary", _bin_infer(_name, need="bool"), (lambda f: lambda a, b: np.asarray(f(a, b)))(_fn), arity=(2, 2), fn=_fn)


def _where_infer(ts, attrs):
    c, a, b = ts
    if c.dtype.name != "bool":
        raise OpError(f"op 'where': condition must be bool, got {c}")
    if a.dtype != b.dtype:
        raise OpError(f"op 'where': branch dtypes differ ({a} vs {b})")
    return TensorType(broadcast_shapes(c.shape, a.shape, b.shape), a.dtype)


register("where", "binary", _where_infer, lambda c, a, b: np.where(c, a, b).astype(a.dtype), arity=(3, 3))


def is_elementwise(op: str) -> bool:
    from .registry import OPS
    return op in OPS and OPS[op].kind in ("unary", "binary")


def result_dtype(a: DType, b: DType) -> DType:
    return promote(a, b)
