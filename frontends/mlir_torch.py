"""torch dialect op handlers: `torch.aten.*`, `torch.prim.*`, `torch.constant.*`, `torch.vtensor.literal`.

A handler gets the importer, the MLIR op and its operands already converted (nnfuse Values for tensors,
Python ints/floats/bools/str/None/lists for the rest) and returns the op's result(s). Result dtypes are
then held to what MLIR declares (the importer casts), so handlers only get the computation right.
"""
from __future__ import annotations

from typing import Any

from torch_mlir import ir

from ..ir import NnfuseError, Value, dtype as to_dtype
from ..ir.dtypes import promote
from . import mlir_types as mt
from .mlir import Importer, literal

HANDLERS: dict = {}
BIG = 2 ** 62  # an open slice end
SCALAR_TYPES = {0: "u8", 1: "i8", 2: "i16", 3: "i32", 4: "i64", 5: "f16", 6: "f32", 7: "f64", 11: "bool", 15: "bf16"}


def on(*names: str):
    def deco(fn):
        for n in names:
            HANDLERS[n if n.startswith("torch.") else "torch.aten." + n] = fn
        return fn
    return deco


def _rt(imp: Importer, i: int = 0) -> str:
    return imp.result_type(i).dtype.name


def _shape(imp: Importer, i: int = 0) -> tuple:
    return imp.result_type(i).shape


def _need(x: Any, what: str) -> Value:
    if not isinstance(x, Value):
        raise NnfuseError(f"{what} must be a tensor, got {x!r}")
    return x


# ---------------------------------------------------------------- constants and lists
@on("torch.constant.int", "torch.constant.float", "torch.constant.bool", "torch.constant.str", "torch.constant.device")
def _constant(imp, op, a):
    attr = op.attributes["value"]
    if mt._isa(ir.StringAttr, attr):
        return ir.StringAttr(attr).value
    return mt._scalar(attr)


@on("torch.constant.none")
def _none(imp, op, a):
    return None


@on("torch.constant.number")
def _number(imp, op, a):
    return mt._scalar(op.attributes["value"])


@on("torch.prim.ListConstruct", "torch.prim.TupleConstruct")
def _list(imp, op, a):
    return list(a)


@on("torch.prim.ListUnpack", "torch.prim.TupleUnpack")
def _unpack(imp, op, a):
    return list(a[0])


@on("torch.vtensor.literal")
def _literal(imp, op, a):
    return literal(imp, op)


@on("torch.prim.NumToTensor.Scalar", "scalar_tensor")
def _num_to_tensor(imp, op, a):
    return imp.const(a[0], _rt(imp))


@on("size.int")
def _size_int(imp, op, a):
    d = _need(a[0], "size()").type.shape[a[1]]
    if not isinstance(d, int):
        raise NnfuseError(f"size of symbolic dim {d} is not a compile-time int")
    return d


# ---------------------------------------------------------------- elementwise
def _operands(imp, a, n, dt):
    return [imp.cast(imp.tensor(x, dt), dt) for x in a[:n]]


def _arith(ir_op: str, alpha: bool = False, reverse: bool = False):
    def h(imp, op, a):
        dt = _rt(imp)
        x, y = _operands(imp, a, 2, dt)
        if reverse:
            x, y = y, x
        if alpha and len(a) > 2 and a[2] not in (None, 1):
            if reverse:
                x = imp.emit("mul", x, imp.const(a[2], dt))
            else:
                y = imp.emit("mul", y, imp.const(a[2], dt))
        return imp.emit(ir_op, x, y)
    return h


for _n, _o in (("add", "add"), ("sub", "sub")):
    on(f"{_n}.Tensor", f"{_n}.Scalar")(_arith(_o, alpha=True))
on("rsub.Scalar", "rsub.Tensor")(_arith("sub", alpha=True, reverse=True))
on("mul.Tensor", "mul.Scalar")(_arith("mul"))
on("div.Tensor", "div.Scalar")(_arith("div"))
on("pow.Tensor_Scalar", "pow.Tensor_Tensor", "pow.Scalar")(_arith("pow"))
on("maximum")(_arith("max"))
on("minimum")(_arith("min"))
on("remainder.Scalar", "remainder.Tensor", "fmod.Scalar", "fmod.Tensor")(_arith("mod"))


