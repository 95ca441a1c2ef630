"""IR op -> ONNX node(s) for the ONNX exporter. Each emitter gets the exporter, the IR node and its
operand names, and returns the ONNX name(s) of the node's results."""
from __future__ import annotations

import math

import numpy as np

from .onnx import IR_DTYPE_TO_ONNX, OnnxExportError

EMITTERS: dict = {}


def emitter(*ops):
    def deco(fn):
        for o in ops:
            EMITTERS[o] = fn
        return fn
    return deco


def _dt(n, i=0):
    return n.inputs[i].type.dtype.name


def _k(ex, n, value, i=0):
    """A scalar constant of operand i's dtype."""
    return ex.scalar(value, _dt(n, i))


SIMPLE = {"neg": "Neg", "abs": "Abs", "exp": "Exp", "log": "Log", "sqrt": "Sqrt", "reciprocal": "Reciprocal", "tanh": "Tanh",
          "sigmoid": "Sigmoid", "relu": "Relu", "softplus": "Softplus", "hard_swish": "HardSwish", "erf": "Erf", "sin": "Sin",
          "cos": "Cos", "floor": "Floor", "ceil": "Ceil", "round": "Round", "sign": "Sign", "not": "Not", "identity": "Identity",
          "add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "pow": "Pow", "max": "Max", "min": "Min", "eq": "Equal",
          "lt": "Less", "le": "LessOrEqual", "gt": "Greater", "ge": "GreaterOrEqual", "and": "And", "or": "Or", "xor": "Xor",
          "where": "Where", "prelu": "PRelu", "matmul": "MatMul", "global_avg_pool": "GlobalAveragePool",
          "global_max_pool": "GlobalMaxPool"}


@emitter(*SIMPLE)
def _simple(ex, n, ins):
    return ex.node(SIMPLE[n.op], ins)


@emitter("rsqrt")
def _rsqrt(ex, n, ins):
    return ex.node("Reciprocal", [ex.node("Sqrt", ins)])


@emitter("ne")
def _ne(ex, n, ins):
    return ex.node("Not", [ex.node("Equal", ins)])


@emitter("mod")
def _mod(ex, n, ins):
    if n.inputs[0].type.dtype.is_float:  # numpy mod (sign of the divisor): a - floor(a / b) * b
        return ex.node("Sub", [ins[0], ex.node("Mul", [ex.node("Floor", [ex.node("Div", ins)]), ins[1]])])
    return ex.node("Mod", ins, fmod=0)


@emitter("leaky_relu", "elu")
def _alpha(ex, n, ins):
    return ex.node({"leaky_relu": "LeakyRelu", "elu": "Elu"}[n.op], ins, alpha=n.attrs["alpha"])


@emitter("selu")
def _selu(ex, n, ins):
    return ex.node("Selu", ins, alpha=n.attrs["alpha"], gamma=n.attrs["gamma"])


@emitter("shrink")
def _shrink(ex, n, ins):
    return ex.node("Shrink", ins, bias=n.attrs["bias"], lambd=n.attrs["lambd"])


@emitter("hard_sigmoid")
def _hsig(ex, n, ins):
    return ex.node("HardSigmoid", ins, alpha=n.attrs["alpha"], beta=n.attrs["beta"])


@emitter("gelu")
def _gelu(ex, n, ins):
    if ex.opset >= 20:
        return ex.node("Gelu", ins, approximate=n.attrs["approximate"])
    x = ins[0]
    if n.attrs["approximate"] == "tanh":
        inner = ex.node("Mul", [_k(ex, n, math.sqrt(2 / math.pi)),
                                ex.node("Add", [x, ex.node("Mul", [_k(ex, n, 0.044715), ex.node("Mul", [x, ex.node("Mul", [x, x])])])])])
        t = ex.node("Tanh", [inner])
    else:
        t = ex.node("Erf", [ex.node("Div", [x, _k(ex, n, math.sqrt(2))])])
    return ex.node("Mul", [ex.node("Mul", [x, _k(ex, n, 0.5)]), ex.node("Add", [t, _k(ex, n, 1.0)])])


@emitter("silu")
def _silu(ex, n, ins):
    return ex.node("Mul", [ins[0], ex.node("Sigmoid", ins)])


@emitter("cast")
def _cast(ex, n, ins):
    return ex.node("Cast", ins, to=IR_DTYPE_TO_ONNX[n.attrs["to"]])


