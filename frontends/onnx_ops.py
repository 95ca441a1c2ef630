"""ONNX op -> IR op handlers. Each handler reads the current node through the `Importer` and returns
its results (IR Values, or import-time `Sym`/`Seq` values) in ONNX output order.

Opset differences are handled here (attribute vs input forms of axes/pads/splits, legacy broadcast,
Softmax's pre-13 "flatten at axis" semantics). ONNX ops without an IR op are decomposed.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..ir.types import dim_mul
from .onnx import ONNX_DTYPES, Importer

HANDLERS: dict[tuple[str, str], Callable[[Importer, object], object]] = {}


def handler(*names: str, domain: str = ""):
    def deco(fn):
        for n in names:
            HANDLERS[(domain, n)] = fn
        return fn
    return deco


def supported(node) -> bool:
    return ((node.domain if node.domain != "ai.onnx" else ""), node.op_type) in HANDLERS


# ---------------------------------------------------------------- elementwise
UNARY = {"Abs": "abs", "Neg": "neg", "Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Reciprocal": "reciprocal", "Tanh": "tanh",
         "Sigmoid": "sigmoid", "Relu": "relu", "Erf": "erf", "Sin": "sin", "Cos": "cos", "Floor": "floor", "Ceil": "ceil",
         "Round": "round", "Sign": "sign", "Not": "not", "Softplus": "softplus", "HardSwish": "hard_swish"}


@handler(*UNARY)
def _unary(im, n):
    return im.emit(UNARY[n.op_type], [im.inp(0)])


@handler("LeakyRelu")
def _leaky(im, n):
    return im.emit("leaky_relu", [im.x(0)], alpha=im.attr("alpha", 0.01))


@handler("Elu")
def _elu(im, n):
    return im.emit("elu", [im.x(0)], alpha=im.attr("alpha", 1.0))


@handler("Selu")
def _selu(im, n):
    return im.emit("selu", [im.x(0)], alpha=im.attr("alpha", 1.67326319217681884765625), gamma=im.attr("gamma", 1.05070102214813232421875))


@handler("HardSigmoid")
def _hsig(im, n):
    return im.emit("hard_sigmoid", [im.x(0)], alpha=im.attr("alpha", 0.2), beta=im.attr("beta", 0.5))


@handler("Shrink")
def _shrink(im, n):
    return im.emit("shrink", [im.x(0)], bias=im.attr("bias", 0.0), lambd=im.attr("lambd", 0.5))


@handler("Gelu")
def _gelu(im, n):
    return im.emit("gelu", [im.x(0)], approximate=im.attr("approximate", "none"))


def _scalar(im, like, value):
    return im.g.add_const(f"{im.node.name or im.node.op_type}_k", np.asarray(value, dtype=like.type.dtype.np))


@handler("Softsign")
def _softsign(im, n):
    x = im.x(0)
    return im.emit("div", [x, im.emit("add", [im.emit("abs", [x]), _scalar(im, x, 1)])])


@handler("Mish")
def _mish(im, n):
    x = im.x(0)
    return im.emit("mul", [x, im.emit("tanh", [im.emit("softplus", [x])])])


@handler("ThresholdedRelu")
def _trelu(im, n):
    x = im.x(0)
    return im.emit("where", [im.emit("gt", [x, _scalar(im, x, im.attr("alpha", 1.0))]), x, _scalar(im, x, 0)])


@handler("Celu")
def _celu(im, n):
    x, a = im.x(0), im.attr("alpha", 1.0)
    # celu(x) = max(0,x) + min(0, a*(exp(x/a)-1)) = elu(x/a)*a for the negative part
    neg = im.emit("mul", [im.emit("elu", [im.emit("div", [x, _scalar(im, x, a)])], alpha=1.0), _scalar(im, x, a)])
    return im.emit("where", [im.emit("gt", [x, _scalar(im, x, 0)]), x, neg])


@handler("IsNaN")
def _isnan(im, n):
    x = im.x(0)
    return im.emit("ne", [x, x])


@handler("IsInf")
def _isinf(im, n):
    x = im.x(0)
    pos, neg = im.attr("detect_positive", 1), im.attr("detect_negative", 1)
    hits = []
    if pos:
        hits.append(im.emit("eq", [x, _scalar(im, x, np.inf)]))
    if neg:
        hits.append(im.emit("eq", [x, _scalar(im, x, -np.inf)]))
    if not hits:
        return im.emit("constant_of_shape", [], shape=list(x.type.shape), value=0.0, dtype="bool")
    return hits[0] if len(hits) == 1 else im.emit("or", hits)


@handler("Identity", "Dropout")
def _identity(im, n):
    if n.op_type == "Dropout" and len(n.output) > 1 and n.output[1]:
        return [im.inp(0), _mask_ones(im)]
    return im.inp(0)


def _mask_ones(im):
    x = im.x(0)
    return im.emit("constant_of_shape", [], shape=list(x.type.shape), value=1.0, dtype="bool")


BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow", "Equal": "eq", "Less": "lt", "Greater": "gt",
          "LessOrEqual": "le", "GreaterOrEqual": "ge", "And": "and", "Or": "or", "Xor": "xor"}


def _legacy_broadcast(im, a, b):
    """Opset < 7 Add/Sub/Mul/Div: with broadcast=1, b's dims line up with a's starting at `axis`."""
    if im.opset >= 7 or not im.attr("broadcast", 0):
        return b
    av, bv = im.value(a), im.value(b)
    axis = im.attr("axis", None)
    if axis is None:
        return b
    axis %= av.type.rank
    tail = av.type.rank - axis - bv.type.rank
    if tail <= 0:
        return b
    return im.emit("reshape", [b], shape=list(bv.type.shape) + [1] * tail)


@handler(*BINARY)
def _binary(im, n):
    a, b = im.inp(0), im.inp(1)
    b = _legacy_broadcast(im, a, b)
    if n.op_type == "Pow":
        av, bv = (im.const(a), im.const(b))
        ta = im.value(a).type.dtype if av is None or av.dtype != object else None
        tb = im.value(b).type.dtype if bv is None or bv.dtype != object else None
        if ta is not None and tb is not None and ta != tb:
            b = im.emit("cast", [b], to=ta.name)
    return im.emit(BINARY[n.op_type], [a, b])


@handler("Mod")
def _mod(im, n):
    a, b = im.x(0), im.x(1)
    if im.attr("fmod", 0) and a.type.dtype.is_float:
        # C fmod: a - b * trunc(a / b)
        q = im.emit("div", [a, b])
        t = im.emit("mul", [im.emit("sign", [q]), im.emit("floor", [im.emit("abs", [q])])])
        return im.emit("sub", [a, im.emit("mul", [b, t])])
    if im.attr("fmod", 0):
        q = im.emit("div", [a, b])  # integer div truncates toward zero
        return im.emit("sub", [a, im.emit("mul", [b, q])])
    return im.emit("mod", [a, b])


@handler("Sum", "Max", "Min", "Mean")
def _variadic(im, n):
    op = {"Sum": "add", "Max": "max", "Min": "min", "Mean": "add"}[n.op_type]
    xs = [im.inp(i) for i in range(len(n.input)) if n.input[i]]
    acc = xs[0]
    for x in xs[1:]:
        acc = im.emit(op, [acc, x])
    if n.op_type == "Mean" and len(xs) > 1:
        acc = im.emit("div", [acc, _scalar(im, im.value(acc), len(xs))])
    return acc


@handler("Where")
def _where(im, n):
    return im.emit("where", [im.inp(0), im.inp(1), im.inp(2)])


@handler("Cast")
def _cast(im, n):
    to = im.attr("to")
    if to not in ONNX_DTYPES:
        raise im.error(f"cast to ONNX element type {to} is not supported")
    r = im.inp(0)
    c = im.const(r)
    if c is not None and c.dtype == object:
        return im.emit("cast", [r], to=ONNX_DTYPES[to])
    if im.value(r).type.dtype.name == ONNX_DTYPES[to]:
        return r
    return im.emit("cast", [r], to=ONNX_DTYPES[to])


@handler("CastLike")
def _castlike(im, n):
    r, like = im.inp(0), im.x(1)
    if im.value(r).type.dtype == like.type.dtype:
        return r
    return im.emit("cast", [r], to=like.type.dtype.name)


@handler("Clip")
def _clip(im, n):
    x = im.inp(0)
    if im.opset < 11:
        return im.emit("clip", [x], min=im.attr("min", None), max=im.attr("max", None))
    lo, hi = im.inp(1), im.inp(2)
    clo, chi = im.const(lo), im.const(hi)
    if (lo is None or clo is not None) and (hi is None or chi is not None):
        return im.emit("clip", [x], min=None if lo is None else float(clo), max=None if hi is None else float(chi))
    y = x
    if lo is not None:
        y = im.emit("max", [y, lo])
    if hi is not None:
        y = im.emit("min", [y, hi])
    return y


# ---------------------------------------------------------------- linear algebra, nn
@handler("MatMul")
def _matmul(im, n):
    return im.emit("matmul", [im.inp(0), im.inp(1)])


@handler("Gemm")
def _gemm(im, n):
    ins = [im.inp(i) for i in range(len(n.input)) if n.input[i]]
    return im.emit("gemm", ins, alpha=im.attr("alpha", 1.0), beta=im.attr("beta", 1.0),
                   trans_a=bool(im.attr("transA", 0)), trans_b=bool(im.attr("transB", 0)))


def _auto_pads(im, x, kernel, strides, dilations):
    """Explicit pads for auto_pad SAME_UPPER/SAME_LOWER/VALID (needs static spatial dims)."""
    ap = im.attr("auto_pad", "NOTSET")
    pads = im.attr("pads", None)
    nd = len(kernel)
    if ap in ("NOTSET", "") or ap is None:
        return list(pads) if pads else [0] * (2 * nd)
    if ap == "VALID":
        return [0] * (2 * nd)
    begins, ends = [], []
    for i in range(nd):
        size = x.type.shape[2 + i]
        if not isinstance(size, int):
            raise im.error(f"auto_pad={ap} needs static spatial dims, got {x.type}")
        s, d = strides[i], dilations[i]
        out = -(-size // s)
        total = max(0, (out - 1) * s + (kernel[i] - 1) * d + 1 - size)
        lo = total // 2 if ap == "SAME_UPPER" else total - total // 2
        begins.append(lo)
        ends.append(total - lo)
    return begins + ends


@handler("Conv", "ConvTranspose")
def _conv(im, n):
    ins = [im.inp(i) for i in range(len(n.input)) if n.input[i]]
    x, w = im.value(ins[0]), im.value(ins[1])
    nd = x.type.rank - 2
    k = list(im.attr("kernel_shape", None) or w.type.shape[2:])
    strides = list(im.attr("strides", None) or [1] * nd)
    dil = list(im.attr("dilations", None) or [1] * nd)
    attrs = dict(strides=strides, dilations=dil, groups=im.attr("group", 1))
    if n.op_type == "Conv":
        return im.emit("conv", ins, pads=_auto_pads(im, x, k, strides, dil), **attrs)
    opad = list(im.attr("output_padding", None) or [0] * nd)
    if im.attr("output_shape", None) is not None or im.attr("auto_pad", "NOTSET") not in ("NOTSET", ""):
        pads = _convt_pads_for_shape(im, x, k, strides, dil, opad)
    else:
        pads = list(im.attr("pads", None) or [0] * (2 * nd))
    return im.emit("conv_transpose", ins, pads=pads, output_padding=opad, **attrs)


def _convt_pads_for_shape(im, x, k, s, d, opad):
    """Pads that give ConvTranspose the requested output_shape (or input * stride for auto_pad SAME_*), as ONNX says."""
    nd = len(k)
    out = im.attr("output_shape", None)
    ap = im.attr("auto_pad", "NOTSET")
    begins, ends = [], []
    for i in range(nd):
        size = x.type.shape[2 + i]
        if not isinstance(size, int):
            raise im.error("output_shape/auto_pad need static spatial dims")
        want = out[-nd + i] if out is not None else (size * s[i] if ap in ("SAME_UPPER", "SAME_LOWER") else None)
        full = s[i] * (size - 1) + opad[i] + (k[i] - 1) * d[i] + 1
        total = 0 if want is None else full - want
        if total < 0:
            raise im.error(f"output_shape {out} is larger than the full transposed-conv output")
        lo = total // 2 if ap == "SAME_UPPER" else total - total // 2
        begins.append(lo)
        ends.append(total - lo)
    return begins + ends


@handler("MaxPool", "AveragePool")
def _pool(im, n):
    if len(n.output) > 1 and n.output[1]:
        raise im.error("the Indices output of MaxPool is not supported")
    x = im.x(0)
    k = list(im.attr("kernel_shape"))
    nd = len(k)
    strides = list(im.attr("strides", None) or [1] * nd)
    dil = list(im.attr("dilations", None) or [1] * nd)
    pads = _auto_pads(im, x, k, strides, dil)
    attrs = dict(kernel=k, strides=strides, pads=pads, dilations=dil, ceil_mode=bool(im.attr("ceil_mode", 0)))
    if n.op_type == "MaxPool":
        return im.emit("max_pool", [x], **attrs)
    return im.emit("avg_pool", [x], count_include_pad=bool(im.attr("count_include_pad", 0)), **attrs)


@handler("GlobalAveragePool", "GlobalMaxPool")
def _gpool(im, n):
    return im.emit("global_avg_pool" if n.op_type == "GlobalAveragePool" else "global_max_pool", [im.x(0)])


@handler("BatchNormalization")
def _bn(im, n):
    if im.attr("training_mode", 0) or any(o for o in n.output[1:]):
        raise im.error("training-mode BatchNormalization (extra outputs) is not supported")
    return im.emit("batch_norm", [im.inp(i) for i in range(5)], eps=im.attr("epsilon", 1e-5))


@handler("InstanceNormalization")
def _in(im, n):
    return im.emit("instance_norm", [im.inp(0), im.inp(1), im.inp(2)], eps=im.attr("epsilon", 1e-5))


@handler("GroupNormalization")
def _gn(im, n):
    x = im.x(0)
    g = im.attr("num_groups")
    scale, bias = im.inp(1), im.inp(2)
    c = x.type.shape[1]
    if im.opset < 21 and isinstance(c, int) and c != g:  # opset 18: scale/bias are per group
        rep = c // g
        scale = im.emit("reshape", [im.emit("tile", [im.emit("unsqueeze", [scale], axes=[1])], repeats=[1, rep])], shape=[c])
        bias = im.emit("reshape", [im.emit("tile", [im.emit("unsqueeze", [bias], axes=[1])], repeats=[1, rep])], shape=[c])
    return im.emit("group_norm", [x, scale, bias], groups=g, eps=im.attr("epsilon", 1e-5))


@handler("LRN")
def _lrn(im, n):
    return im.emit("lrn", [im.x(0)], size=im.attr("size"), alpha=im.attr("alpha", 1e-4), beta=im.attr("beta", 0.75),
                   bias=im.attr("bias", 1.0))


@handler("PRelu")
def _prelu(im, n):
    x, s = im.x(0), im.inp(1)
    sv = im.value(s)
    # unidirectional broadcast; a [C] slope on [N,C,...] (pre-opset-7 exporters) means per channel
    if sv.type.rank == 1 and x.type.rank > 2 and sv.type.shape[0] not in (1, x.type.shape[-1]) and sv.type.shape[0] == x.type.shape[1]:
        s = im.emit("reshape", [s], shape=[sv.type.shape[0]] + [1] * (x.type.rank - 2))
    return im.emit("prelu", [x, s])


@handler("LayerNormalization")
def _ln(im, n):
    if any(o for o in n.output[1:]):
        raise im.error("the Mean/InvStdDev outputs of LayerNormalization are not supported")
    ins = [im.inp(i) for i in range(len(n.input)) if n.input[i]]
    return im.emit("layer_norm", ins, axis=im.attr("axis", -1), eps=im.attr("epsilon", 1e-5))


@handler("SimplifiedLayerNormalization", domain="com.microsoft")
@handler("RMSNormalization")
def _rms(im, n):
    ins = [im.inp(i) for i in range(len(n.input)) if n.input[i]]
    return im.emit("rms_norm", ins, axis=im.attr("axis", -1), eps=im.attr("epsilon", 1e-5))


@handler("Softmax", "LogSoftmax")
def _softmax(im, n):
    op = "softmax" if n.op_type == "Softmax" else "log_softmax"
    x = im.x(0)
    r = x.type.rank
    if im.opset >= 13:
        return im.emit(op, [x], axis=im.attr("axis", -1))
    axis = im.attr("axis", 1) % max(r, 1)
    if axis == r - 1:
        return im.emit(op, [x], axis=-1)
    # pre-13: softmax over the flattened trailing dims [axis:]
    shp = x.type.shape
    flat = im.emit("reshape", [x], shape=[dim_mul(*shp[:axis]) if axis else 1, dim_mul(*shp[axis:])])
    return im.emit("reshape", [im.emit(op, [flat], axis=-1)], shape=list(shp))


# ---------------------------------------------------------------- reductions
REDUCE = {"ReduceSum": "reduce_sum", "ReduceMean": "reduce_mean", "ReduceMax": "reduce_max", "ReduceMin": "reduce_min",
          "ReduceProd": "reduce_prod", "ReduceL2": "reduce_l2", "ReduceLogSumExp": "reduce_log_sum_exp",
          "ReduceL1": "l1", "ReduceSumSquare": "sumsq", "ReduceLogSum": "logsum"}


@handler(*REDUCE)
def _reduce(im, n):
    x = im.x(0)
    axes_from_input = im.opset >= 18 or (n.op_type == "ReduceSum" and im.opset >= 13)
    axes = im.dims_input(1, "axes", required=False) if axes_from_input else im.attr("axes", None)
    keep = bool(im.attr("keepdims", 1))
    if not axes:
        if im.attr("noop_with_empty_axes", 0):
            return x
        axes = list(range(x.type.rank))
    op = REDUCE[n.op_type]
    if op == "l1":
        return im.emit("reduce_sum", [im.emit("abs", [x])], axes=axes, keepdims=keep)
    if op == "sumsq":
        return im.emit("reduce_sum", [im.emit("mul", [x, x])], axes=axes, keepdims=keep)
    if op == "logsum":
        return im.emit("log", [im.emit("reduce_sum", [x], axes=axes, keepdims=keep)])
    return im.emit(op, [x], axes=axes, keepdims=keep)


@handler("ArgMax", "ArgMin")
def _arg(im, n):
    return im.emit(n.op_type.lower(), [im.x(0)], axis=im.attr("axis", 0), keepdims=bool(im.attr("keepdims", 1)),
                   select_last_index=bool(im.attr("select_last_index", 0)))


@handler("CumSum")
def _cumsum(im, n):
    axis = im.dims_input(1, "axis")[0]
    return im.emit("cumsum", [im.x(0)], axis=int(axis), exclusive=bool(im.attr("exclusive", 0)), reverse=bool(im.attr("reverse", 0)))


# ---------------------------------------------------------------- quantization (QDQ)
def _qparam(im, r, x_rank, axis, block):
    """A 1-D per-axis scale/zero point becomes [1,..,C,..,1] (the IR wants the rank of x or a scalar)."""
    v = im.value(r)
    if v.type.rank == 0 or v.type.rank == x_rank:
        return r
    if v.type.rank == 1 and not block:
        shape = [1] * x_rank
        shape[axis] = v.type.shape[0]
        return im.emit("reshape", [r], shape=shape)
    raise im.error(f"scale/zero point {v.type} does not fit an input of rank {x_rank}")


@handler("DequantizeLinear")
def _dequantize_linear(im, n):
    q = im.x(0)
    axis = im.attr("axis", 1) % max(q.type.rank, 1)
    block = im.attr("block_size", 0)
    scale = _qparam(im, im.inp(1), q.type.rank, axis, block)
    ins = [q, scale] + ([_qparam(im, im.inp(2), q.type.rank, axis, block)] if im.inp(2) is not None else [])
    y = im.emit("dequantize", ins, axis=axis, group=block)
    want = im.value(im.inp(1)).type.dtype.name
    return y if want == "f32" else im.emit("cast", [y], to=want)


@handler("QuantizeLinear")
def _quantize_linear(im, n):
    x = im.x(0)
    axis = im.attr("axis", 1) % max(x.type.rank, 1)
    block = im.attr("block_size", 0)
    z = im.inp(2)
    if z is not None:
        dt = im.value(z).type.dtype.name
    else:
        od = im.attr("output_dtype", 0)
        dt = ONNX_DTYPES.get(od, "u8") if od else "u8"
    ins = [x, _qparam(im, im.inp(1), x.type.rank, axis, block)] + ([_qparam(im, z, x.type.rank, axis, block)] if z is not None else [])
    return im.emit("quantize", ins, dtype=dt, axis=axis, group=block)


@handler("MatMulInteger")
def _matmul_integer(im, n):
    return im.emit("matmul_integer", [im.inp(i) for i in range(len(n.input)) if n.input[i]])


# the other handler families register themselves on import
from . import onnx_autodiff, onnx_shapes  # noqa: E402,F401
