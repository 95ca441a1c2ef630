"""Lowerings of ATen ops onto IR ops: elementwise, reductions, matmul, normalization, attention, conv/pool.

Each rule is `fn(im, *args, **kwargs)` with FX arguments already resolved (tensors are IR Values,
symbolic sizes are IR dims). The result's dtype is reconciled with what torch recorded (`im._check`),
so arithmetic rules compute in the output dtype torch chose (its type promotion) by casting operands.
"""
from __future__ import annotations

import math

import torch

from ..ir import Value
from ..ir.types import dim_mul
from .torch_fx import IR_TO_TORCH, Importer, SymExpr, Unsupported, ir_dtype, lower

INT_MAX = 2**62  # slices ending at or beyond this are "to the end"


def out_dtype(im: Importer) -> str:
    return im.out_type().dtype.name


def promote(a, b) -> str:
    """torch.result_type over IR Values and python scalars."""
    def probe(x):
        if isinstance(x, Value):
            return torch.empty((1,) * x.type.rank, dtype=IR_TO_TORCH[x.type.dtype.name])
        return 1 if isinstance(x, (str, SymExpr)) else x
    return ir_dtype(torch.result_type(probe(a), probe(b)))


def rank(x) -> int:
    return x.type.rank if isinstance(x, Value) else 0


def axes_of(dims, r: int) -> list[int]:
    if dims is None:
        return list(range(r))
    dims = [dims] if isinstance(dims, int) else list(dims)
    return sorted(d % max(r, 1) for d in dims) if dims else list(range(r))


# ---------------------------------------------------------------- elementwise
def _binary(irop: str):
    def f(im, a, b, alpha=1, **kw):
        dt = out_dtype(im)
        if kw.get("rounding_mode"):
            return _div_mode(im, a, b, kw["rounding_mode"])
        if alpha != 1:
            b = im.op("mul", im.value(b, dt), im.scalar(alpha, dt))
        return im.op(irop, im.value(a, dt), im.value(b, dt))
    return f


for _aten, _ir in {"add": "add", "sub": "sub", "mul": "mul", "div": "div", "maximum": "max", "minimum": "min",
                   "remainder": "mod", "pow": "pow"}.items():
    _names = [f"aten.{_aten}.{o}" for o in ("Tensor", "Scalar", "Tensor_Tensor", "Tensor_Scalar", "default")]
    if _aten == "div":
        _names += ["aten.div.Tensor_mode", "aten.div.Scalar_mode"]
    lower(*_names)(_binary(_ir))


@lower("aten.fmod.Tensor", "aten.fmod.Scalar")
def _fmod(im, a, b):
    dt = out_dtype(im)
    return im.op("mod", im.value(a, dt), im.value(b, dt), fmod=True)


def _div_mode(im, a, b, mode: str):
    dt = out_dtype(im)
    a, b = im.value(a, dt), im.value(b, dt)
    if mode == "trunc":
        if dt.startswith(("i", "u")):
            return im.op("div", a, b)  # IR integer division truncates
        q = im.op("div", a, b)
        return im.op("mul", im.op("sign", q), im.op("floor", im.op("abs", q)))
    if mode == "floor":
        if dt.startswith(("i", "u")):  # exact: (a - a mod b) / b with the divisor-signed mod
            return im.op("div", im.op("sub", a, im.op("mod", a, b)), b)
        return im.op("floor", im.op("div", a, b))
    raise Unsupported(f"rounding_mode={mode!r}")


@lower("aten.rsub.Scalar", "aten.rsub.Tensor")
def _rsub(im, a, b, alpha=1):
    dt = out_dtype(im)
    a = im.value(a, dt)
    if alpha != 1:
        a = im.op("mul", a, im.scalar(alpha, dt))
    return im.op("sub", im.value(b, dt), a)


for _aten, _ir in {"eq": "eq", "ne": "ne", "lt": "lt", "le": "le", "gt": "gt", "ge": "ge"}.items():
    def _cmp(im, a, b, _ir=_ir):
        dt = promote(a, b)
        return im.op(_ir, im.value(a, dt), im.value(b, dt))
    lower(f"aten.{_aten}.Tensor", f"aten.{_aten}.Scalar")(_cmp)