@emitter("clip")
def _clip(ex, n, ins):
    lo = "" if n.attrs.get("min") is None else _k(ex, n, n.attrs["min"])
    hi = "" if n.attrs.get("max") is None else _k(ex, n, n.attrs["max"])
    return ex.node("Clip", [ins[0], lo, hi] if hi else ([ins[0], lo] if lo else ins))


@emitter("gemm")
def _gemm(ex, n, ins):
    a = n.attrs
    return ex.node("Gemm", ins, alpha=a["alpha"], beta=a["beta"], transA=int(a["trans_a"]), transB=int(a["trans_b"]))


def _norm_shape(n, i):
    x = n.inputs[0].type
    ax = n.attrs["axis"] % x.rank
    return list(x.shape[ax:])


@emitter("layer_norm")
def _layer_norm(ex, n, ins):
    x = n.inputs[0].type
    ins = list(ins)
    if len(ins) == 1:
        shp = _norm_shape(n, 0)
        if not all(isinstance(d, int) for d in shp):
            raise OnnxExportError("onnx export: layer_norm without weight over symbolic dims")
        ins.append(ex.init(np.ones(shp, x.dtype.np), "ln_scale"))
    return ex.node("LayerNormalization", ins, axis=n.attrs["axis"], epsilon=n.attrs["eps"])


@emitter("rms_norm")
def _rms_norm(ex, n, ins):
    x = n.inputs[0].type
    axes = list(range(n.attrs["axis"] % x.rank, x.rank))
    xf = ins[0] if x.dtype.name == "f32" else ex.node("Cast", [ins[0]], to=1)
    ms = ex.node("ReduceMean", [ex.node("Mul", [xf, xf]), ex.ints(axes, "axes")], keepdims=1)
    inv = ex.node("Reciprocal", [ex.node("Sqrt", [ex.node("Add", [ms, ex.scalar(n.attrs["eps"], "f32")])])])
    y = ex.node("Mul", [xf, inv])
    if x.dtype.name != "f32":
        y = ex.node("Cast", [y], to=IR_DTYPE_TO_ONNX[x.dtype.name])
    return ex.node("Mul", [y, ins[1]]) if len(ins) > 1 else y


def _geom(n, nd):
    a = n.attrs
    return dict(strides=list(a.get("strides") or [1] * nd), pads=list(a.get("pads") or [0] * (2 * nd)),
                dilations=list(a.get("dilations") or [1] * nd))


@emitter("conv")
def _conv(ex, n, ins):
    nd = n.inputs[0].type.rank - 2
    return ex.node("Conv", ins, group=n.attrs["groups"], kernel_shape=list(n.inputs[1].type.shape[2:]), **_geom(n, nd))


@emitter("conv_transpose")
def _convt(ex, n, ins):
    nd = n.inputs[0].type.rank - 2
    op = n.attrs.get("output_padding")
    return ex.node("ConvTranspose", ins, group=n.attrs["groups"], kernel_shape=list(n.inputs[1].type.shape[2:]),
                   output_padding=list(op) if op else None, **_geom(n, nd))


@emitter("max_pool", "avg_pool")
def _pool(ex, n, ins):
    nd = len(n.attrs["kernel"])
    kw = dict(kernel_shape=list(n.attrs["kernel"]), ceil_mode=int(n.attrs["ceil_mode"]), **_geom(n, nd))
    if n.op == "max_pool":
        return ex.node("MaxPool", ins, **kw)
    return ex.node("AveragePool", ins, count_include_pad=int(n.attrs["count_include_pad"]), **kw)


@emitter("batch_norm")
def _bn(ex, n, ins):
    return ex.node("BatchNormalization", ins, epsilon=n.attrs["eps"])


@emitter("instance_norm")
def _inorm(ex, n, ins):
    return ex.node("InstanceNormalization", ins, epsilon=n.attrs["eps"])


