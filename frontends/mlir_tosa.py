"""tosa dialect op handlers (builtin `tensor<...>` values; shapes as `!tosa.shape` from `tosa.const_shape`).

Same contract as `mlir_torch`: operands arrive converted (nnfuse Values, or Python lists for shapes),
a handler returns the result(s); the importer holds them to the declared types.
"""
from __future__ import annotations

import numpy as np
from torch_mlir import ir

from ..ir import NnfuseError, Value
from . import mlir_types as mt
from .mlir import Importer, literal

HANDLERS: dict = {}


def on(*names: str):
    def deco(fn):
        for n in names:
            HANDLERS["tosa." + n] = fn
        return fn
    return deco


def _rt(imp: Importer, i: int = 0) -> str:
    return imp.result_type(i).dtype.name


def _attr(op, name: str, default=None):
    if name not in op.attributes:
        return default
    a = op.attributes[name]
    for cls in (ir.DenseI64ArrayAttr, ir.DenseI32ArrayAttr, ir.DenseBoolArrayAttr):
        if mt._isa(cls, a):
            return list(cls(a))
    if mt._isa(ir.StringAttr, a):
        return ir.StringAttr(a).value
    if mt._isa(ir.TypeAttr, a):
        return ir.TypeAttr(a).value
    return mt._scalar(a)


def _const_values(v) -> list:
    if isinstance(v, Value):
        if v.data is None:
            raise NnfuseError("expected a constant operand")
        return [x.item() for x in np.asarray(v.data).ravel()]
    return list(v)


@on("const")
def _const(imp, op, a):
    return literal(imp, op, "values")


@on("const_shape")
def _const_shape(imp, op, a):
    return [int(x) for x in np.asarray(mt.dense_to_numpy(op.attributes["values"], "i64")).ravel()]


def _bin(ir_op: str):
    def h(imp, op, a):
        return imp.emit(ir_op, a[0], a[1])
    return h


for _t, _o in (("add", "add"), ("sub", "sub"), ("maximum", "max"), ("minimum", "min"), ("pow", "pow"), ("equal", "eq"),
               ("greater", "gt"), ("greater_equal", "ge"), ("logical_and", "and"), ("logical_or", "or"),
               ("logical_xor", "xor"), ("intdiv", "div")):
    on(_t)(_bin(_o))


@on("mul")
def _mul(imp, op, a):
    if len(a) > 2 and any(_const_values(a[2])):
        raise NnfuseError("tosa.mul with a nonzero shift (fixed-point) is not supported")
    return imp.emit("mul", a[0], a[1])


UNARY = {"exp": "exp", "log": "log", "tanh": "tanh", "sigmoid": "sigmoid", "erf": "erf", "sin": "sin", "cos": "cos",
         "floor": "floor", "ceil": "ceil", "abs": "abs", "rsqrt": "rsqrt", "reciprocal": "reciprocal",
         "logical_not": "not", "identity": "identity"}
for _t, _o in UNARY.items():
    on(_t)((lambda o: lambda imp, op, a: imp.emit(o, a[0]))(_o))


@on("negate")
def _negate(imp, op, a):
    if len(a) > 1 and any(_const_values(x)[0] != 0 for x in a[1:]):
        raise NnfuseError("tosa.negate with zero points (quantized) is not supported")
    return imp.emit("neg", a[0])


@on("cast")
def _cast(imp, op, a):
    return imp.emit("cast", a[0], to=_rt(imp))


@on("clamp")
def _clamp(imp, op, a):
    lo, hi = _attr(op, "min_val"), _attr(op, "max_val")
    big = 3.0e38
    return imp.emit("clip", a[0], min=lo if lo is not None and lo > -big else None, max=hi if hi is not None and hi < big else None)


@on("select")
def _select(imp, op, a):
    return imp.emit("where", a[0], a[1], a[2])


