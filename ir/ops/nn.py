"""Convolution and pooling (ONNX layouts: x is N,C,D1..Dn; conv weights O,I/groups,k1..kn) and the
channel normalizations (batch/instance/group norm, LRN).

pads are [begin_0, .., begin_n-1, end_0, .., end_n-1]. A symbolic spatial dim survives only where the
output size equals the input size (stride 1, "same" padding); otherwise the op cannot say the size.
"""
from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..types import Dim, TensorType
from .reduce import _acc
from .registry import Attr, OpError, register

_SP, _KS = "hijkl", "uvwxy"  # einsum letters for spatial output positions and kernel offsets (up to 5-D)


def _geometry(op: str, nd: int, strides, pads, dilations, kernel=None) -> tuple[tuple, tuple, tuple]:
    s = tuple(strides) if strides else (1,) * nd
    p = tuple(pads) if pads else (0,) * (2 * nd)
    d = tuple(dilations) if dilations else (1,) * nd
    if len(s) != nd or len(d) != nd or len(p) != 2 * nd or (kernel is not None and len(kernel) != nd):
        raise OpError(f"op '{op}': {nd} spatial dims need {nd} strides/dilations/kernel sizes and {2 * nd} pads, "
                      f"got strides={list(s)} pads={list(p)} dilations={list(d)}" + (f" kernel={list(kernel)}" if kernel else ""))
    if min(s) < 1 or min(d) < 1 or min(p) < 0 or (kernel is not None and min(kernel) < 1):
        raise OpError(f"op '{op}': strides, dilations and kernel must be >= 1 and pads >= 0")
    return s, p, d


def window_out(op: str, n: Dim, k: int, s: int, d: int, pb: int, pe: int, ceil_mode: bool = False) -> Dim:
    """Output length of a sliding window (conv/pool) over a dim of length n; ceil_mode as torch/ONNX."""
    eff = d * (k - 1) + 1
    if isinstance(n, str):
        if s == 1 and pb + pe == eff - 1:
            return n
        raise OpError(f"op '{op}': cannot infer the output size of symbolic dim {n} (kernel {k}, stride {s}, pads {pb},{pe})")
    span = n + pb + pe - eff
    if span < 0:
        raise OpError(f"op '{op}': window {eff} (kernel {k}, dilation {d}) is larger than the padded input {n + pb + pe}")
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= n + pb:  # the last window may not start inside the end padding
        out -= 1
    return out


def _windows(xp: np.ndarray, eff: Sequence[int], s: Sequence[int], d: Sequence[int], out: Sequence[int]) -> np.ndarray:
    """View [N, C, *out, *k] of the windows of a padded [N, C, *spatial] array."""
    nd = len(eff)
    v = sliding_window_view(xp, tuple(eff), axis=tuple(range(2, 2 + nd)))
    idx = (slice(None), slice(None)) + tuple(slice(0, (o - 1) * st + 1, st) for o, st in zip(out, s)) \
        + tuple(slice(None, None, dd) for dd in d)
    return v[idx]


def _pad_spatial(x: np.ndarray, begin: Sequence[int], end: Sequence[int], value) -> np.ndarray:
    return np.pad(x, [(0, 0), (0, 0)] + list(zip(begin, end)), constant_values=value)


def _check_float(op: str, *ts: TensorType) -> None:
    for t in ts:
        if not t.dtype.is_float:
            raise OpError(f"op '{op}' needs float operands, got {t}")
        if t.dtype != ts[0].dtype:
            raise OpError(f"op '{op}': operand dtypes differ ({ts[0]} vs {t})")


def _channel_param(op: str, what: str, t: TensorType, c: Dim) -> None:
    if t.rank != 1 or (t.shape[0] != c and not (isinstance(c, str) or isinstance(t.shape[0], str))):
        raise OpError(f"op '{op}': {what} must be [C] with C={c}, got {t}")


# ---------------------------------------------------------------- conv
_CONV_ATTRS = {"strides": Attr("ints", None), "pads": Attr("ints", None), "dilations": Attr("ints", None), "groups": Attr("int", 1)}


