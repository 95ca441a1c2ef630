"""recognize-*: rewrite written-out primitive forms (as ONNX exports and torch decompositions produce
them) into the single registry op, so fusion and the backends see one op:

  softmax    exp(x - max(x)) / sum(exp(x - max(x)))           (also without the max, or * reciprocal)
  layer_norm (x - mean) / sqrt(mean((x - mean)^2) + eps) [* w] [+ b]   (also * rsqrt, * reciprocal(sqrt))
  rms_norm   x * rsqrt(mean(x^2) + eps) [* w]                 (also / sqrt, pow or x*x)
  gelu       0.5 * x * (1 + erf(x / sqrt 2)),  0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
  attention  softmax(q @ kᵀ [* or / scale] [+ mask | where(cond, ., -big)]) @ v -> scaled_dot_product_attention

Each rewrite is exact up to float rounding (the differential tests hold them to 1e-5). The reduction axes
must be the trailing ones, and a weight/bias is absorbed only when it broadcasts over the normalized dims
alone, so the op's semantics match the written-out form.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from ..ir import Graph, Value
from ..ir.ops import norm_axis
from .manager import PassContext, register_pass
from .graphutil import const_data, splat_value
from .rewriter import Const, Match, Op, Pat, Rewrite, Rule, Var, apply_rules

X = Var("x", where=lambda v: v.dtype.is_float)


def _keep() -> dict:
    return {"keepdims": True}


def _axes(n, rank: int) -> Optional[tuple]:
    a = n.attrs.get("axes")
    if a is None or len(a) == 0:
        return tuple(range(rank))
    return tuple(sorted(norm_axis(x, rank) for x in a))


def _trailing(axes: tuple, rank: int) -> bool:
    return bool(axes) and axes == tuple(range(axes[0], rank))


# ---- softmax
def _softmax(m: Match, rw: Rewrite) -> Optional[Value]:
    x, rank = m["x"], m["x"].type.rank
    axes = [_axes(m.node(k), rank) for k in ("sum", "max") if k in m.nodes]
    if any(len(a) != 1 for a in axes) or len(set(axes)) != 1:
        return None
    return rw.op("softmax", x, axis=axes[0][0])


def _softmax_rules() -> list[Rule]:
    rules = []
    for with_max in (True, False):
        inner = Op("sub", X, Op("reduce_max", X, attrs=_keep(), name="max")) if with_max else X
        e = Op("exp", inner, name="e")
        s = Op("reduce_sum", e, attrs=_keep(), name="sum")
        rules.append(Rule("softmax", Op("div", e, s), _softmax))
        rules.append(Rule("softmax", Op("mul", e, Op("reciprocal", s)), _softmax))
    return rules


# ---- layer_norm / rms_norm
def _square(v: Pat) -> list[Pat]:
    return [Op("pow", v, Const(value=2.0)), Op("mul", v, v)]


def _normalized(num: Pat, ms: Pat) -> list[Pat]:
    """num / sqrt(ms + eps) in the forms exporters write."""
    ve = Op("add", ms, Const("eps"))
    return [Op("div", num, Op("sqrt", ve)), Op("mul", num, Op("rsqrt", ve)), Op("mul", num, Op("reciprocal", Op("sqrt", ve)))]


def _norm_build(op: str):
    def build(m: Match, rw: Rewrite) -> Optional[Value]:
        x, rank = m["x"], m["x"].type.rank
        eps = m.scalar("eps")
        axes = {_axes(m.node(k), rank) for k in ("mean", "var") if k in m.nodes}
        if eps is None or len(axes) != 1:
            return None
        (ax,) = axes
        if not _trailing(ax, rank):
            return None
        return rw.op(op, x, axis=ax[0], eps=eps)
    return build


def _norm_rules() -> tuple[list[Rule], list[Rule]]:
    rules = []
    mean = Op("reduce_mean", X, attrs=_keep(), name="mean")
    d = Op("sub", X, mean, name="d")
    for sq in _square(d):
        for root in _normalized(d, Op("reduce_mean", sq, attrs=_keep(), name="var")):
            rules.append(Rule("layer_norm", root, _norm_build("layer_norm")))
    rms = []
    for sq in _square(X):
        for root in _normalized(X, Op("reduce_mean", sq, attrs=_keep(), name="var")):
            rms.append(Rule("rms_norm", root, _norm_build("rms_norm")))
    return rules, rms


def _fits_norm(n, p: Value) -> bool:
    """p broadcasts over the normalized (trailing) dims only."""
    x = n.inputs[0]
    nd = x.type.rank - norm_axis(n.attrs.get("axis", -1), x.type.rank)
    return p.type.rank <= nd and p.dtype == x.dtype


def _with_weight(m: Match, rw: Rewrite) -> Optional[Value]:
    n = m.node("n")
    if len(n.inputs) != 1 or not _fits_norm(n, m["w"]):
        return None
    return rw.op(n.op, n.inputs[0], m["w"], **n.attrs)


def _with_bias(m: Match, rw: Rewrite) -> Optional[Value]:
    n = m.node("n")
    if n.op != "layer_norm" or not _fits_norm(n, m["b"]):
        return None
    w = n.inputs[1] if len(n.inputs) >= 2 else rw.const(np.ones((1,), n.inputs[0].dtype.np), "ln.ones")
    if len(n.inputs) == 3:
        return None
    return rw.op("layer_norm", n.inputs[0], w, m["b"], **n.attrs)


AFFINE = [
    Rule("norm-weight", Op("mul", Op(("layer_norm", "rms_norm"), Var(), name="n", one_use=True), Var("w")), _with_weight),
    Rule("norm-bias", Op("add", Op("layer_norm", Var(), Var(), name="n", one_use=True), Var("b")), _with_bias),
    Rule("norm-bias", Op("add", Op("layer_norm", Var(), name="n", one_use=True), Var("b")), _with_bias),
]


# ---- gelu
def _gelu(approx: str):
    def build(m: Match, rw: Rewrite) -> Optional[Value]:
        return rw.op("gelu", m["x"], approximate=approx)
    return build


def _gelu_rules() -> list[Rule]:
    c = lambda v: Const(value=v, rtol=1e-4)  # noqa: E731
    erf_arg = [Op("div", X, c(math.sqrt(2))), Op("mul", X, c(1 / math.sqrt(2)))]
    cube = [Op("pow", X, c(3.0)), Op("mul", X, Op("mul", X, X)), Op("mul", Op("mul", X, X), X)]
    tanh_arg = [Op("mul", Op("add", X, Op("mul", cb, c(0.044715))), c(math.sqrt(2 / math.pi))) for cb in cube]
    inners = [("none", Op("add", Op("erf", a), c(1.0))) for a in erf_arg] + [("tanh", Op("add", Op("tanh", a), c(1.0))) for a in tanh_arg]
    rules = []
    for approx, inner in inners:
        for root in (Op("mul", Op("mul", X, c(0.5)), inner), Op("mul", X, Op("mul", inner, c(0.5))),
                     Op("mul", Op("mul", X, inner), c(0.5))):
            rules.append(Rule("gelu", root, _gelu(approx)))
    return rules


# ---- attention
_BIG_NEG = -1e9


def _swap_last(n) -> bool:
    r = n.inputs[0].type.rank
    p = n.attrs.get("perm")
    p = tuple(range(r))[::-1] if p is None else tuple(q % r for q in p)
    return r >= 2 and p == tuple(range(r - 2)) + (r - 1, r - 2)


def _peel_scale(v: Value, uses: dict) -> tuple[Value, float]:
    """v = x * c (or c * x, x / c) with a constant scalar c -> (x, c); else (v, 1)."""
    n = v.producer
    if n is None or n.op not in ("mul", "div") or n.body is not None:
        return v, 1.0
    a, b = n.inputs
    for x, c, inv in ((a, b, n.op == "div"), (b, a, False)) if n.op == "mul" else ((a, b, True),):
        s = splat_value(c)
        if s is not None and s != 0 and c.type.rank <= x.type.rank and x.type == v.type:
            return x, (1.0 / s if inv else s)
    return v, 1.0


def _scores(s: Value, uses: dict):
    """Walk softmax's operand: [mask add | where(cond, ., -big)] [* scale] (q [* c]) @ (kᵀ [* c]).
    Returns (q, kt, scale, mask parts) or None."""
    masks: list = []
    for _ in range(2):  # at most a where-mask and an additive mask, in either order
        n = s.producer
        if n is None or n.body is not None or uses.get(s.id, 0) != 1:
            break
        if n.op == "where" and splat_value(n.inputs[2]) is not None and splat_value(n.inputs[2]) <= _BIG_NEG \
                and n.inputs[1].type == s.type:
            masks.append(("where", n.inputs[0], n.inputs[2]))
            s = n.inputs[1]
        elif n.op == "add":
            a, b = n.inputs
            side = a if _is_qk(a, uses) and b.type.rank <= s.type.rank else b if _is_qk(b, uses) else None
            if side is None or side.type != s.type:
                break
            masks.append(("add", b if side is a else a))
            s = side
        else:
            break
    s, scale = _peel_scale(s, uses) if uses.get(s.id, 0) == 1 else (s, 1.0)
    mm = s.producer
    if mm is None or mm.op != "matmul" or mm.body is not None or uses.get(s.id, 0) != 1:
        return None
    q, qs = _peel_scale(mm.inputs[0], uses)
    kt, ks = _peel_scale(mm.inputs[1], uses)
    return q, kt, scale * qs * ks, masks


def _is_qk(v: Value, uses: dict) -> bool:
    v, _ = _peel_scale(v, uses)
    return v.producer is not None and v.producer.op == "matmul"


def _rows_all_masked(mask: np.ndarray, keep) -> bool:
    return bool(np.any(np.all(~keep(mask), axis=-1)))


def _attention(m: Match, rw: Rewrite) -> Optional[Value]:
    sm, v = m.node("sm"), m["v"]
    rank = sm.inputs[0].type.rank
    if norm_axis(sm.attrs.get("axis", -1), rank) != rank - 1:
        return None
    if "zero" in m.vals and m.uses.get(sm.outputs[0].id, 0) != 3:
        return None  # the NaN guard's softmax must feed only the guard
    parsed = _scores(sm.inputs[0], m.uses)
    if parsed is None:
        return None
    q, kt, scale, masks = parsed
    if kt.type.rank < 2 or q.type.rank != kt.type.rank:
        return None
    dt = q.dtype.np
    if "zero" in m.vals:
        # where(isnan(p), 0, p) only differs from p on fully masked rows: allowed when constant masks have none
        for mk in masks:
            data = const_data(mk[1]) if mk[0] == "where" else const_data(mk[1])
            if data is None or _rows_all_masked(data, (lambda a: a) if mk[0] == "where" else (lambda a: a > _BIG_NEG)):
                return None
    tn = kt.producer
    if tn is not None and tn.op == "transpose" and tn.body is None and _swap_last(tn):
        k = tn.inputs[0]
    else:
        r = kt.type.rank
        k = rw.op("transpose", kt, perm=tuple(range(r - 2)) + (r - 1, r - 2))
    mask = None
    for mk in masks:
        if mk[0] == "where":  # where(cond, s, fill) == s + where(cond, 0, fill) once softmax makes exp(fill - max) 0
            part = rw.op("where", mk[1], rw.const(np.zeros((), dt), "zero"), mk[2])
        else:
            part = mk[1]
        mask = part if mask is None else rw.op("add", mask, part)
    if mask is not None and mask.dtype != q.dtype:
        return None
    args = (q, k, v) + ((mask,) if mask is not None else ())
    return rw.op("scaled_dot_product_attention", *args, scale=scale)


def _attention_rules() -> list[Rule]:
    p = Op("softmax", Var("s"), name="sm")
    guarded = Op("where", Op("ne", p, p, one_use=True), Const("zero", value=0.0), p, commute=False)
    return [Rule("attention", Op("matmul", Op("softmax", Var("s"), name="sm", one_use=True), Var("v")), _attention),
            Rule("attention", Op("matmul", guarded, Var("v")), _attention)]


SOFTMAX = _softmax_rules()
LAYER_NORM, RMS_NORM = _norm_rules()
GELU = _gelu_rules()
ATTENTION = _attention_rules()


def _run(g: Graph, rules: list[Rule]) -> dict:
    fired = apply_rules(g, rules)
    g.remove_unused_constants()
    return {"rewrites": sum(fired.values()), **fired}


@register_pass("recognize-softmax")
def recognize_softmax(g: Graph, ctx: PassContext) -> dict:
    """exp(x - max) / sum(exp(x - max)) -> softmax."""
    return _run(g, SOFTMAX)


@register_pass("recognize-norms")
def recognize_norms(g: Graph, ctx: PassContext) -> dict:
    """Written-out layer norm / RMS norm (with weight and bias) -> layer_norm / rms_norm."""
    return _run(g, LAYER_NORM + RMS_NORM + AFFINE)


@register_pass("recognize-gelu")
def recognize_gelu(g: Graph, ctx: PassContext) -> dict:
    """0.5 x (1 + erf(x/sqrt2)) and the tanh approximation -> gelu."""
    return _run(g, GELU)


@register_pass("recognize-attention")
def recognize_attention(g: Graph, ctx: PassContext) -> dict:
    """softmax(q kᵀ * scale + mask) v -> scaled_dot_product_attention."""
    return _run(g, ATTENTION)
