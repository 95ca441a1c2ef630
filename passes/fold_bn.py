"""fold-batchnorm: inference-mode batch_norm folded into the preceding conv / matmul weights and bias.

batch_norm(y){eps} = (y - mean) * s + bias with s = scale / sqrt(var + eps), per channel (axis 1). After
conv(x, W, b): W' = W * s[:, None, ...], b' = (b - mean) * s + bias. After a 2-D matmul(x, W) [+ b]:
W' = W * s[None, :], bias b' likewise. A batch_norm that follows neither becomes one mul + add with
constant per-channel vectors, which then fuses as pointwise. Only constant statistics are folded. A batch
norm already decomposed into `conv * s[C] + t[C]` (torch-mlir, some exporters) folds the same way.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..ir import Graph, Value
from .manager import PassContext, register_pass
from .rewriter import Const, Match, Op, Rewrite, Rule, Var, apply_rules

_BN_PARAMS = (Const("scale"), Const("bias"), Const("mean"), Const("var"))


def _scale_shift(m: Match, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel s and t with bn(y) = y * s + t, computed in float64."""
    scale, bias, mean, var = (m.data(k).astype(np.float64) for k in ("scale", "bias", "mean", "var"))
    s = scale / np.sqrt(var + eps)
    return s, bias - mean * s


def _conv_bn(m: Match, rw: Rewrite) -> Optional[Value]:
    conv, bn = m.node("conv"), m.node("bn")
    w = m.data("w")
    dt = w.dtype
    s, t = _scale_shift(m, bn.attrs["eps"])
    b = conv.inputs[2].data.astype(np.float64) if len(conv.inputs) == 3 else 0.0
    w2 = (w.astype(np.float64) * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(dt)
    b2 = (b * s + t).astype(dt)
    return rw.op("conv", m["x"], rw.const(w2, m["w"].name + ".bnfold"), rw.const(b2, "bnfold.bias"), **conv.attrs)


def _matmul_bn(m: Match, rw: Rewrite) -> Optional[Value]:
    bn, w = m.node("bn"), m.data("w")
    if m.root.type.rank != 2 or w.ndim != 2:
        return None  # batch_norm's channel axis is 1: the matmul's output features only for 2-D results
    s, t = _scale_shift(m, bn.attrs["eps"])
    b = m.data("b").astype(np.float64) if "b" in m.vals else 0.0
    if np.ndim(b) > 1:
        return None
    w2 = (w.astype(np.float64) * s[None, :]).astype(w.dtype)
    b2 = (b * s + t).astype(w.dtype)
    y = rw.op("matmul", m["x"], rw.const(w2, m["w"].name + ".bnfold"))
    return rw.op("add", y, rw.const(b2, "bnfold.bias"))


def _bn_affine(m: Match, rw: Rewrite) -> Optional[Value]:
    x = m["y"]
    s, t = _scale_shift(m, m.node("bn").attrs["eps"])
    shape = (-1,) + (1,) * (x.type.rank - 2)
    dt = x.dtype.np
    return rw.op("add", rw.op("mul", x, rw.const(s.reshape(shape).astype(dt), "bn.scale")), rw.const(t.reshape(shape).astype(dt), "bn.shift"))


def _per_channel(v: Value, rank: int, c: int) -> Optional[np.ndarray]:
    """A constant broadcasting over [N, C, *spatial] that varies only along C -> its [C] vector, else None."""
    d = v.data
    if d is None or d.ndim > rank or d.dtype.kind != "f":
        return None
    shape = (1,) * (rank - d.ndim) + d.shape
    if any(k != 1 for i, k in enumerate(shape) if i != 1) or shape[1] not in (1, c):
        return None
    return np.broadcast_to(d.reshape(-1), (c,)).astype(np.float64)


def _conv_scale(m: Match, rw: Rewrite) -> Optional[Value]:
    """conv(x, W, b) * s[C] -> conv(x, W*s, b*s): the decomposed batch norm torch-mlir and some exporters write."""
    conv, w = m.node("conv"), m.data("w")
    s = _per_channel(m["s"], m.root.type.rank, w.shape[0])
    if s is None:
        return None
    b = conv.inputs[2].data.astype(np.float64) if len(conv.inputs) == 3 else np.zeros(w.shape[0])
    w2 = (w.astype(np.float64) * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype)
    return rw.op("conv", m["x"], rw.const(w2, m["w"].name + ".scaled"), rw.const((b * s).astype(w.dtype), "conv.bias"), **conv.attrs)


def _conv_shift(m: Match, rw: Rewrite) -> Optional[Value]:
    """conv(x, W, b) + t[C] -> conv(x, W, b + t) (and - t)."""
    conv, w = m.node("conv"), m.data("w")
    t = _per_channel(m["t"], m.root.type.rank, w.shape[0])
    if t is None:
        return None
    if m.root.producer.op == "sub":
        t = -t
    b = conv.inputs[2].data.astype(np.float64) if len(conv.inputs) == 3 else np.zeros(w.shape[0])
    return rw.op("conv", m["x"], m["w"], rw.const((b + t).astype(w.dtype), "conv.bias"), **conv.attrs)


_CONV = Op("conv", Var("x"), Const("w"), Const(), name="conv", one_use=True)
_CONV_NB = Op("conv", Var("x"), Const("w"), name="conv", one_use=True)
_MM = Op("matmul", Var("x"), Const("w"), one_use=True)

FOLD_BN = [
    Rule("conv-bn", Op("batch_norm", _CONV, *_BN_PARAMS, name="bn"), _conv_bn),
    Rule("conv-bn", Op("batch_norm", _CONV_NB, *_BN_PARAMS, name="bn"), _conv_bn),
    Rule("matmul-bn", Op("batch_norm", _MM, *_BN_PARAMS, name="bn"), _matmul_bn),
    Rule("matmul-bn", Op("batch_norm", Op("add", _MM, Const("b"), one_use=True), *_BN_PARAMS, name="bn"), _matmul_bn),
]
for _c in (_CONV, _CONV_NB):
    FOLD_BN += [Rule("conv-scale", Op("mul", _c, Const("s")), _conv_scale), Rule("conv-shift", Op("add", _c, Const("t")), _conv_shift),
                Rule("conv-shift", Op("sub", _c, Const("t")), _conv_shift)]
BN_AFFINE = [Rule("bn-to-affine", Op("batch_norm", Var("y"), *_BN_PARAMS, name="bn"), _bn_affine)]


@register_pass("fold-batchnorm")
def fold_batchnorm(g: Graph, ctx: PassContext) -> dict:
    """Fold batch_norm with constant statistics into the preceding conv/matmul, else into a mul+add."""
    fired = apply_rules(g, FOLD_BN)
    fired.update(apply_rules(g, BN_AFFINE))
    dropped = g.remove_unused_constants()
    return {"folded": fired.get("conv-bn", 0) + fired.get("matmul-bn", 0), "to_affine": fired.get("bn-to-affine", 0),
            "conv_affine_folded": fired.get("conv-scale", 0) + fired.get("conv-shift", 0),
            "constants_dropped": dropped}