def _conv_infer(ts, a):
    x, w = ts[0], ts[1]
    _check_float("conv", *ts)
    if x.rank < 3 or w.rank != x.rank:
        raise OpError(f"op 'conv' needs x [N,C,*spatial] and w [M,C/groups,*kernel] of the same rank >= 3, got {x} and {w}")
    nd, g = x.rank - 2, a["groups"]
    s, p, d = _geometry("conv", nd, a["strides"], a["pads"], a["dilations"])
    c, m, k = x.shape[1], w.shape[0], w.shape[2:]
    if not all(isinstance(v, int) for v in (m, w.shape[1]) + tuple(k)):
        raise OpError(f"op 'conv': weight shape must be static, got {w}")
    if g < 1 or m % g or (isinstance(c, int) and (c % g or c // g != w.shape[1])):
        raise OpError(f"op 'conv': channels do not match: x has C={c}, w expects C/groups={w.shape[1]} with groups={g} (and M={m} % groups == 0)")
    if len(ts) == 3:
        _channel_param("conv", "bias", ts[2], m)
    out = [window_out("conv", x.shape[2 + i], k[i], s[i], d[i], p[i], p[nd + i]) for i in range(nd)]
    return x.with_shape([x.shape[0], m] + out)


def _conv(x, w, b=None, strides=None, pads=None, dilations=None, groups=1):
    nd = x.ndim - 2
    s, p, d = _geometry("conv", nd, strides, pads, dilations)
    # accumulate in f64: the result then does not depend on BLAS blocking, so identical filters give identical
    # channels (as onnxruntime does); f32 blocking noise is amplified by e.g. softmax over huge logits
    xf, wf = x.astype(np.float64), w.astype(np.float64)
    k = w.shape[2:]
    out = [window_out("conv", x.shape[2 + i], k[i], s[i], d[i], p[i], p[nd + i]) for i in range(nd)]
    v = _windows(_pad_spatial(xf, p[:nd], p[nd:], 0), [d[i] * (k[i] - 1) + 1 for i in range(nd)], s, d, out)
    n, c, m, g = x.shape[0], x.shape[1], w.shape[0], groups
    v = v.reshape(n, g, c // g, *out, *k)
    wg = wf.reshape(g, m // g, c // g, *k)
    sp, ks = _SP[:nd], _KS[:nd]
    y = np.einsum(f"ngc{sp}{ks},gmc{ks}->ngm{sp}", v, wg, optimize=True).reshape(n, m, *out)
    if b is not None:
        y = y + _acc(b).reshape((1, m) + (1,) * nd)
    return y.astype(x.dtype)


register("conv", "conv", _conv_infer, _conv, _CONV_ATTRS, arity=(2, 3), weight_operand=1)


def _convt_sizes(op, x, k, s, p, d, op_pad):
    nd = len(k)
    out = []
    for i in range(nd):
        n, extra = x[2 + i], op_pad[i] + d[i] * (k[i] - 1) - p[i] - p[nd + i]
        if isinstance(n, str):
            if s[i] != 1 or extra != 0:
                raise OpError(f"op '{op}': cannot infer the output size of symbolic dim {n}")
            out.append(n)
        else:
            o = s[i] * (n - 1) + extra + 1
            if o < 1:
                raise OpError(f"op '{op}': pads {list(p)} leave no output for input dim {n}")
            out.append(o)
    return out


def _convt_attrs(nd, a):
    s, p, d = _geometry("conv_transpose", nd, a["strides"], a["pads"], a["dilations"])
    op_pad = tuple(a["output_padding"]) if a["output_padding"] else (0,) * nd
    if len(op_pad) != nd or any(o < 0 or o >= max(s[i], d[i]) for i, o in enumerate(op_pad)):
        raise OpError(f"op 'conv_transpose': output_padding {list(op_pad)} must have {nd} entries, each < max(stride, dilation)")
    return s, p, d, op_pad


def _convt_infer(ts, a):
    x, w = ts[0], ts[1]
    _check_float("conv_transpose", *ts)
    if x.rank < 3 or w.rank != x.rank:
        raise OpError(f"op 'conv_transpose' needs x [N,C,*spatial] and w [C,M/groups,*kernel] of the same rank >= 3, got {x} and {w}")
    nd, g = x.rank - 2, a["groups"]
    s, p, d, op_pad = _convt_attrs(nd, a)
    if not all(isinstance(v, int) for v in w.shape):
        raise OpError(f"op 'conv_transpose': weight shape must be static, got {w}")
    c = x.shape[1]
    if g < 1 or w.shape[0] % g or (isinstance(c, int) and c != w.shape[0]):
        raise OpError(f"op 'conv_transpose': x has C={c} but w has {w.shape[0]} input channels (groups={g})")
    m = w.shape[1] * g
    if len(ts) == 3:
        _channel_param("conv_transpose", "bias", ts[2], m)
    return x.with_shape([x.shape[0], m] + _convt_sizes("conv_transpose", x.shape, w.shape[2:], s, p, d, op_pad))


def _conv_transpose(x, w, b=None, strides=None, pads=None, dilations=None, groups=1, output_padding=None):
    nd = x.ndim - 2
    s, p, d, op_pad = _convt_attrs(nd, {"strides": strides, "pads": pads, "dilations": dilations, "output_padding": output_padding})
    xf, wf = _acc(x), _acc(w)
    n, c, g, k, size = x.shape[0], x.shape[1], groups, w.shape[2:], x.shape[2:]
    mg = w.shape[1]
    full = [s[i] * (size[i] - 1) + d[i] * (k[i] - 1) + 1 + op_pad[i] for i in range(nd)]
    y = np.zeros((n, g, mg, *full), dtype=np.result_type(xf, wf))
    xg, wg = xf.reshape(n, g, c // g, *size), wf.reshape(g, c // g, mg, *k)
    for kk in itertools.product(*(range(kd) for kd in k)):  # scatter each kernel tap into the strided output
        contrib = np.einsum("ngc...,gcm->ngm...", xg, wg[(slice(None),) * 3 + kk])
        dst = tuple(slice(kk[i] * d[i], kk[i] * d[i] + s[i] * (size[i] - 1) + 1, s[i]) for i in range(nd))
        y[(slice(None),) * 3 + dst] += contrib
    y = y.reshape(n, g * mg, *full)[(slice(None), slice(None)) + tuple(slice(p[i], full[i] - p[nd + i]) for i in range(nd))]
    if b is not None:
        y = y + _acc(b).reshape((1, g * mg) + (1,) * nd)
    return y.astype(x.dtype)


register("conv_transpose", "conv", _convt_infer, _conv_transpose, {**_CONV_ATTRS, "output_padding": Attr("ints", None)}, arity=(2, 3),
         weight_operand=1)


# ---------------------------------------------------------------- pooling
def _pool_infer(name):
    def infer(ts, a):
        x = ts[0]
        if x.rank < 3:
            raise OpError(f"op '{name}' needs x [N,C,*spatial], got {x}")
        if name == "avg_pool" and not x.dtype.is_float:
            raise OpError(f"op '{name}' needs a float operand, got {x}")
        nd, k = x.rank - 2, a["kernel"]
        s, p, d = _geometry(name, nd, a["strides"], a["pads"], a["dilations"], k)
        if any(p[i] >= d[i % nd] * (k[i % nd] - 1) + 1 for i in range(2 * nd)):
            raise OpError(f"op '{name}': pads {list(p)} must be smaller than the kernel window {list(k)}")
        return x.with_shape(list(x.shape[:2]) + [window_out(name, x.shape[2 + i], k[i], s[i], d[i], p[i], p[nd + i], a["ceil_mode"])
                                                 for i in range(nd)])
    return infer


def _pool_windows(x, kernel, strides, pads, dilations, ceil_mode, fill):
    """Windows [N, C, *out, *k] over x padded with `fill` (explicit pads, then the ceil_mode overhang)."""
    nd = x.ndim - 2
    s, p, d = _geometry("pool", nd, strides, pads, dilations, kernel)
    eff = [d[i] * (kernel[i] - 1) + 1 for i in range(nd)]
    out = [window_out("pool", x.shape[2 + i], kernel[i], s[i], d[i], p[i], p[nd + i], ceil_mode) for i in range(nd)]
    over = [max(0, (out[i] - 1) * s[i] + eff[i] - (x.shape[2 + i] + p[i] + p[nd + i])) for i in range(nd)]
    xp = _pad_spatial(x, p[:nd], [p[nd + i] + over[i] for i in range(nd)], fill)
    return _windows(xp, eff, s, d, out), (p, over, eff, s, d, out)


def _max_pool(x, kernel, strides=None, pads=None, dilations=None, ceil_mode=False):
    xf = _acc(x)
    fill = -np.inf if xf.dtype.kind == "f" else (np.iinfo(xf.dtype).min if xf.dtype.kind in "iu" else False)
    v, _ = _pool_windows(xf, kernel, strides, pads, dilations, ceil_mode, fill)
    return v.max(axis=tuple(range(-len(kernel), 0))).astype(x.dtype)


def _avg_pool(x, kernel, strides=None, pads=None, dilations=None, ceil_mode=False, count_include_pad=False):
    xf = _acc(x)
    nd = len(kernel)
    v, (p, over, eff, s, d, out) = _pool_windows(xf, kernel, strides, pads, dilations, ceil_mode, 0)
    total = v.sum(axis=tuple(range(-nd, 0)))
    # divisor: elements of the input (plus the explicit pads with count_include_pad; never the ceil overhang), as torch
    ones = np.ones((1, 1) + x.shape[2:], dtype=xf.dtype)
    mask = _pad_spatial(ones, p[:nd], p[nd:], 1 if count_include_pad else 0)
    mask = _pad_spatial(mask, [0] * nd, over, 0)
    count = _windows(mask, eff, s, d, out).sum(axis=tuple(range(-nd, 0)))
    return (total / count).astype(x.dtype)


_POOL = {"kernel": Attr("ints"), "strides": Attr("ints", None), "pads": Attr("ints", None), "dilations": Attr("ints", None),
         "ceil_mode": Attr("bool", False)}
register("max_pool", "pool", _pool_infer("max_pool"), _max_pool, _POOL)
register("avg_pool", "pool", _pool_infer("avg_pool"), _avg_pool, {**_POOL, "count_include_pad": Attr("bool", False)})


def _global_infer(name):
    def infer(ts, a):
        x = ts[0]
        if x.rank < 3:
            raise OpError(f"op '{name}' needs x [N,C,*spatial], got {x}")
        if name == "global_avg_pool" and not x.dtype.is_float:
            raise OpError(f"op '{name}' needs a float operand, got {x}")
        return x.with_shape(list(x.shape[:2]) + [1] * (x.rank - 2))
    return infer


register("global_avg_pool", "pool", _global_infer("global_avg_pool"),
         lambda x: _acc(x).mean(axis=tuple(range(2, x.ndim)), keepdims=True).astype(x.dtype))
register("global_max_pool", "pool", _global_infer("global_max_pool"),
         lambda x: x.max(axis=tuple(range(2, x.ndim)), keepdims=True))


# ---------------------------------------------------------------- channel normalizations (channel axis 1)
def _bcast_c(p: np.ndarray, rank: int) -> np.ndarray:
    return _acc(p).reshape((1, -1) + (1,) * (rank - 2))


def _batch_norm_infer(ts, a):
    x = ts[0]
    _check_float("batch_norm", *ts)
    if x.rank < 2:
        raise OpError(f"op 'batch_norm' needs x [N,C,...], got {x}")
    for what, t in zip(("scale", "bias", "mean", "var"), ts[1:]):
        _channel_param("batch_norm", what, t, x.shape[1])
    return x


def _batch_norm(x, scale, bias, mean, var, eps=1e-5):
    r = x.ndim
    y = (_acc(x) - _bcast_c(mean, r)) / np.sqrt(_bcast_c(var, r) + np.float32(eps)) * _bcast_c(scale, r) + _bcast_c(bias, r)
    return y.astype(x.dtype)


register("batch_norm", "norm", _batch_norm_infer, _batch_norm, {"eps": Attr("float", 1e-5)}, arity=(5, 5))


def _instance_norm_infer(ts, a):
    x = ts[0]
    _check_float("instance_norm", *ts)
    if x.rank < 3:
        raise OpError(f"op 'instance_norm' needs x [N,C,*spatial], got {x}")
    for what, t in zip(("scale", "bias"), ts[1:]):
        _channel_param("instance_norm", what, t, x.shape[1])
    return x


def _normalize(xf: np.ndarray, axes: tuple, eps: float) -> np.ndarray:
    mu = xf.mean(axis=axes, keepdims=True)
    var = ((xf - mu) ** 2).mean(axis=axes, keepdims=True)
    return (xf - mu) / np.sqrt(var + np.float32(eps))


def _instance_norm(x, scale, bias, eps=1e-5):
    y = _normalize(_acc(x), tuple(range(2, x.ndim)), eps) * _bcast_c(scale, x.ndim) + _bcast_c(bias, x.ndim)
    return y.astype(x.dtype)


register("instance_norm", "norm", _instance_norm_infer, _instance_norm, {"eps": Attr("float", 1e-5)}, arity=(3, 3))


def _group_norm_infer(ts, a):
    x = ts[0]
    _check_float("group_norm", *ts)
    g, c = a["groups"], x.shape[1] if x.rank >= 2 else None
    if x.rank < 2 or g < 1 or (isinstance(c, int) and c % g):
        raise OpError(f"op 'group_norm' needs x [N,C,...] with C divisible by groups={g}, got {x}")
    for what, t in zip(("scale", "bias"), ts[1:]):
        _channel_param("group_norm", what, t, c)
    return x


def _group_norm(x, scale=None, bias=None, groups=1, eps=1e-5):
    n, c = x.shape[:2]
    xf = _acc(x).reshape(n, groups, -1)
    y = _normalize(xf, (2,), eps).reshape(x.shape)
    if scale is not None:
        y = y * _bcast_c(scale, x.ndim)
    if bias is not None:
        y = y + _bcast_c(bias, x.ndim)
    return y.astype(x.dtype)


register("group_norm", "norm", _group_norm_infer, _group_norm, {"groups": Attr("int"), "eps": Attr("float", 1e-5)}, arity=(1, 3))


def _lrn_infer(ts, a):
    x = ts[0]
    _check_float("lrn", x)
    if x.rank < 3 or a["size"] < 1:
        raise OpError(f"op 'lrn' needs x [N,C,*spatial] and size >= 1, got {x}, size={a['size']}")
    return x


def _lrn(x, size, alpha=1e-4, beta=0.75, bias=1.0):
    """ONNX LRN: the window over channels is [c - (size-1)//2, c + size//2] (odd sizes agree with torch)."""
    xf = _acc(x)
    lo = (size - 1) // 2
    sq = np.pad(xf * xf, [(0, 0), (lo, size - 1 - lo)] + [(0, 0)] * (x.ndim - 2))
    ssum = sliding_window_view(sq, size, axis=1).sum(axis=-1)
    return (xf / (np.float32(bias) + np.float32(alpha / size) * ssum) ** np.float32(beta)).astype(x.dtype)


register("lrn", "norm", _lrn_infer, _lrn, {"size": Attr("int"), "alpha": Attr("float", 1e-4), "beta": Attr("float", 0.75),
                                             "bias": Attr("float", 1.0)})


# ---------------------------------------------------------------- prelu (slope broadcasts onto x)
def _prelu_infer(ts, a):
    x, slope = ts
    _check_float("prelu", x, slope)
    from ..types import broadcast_shapes
    if broadcast_shapes(x.shape, slope.shape) != x.shape:
        raise OpError(f"op 'prelu': slope {slope} must broadcast onto x {x}")
    return x


def _prelu_fn(x, slope):
    return np.where(x >= 0, x, x * slope)


def _prelu(x, slope):
    return _prelu_fn(_acc(x), _acc(slope)).astype(x.dtype)


register("prelu", "binary", _prelu_infer, _prelu, arity=(2, 2), fn=_prelu_fn)

