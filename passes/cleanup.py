"""Cleanup passes: shape inference, constant folding, dead-code and common-subexpression elimination."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..ir import Graph, Node, Value
from ..ir.evaluate import run_node
from ..ir.ops import OPS, OpError
from ..ir.types import TensorType, _factors, dim_mul
from .graphutil import const_data, remove_dead
from .manager import PassContext, PassError, register_pass

FOLD_MAX_ELEMENTS = 1 << 20  # a folded result larger than this is kept only when it replaces its inputs


# ---- infer-shapes
def _subst_dim(d, env: dict):
    if isinstance(d, int) or not env:
        return d
    coef, syms = _factors(d)
    return dim_mul(coef, *[env.get(s, s) for s in syms])


def _subst_type(t: TensorType, env: dict) -> TensorType:
    return t.with_shape([_subst_dim(d, env) for d in t.shape]) if env else t


def infer_graph(g: Graph, env: Optional[dict] = None) -> int:
    """Re-run inference through `g` (and region bodies); returns how many result types changed."""
    env = env or {}
    changed = 0
    for v in g.inputs:
        t = _subst_type(v.type, env)
        changed += t != v.type
        v.type = t
    for n in g.nodes:
        if n.body is not None:
            for outer, inner in zip(n.inputs, n.body.inputs):
                inner.type = outer.type
            changed += infer_graph(n.body)
            types = [v.type for v in n.body.outputs]
        else:
            attrs = n.attrs
            if env:  # symbols bound to sizes also resolve inside shape attributes (reshape/expand targets)
                attrs = {k: (tuple(_subst_dim(d, env) if isinstance(d, str) else d for d in a)
                             if isinstance(a, tuple) and any(isinstance(d, str) for d in a) else a) for k, a in attrs.items()}
                n.attrs = attrs
            try:
                types = OPS[n.op].infer_types([v.type for v in n.inputs], OPS[n.op].normalize_attrs(attrs))
            except OpError as e:
                where = f" ({n.loc})" if n.loc else ""
                raise PassError(f"infer-shapes: {n.op}{where}: {e}") from None
        for o, t in zip(n.outputs, types):
            changed += o.type != t
            o.type = t
    return changed


@register_pass("infer-shapes")
def infer_shapes(g: Graph, ctx: PassContext) -> dict:
    """Re-run type inference; with option symbols={"B": 1} bind symbolic dims to sizes first."""
    env = dict(ctx.get("symbols") or {})
    changed = infer_graph(g, env)
    syms = sorted({f for v in g.inputs for d in v.type.shape if isinstance(d, str) for f in _factors(d)[1]})
    return {"types_changed": changed, "symbols": len(syms)}


# ---- fold-constants
def _foldable(n: Node) -> bool:
    # zero-operand ops (constant_of_shape, arange) fold too: their attributes are all they read
    # A symbolic result shape (expand to [B,4]) is only known at run time: nothing to fold yet.
    return (n.body is None and all(o.type.static for o in n.outputs)
            and all(const_data(v) is not None for v in n.inputs) and "random" not in n.op
            and not (n.op in OPS and OPS[n.op].extra.get("keep_const")))  # dequantize(Wq, s) stays: the point is fewer bytes


@register_pass("fold-constants")
def fold_constants(g: Graph, ctx: PassContext) -> dict:
    """Evaluate nodes whose operands are all constants (reference semantics) into new constants."""
    cap = int(ctx.get("fold_max_elements", FOLD_MAX_ELEMENTS))
    folded = skipped = 0
    uses, users = g.use_counts(), g.users()
    outputs = {v.id for v in g.outputs}
    for n in list(g.nodes):
        if not _foldable(n):
            continue
        size = sum(o.type.numel if isinstance(o.type.numel, int) else cap + 1 for o in n.outputs)
        # A big result is worth it only when it replaces its inputs (e.g. a weight transpose), not duplicates them,
        # or when a fill (no big inputs: constant_of_shape) is only read as a weight: the backend packs a constant
        # weight at compile time; left as a fill it is rewritten on every call and read unpacked (ONNX light
        # models make every weight that way: resnet50's biggest convs ran 1.5x slower).
        big_inputs = [v for v in n.inputs if v.data.size > 1]
        weight_fill = not big_inputs and all(
            o.id not in outputs and users.get(o.id) and
            all(u.op in OPS and u.inputs.index(o) == OPS[u.op].extra.get("weight_operand") for u in users[o.id])
            for o in n.outputs)
        if size > cap and not weight_fill and not (big_inputs and all(uses.get(v.id, 0) == 1 for v in big_inputs)):
            skipped += 1
            continue
        outs = run_node(n, [v.data for v in n.inputs])
        base = n.outputs[0].name or (n.inputs[0].name + "." + n.op if n.inputs else n.op)
        for o, arr in zip(n.outputs, outs):
            arr = np.ascontiguousarray(arr).astype(o.type.dtype.np, copy=False).reshape(o.type.shape)
            c = g.add_const(base or "folded", arr)
            g.replace_uses(o, c)
        g.nodes.remove(n)
        folded += 1
        uses, users = g.use_counts(), g.users()
    dropped = g.remove_unused_constants()
    return {"folded": folded, "skipped_size": skipped, "constants_dropped": dropped}


# ---- dce
def dce_graph(g: Graph) -> int:
    removed = remove_dead(g)
    for n in g.nodes:
        if n.body is not None:
            removed += dce_graph(n.body)
    return removed


@register_pass("dce")
def dce(g: Graph, ctx: PassContext) -> dict:
    """Remove nodes whose results nobody reads, and unused constants."""
    removed = dce_graph(g)
    return {"removed": removed, "constants_dropped": g.remove_unused_constants()}


# ---- cse
CONST_DEDUP_MAX = 1 << 16  # constants up to this many elements are compared by content


def _const_key(v: Value):
    d = v.data
    return (str(v.type), d.tobytes()) if d is not None and d.size <= CONST_DEDUP_MAX else None


def _attr_key(attrs: dict):
    return tuple(sorted((k, tuple(a) if isinstance(a, list) else a) for k, a in attrs.items()))


@register_pass("cse")
def cse(g: Graph, ctx: PassContext) -> dict:
    """Merge identical constants and nodes with the same op, operands and attributes."""
    merged_consts = 0
    seen_c: dict = {}
    for name, v in list(g.constants.items()):
        k = _const_key(v)
        if k is None:
            continue
        if k in seen_c:
            g.replace_uses(v, seen_c[k])
            del g.constants[name]
            merged_consts += 1
        else:
            seen_c[k] = v
    seen: dict = {}
    merged = 0
    for n in list(g.nodes):
        if n.body is not None:
            from ..ir import print_graph
            key = ("fused", tuple(v.id for v in n.inputs), _attr_key(n.attrs), print_graph(n.body))
        else:
            key = (n.op, tuple(v.id for v in n.inputs), _attr_key(n.attrs))
        other = seen.get(key)
        if other is None:
            seen[key] = n
            continue
        for a, b in zip(n.outputs, other.outputs):
            g.replace_uses(a, b)
        g.nodes.remove(n)
        merged += 1
    return {"merged": merged, "constants_merged": merged_consts}


@register_pass("cleanup-late")
def cleanup_late(g: Graph, ctx: PassContext) -> dict:
    """canonicalize, simplify-algebra, fold-constants, cse, dce again: recognition exposes new folds."""
    from .manager import PASSES
    stats: dict = {}
    for name in ("canonicalize", "simplify-algebra", "fold-constants", "cse", "dce"):
        for k, v in (PASSES[name].fn(g, ctx) or {}).items():
            if isinstance(v, int) and v:
                stats[f"{name}.{k}"] = v
    return stats
