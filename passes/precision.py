"""precision: the reduced-precision policy (bf16 / fp16) as one graph rewrite.

One table, POLICY, says what each op family computes in. The rewrite only touches the LOW ops (GEMM, conv,
attention): each floating operand x becomes `cast(cast(x, bf16), f32)` and each constant weight W is stored
once as a bf16 constant read through `cast(W_bf16, f32)`. The graph stays f32-typed, so every backend runs
it as is (the reference backend evaluates the casts) and its meaning is exactly "bf16 inputs, products and
sums in f32" — what `vdpbf16ps` / AMX / tensor cores compute. Softmax, normalizations, reductions,
residual sums and all other elementwise ops keep their f32 operands (the table's KEEP rows).

Backends fold the casts into their kernels instead of materializing them: the cpu lowering gives a gemm
whose operands are both bf16-rounded the bf16 buffers directly (`gemm_operands_bf16`), and the cpu backend
packs the bf16 weight for its micro-kernel at compile time (backends/cpu/bf16.py).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..ir import Graph, NnfuseError, Value
from ..ir.builder import make_node
from ..ir.dtypes import dtype as to_dtype
from .manager import PIPELINE_HOOKS, PassContext, register_pass

PRECISIONS = ("fp32", "bf16", "fp16")
_LOW_DTYPE = {"bf16": "bf16", "fp16": "f16"}

# op -> (operand positions computed in low precision, what the op computes in). Ops not listed: KEEP.
LOW = {
    "matmul": ((0, 1), "low-precision operands, f32 accumulate, f32 result"),
    "gemm": ((0, 1), "low-precision A/B, f32 accumulate; bias C added in f32"),
    "conv": ((0, 1), "low-precision input/weight, f32 accumulate; bias in f32"),
    "conv_transpose": ((0, 1), "low-precision input/weight, f32 accumulate; bias in f32"),
    "scaled_dot_product_attention": ((0, 1, 2), "low-precision q/k/v products, f32 scores, softmax in f32, f32 accumulate"),
}
KEEP = {
    "softmax / log_softmax": "f32", "layer_norm / rms_norm / batch_norm / group_norm / instance_norm": "f32",
    "reductions (reduce_*, argmax, cumsum)": "f32", "residual sums and other elementwise ops": "f32",
    "embedding / gather tables": "f32 (read once per token; no gemm)",
}


def policy_table(precision: str = "bf16") -> str:
    """The policy as text (shown by `nnfuse inspect --precision` and docs/bf16.md)."""
    check_precision(precision)
    if precision == "fp32":
        return "precision fp32: every op computes in f32"
    low = _LOW_DTYPE[precision]
    rows = [f"precision {precision}: weights of the ops below stored as {low}; everything else f32",
            f"  {'op':62s} computes in"]
    rows += [f"  {op:62s} {what.replace('low-precision', low)}" for op, (_, what) in LOW.items()]
    rows += [f"  {op:62s} {what}" for op, what in KEEP.items()]
    return "\n".join(rows)


def precision_report(g: Graph, precision: str) -> str:
    """The policy table plus what it does to `g` (a copy is rewritten; `g` is left alone)."""
    table = policy_table(precision)
    if precision == "fp32":
        return table
    h = g.clone()
    s = apply_precision(h, precision)
    return (f"{table}\n  on this model: {s['ops']} ops take {precision} operands; {s['weights']} weights "
            f"{s['weight_bytes_before']:,} -> {s['weight_bytes_after']:,} bytes; {s['rounded_activations']} activations rounded")


def check_precision(name) -> str:
    if name not in PRECISIONS:
        raise NnfuseError(f"unknown precision {name!r}; valid: {', '.join(PRECISIONS)}")
    return name


def apply_precision(g: Graph, precision: str) -> dict:
    """Rewrite `g` in place for `precision`; returns the pass statistics."""
    check_precision(precision)
    if precision == "fp32":
        return {"precision": "fp32"}
    low = to_dtype(_LOW_DTYPE[precision])
    f32 = to_dtype("f32")
    rounded: dict[int, Value] = {}      # value id -> its low-precision-rounded f32 twin (shared by all readers)
    stats = {"precision": precision, "ops": 0, "weights": 0, "weight_bytes_before": 0, "weight_bytes_after": 0,
             "rounded_activations": 0}
    new_nodes = []

    def rounded_of(v: Value, node) -> Value:
        if v.id in rounded:
            return rounded[v.id]
        data = _const_data(v)
        if data is not None:
            arr = np.ascontiguousarray(np.asarray(data).astype(low.np))
            c = g.add_const((v.name or (v.producer.inputs[0].name + ".view")) + f".{precision}", arr)
            up = make_node("cast", [c], {"to": "f32"}, meta=dict(node.meta))
            stats["weights"] += 1
            stats["weight_bytes_before"] += v.type.nbytes
            stats["weight_bytes_after"] += c.type.nbytes
        else:
            down = make_node("cast", [v], {"to": low.name}, meta=dict(node.meta))
            new_nodes.append(down)
            up = make_node("cast", [down.output], {"to": "f32"}, meta=dict(node.meta))
            stats["rounded_activations"] += 1
        new_nodes.append(up)
        rounded[v.id] = up.output
        return up.output

    out_nodes = []
    for n in g.nodes:
        spec = LOW.get(n.op)
        if spec is not None and n.body is None:
            ins = list(n.inputs)
            touched = False
            for i in spec[0]:
                if i < len(ins) and ins[i].dtype == f32:
                    ins[i] = rounded_of(ins[i], n)
                    touched = True
            if touched:
                out_nodes += new_nodes
                new_nodes.clear()
                n.inputs = ins
                stats["ops"] += 1
        out_nodes.append(n)
    g.nodes = out_nodes
    from .cleanup import dce_graph
    dce_graph(g)                    # views of weights now read as bf16 copies
    g.remove_unused_constants()     # f32 weights only gemms read are gone: the model holds half the bytes
    return stats


_VIEWS = ("transpose", "reshape", "squeeze", "unsqueeze", "flatten", "identity")


def _const_data(v: Value, depth: int = 0) -> Optional[np.ndarray]:
    """The data of a constant, or of a view chain over one (transpose(W) of a weight tied to an embedding table,
    left unfolded so the f32 table is not duplicated): the gemm then gets its own bf16 copy."""
    if v.is_const:
        return v.data
    n = v.producer
    if n is None or n.op not in _VIEWS or n.body is not None or depth > 4 or len(n.inputs) < 1:
        return None
    src = _const_data(n.inputs[0], depth + 1)
    if src is None or any(not (u.is_const and u.data is not None) for u in n.inputs[1:]):
        return None
    from ..ir.evaluate import run_node
    try:
        return run_node(n, [src] + [u.data for u in n.inputs[1:]], {})[0]
    except NnfuseError:
        return None


@register_pass("precision", exact=False)
def precision_pass(g: Graph, ctx: PassContext) -> dict:
    """Reduced-precision policy: GEMM/conv/attention operands in bf16|fp16 (weights stored so), the rest f32."""
    return apply_precision(g, ctx.get("precision", "fp32"))


def add_precision_pass(names, options: dict) -> list:
    """compile(precision="bf16"): the policy pass goes right before fusion (after all folding, which would
    otherwise fold the weight casts back into f32 constants), or at the end."""
    names = list(names)
    p = options.get("precision", "fp32")
    check_precision(p)
    if p == "fp32" or "precision" in names:
        return names
    at = next((i for i, n in enumerate(names) if n.startswith("fuse-")), len(names))
    return names[:at] + ["precision"] + names[at:]


if add_precision_pass not in PIPELINE_HOOKS:
    PIPELINE_HOOKS.append(add_precision_pass)


# ---------------------------------------------------------------- folding helpers for lowerings
def _cast_of(e, to: str):
    from ..ir.kernel import Op
    return e.args[0] if isinstance(e, Op) and e.op == "cast" and e.dtype.name == to and len(e.args) == 1 else None


def bf16_source(e):
    """The bf16 expression under `cast(bf16 expr, f32)` (a rounded activation or a bf16 weight), else None."""
    inner = _cast_of(e, "f32")
    return inner if inner is not None and inner.dtype.name == "bf16" else None


def gemm_operands_bf16(a, b):
    """(a', b') bf16 Tensors when a gemm's operands are both bf16-rounded and b is a constant weight; else None.
    The kernel then reads bf16 directly (A rounded once into a bf16 buffer, B the stored bf16 weight)."""
    from ..ir.kernel import Load
    from .lower import Tensor
    ea, eb = bf16_source(a.expr), bf16_source(b.expr)
    if ea is None or eb is None:
        return None
    if not (isinstance(eb, Load) and not eb.indirect and eb.access.buf.kind == "const"):
        return None
    nb = len(b.shape) - 2
    if any(s for s, d in zip(eb.access.strides[:nb], b.shape[:nb]) if d != 1):   # one weight for all batches (x @ W)
        return None
    return Tensor(a.shape, ea), Tensor(b.shape, eb)


def materialize_rounded(L, t):
    """A bf16-rounded activation read by several gemms is stored once as bf16 (half the bytes) and read back
    through the widening cast, so each gemm can still take the bf16 buffer directly. None otherwise."""
    from ..ir.kernel import Load, Op
    from .lower import Tensor
    inner = bf16_source(t.expr)
    if inner is None or isinstance(inner, Load):
        return None
    m = L.materialize(Tensor(tuple(t.shape), inner))
    return Tensor(tuple(t.shape), Op(t.expr.dtype, t.expr.op, (m.expr,), t.expr.attrs))


def widen_const(L, t) -> Optional[object]:
    """`cast(bf16 constant, f32)` as an f32 constant made at compile time (exact), so a kernel that reads f32
    (conv) does not widen the weight on every run. None when `t` is not such a cast."""
    from ..ir.kernel import Access, Buffer, Load
    from .lower import Tensor, cstrides
    e = bf16_source(t.expr)
    if not (isinstance(e, Load) and not e.indirect and e.access.buf.kind == "const"):
        return None
    src = L.const_data[e.access.buf.index]
    item = src.itemsize
    view = np.lib.stride_tricks.as_strided(src.reshape(-1)[e.access.offset:], tuple(t.shape),
                                           tuple(s * item for s in e.access.strides))
    arr = np.ascontiguousarray(view.astype(np.float32))
    b = Buffer(f"w{len(L.consts)}", to_dtype("f32"), int(arr.size), "const", len(L.consts), label=e.access.buf.label + " (f32)")
    L.consts.append(b)
    L.const_data.append(arr)
    return Tensor(tuple(t.shape), Load(b.dtype, Access(b, 0, cstrides(tuple(t.shape)))))