@emitter("group_norm")
def _gnorm(ex, n, ins):
    x = n.inputs[0].type
    g = n.attrs["groups"]
    if ex.opset >= 21:
        return ex.node("GroupNormalization", ins, num_groups=g, epsilon=n.attrs["eps"])
    # [N, G, rest] normalized over rest, back to x's shape, then per-channel affine
    grouped = ex.node("Reshape", [ins[0], ex.ints([0, g, -1])])
    mu = ex.node("ReduceMean", [grouped, ex.ints([2], "axes")], keepdims=1)
    d = ex.node("Sub", [grouped, mu])
    var = ex.node("ReduceMean", [ex.node("Mul", [d, d]), ex.ints([2], "axes")], keepdims=1)
    y = ex.node("Div", [d, ex.node("Sqrt", [ex.node("Add", [var, _k(ex, n, n.attrs["eps"])])])])
    y = ex.node("Reshape", [y, ex.node("Shape", [ins[0]])])
    cshape = ex.ints([-1] + [1] * (x.rank - 2), "cshape")
    if len(ins) > 1:
        y = ex.node("Mul", [y, ex.node("Reshape", [ins[1], cshape])])
    if len(ins) > 2:
        y = ex.node("Add", [y, ex.node("Reshape", [ins[2], cshape])])
    return y


@emitter("lrn")
def _lrn(ex, n, ins):
    a = n.attrs
    return ex.node("LRN", ins, size=a["size"], alpha=a["alpha"], beta=a["beta"], bias=a["bias"])


REDUCE = {"reduce_sum": "ReduceSum", "reduce_mean": "ReduceMean", "reduce_max": "ReduceMax", "reduce_min": "ReduceMin",
          "reduce_prod": "ReduceProd", "reduce_l2": "ReduceL2", "reduce_log_sum_exp": "ReduceLogSumExp"}


@emitter(*REDUCE)
def _reduce(ex, n, ins):
    axes = n.attrs.get("axes")
    r = n.inputs[0].type.rank
    axes = list(range(r)) if not axes else [a % r for a in axes]
    return ex.node(REDUCE[n.op], [ins[0], ex.ints(axes, "axes")], keepdims=int(n.attrs["keepdims"]))


@emitter("argmax", "argmin")
def _arg(ex, n, ins):
    a = n.attrs
    return ex.node("ArgMax" if n.op == "argmax" else "ArgMin", ins, axis=a["axis"], keepdims=int(a["keepdims"]),
                   select_last_index=int(a["select_last_index"]))


@emitter("softmax", "log_softmax")
def _softmax(ex, n, ins):
    return ex.node("Softmax" if n.op == "softmax" else "LogSoftmax", ins, axis=n.attrs["axis"])


@emitter("cumsum")
def _cumsum(ex, n, ins):
    a = n.attrs
    return ex.node("CumSum", [ins[0], ex.ints([a["axis"]], "axis")], exclusive=int(a["exclusive"]), reverse=int(a["reverse"]))


# ---------------------------------------------------------------- shape ops
@emitter("reshape")
def _reshape(ex, n, ins):
    return ex.node("Reshape", [ins[0], ex.dims(n.attrs["shape"])], allowzero=int(n.attrs["allowzero"]) or None)


@emitter("transpose")
def _transpose(ex, n, ins):
    perm = n.attrs.get("perm")
    return ex.node("Transpose", ins, perm=list(perm) if perm is not None else None)


@emitter("concat")
def _concat(ex, n, ins):
    return ex.node("Concat", ins, axis=n.attrs["axis"])


@emitter("split")
def _split(ex, n, ins):
    outs = ex.node("Split", [ins[0], ex.ints(n.attrs["sizes"], "split")], n_out=len(n.outputs), axis=n.attrs["axis"])
    return outs if isinstance(outs, list) else [outs]


@emitter("slice")
def _slice(ex, n, ins):
    a = n.attrs
    k = len(a["starts"])
    args = [ins[0], ex.ints(a["starts"], "starts"), ex.ints(a["ends"], "ends"),
            ex.ints(a["axes"] if a.get("axes") else range(k), "axes")]
    if a.get("steps"):
        args.append(ex.ints(a["steps"], "steps"))
    return ex.node("Slice", args)


@emitter("gather")
def _gather(ex, n, ins):
    return ex.node("Gather", ins, axis=n.attrs["axis"])


@emitter("embedding")
def _embedding(ex, n, ins):
    return ex.node("Gather", ins, axis=0)


@emitter("gather_elements")
def _gather_el(ex, n, ins):
    return ex.node("GatherElements", ins, axis=n.attrs["axis"])