@on("div.Tensor_mode", "div.Scalar_mode")
def _div_mode(imp, op, a):
    dt = _rt(imp)
    q = imp.emit("div", *_operands(imp, a, 2, "f32" if dt.startswith("i") else dt))
    mode = a[2]
    if mode == "floor":
        q = imp.emit("floor", q)
    elif mode == "trunc":
        q = imp.emit("cast", imp.emit("cast", q, to="i64"), to=q.type.dtype.name)
    return q


def _cmp(ir_op: str):
    def h(imp, op, a):
        ts = [x for x in a[:2] if isinstance(x, Value)]
        dt = ts[0].type.dtype
        for t in ts[1:]:
            dt = promote(dt, t.type.dtype)
        if any(isinstance(x, float) for x in a[:2]) and not dt.is_float:
            dt = to_dtype("f32")
        return imp.emit(ir_op, *_operands(imp, a, 2, dt.name))
    return h


for _n, _o in (("eq", "eq"), ("ne", "ne"), ("lt", "lt"), ("le", "le"), ("gt", "gt"), ("ge", "ge")):
    on(f"{_n}.Tensor", f"{_n}.Scalar")(_cmp(_o))


def _logic(ir_op: str):
    def h(imp, op, a):
        if _rt(imp) != "bool":
            raise NnfuseError(f"bitwise ops on {_rt(imp)} are not supported (only bool)")
        return imp.emit(ir_op, *_operands(imp, a, 2, "bool"))
    return h


on("bitwise_and.Tensor", "logical_and")(_logic("and"))
on("bitwise_or.Tensor", "logical_or")(_logic("or"))
on("bitwise_xor.Tensor", "logical_xor")(_logic("xor"))


@on("logical_not", "bitwise_not")
def _not(imp, op, a):
    if _rt(imp) != "bool":
        raise NnfuseError(f"bitwise_not on {_rt(imp)} is not supported (only bool)")
    return imp.emit("not", imp.cast(a[0], "bool"))


UNARY = {"neg": "neg", "abs": "abs", "exp": "exp", "log": "log", "sqrt": "sqrt", "rsqrt": "rsqrt", "reciprocal": "reciprocal",
         "tanh": "tanh", "sigmoid": "sigmoid", "relu": "relu", "silu": "silu", "sin": "sin", "cos": "cos", "erf": "erf",
         "floor": "floor", "ceil": "ceil", "round": "round", "sign": "sign", "hardswish": "hard_swish"}


def _unary(ir_op: str):
    def h(imp, op, a):
        return imp.emit(ir_op, imp.cast(a[0], _rt(imp)))
    return h


for _n, _o in UNARY.items():
    on(_n)(_unary(_o))


@on("log1p", "expm1")
def _log1p(imp, op, a):
    x = imp.cast(a[0], _rt(imp))
    one = imp.const(1.0, x.type.dtype.name)
    if op.operation.name.endswith("log1p"):
        return imp.emit("log", imp.emit("add", x, one))
    return imp.emit("sub", imp.emit("exp", x), one)


@on("gelu")
def _gelu(imp, op, a):
    return imp.emit("gelu", a[0], approximate=a[1] if len(a) > 1 and a[1] else "none")


@on("leaky_relu")
def _leaky(imp, op, a):
    return imp.emit("leaky_relu", a[0], alpha=a[1])


@on("elu")
def _elu(imp, op, a):
    if len(a) > 2 and (a[2] != 1 or a[3] != 1):
        raise NnfuseError("elu with scale/input_scale != 1 is not supported")
    return imp.emit("elu", a[0], alpha=a[1])


@on("hardsigmoid")
def _hsig(imp, op, a):
    return imp.emit("hard_sigmoid", a[0], alpha=1 / 6, beta=0.5)


@on("softplus")
def _softplus(imp, op, a):
    if a[1] != 1:
        raise NnfuseError("softplus with beta != 1 is not supported")
    return imp.emit("softplus", a[0])


@on("clamp", "clamp_min", "clamp_max", "hardtanh", "relu6")
def _clamp(imp, op, a):
    name = op.operation.name.rsplit(".", 1)[-1]
    lo, hi = {"clamp": (a[1:2] or [None])[0:1] + (a[2:3] or [None]), "clamp_min": [a[1], None], "clamp_max": [None, a[1]],
              "hardtanh": [a[1], a[2]], "relu6": [0.0, 6.0]}[name]
    if isinstance(lo, Value) or isinstance(hi, Value):
        raise NnfuseError("clamp with tensor bounds is not supported")
    return imp.emit("clip", a[0], min=lo, max=hi)