for _aten, _ir in {"logical_and": "and", "logical_or": "or", "logical_xor": "xor", "bitwise_and": "and",
                   "bitwise_or": "or", "bitwise_xor": "xor"}.items():
    def _logic(im, a, b, _ir=_ir, _aten=_aten):
        if _aten.startswith("bitwise") and out_dtype(im) != "bool":
            raise Unsupported("bitwise ops on integers are not supported (only on bool tensors)")
        return im.op(_ir, im.value(a, "bool"), im.value(b, "bool"))
    lower(f"aten.{_aten}.default", f"aten.{_aten}.Tensor", f"aten.{_aten}.Scalar")(_logic)


@lower("aten.logical_not.default", "aten.bitwise_not.default")
def _not(im, x):
    if im.target_name().startswith("aten.bitwise") and x.type.dtype.name != "bool":
        raise Unsupported("bitwise_not on integers is not supported (only on bool tensors)")
    return im.op("not", im.value(x, "bool"))


UNARY = {"neg": "neg", "abs": "abs", "exp": "exp", "log": "log", "sqrt": "sqrt", "rsqrt": "rsqrt", "reciprocal": "reciprocal",
         "tanh": "tanh", "sigmoid": "sigmoid", "relu": "relu", "erf": "erf", "sin": "sin", "cos": "cos", "floor": "floor",
         "ceil": "ceil", "round": "round", "sign": "sign", "silu": "silu", "hardswish": "hard_swish"}
for _aten, _ir in UNARY.items():
    def _unary(im, x, _ir=_ir):
        return im.op(_ir, im.value(x, out_dtype(im)))
    lower(f"aten.{_aten}.default")(_unary)


@lower("aten.trunc.default")
def _trunc(im, x):
    return im.op("mul", im.op("sign", x), im.op("floor", im.op("abs", x)))


@lower("aten.log1p.default")
def _log1p(im, x):
    dt = out_dtype(im)
    return im.op("log", im.op("add", im.value(x, dt), im.scalar(1, dt)))


@lower("aten.expm1.default")
def _expm1(im, x):
    dt = out_dtype(im)
    return im.op("sub", im.op("exp", im.value(x, dt)), im.scalar(1, dt))


@lower("aten.log2.default", "aten.log10.default")
def _log_base(im, x):
    dt = out_dtype(im)
    base = 2.0 if im.target_name().startswith("aten.log2") else 10.0
    return im.op("mul", im.op("log", im.value(x, dt)), im.scalar(1 / math.log(base), dt))


@lower("aten.gelu.default")
def _gelu(im, x, approximate="none"):
    return im.op("gelu", x, approximate=approximate)


@lower("aten.hardtanh.default", "aten.clamp.default", "aten.clamp_min.default", "aten.clamp_max.default", "aten.relu6.default")
def _clip(im, x, lo=None, hi=None):
    name = im.target_name()
    if name.startswith("aten.hardtanh"):
        lo, hi = (-1.0 if lo is None else lo), (1.0 if hi is None else hi)
    elif name.startswith("aten.relu6"):
        lo, hi = 0.0, 6.0
    elif name.startswith("aten.clamp_max"):
        lo, hi = None, lo
    dt = out_dtype(im)
    return im.op("clip", im.value(x, dt), min=lo, max=hi)


@lower("aten.clamp.Tensor")
def _clamp_t(im, x, lo=None, hi=None):
    dt = out_dtype(im)
    x = im.value(x, dt)
    if lo is not None:
        x = im.op("max", x, im.value(lo, dt))
    if hi is not None:
        x = im.op("min", x, im.value(hi, dt))
    return x


@lower("aten.leaky_relu.default")
def _leaky(im, x, slope=0.01):
    return im.op("leaky_relu", x, alpha=slope)


@lower("aten.elu.default")
def _elu(im, x, alpha=1.0, scale=1, input_scale=1):
    if scale != 1 or input_scale != 1:
        raise Unsupported(f"elu with scale={scale}, input_scale={input_scale}")
    return im.op("elu", x, alpha=alpha)


@lower("aten.softplus.default")
def _softplus(im, x, beta=1, threshold=20):
    if beta != 1:
        raise Unsupported(f"softplus with beta={beta}")
    return im.op("softplus", x)  # threshold only switches to x where log1p(exp(x)) == x in float32 anyway


@lower("aten.hardsigmoid.default")
def _hardsigmoid(im, x):
    return im.op("hard_sigmoid", x, alpha=1 / 6, beta=0.5)