@emitter("expand")
def _expand(ex, n, ins):
    return ex.node("Expand", [ins[0], ex.dims(n.attrs["shape"])])


@emitter("squeeze")
def _squeeze(ex, n, ins):
    axes = n.attrs.get("axes")
    if axes is None:
        axes = [i for i, d in enumerate(n.inputs[0].type.shape) if d == 1]
    return ex.node("Squeeze", [ins[0], ex.ints(axes, "axes")])


@emitter("unsqueeze")
def _unsqueeze(ex, n, ins):
    return ex.node("Unsqueeze", [ins[0], ex.ints(n.attrs["axes"], "axes")])


@emitter("flatten")
def _flatten(ex, n, ins):
    return ex.node("Flatten", ins, axis=n.attrs["axis"])


@emitter("pad")
def _pad(ex, n, ins):
    a = n.attrs
    args = [ins[0], ex.ints(a["pads"], "pads"), _k(ex, n, a["value"]) if a["mode"] == "constant" else ""]
    if a.get("axes") is not None:
        args.append(ex.ints(a["axes"], "axes"))
    return ex.node("Pad", args, mode=a["mode"])


@emitter("tile")
def _tile(ex, n, ins):
    return ex.node("Tile", [ins[0], ex.ints(n.attrs["repeats"], "repeats")])


@emitter("arange")
def _arange(ex, n, ins):
    a = n.attrs
    dt = a["dtype"]
    return ex.node("Range", [ex.scalar(a["start"], dt), ex.scalar(a["end"], dt), ex.scalar(a["step"], dt)])


@emitter("constant_of_shape")
def _cos(ex, n, ins):
    from onnx import numpy_helper
    from ..ir import dtype
    a = n.attrs
    val = numpy_helper.from_array(np.asarray([a["value"]], dtype=dtype(a["dtype"]).np))
    return ex.node("ConstantOfShape", [ex.dims(a["shape"])], value=val)


@emitter("shape")
def _shape(ex, n, ins):
    return ex.node("Shape", ins, start=n.attrs["start"], end=n.attrs.get("end"))


@emitter("scaled_dot_product_attention")
def _sdpa(ex, n, ins):
    q, k, v = (t.type for t in n.inputs[:3])
    a = n.attrs
    kn, vn = ins[1], ins[2]
    if q.rank >= 3 and k.shape[-3] != q.shape[-3] and k.shape[-3] != 1:  # grouped-query: repeat kv heads
        rep = q.shape[-3] // k.shape[-3]
        kn, vn = (_repeat_heads(ex, t, name, rep) for t, name in ((k, kn), (v, vn)))
    scale = a["scale"] if a.get("scale") is not None else 1.0 / math.sqrt(q.shape[-1])
    perm = list(range(k.rank - 2)) + [k.rank - 1, k.rank - 2]
    s = ex.node("Mul", [ex.node("MatMul", [ins[0], ex.node("Transpose", [kn], perm=perm)]), _k(ex, n, scale)])
    lq, lk = q.shape[-2], k.shape[-2]
    if a["causal"]:
        if not (isinstance(lq, int) and isinstance(lk, int)):
            raise OnnxExportError("onnx export: causal attention over symbolic lengths")
        bias = np.where(np.tril(np.ones((lq, lk), bool)), 0, -np.inf).astype(q.dtype.np)
        s = ex.node("Add", [s, ex.init(bias, "causal_bias")])
    if len(ins) > 3:
        if n.inputs[3].type.dtype.name == "bool":
            s = ex.node("Where", [ins[3], s, _k(ex, n, -np.inf)])
        else:
            s = ex.node("Add", [s, ins[3]])
    return ex.node("MatMul", [ex.node("Softmax", [s], axis=-1), vn])


def _repeat_heads(ex, t, name, rep):
    r = t.rank
    x = ex.node("Unsqueeze", [name, ex.ints([r - 2], "axes")])             # [..., Hk, 1, L, E]
    x = ex.node("Expand", [x, ex.dims(list(t.shape[:r - 2]) + [rep] + list(t.shape[r - 2:]))])
    from ..ir.types import dim_mul
    return ex.node("Reshape", [x, ex.dims(list(t.shape[:r - 3]) + [dim_mul(t.shape[r - 3], rep)] + list(t.shape[r - 2:]))])


# quantized ops register themselves on import
from . import onnx_quant  # noqa: E402,F401
