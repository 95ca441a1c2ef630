"""ONNX shape and data-movement ops (Shape, Reshape, Slice, Gather*, Pad, Range, ...) and sequences, which are
resolved at import time into lists of IR values. Registered into `onnx_ops.HANDLERS` on import."""
from __future__ import annotations

import numpy as np

from ..ir.types import dim_mul
from .onnx import Seq
from .onnx_ops import _scalar, handler


# ---------------------------------------------------------------- shapes
def _rank(im, r):
    c = im.const(r)
    return c.ndim if c is not None else im.value(r).type.rank


def _shape_of(im, r):
    c = im.const(r)
    return tuple(c.shape) if c is not None else im.value(r).type.shape


@handler("Shape")
def _shape(im, n):
    shp = _shape_of(im, im.inp(0))
    start, end = im.attr("start", 0), im.attr("end", None)
    dims = list(shp)[start:end]
    return im.constant(np.array(dims, dtype=object)) if any(isinstance(d, str) for d in dims) else im.constant(np.array(dims, np.int64))


@handler("Size")
def _size(im, n):
    d = dim_mul(*_shape_of(im, im.inp(0))) if _shape_of(im, im.inp(0)) else 1
    return im.constant(np.array(d, dtype=object if isinstance(d, str) else np.int64))


@handler("Reshape")
def _reshape(im, n):
    if im.opset < 5:
        shape = list(im.attr("shape"))
    else:
        shape = _shape_or_declared(im, 1)
    return im.emit("reshape", [im.inp(0)], shape=shape, allowzero=bool(im.attr("allowzero", 0)))


@handler("Flatten")
def _flatten(im, n):
    return im.emit("flatten", [im.inp(0)], axis=im.attr("axis", 1))


@handler("Transpose")
def _transpose(im, n):
    return im.emit("transpose", [im.inp(0)], perm=im.attr("perm", None))


@handler("Squeeze", "Unsqueeze")
def _squeeze(im, n):
    axes = im.dims_input(1, "axes", required=False) if im.opset >= 13 else im.attr("axes", None)
    if n.op_type == "Squeeze":
        return im.emit("squeeze", [im.inp(0)], axes=axes if axes else None)
    return im.emit("unsqueeze", [im.inp(0)], axes=axes)


@handler("Concat")
def _concat(im, n):
    xs = [im.inp(i) for i in range(len(n.input)) if n.input[i]]
    xs = [x for x in xs if 0 not in _shape_of(im, x)] or xs[:1]  # ONNX allows empty operands
    return im.emit("concat", xs, axis=im.attr("axis", 1 if im.opset < 4 else None))