@lower("aten.prelu.default", "aten._prelu_kernel.default")
def _prelu(im, x, w):
    if w.type.rank == 1 and x.type.rank > 2:  # per-channel slope on dim 1
        w = im.op("reshape", w, shape=[w.type.shape[0]] + [1] * (x.type.rank - 2))
    return im.op("prelu", x, w)


@lower("aten.where.self", "aten.where.ScalarSelf", "aten.where.ScalarOther", "aten.where.Scalar")
def _where(im, c, a, b):
    dt = out_dtype(im)
    return im.op("where", im.value(c, "bool"), im.value(a, dt), im.value(b, dt))


@lower("aten.masked_fill.Scalar", "aten.masked_fill.Tensor")
def _masked_fill(im, x, mask, value):
    dt = out_dtype(im)
    return im.op("where", im.value(mask, "bool"), im.value(value, dt), im.value(x, dt))


@lower("aten.isnan.default")
def _isnan(im, x):
    return im.op("ne", x, x)


@lower("aten.isinf.default")
def _isinf(im, x):
    return im.op("eq", im.op("abs", x), im.scalar(float("inf"), x.type.dtype.name))


# ---------------------------------------------------------------- reductions
def _reduce(irop: str):
    def f(im, x, dims=None, keepdim=False, dtype=None):
        dt = out_dtype(im)
        return im.op(irop, im.value(x, dt), axes=axes_of(dims, x.type.rank), keepdims=bool(keepdim))
    return f


for _aten, _ir in {"sum": "reduce_sum", "mean": "reduce_mean", "amax": "reduce_max", "amin": "reduce_min",
                   "prod": "reduce_prod"}.items():
    lower(f"aten.{_aten}.dim_IntList", f"aten.{_aten}.default", f"aten.{_aten}.dim_int", f"aten.{_aten}.dim")(_reduce(_ir))
lower("aten.max.default")(_reduce("reduce_max"))
lower("aten.min.default")(_reduce("reduce_min"))
lower("aten.logsumexp.default")(_reduce("reduce_log_sum_exp"))


@lower("aten.max.dim", "aten.min.dim")
def _max_dim(im, x, dim, keepdim=False):
    is_max = im.target_name().startswith("aten.max")
    vals = im.op("reduce_max" if is_max else "reduce_min", x, axes=[dim], keepdims=keepdim)
    idx = im.op("argmax" if is_max else "argmin", x, axis=dim, keepdims=keepdim)
    return [vals, idx]


@lower("aten.argmax.default", "aten.argmin.default")
def _argmax(im, x, dim=None, keepdim=False):
    op = "argmax" if im.target_name().startswith("aten.argmax") else "argmin"
    if dim is None:
        x = im.op("reshape", x, shape=[-1])
        r = im.op(op, x, axis=0, keepdims=False)
        return im.op("reshape", r, shape=[1] * im.out_type().rank) if keepdim else r
    return im.op(op, x, axis=dim, keepdims=keepdim)


@lower("aten.any.dim", "aten.any.dims", "aten.any.default", "aten.all.dim", "aten.all.dims", "aten.all.default")
def _any_all(im, x, dims=None, keepdim=False):
    op = "reduce_max" if im.target_name().startswith("aten.any") else "reduce_min"
    r = im.op(op, im.op("cast", im.value(x, "bool"), to="u8"), axes=axes_of(dims, x.type.rank), keepdims=keepdim)
    return im.cast(r, "bool")


def _count(im, x: Value, axes: list[int]) -> Value:
    return im.value(dim_mul(*[x.type.shape[a] for a in axes]) if axes else 1, x.type.dtype.name)


@lower("aten.var.correction", "aten.var_mean.correction", "aten.std.correction")
def _var(im, x, dims=None, correction=None, keepdim=False):
    name = im.target_name()
    axes = axes_of(dims, x.type.rank)
    c = 1 if correction is None else correction
    dt = x.type.dtype.name
    mean = im.op("reduce_mean", x, axes=axes, keepdims=True)
    d = im.op("sub", x, mean)
    v = im.op("reduce_sum", im.op("mul", d, d), axes=axes, keepdims=keepdim)
    v = im.op("div", v, im.op("sub", _count(im, x, axes), im.scalar(c, dt)))
    if name.startswith("aten.std"):
        return im.op("sqrt", v)
    if name.startswith("aten.var_mean"):
        return [v, mean if keepdim else im.op("squeeze", mean, axes=axes)]
    return v