@on("where.self", "where.ScalarSelf", "where.ScalarOther", "where.Scalar")
def _where(imp, op, a):
    dt = _rt(imp)
    return imp.emit("where", imp.cast(a[0], "bool"), *_operands(imp, a[1:], 2, dt))


@on("masked_fill.Scalar", "masked_fill.Tensor")
def _masked_fill(imp, op, a):
    dt = _rt(imp)
    return imp.emit("where", imp.cast(a[1], "bool"), imp.cast(imp.tensor(a[2], dt), dt), imp.cast(a[0], dt))


# ---------------------------------------------------------------- type conversion and no-ops
@on("to.dtype", "to.dtype_layout", "to.device", "_to_copy", "type_as", "clone", "contiguous", "alias", "detach",
    "lift_fresh_copy", "dropout", "copy", "_assert_tensor_metadata")
def _to(imp, op, a):
    if not op.results:
        return []
    return imp.cast(_need(a[0], "input"), _rt(imp))


# ---------------------------------------------------------------- linear algebra
@on("mm", "bmm", "matmul")
def _mm(imp, op, a):
    return imp.emit("matmul", a[0], a[1])


@on("linear")
def _linear(imp, op, a):
    w = imp.emit("transpose", a[1], perm=list(range(a[1].type.rank - 2)) + [a[1].type.rank - 1, a[1].type.rank - 2])
    y = imp.emit("matmul", a[0], w)
    return imp.emit("add", y, a[2]) if len(a) > 2 and isinstance(a[2], Value) else y


@on("addmm", "baddbmm")
def _addmm(imp, op, a):
    y = imp.emit("matmul", a[1], a[2])
    dt = y.type.dtype.name
    beta, alpha = (a[3] if len(a) > 3 else 1), (a[4] if len(a) > 4 else 1)
    if alpha != 1:
        y = imp.emit("mul", y, imp.const(alpha, dt))
    c = a[0] if beta == 1 else imp.emit("mul", a[0], imp.const(beta, dt))
    return imp.emit("add", y, c) if beta != 0 else y


# ---------------------------------------------------------------- reductions
def _dims(x):
    return None if x is None else ([x] if isinstance(x, int) else list(x))


def _reduce(ir_op: str):
    def h(imp, op, a):
        x = a[0]
        with_dims = op.operation.name.rsplit("aten.", 1)[-1] in ("sum.dim_IntList", "mean.dim", "amax", "amin", "prod.dim_int")
        dims = _dims(a[1]) if with_dims else None
        keep = bool(a[2]) if len(a) > 2 and isinstance(a[2], bool) else False
        if ir_op in ("reduce_sum", "reduce_mean", "reduce_prod"):
            x = imp.cast(x, _rt(imp))
        return imp.emit(ir_op, x, axes=dims or None, keepdims=keep)
    return h


on("sum.dim_IntList", "sum")(_reduce("reduce_sum"))
on("mean.dim", "mean")(_reduce("reduce_mean"))
on("amax", "max")(_reduce("reduce_max"))
on("amin", "min")(_reduce("reduce_min"))
on("prod.dim_int", "prod")(_reduce("reduce_prod"))


@on("max.dim", "min.dim")
def _max_dim(imp, op, a):
    is_max = op.operation.name.endswith("max.dim")
    v = imp.emit("reduce_max" if is_max else "reduce_min", a[0], axes=[a[1]], keepdims=bool(a[2]))
    if not list(op.results[1].uses):  # decomposed softmax reads only the values
        return [v, None]
    i = imp.emit("argmax" if is_max else "argmin", a[0], axis=a[1], keepdims=bool(a[2]))
    return [v, i]


@on("argmax", "argmin")
def _argmax(imp, op, a):
    x = a[0]
    if a[1] is None:
        x = imp.emit("reshape", x, shape=[-1])
    return imp.emit(op.operation.name.rsplit(".", 1)[-1], x, axis=a[1] if a[1] is not None else 0, keepdims=bool(a[2]))


@on("all.dim", "any.dim", "all", "any", "all.dims", "any.dims")
def _all(imp, op, a):
    is_all = ".all" in op.operation.name
    dims = _dims(a[1]) if len(a) > 1 else None
    keep = bool(a[2]) if len(a) > 2 else False
    r = imp.emit("reduce_min" if is_all else "reduce_max", imp.cast(a[0], "i32"), axes=dims or None, keepdims=keep)
    return imp.cast(r, "bool")


