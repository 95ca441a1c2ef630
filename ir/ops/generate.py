"""Ops that make tensors from attributes (arange, constant_of_shape) or from a shape (shape)."""
from __future__ import annotations

import math

import numpy as np

from ..dtypes import dtype as to_dtype
from ..types import TensorType
from .registry import Attr, OpError, register


def arange_len(start: float, end: float, step: float) -> int:
    if step == 0:
        raise OpError("op 'arange': step cannot be 0")
    return max(0, math.ceil((end - start) / step))


def _arange(start, end, step=1.0, dtype="i64"):
    # start + step*i rather than np.arange(start, end, step): the length is exactly the inferred one
    return (start + step * np.arange(arange_len(start, end, step), dtype=np.float64)).astype(to_dtype(dtype).np)


register("arange", "misc", lambda ts, a: TensorType([arange_len(a["start"], a["end"], a["step"])], a["dtype"]), _arange,
         {"start": Attr("float", 0.0), "end": Attr("float"), "step": Attr("float", 1.0), "dtype": Attr("dtype", "i64")}, arity=(0, 0))


def _cos_infer(ts, a):
    if any(isinstance(d, int) and d < 0 for d in a["shape"]):
        raise OpError(f"op 'constant_of_shape': negative dim in shape {list(a['shape'])}")
    return TensorType(a["shape"], a["dtype"])


register("constant_of_shape", "misc", _cos_infer,
         lambda shape, value=0.0, dtype="f32": np.full(tuple(shape), value, dtype=np.float64).astype(to_dtype(dtype).np),
         {"shape": Attr("dims"), "value": Attr("float", 0.0), "dtype": Attr("dtype", "f32")}, arity=(0, 0))


def _shape_infer(ts, a):
    return TensorType([len(range(ts[0].rank)[a["start"]:a["end"]])], "i64")


register("shape", "misc", _shape_infer, lambda x, start=0, end=None: np.array(x.shape[start:end], dtype=np.int64),
         {"start": Attr("int", 0), "end": Attr("int", None)})