@lower("aten.cumsum.default")
def _cumsum(im, x, dim, dtype=None):
    return im.op("cumsum", im.value(x, out_dtype(im)), axis=dim)


@lower("aten._softmax.default", "aten._log_softmax.default", "aten.softmax.int", "aten.log_softmax.int")
def _softmax(im, x, dim, half_or_dtype=None):
    op = "log_softmax" if "log_softmax" in im.target_name() else "softmax"
    return im.op(op, im.value(x, out_dtype(im)), axis=dim)


# ---------------------------------------------------------------- matmul
@lower("aten.mm.default", "aten.bmm.default", "aten.matmul.default")
def _matmul(im, a, b):
    dt = out_dtype(im)
    return im.op("matmul", im.value(a, dt), im.value(b, dt))


def transpose_last(im, w: Value) -> Value:
    r = w.type.rank
    return im.op("transpose", w, perm=list(range(r - 2)) + [r - 1, r - 2]) if r >= 2 else w


@lower("aten.t.default")
def _t(im, x):
    return transpose_last(im, x)


@lower("aten.linear.default")
def _linear(im, x, w, b=None):
    y = im.op("matmul", x, transpose_last(im, w))
    return im.op("add", y, b) if b is not None else y


@lower("aten.addmm.default", "aten.baddbmm.default")
def _addmm(im, bias, a, b, beta=1, alpha=1):
    dt = out_dtype(im)
    y = im.op("matmul", a, b)
    if alpha != 1:
        y = im.op("mul", y, im.scalar(alpha, dt))
    if beta == 0:
        return y
    if beta != 1:
        bias = im.op("mul", bias, im.scalar(beta, dt))
    return im.op("add", y, bias)


# ---------------------------------------------------------------- normalization
@lower("aten.layer_norm.default", "aten.native_layer_norm.default")
def _layer_norm(im, x, shape, w=None, b=None, eps=1e-5, *rest):
    if w is None and b is not None:
        w = im.op("constant_of_shape", shape=list(b.type.shape), value=1.0, dtype=b.type.dtype.name)
    y = im.op("layer_norm", *[v for v in (x, w, b) if v is not None], axis=-len(shape), eps=eps)
    return [y, None, None] if im.target_name().startswith("aten.native") else y


@lower("aten.rms_norm.default")
def _rms_norm(im, x, shape, w=None, eps=None):
    if eps is None:
        eps = torch.finfo(IR_TO_TORCH[x.type.dtype.name]).eps
    return im.op("rms_norm", *[v for v in (x, w) if v is not None], axis=-len(shape), eps=eps)


def _ones(im, like: Value, c) -> Value:
    return im.op("constant_of_shape", shape=[c], value=1.0, dtype=like.type.dtype.name)


@lower("aten._native_batch_norm_legit_no_training.default", "aten._native_batch_norm_legit.default",
       "aten.native_batch_norm.default", "aten.batch_norm.default")
def _batch_norm(im, x, w, b, mean, var, *rest):
    name = im.target_name()
    if name.endswith("no_training.default"):
        eps = rest[1]
    else:
        training, eps = rest[0], rest[2]
        if training:
            raise Unsupported("batch norm in training mode (call model.eval() first)")
    if mean is None or var is None:
        raise Unsupported("batch norm without running statistics")
    c = x.type.shape[1]
    w = w if w is not None else _ones(im, x, c)
    b = b if b is not None else im.op("constant_of_shape", shape=[c], value=0.0, dtype=x.type.dtype.name)
    y = im.op("batch_norm", x, w, b, mean, var, eps=eps)
    return y if name == "aten.batch_norm.default" else [y, None, None]


@lower("aten.native_group_norm.default", "aten.group_norm.default")
def _group_norm(im, x, *args):
    if im.target_name() == "aten.group_norm.default":
        groups, w, b, eps = args[0], *(list(args[1:]) + [None, None, 1e-5])[:3]
    else:
        w, b, _n, _c, _hw, groups, eps = args
    y = im.op("group_norm", *[v for v in (x, w, b) if v is not None], groups=groups, eps=eps) if not (w is None and b is not None) \
        else im.op("group_norm", x, _ones(im, x, x.type.shape[1]), b, groups=groups, eps=eps)
    return y if im.target_name() == "aten.group_norm.default" else [y, None, None]


