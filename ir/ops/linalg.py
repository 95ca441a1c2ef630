"""matmul (batched, broadcast), gemm, and the normalizations built on row statistics."""
from __future__ import annotations

import numpy as np

from ..types import TensorType, broadcast_shapes
from .reduce import _acc
from .registry import Attr, OpError, norm_axis, register


def _matmul_infer(ts, attrs):
    a, b = ts
    if a.dtype != b.dtype:
        raise OpError(f"op 'matmul': operand dtypes differ ({a} vs {b})")
    if a.rank == 0 or b.rank == 0:
        raise OpError(f"op 'matmul': operands must have rank >= 1, got {a} and {b}")
    sa = list(a.shape) if a.rank > 1 else [1] + list(a.shape)
    sb = list(b.shape) if b.rank > 1 else list(b.shape) + [1]
    if sa[-1] != sb[-2] and isinstance(sa[-1], int) and isinstance(sb[-2], int):
        raise OpError(f"op 'matmul': inner dims differ: {a} @ {b} ({sa[-1]} vs {sb[-2]})")
    batch = broadcast_shapes(tuple(sa[:-2]), tuple(sb[:-2]))
    shape = list(batch) + ([sa[-2]] if a.rank > 1 else []) + ([sb[-1]] if b.rank > 1 else [])
    return TensorType(shape, a.dtype)


def _matmul(a, b):
    return np.matmul(_acc(a), _acc(b)).astype(a.dtype)


register("matmul", "matmul", _matmul_infer, _matmul, arity=(2, 2), weight_operand=1)


def _gemm_infer(ts, attrs):
    a, b = ts[0], ts[1]
    if a.rank != 2 or b.rank != 2:
        raise OpError(f"op 'gemm' needs 2-D operands, got {a} and {b}")
    if any(t.dtype != a.dtype for t in ts):
        raise OpError(f"op 'gemm': operand dtypes differ ({', '.join(map(str, ts))})")
    m, k = (a.shape[1], a.shape[0]) if attrs["trans_a"] else a.shape
    k2, n = (b.shape[1], b.shape[0]) if attrs["trans_b"] else b.shape
    if k != k2 and isinstance(k, int) and isinstance(k2, int):
        raise OpError(f"op 'gemm': inner dims differ ({k} vs {k2}) for {a}, {b}")
    if len(ts) == 3:
        broadcast_shapes((m, n), ts[2].shape)
    return TensorType((m, n), a.dtype)


def _gemm(a, b, c=None, alpha=1.0, beta=1.0, trans_a=False, trans_b=False):
    x, w = _acc(a), _acc(b)
    y = (x.T if trans_a else x) @ (w.T if trans_b else w) * np.float32(alpha)
    if c is not None:
        y = y + np.float32(beta) * _acc(c)
    return y.astype(a.dtype)


register("gemm", "matmul", _gemm_infer, _gemm,
         {"alpha": Attr("float", 1.0), "beta": Attr("float", 1.0), "trans_a": Attr("bool", False), "trans_b": Attr("bool", False)},
         arity=(2, 3), weight_operand=1)


def _norm_axes(axis, rank):
    return tuple(range(norm_axis(axis, rank), rank))


def _layer_norm_infer(ts, attrs):
    x = ts[0]
    if not x.dtype.is_float or any(t.dtype != x.dtype for t in ts):
        raise OpError(f"needs float operands of one dtype, got {', '.join(map(str, ts))}")
    axes = _norm_axes(attrs["axis"], x.rank)
    nshape = tuple(x.shape[a] for a in axes)
    for t in ts[1:]:
        if broadcast_shapes(nshape, t.shape) != nshape:
            raise OpError(f"weight/bias {t} must broadcast onto the normalized dims [{','.join(map(str, nshape))}]")
    return x


def _layer_norm(x, weight=None, bias=None, axis=-1, eps=1e-5):
    xf = _acc(x)
    axes = _norm_axes(axis, x.ndim)
    mu = xf.mean(axis=axes, keepdims=True)
    var = ((xf - mu) ** 2).mean(axis=axes, keepdims=True)
    y = (xf - mu) / np.sqrt(var + np.float32(eps))
    if weight is not None:
        y = y * _acc(weight)
    if bias is not None:
        y = y + _acc(bias)
    return y.astype(x.dtype)


def _rms_norm(x, weight=None, axis=-1, eps=1e-6):
    xf = _acc(x)
    axes = _norm_axes(axis, x.ndim)
    y = xf / np.sqrt((xf * xf).mean(axis=axes, keepdims=True) + np.float32(eps))
    if weight is not None:
        y = y * _acc(weight)
    return y.astype(x.dtype)


register("layer_norm", "norm", _layer_norm_infer, _layer_norm, {"axis": Attr("int", -1), "eps": Attr("float", 1e-5)}, arity=(1, 3))
register("rms_norm", "norm", _layer_norm_infer, _rms_norm, {"axis": Attr("int", -1), "eps": Attr("float", 1e-6)}, arity=(1, 2))