def _reduce(ir_op: str):
    def h(imp, op, a):
        x = a[0]
        if ir_op in ("all", "any"):
            r = imp.emit("reduce_min" if ir_op == "all" else "reduce_max", imp.cast(x, "i32"), axes=[_attr(op, "axis")], keepdims=True)
            return imp.cast(r, "bool")
        return imp.emit(ir_op, x, axes=[_attr(op, "axis")], keepdims=True)
    return h


for _t, _o in (("reduce_sum", "reduce_sum"), ("reduce_max", "reduce_max"), ("reduce_min", "reduce_min"),
               ("reduce_product", "reduce_prod"), ("reduce_all", "all"), ("reduce_any", "any")):
    on(_t)(_reduce(_o))


@on("argmax")
def _argmax(imp, op, a):
    return imp.emit("argmax", a[0], axis=_attr(op, "axis"), keepdims=False)


@on("matmul")
def _matmul(imp, op, a):
    for zp in a[2:]:
        if any(_const_values(zp)):
            raise NnfuseError("tosa.matmul with nonzero zero points (quantized) is not supported")
    return imp.emit("matmul", a[0], a[1])


@on("reshape")
def _reshape(imp, op, a):
    shape = a[1] if len(a) > 1 else _attr(op, "new_shape")
    return imp.emit("reshape", a[0], shape=list(shape))


@on("transpose")
def _transpose(imp, op, a):
    perm = _attr(op, "perms")
    if perm is None:
        perm = _const_values(a[1])
    return imp.emit("transpose", a[0], perm=perm)


@on("slice")
def _slice(imp, op, a):
    start, size = _const_values(a[1]), _const_values(a[2])
    return imp.emit("slice", a[0], starts=start, ends=[s + n for s, n in zip(start, size)], axes=list(range(len(start))))


@on("concat")
def _concat(imp, op, a):
    return imp.emit("concat", *a, axis=_attr(op, "axis"))


@on("tile")
def _tile(imp, op, a):
    return imp.emit("tile", a[0], repeats=_const_values(a[1]))


@on("pad")
def _pad(imp, op, a):
    p = _const_values(a[1])  # [d0_lo, d0_hi, d1_lo, d1_hi, ...]
    value = _const_values(a[2])[0] if len(a) > 2 and a[2] is not None else 0.0
    return imp.emit("pad", a[0], pads=p[0::2] + p[1::2], value=float(value))


@on("gather")
def _gather(imp, op, a):
    """values [N,K,C], indices [N,W] -> [N,W,C]: a batched row gather, as gather_elements over K."""
    values, idx = a[0], a[1]
    n, w = idx.type.shape
    c = values.type.shape[2]
    idx3 = imp.emit("expand", imp.emit("unsqueeze", imp.cast(idx, "i64"), axes=[2]), shape=[n, w, c])
    return imp.emit("gather_elements", values, idx3, axis=1)


def _nhwc_to_nchw(imp, x):
    return imp.emit("transpose", x, perm=[0, 3, 1, 2])


@on("conv2d")
def _conv2d(imp, op, a):
    x, w, b = a[0], a[1], a[2]
    for zp in a[3:5]:
        if zp is not None and any(_const_values(zp)):
            raise NnfuseError("tosa.conv2d with nonzero zero points (quantized) is not supported")
    pad = _attr(op, "pad")  # top, bottom, left, right
    y = imp.emit("conv", _nhwc_to_nchw(imp, x), imp.emit("transpose", w, perm=[0, 3, 1, 2]), b,
                 strides=_attr(op, "stride"), dilations=_attr(op, "dilation"), pads=[pad[0], pad[2], pad[1], pad[3]])
    return imp.emit("transpose", y, perm=[0, 2, 3, 1])


@on("max_pool2d", "avg_pool2d")
def _pool(imp, op, a):
    pad = _attr(op, "pad")
    is_max = op.operation.name.endswith("max_pool2d")
    kw = dict(kernel=_attr(op, "kernel"), strides=_attr(op, "stride"), pads=[pad[0], pad[2], pad[1], pad[3]])
    y = imp.emit("max_pool" if is_max else "avg_pool", _nhwc_to_nchw(imp, a[0]), **kw)
    return imp.emit("transpose", y, perm=[0, 2, 3, 1])