# ---------------------------------------------------------------- attention
@lower("aten.scaled_dot_product_attention.default", "aten._scaled_dot_product_flash_attention_for_cpu.default")
def _sdpa(im, q, k, v, *args, **kw):
    flash = im.target_name().startswith("aten._scaled")
    names = ("dropout_p", "is_causal") if flash else ("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    opts = {**dict(zip(names, args)), **kw}
    if opts.get("dropout_p", 0.0):
        raise Unsupported(f"attention dropout_p={opts['dropout_p']} (inference only)")
    mask = opts.get("attn_mask")
    inputs = [q, k, v]
    if mask is not None:
        inputs.append(mask if mask.type.dtype.name == "bool" else im.cast(mask, q.type.dtype.name))
    y = im.op("scaled_dot_product_attention", *inputs, causal=bool(opts.get("is_causal", False)), scale=opts.get("scale"),
              enable_gqa=bool(opts.get("enable_gqa", False)) or flash)
    return [y, None] if flash else y


# ---------------------------------------------------------------- conv and pooling
def _pads(padding, nd: int) -> list[int]:
    p = list(padding) if isinstance(padding, (list, tuple)) else [padding] * nd
    p = p * nd if len(p) == 1 else p
    return p + p


def _tuple(v, nd: int, default: int) -> list[int]:
    if v is None or (isinstance(v, (list, tuple)) and len(v) == 0):
        return [default] * nd
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return v * nd if len(v) == 1 else v


@lower("aten.convolution.default", "aten.conv2d.default", "aten.conv1d.default", "aten.conv3d.default")
def _conv(im, x, w, b=None, stride=1, padding=0, dilation=1, *rest):
    name = im.target_name()
    nd = x.type.rank - 2
    transposed, out_pad, groups = (rest[0], rest[1], rest[2]) if name == "aten.convolution.default" else (False, None, rest[0] if rest else 1)
    if isinstance(padding, str):
        raise Unsupported(f"padding='{padding}'")
    attrs = dict(strides=_tuple(stride, nd, 1), pads=_pads(padding, nd), dilations=_tuple(dilation, nd, 1), groups=groups)
    inputs = [v for v in (x, w, b) if v is not None]
    if transposed:
        return im.op("conv_transpose", *inputs, output_padding=_tuple(out_pad, nd, 0), **attrs)
    return im.op("conv", *inputs, **attrs)


@lower("aten.max_pool2d_with_indices.default", "aten.max_pool2d.default", "aten.max_pool1d.default",
       "aten.max_pool3d_with_indices.default")
def _max_pool(im, x, kernel, stride=None, padding=0, dilation=1, ceil_mode=False):
    nd = x.type.rank - 2
    k = _tuple(kernel, nd, 1)
    y = im.op("max_pool", x, kernel=k, strides=_tuple(stride, nd, 0) if stride else k, pads=_pads(padding, nd),
              dilations=_tuple(dilation, nd, 1), ceil_mode=bool(ceil_mode))
    return [y, None] if im.target_name().endswith("with_indices.default") else y


@lower("aten.avg_pool2d.default", "aten.avg_pool1d.default", "aten.avg_pool3d.default")
def _avg_pool(im, x, kernel, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):
    if divisor_override:
        raise Unsupported(f"avg_pool divisor_override={divisor_override}")
    nd = x.type.rank - 2
    k = _tuple(kernel, nd, 1)
    pads = _pads(padding, nd)
    return im.op("avg_pool", x, kernel=k, strides=_tuple(stride, nd, 0) if stride else k, pads=pads, ceil_mode=bool(ceil_mode),
                 count_include_pad=bool(count_include_pad) and any(pads))


@lower("aten._adaptive_avg_pool2d.default", "aten.adaptive_avg_pool2d.default", "aten._adaptive_avg_pool3d.default",
       "aten.adaptive_avg_pool1d.default")
def _adaptive_avg(im, x, out_size):
    nd = x.type.rank - 2
    out = _tuple(out_size, nd, 1)
    spatial = x.type.shape[2:]
    if all(o == 1 for o in out):
        return im.op("global_avg_pool", x)
    if all(isinstance(s, int) and s % o == 0 for s, o in zip(spatial, out)):
        k = [s // o for s, o in zip(spatial, out)]
        return im.op("avg_pool", x, kernel=k, strides=k)
    raise Unsupported(f"adaptive average pooling {list(spatial)} -> {out} (only divisible sizes)")