@on("softmax.int", "_softmax", "log_softmax.int", "_log_softmax")
def _softmax(imp, op, a):
    name = "log_softmax" if "log_softmax" in op.operation.name else "softmax"
    return imp.emit(name, imp.cast(a[0], _rt(imp)), axis=a[1])


@on("cumsum")
def _cumsum(imp, op, a):
    return imp.emit("cumsum", imp.cast(a[0], _rt(imp)), axis=a[1])


@on("layer_norm", "rms_norm")
def _norm(imp, op, a):
    is_rms = op.operation.name.endswith("rms_norm")
    axis = -len(a[1])
    if is_rms:
        ins = [a[0]] + ([a[2]] if isinstance(a[2], Value) else [])
        return imp.emit("rms_norm", *ins, axis=axis, eps=a[3] if a[3] is not None else 1e-6)
    w, b = a[2], a[3]
    if b is not None and w is None:
        w = imp.const([1.0] * int(a[1][-1]) if len(a[1]) == 1 else 1.0, a[0].type.dtype.name)
    ins = [a[0]] + [t for t in (w, b) if isinstance(t, Value)]
    return imp.emit("layer_norm", *ins, axis=axis, eps=a[4])


# ---------------------------------------------------------------- shapes
@on("view", "reshape", "_unsafe_view", "flatten.using_ints", "unflatten.int", "squeeze", "squeeze.dim", "squeeze.dims")
def _reshape(imp, op, a):
    return imp.emit("reshape", a[0], shape=list(_shape(imp)))


@on("unsqueeze")
def _unsqueeze(imp, op, a):
    return imp.emit("unsqueeze", a[0], axes=[a[1]])


@on("permute")
def _permute(imp, op, a):
    return imp.emit("transpose", a[0], perm=list(a[1]))


@on("transpose.int", "t", "numpy_T")
def _transpose(imp, op, a):
    r = a[0].type.rank
    perm = list(range(r))
    d0, d1 = (a[1] % r, a[2] % r) if len(a) > 2 else (0, 1 if r > 1 else 0)
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return imp.emit("transpose", a[0], perm=perm)


@on("expand", "broadcast_to", "expand_as")
def _expand(imp, op, a):
    return imp.emit("expand", a[0], shape=list(_shape(imp)))


@on("repeat")
def _repeat(imp, op, a):
    x, reps = a[0], list(a[1])
    if len(reps) > x.type.rank:
        x = imp.emit("reshape", x, shape=[1] * (len(reps) - x.type.rank) + list(x.type.shape))
    return imp.emit("tile", x, repeats=reps)


@on("slice.Tensor")
def _slice(imp, op, a):
    x, dim = a[0], a[1]
    start = 0 if a[2] is None else a[2]
    end = BIG if a[3] is None or a[3] >= BIG else a[3]
    return imp.emit("slice", x, starts=[start], ends=[end], axes=[dim], steps=[a[4] if len(a) > 4 else 1])


@on("select.int")
def _select(imp, op, a):
    x, dim, i = a[0], a[1], a[2]
    n = x.type.shape[dim]
    if i < 0 and isinstance(n, int):
        i += n
    s = imp.emit("slice", x, starts=[i], ends=[i + 1], axes=[dim])
    return imp.emit("squeeze", s, axes=[dim])


@on("flip")
def _flip(imp, op, a):
    dims = [d % a[0].type.rank for d in a[1]]
    return imp.emit("slice", a[0], starts=[-1] * len(dims), ends=[-BIG] * len(dims), axes=dims, steps=[-1] * len(dims))


