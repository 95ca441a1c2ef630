"""Reductions over axes (keepdims), arg-reductions, softmax, log_softmax, cumsum."""
from __future__ import annotations

import numpy as np
from scipy import special

from ..types import TensorType
from .registry import Attr, OpError, norm_axis, register


def _axes(axes, rank, op):
    if axes is None or len(axes) == 0:
        return tuple(range(rank))
    out = sorted({norm_axis(a, rank, op) for a in axes})
    return tuple(out)


def _reduce_infer(name):
    def infer(ts, attrs):
        t = ts[0]
        axes = _axes(attrs["axes"], t.rank, name)
        if attrs["keepdims"]:
            shape = [1 if i in axes else d for i, d in enumerate(t.shape)]
        else:
            shape = [d for i, d in enumerate(t.shape) if i not in axes]
        return t.with_shape(shape)
    return infer


def _acc(x):
    return x.astype(np.float32) if x.dtype.kind == "V" or x.dtype == np.float16 or str(x.dtype) == "bfloat16" else x


REDUCE = {"reduce_sum": np.sum, "reduce_mean": np.mean, "reduce_max": np.max, "reduce_min": np.min, "reduce_prod": np.prod}
_RATTRS = {"axes": Attr("ints", None), "keepdims": Attr("bool", False)}

def _empty_identity(fn, dt: np.dtype):
    """max/min over an empty set: -inf/+inf for floats, the type's min/max for ints (ONNX ReduceMax/Min, opset 18)."""
    lo = fn is np.max
    if dt.kind == "f":
        return -np.inf if lo else np.inf
    if dt.kind == "b":
        return not lo
    return np.iinfo(dt).min if lo else np.iinfo(dt).max


for _name, _fn in REDUCE.items():
    def _ref(x, axes, keepdims, _fn=_fn):
        a = _acc(x)
        kw = {"initial": _empty_identity(_fn, a.dtype)} if a.size == 0 and _fn in (np.max, np.min) else {}
        return np.asarray(_fn(a, axis=_axes(axes, x.ndim, ""), keepdims=keepdims, **kw)).astype(x.dtype)
    register(_name, "reduce", _reduce_infer(_name), _ref, _RATTRS, fn=_fn)


def _l2(x, axis, keepdims):
    return np.sqrt(np.sum(x * x, axis=axis, keepdims=keepdims))


def _float_reduce_infer(name):
    base = _reduce_infer(name)

    def infer(ts, attrs):
        if not ts[0].dtype.is_float:
            raise OpError(f"op '{name}' needs a float operand, got {ts[0]}")
        return base(ts, attrs)
    return infer


for _name, _fn in {"reduce_l2": _l2, "reduce_log_sum_exp": special.logsumexp}.items():
    def _ref(x, axes, keepdims, _fn=_fn):
        return np.asarray(_fn(_acc(x), axis=_axes(axes, x.ndim, ""), keepdims=keepdims)).astype(x.dtype)
    register(_name, "reduce", _float_reduce_infer(_name), _ref, _RATTRS, fn=_fn)


def _arg_infer(name):
    def infer(ts, attrs):
        t = ts[0]
        ax = norm_axis(attrs["axis"], t.rank, name)
        shape = [1 if i == ax else d for i, d in enumerate(t.shape)] if attrs["keepdims"] else [d for i, d in enumerate(t.shape) if i != ax]
        return TensorType(shape, "i64")
    return infer


def _argref(fn):
    def run(x, axis, keepdims, select_last_index=False):
        if select_last_index:
            r = x.shape[axis] - 1 - fn(np.flip(x, axis), axis=axis)
        else:
            r = fn(x, axis=axis)
        return np.expand_dims(r, axis).astype(np.int64) if keepdims else r.astype(np.int64)
    return run


_AATTRS = {"axis": Attr("int", 0), "keepdims": Attr("bool", True), "select_last_index": Attr("bool", False)}
register("argmax", "reduce", _arg_infer("argmax"), _argref(np.argmax), _AATTRS)
register("argmin", "reduce", _arg_infer("argmin"), _argref(np.argmin), _AATTRS)


def _float_same(name):
    def infer(ts, attrs):
        norm_axis(attrs["axis"], ts[0].rank, name)
        if not ts[0].dtype.is_float:
            raise OpError(f"op '{name}' needs a float operand, got {ts[0]}")
        return ts[0]
    return infer


register("softmax", "reduce", _float_same("softmax"),
         lambda x, axis: special.softmax(_acc(x), axis=axis).astype(x.dtype), {"axis": Attr("int", -1)})
register("log_softmax", "reduce", _float_same("log_softmax"),
         lambda x, axis: special.log_softmax(_acc(x), axis=axis).astype(x.dtype), {"axis": Attr("int", -1)})


def _cumsum(x, axis, exclusive=False, reverse=False):
    y = np.flip(x, axis) if reverse else x
    acc = _acc(y)
    if exclusive:  # shift by one along the axis (exact, unlike subtracting x again)
        pad = [(0, 0)] * x.ndim
        pad[axis] = (1, 0)
        acc = np.delete(np.pad(acc, pad), -1, axis=axis)
    r = np.cumsum(acc, axis=axis, dtype=acc.dtype).astype(x.dtype)
    return np.flip(r, axis) if reverse else r


register("cumsum", "reduce", lambda ts, a: (norm_axis(a["axis"], ts[0].rank, "cumsum"), ts[0])[1], _cumsum,
         {"axis": Attr("int"), "exclusive": Attr("bool", False), "reverse": Attr("bool", False)})