@handler("Split")
def _split(im, n):
    x = im.inp(0)
    shp = _shape_of(im, x)
    axis = im.attr("axis", 0) % len(shp)
    sizes = im.dims_input(1, "split", required=False) if im.opset >= 13 else im.attr("split", None)
    k = len(n.output)
    if not sizes:
        d = shp[axis]
        if not isinstance(d, int):
            raise im.error(f"cannot split symbolic dim {d} without explicit sizes")
        k = im.attr("num_outputs", k)
        step = -(-d // k)
        sizes = [min(step, d - i * step) for i in range(k)]
    outs = im.emit("split", [x], axis=axis, sizes=sizes)
    return outs if isinstance(outs, list) else [outs]


@handler("Slice")
def _slice(im, n):
    x = im.inp(0)
    if im.opset < 10:
        starts, ends, axes, steps = im.attr("starts"), im.attr("ends"), im.attr("axes", None), None
    else:
        starts, ends = im.dims_input(1, "starts"), im.dims_input(2, "ends")
        axes, steps = im.dims_input(3, "axes", required=False), im.dims_input(4, "steps", required=False)
    for v in list(starts) + list(ends):
        if isinstance(v, str):
            raise im.error("Slice bounds depend on a symbolic dim; fix the input shapes with --input-shape")
    clamp = lambda v: max(min(int(v), 2**62), -(2**62))  # noqa: E731 - INT64_MAX/MIN mean "to the end"
    return im.emit("slice", [x], starts=[clamp(v) for v in starts], ends=[clamp(v) for v in ends],
                   axes=list(axes) if axes else None, steps=list(steps) if steps else None)


@handler("Gather")
def _gather(im, n):
    return im.emit("gather", [im.inp(0), im.inp(1)], axis=im.attr("axis", 0))


@handler("GatherElements")
def _gather_el(im, n):
    return im.emit("gather_elements", [im.inp(0), im.inp(1)], axis=im.attr("axis", 0))


@handler("Expand")
def _expand(im, n):
    return im.emit("expand", [im.inp(0)], shape=_shape_or_declared(im, 1))


def _shape_or_declared(im, i):
    """A shape operand known at import time, else the output shape the model declares for this node."""
    if im.const(im.inp(i)) is None and im.declared_shape() is not None:
        return im.declared_shape()
    return im.dims_input(i, "shape")


@handler("Tile")
def _tile(im, n):
    return im.emit("tile", [im.inp(0)], repeats=im.dims_input(1, "repeats"))


@handler("Pad")
def _pad(im, n):
    mode = im.attr("mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if im.opset < 11:
        pads, value, axes = list(im.attr("pads", None) or im.attr("paddings")), im.attr("value", 0.0), None
    else:
        pads = im.dims_input(1, "pads")
        v = im.const_input(2, "constant_value", required=False)
        value = 0.0 if v is None or v.size == 0 else float(v.reshape(-1)[0])
        axes = im.dims_input(3, "axes", required=False)
    if mode == "wrap":
        raise im.error("Pad mode 'wrap' is not supported")
    return im.emit("pad", [im.inp(0)], pads=pads, mode=mode, value=value, axes=axes)


@handler("ConstantOfShape")
def _cos(im, n):
    shape = im.dims_input(0, "shape")
    v = im.attr("value", None)
    val = np.zeros(1, np.float32) if v is None else v
    dt = _dtype_name(val.dtype)
    return im.emit("constant_of_shape", [], shape=shape, value=float(val.reshape(-1)[0]), dtype=dt)


def _dtype_name(npdt) -> str:
    from ..ir import dtype
    return dtype(npdt).name


@handler("Range")
def _range(im, n):
    start, limit, delta = (im.const_input(i, w) for i, w in enumerate(("start", "limit", "delta")))
    dt = im.value(im.inp(0)).type.dtype.name if start.dtype != object else "i64"
    if limit.dtype == object and start.dtype != object and delta.dtype != object and float(start) == 0 and float(delta) == 1:
        # range(0, S) over a symbolic S: the exclusive running sum of S ones
        ones = im.emit("constant_of_shape", [], shape=[limit.reshape(-1)[0]], value=1.0, dtype=dt)
        return im.emit("cumsum", [ones], axis=0, exclusive=True)
    if any(c.dtype == object for c in (start, limit, delta)):
        raise im.error("Range bounds depend on a symbolic dim; fix the input shapes with --input-shape")
    return im.emit("arange", [], start=float(start), end=float(limit), step=float(delta), dtype=dt)


@handler("Constant")
def _constant(im, n):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        v = im.attr(key, None)
        if v is not None:
            if key == "value":
                return im.constant(v)
            dt = np.float32 if "float" in key else np.int64
            return im.constant(np.asarray(v, dtype=dt))
    raise im.error("only tensor/float/int Constant values are supported (not strings or sparse tensors)")


@handler("Trilu")
def _trilu(im, n):
    x = im.x(0)
    kc = im.const_input(1, "k", required=False)
    k = 0 if kc is None else int(kc.reshape(-1)[0])
    rows, cols = x.type.shape[-2], x.type.shape[-1]
    if not (isinstance(rows, int) and isinstance(cols, int)):
        raise im.error("Trilu needs static matrix dims")
    keep = np.tril(np.ones((rows, cols), bool), k) if im.attr("upper", 1) == 0 else np.triu(np.ones((rows, cols), bool), k)
    m = im.g.add_const(f"{n.name or 'trilu'}_mask", keep)
    return im.emit("where", [m, x, _scalar(im, x, 0)])


@handler("GatherND")
def _gather_nd(im, n):
    """GatherND (batch_dims=0) as a gather on the flattened leading dims: idx = sum(indices[..., j] * stride_j)."""
    if im.attr("batch_dims", 0):
        raise im.error("GatherND with batch_dims > 0 is not supported")
    data, idx = im.inp(0), im.inp(1)
    dshape = _shape_of(im, data)
    ishape = _shape_of(im, idx)
    k = ishape[-1]
    if not isinstance(k, int) or not all(isinstance(d, int) for d in dshape[:k]):
        raise im.error("GatherND needs static index depth and indexed dims")
    strides = np.array([int(np.prod(dshape[j + 1:k])) for j in range(k)], np.int64)
    idxv = im.value(idx)
    if idxv.type.dtype.name != "i64":
        idx = im.emit("cast", [idx], to="i64")
    # negative indices wrap per dim before linearizing
    dims = im.g.add_const(f"{n.name or 'gathernd'}_dims", np.array(dshape[:k], np.int64))
    zero = im.g.add_const(f"{n.name or 'gathernd'}_zero", np.array(0, np.int64))
    idx = im.emit("where", [im.emit("lt", [idx, zero]), im.emit("add", [idx, dims]), idx])
    lin = im.emit("reduce_sum", [im.emit("mul", [idx, im.g.add_const(f"{n.name or 'gathernd'}_strides", strides)])],
                  axes=[-1], keepdims=False)
    flat = im.emit("reshape", [data], shape=[int(np.prod(dshape[:k]))] + list(dshape[k:]))
    return im.emit("gather", [flat, lin], axis=0)


# ---------------------------------------------------------------- sequences (resolved at import time)
def _seq(im, i) -> Seq:
    s = im.inp(i)
    if not isinstance(s, Seq):
        raise im.error(f"input #{i} must be a sequence")
    return s


def _pos(im, i, length, default, insert=False):
    c = im.const_input(i, "position", required=False)
    if c is None:
        return default
    p = int(c.reshape(-1)[0])
    hi = length if insert else length - 1
    if not -length <= p <= hi:
        raise im.error(f"sequence position {p} is out of range for length {length}")
    return p + length if p < 0 else p


@handler("SequenceEmpty")
def _seq_empty(im, n):
    return Seq([])


@handler("SequenceConstruct")
def _seq_construct(im, n):
    return Seq([im.inp(i) for i in range(len(n.input))])


@handler("SequenceInsert")
def _seq_insert(im, n):
    s = _seq(im, 0)
    items = list(s.items)
    items.insert(_pos(im, 2, len(items), len(items), insert=True), im.inp(1))
    return Seq(items)


@handler("SequenceErase")
def _seq_erase(im, n):
    s = _seq(im, 0)
    items = list(s.items)
    del items[_pos(im, 1, len(items), len(items) - 1)]
    return Seq(items)


@handler("SequenceAt")
def _seq_at(im, n):
    s = _seq(im, 0)
    item = s.items[_pos(im, 1, len(s.items), 0)]
    if item is None:
        raise im.error("this sequence element's size depends on runtime data (SplitToSequence with runtime split)")
    return item


@handler("SequenceLength")
def _seq_len(im, n):
    return im.constant(np.array(len(_seq(im, 0).items), np.int64))


@handler("SplitToSequence")
def _split_to_seq(im, n):
    x = im.inp(0)
    shp = _shape_of(im, x)
    axis = im.attr("axis", 0) % len(shp)
    d = shp[axis]
    r = im.inp(1)
    if r is not None and im.const(r) is None:
        t = im.value(r).type
        if t.rank == 1 and isinstance(t.shape[0], int):  # runtime sizes: only the count is known
            return Seq([None] * t.shape[0])
    c = im.const_input(1, "split", required=False)
    if c is None:
        outs = im.emit("split", [x], axis=axis, sizes=[1] * d)
        outs = outs if isinstance(outs, list) else [outs]
        if not im.attr("keepdims", 1):
            outs = [im.emit("squeeze", [o], axes=[axis]) for o in outs]
        return Seq(outs)
    if c.ndim == 0:
        k = int(c)
        sizes = [k] * (d // k) + ([d % k] if d % k else [])
    else:
        sizes = [int(v) for v in c]
    outs = im.emit("split", [x], axis=axis, sizes=sizes)
    return Seq(outs if isinstance(outs, list) else [outs])


@handler("ConcatFromSequence")
def _concat_from_seq(im, n):
    s = _seq(im, 0)
    axis = im.attr("axis")
    if im.attr("new_axis", 0):
        items = [im.emit("unsqueeze", [x], axes=[axis]) for x in s.items]
    else:
        items = s.items
    return im.emit("concat", items, axis=axis)