@on("__interpolate.size_list_scale_list", "upsample_nearest2d", "upsample_nearest2d.vec", "upsample_nearest1d")
def _upsample(imp, op, a):
    """Nearest upsampling by integer factors: repeat each element (reshape, expand, reshape)."""
    x, out = a[0], _shape(imp)
    mode = a[3] if op.operation.name.endswith("scale_list") else "nearest"
    if mode != "nearest":
        raise NnfuseError(f"interpolate mode '{mode}' is not supported (only nearest)")
    src = x.type.shape
    factors = [o // i for o, i in zip(out[2:], src[2:])]
    if any(o != i * f for o, i, f in zip(out[2:], src[2:], factors)):
        raise NnfuseError(f"nearest upsampling {list(src)} -> {list(out)} is not by integer factors")
    inter = list(src[:2]) + [d for i in src[2:] for d in (i, 1)]
    wide = list(src[:2]) + [d for i, f in zip(src[2:], factors) for d in (i, f)]
    y = imp.emit("expand", imp.emit("reshape", x, shape=inter), shape=wide)
    return imp.emit("reshape", y, shape=list(out))


@on("narrow")
def _narrow(imp, op, a):
    return imp.emit("slice", a[0], starts=[a[2]], ends=[a[2] + a[3]], axes=[a[1]])


@on("cat", "concat")
def _cat(imp, op, a):
    dt = _rt(imp)
    xs = [imp.cast(x, dt) for x in a[0] if not (isinstance(x, Value) and x.type.shape == (0,))]
    return imp.emit("concat", *xs, axis=a[1]) if len(xs) > 1 else xs[0]


@on("stack")
def _stack(imp, op, a):
    xs = [imp.emit("unsqueeze", x, axes=[a[1]]) for x in a[0]]
    return imp.emit("concat", *xs, axis=a[1])


@on("split.Tensor", "split_with_sizes", "chunk", "unbind.int", "split.sizes")
def _split(imp, op, a):
    x, name = a[0], op.operation.name.rsplit(".", 2)
    dim = a[2] if len(a) > 2 else 0
    dim_size = x.type.shape[dim]
    if "unbind" in op.operation.name:
        dim = a[1]
        parts = imp.emit("split", x, axis=dim, sizes=[1] * x.type.shape[dim])
        parts = parts if isinstance(parts, list) else [parts]
        return [imp.emit("squeeze", p, axes=[dim]) for p in parts]
    if isinstance(a[1], list):
        sizes = list(a[1])
    elif "chunk" in op.operation.name:
        step = -(-dim_size // a[1])
        sizes = [min(step, dim_size - s) for s in range(0, dim_size, step)]
    else:
        sizes = [min(a[1], dim_size - s) for s in range(0, dim_size, a[1])]
    parts = imp.emit("split", x, axis=dim, sizes=sizes)
    return parts if isinstance(parts, list) else [parts]


@on("constant_pad_nd", "pad")
def _pad(imp, op, a):
    x, p = a[0], list(a[1])
    mode = a[2] if len(a) > 3 and isinstance(a[2], str) else "constant"
    value = (a[3] if len(a) > 3 else a[2]) if mode == "constant" else 0.0
    r, k = x.type.rank, len(p) // 2
    # torch lists (begin, end) pairs from the last dim backwards; ONNX-style pads: all begins, then all ends
    begins, ends = [0] * r, [0] * r
    for i in range(k):
        begins[r - 1 - i], ends[r - 1 - i] = p[2 * i], p[2 * i + 1]
    return imp.emit("pad", x, pads=begins + ends, mode={"reflect": "reflect", "replicate": "edge"}.get(mode, "constant"),
                    value=float(value or 0.0))


# ---------------------------------------------------------------- gathers and generators
@on("embedding")
def _embedding(imp, op, a):
    return imp.emit("embedding", a[0], a[1])


@on("index_select")
def _index_select(imp, op, a):
    return imp.emit("gather", a[0], a[2], axis=a[1])


@on("gather")
def _gather(imp, op, a):
    return imp.emit("gather_elements", a[0], a[2], axis=a[1])


@on("index.Tensor_hacked_twin", "index.Tensor")
def _index(imp, op, a):
    """x[i0, i1, ...] (advanced indexing of the leading dims): linearize the indices, gather on a flattened x."""
    x, idx = a[0], list(a[1])
    if any(i is None for i in idx):
        raise NnfuseError("indexing with None (skipped dims) is not supported")
    k, shape = len(idx), x.type.shape
    if k == 1:
        return imp.emit("gather", x, _wrap(imp, idx[0], shape[0]), axis=0)
    lin = None
    for j, i in enumerate(idx):
        i = imp.cast(_wrap(imp, i, shape[j]), "i64")
        stride = 1
        for d in shape[j + 1:k]:
            stride *= d
        term = i if stride == 1 else imp.emit("mul", i, imp.const(stride, "i64"))
        lin = term if lin is None else imp.emit("add", lin, term)
    lead = 1
    for d in shape[:k]:
        lead *= d
    flat = imp.emit("reshape", x, shape=[lead] + list(shape[k:]))
    return imp.emit("gather", flat, lin, axis=0)


def _wrap(imp, i: Value, n: int) -> Value:
    """Negative indices count from the end."""
    if i.producer is None and i.data is not None and (i.data >= 0).all():
        return i
    dt = i.type.dtype.name
    neg = imp.emit("lt", i, imp.const(0, dt))
    return imp.emit("where", neg, imp.emit("add", i, imp.const(n, dt)), i)


@on("arange", "arange.start", "arange.start_step")
def _arange(imp, op, a):
    name = op.operation.name
    start, end, step = (0, a[0], 1) if name.endswith("arange") else (a[0], a[1], a[2] if name.endswith("start_step") else 1)
    return imp.emit("arange", start=start, end=end, step=step, dtype=_rt(imp))


@on("empty.memory_format", "zeros", "ones", "full", "new_zeros", "new_ones", "new_full", "new_empty", "zeros_like",
    "ones_like", "full_like", "empty_like", "fill.Scalar")
def _fill(imp, op, a):
    name = op.operation.name.rsplit(".", 1)[-1] if "." in op.operation.name[len("torch.aten."):] else op.operation.name[len("torch.aten."):]
    value = 1.0 if "ones" in name else (a[1] if name in ("full", "full_like", "new_full", "fill") else 0.0)
    if name == "new_full":
        value = a[2]
    if isinstance(value, Value):
        raise NnfuseError(f"{name} with a tensor fill value is not supported")
    return imp.emit("constant_of_shape", shape=list(_shape(imp)), value=float(value), dtype=_rt(imp))


# ---------------------------------------------------------------- convolution, pooling, normalization, attention
@on("convolution", "conv2d", "conv1d", "_convolution")
def _conv(imp, op, a):
    name = op.operation.name
    x, w, b = a[0], a[1], a[2]
    if name.endswith("convolution"):
        stride, pad, dil, transposed, out_pad, groups = a[3], a[4], a[5], a[6], a[7], a[8]
    else:
        stride, pad, dil, transposed, out_pad, groups = a[3], a[4], a[5], False, None, a[6]
    if isinstance(pad, str):
        raise NnfuseError(f"string padding '{pad}' is not supported")
    ins = [x, w] + ([b] if isinstance(b, Value) else [])
    attrs = dict(strides=list(stride), pads=list(pad) + list(pad), dilations=list(dil), groups=groups)
    if transposed:
        return imp.emit("conv_transpose", *ins, output_padding=list(out_pad or [0] * len(stride)), **attrs)
    return imp.emit("conv", *ins, **attrs)


@on("max_pool2d", "max_pool1d", "max_pool3d")
def _max_pool(imp, op, a):
    k = list(a[1])
    return imp.emit("max_pool", a[0], kernel=k, strides=list(a[2] or k), pads=list(a[3]) * 2, dilations=list(a[4]),
                    ceil_mode=bool(a[5]))


@on("avg_pool2d", "avg_pool1d")
def _avg_pool(imp, op, a):
    k = list(a[1])
    if len(a) > 6 and a[6] is not None:
        raise NnfuseError("avg_pool with divisor_override is not supported")
    return imp.emit("avg_pool", a[0], kernel=k, strides=list(a[2] or k), pads=list(a[3]) * 2, ceil_mode=bool(a[4]),
                    count_include_pad=bool(a[5]))


@on("adaptive_avg_pool2d", "adaptive_avg_pool1d")
def _adaptive_avg(imp, op, a):
    if any(d != 1 for d in a[1]):
        raise NnfuseError(f"adaptive_avg_pool to {list(a[1])} is not supported (only to 1)")
    return imp.emit("global_avg_pool", a[0])


@on("batch_norm", "_native_batch_norm_legit_no_training")
def _batch_norm(imp, op, a):
    x, w, b, mean, var = a[0], a[1], a[2], a[3], a[4]
    c, dt = x.type.shape[1], x.type.dtype.name
    w = w if isinstance(w, Value) else imp.const([1.0] * c, dt)
    b = b if isinstance(b, Value) else imp.const([0.0] * c, dt)
    eps = a[7] if op.operation.name.endswith("batch_norm") else a[6]
    y = imp.emit("batch_norm", x, w, b, mean, var, eps=eps)
    return y if len(op.results) == 1 else [y] + [imp.const([], dt) for _ in op.results[1:]]


@on("scaled_dot_product_attention")
def _sdpa(imp, op, a):
    q, k, v, mask = a[0], a[1], a[2], a[3]
    if len(a) > 4 and a[4]:
        raise NnfuseError("attention dropout is not supported in inference")
    ins = [q, k, v] + ([mask] if isinstance(mask, Value) else [])
    return imp.emit("scaled_dot_product_attention", *ins, causal=bool(a[5]) if len(a) > 5 else False,
                    scale=a[6] if len(a) > 6 else None, enable_gqa=bool(a[7]) if len(a) > 7 else False)
