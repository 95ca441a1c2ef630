"""prepare-quant-cpu: keep the quantization ops the cpu backend's kernels run (backends/cpu/quant_kernels.py via
passes/lower_quant.py) and decompose the rest into primitive ops (decompose-quant's rewrites). Runs in place of
decompose-quant for backend="cpu" (pipeline.py), before fuse-qdq.

Kept: weight-only int8/int4 dequantize(const) feeding matmuls (per-channel or group along K, f32 scales, no zero
point); matmul_integer(s8, const s8|s4 [K, N]) without zero points; quantize_dynamic per token to s8.
"""
from __future__ import annotations

from ...ir import Graph, Node, Value
from ..manager import PassContext, register_pass
from .common import tidy
from .decompose import QUANT_OPS, decompose_node

_WQ_DTYPES = ("i8", "i4")


def _const(v: Value) -> bool:
    return v.producer is None and v.data is not None


def weight_only_ok(n: Node, ins: "list[Value] | None" = None) -> bool:
    """dequantize of a constant [K, N] int8/int4 weight with per-channel or group-along-K f32 scales."""
    ins = ins if ins is not None else list(n.inputs)
    if n.op != "dequantize" or n.body is not None or len(ins) != 2 or not all(_const(v) for v in ins):
        return False
    q, s = ins
    a = n.attrs
    if q.dtype.name not in _WQ_DTYPES or s.dtype.name != "f32" or q.type.rank != 2 or s.type.rank != 2:
        return False
    if a.get("axis", 0) % 2 != 0 or float(a.get("global_scale", 1.0)) != 1.0:
        return False
    K, N = q.shape
    g = a.get("group", 0)
    if g > 0:
        return K % g == 0 and tuple(s.shape) == (K // g, N)
    return tuple(s.shape) == (1, N)


def int_gemm_ok(n: Node, ins: "list[Value] | None" = None) -> bool:
    """matmul_integer(s8 activations, constant s8/s4 [K, N] weight), no zero points."""
    ins = ins if ins is not None else list(n.inputs)
    if n.op != "matmul_integer" or len(ins) != 2:
        return False
    a, b = ins
    return a.dtype.name == "i8" and _const(b) and b.dtype.name in _WQ_DTYPES and b.type.rank == 2 and a.type.rank >= 1


def row_quantize_ok_attrs(a: dict, x_type) -> bool:
    return (a.get("dtype") == "i8" and a.get("group", 0) == 0 and a.get("symmetric", True)
            and a.get("scale_dtype", "f32") == "f32" and float(a.get("clip", 1.0)) == 1.0 and x_type.rank >= 1
            and a.get("axis", -1) % x_type.rank == x_type.rank - 1 and x_type.dtype.name == "f32"
            and all(isinstance(d, int) for d in x_type.shape))


def row_quant_ok(n: Node) -> bool:
    """quantize_dynamic per token (last axis) to s8 with f32 scales: the fused row kernel."""
    return n.op == "quantize_dynamic" and row_quantize_ok_attrs(n.attrs, n.inputs[0].type)


@register_pass("prepare-quant-cpu", exact=True)
def prepare_quant_cpu(g: Graph, ctx: PassContext) -> dict:
    """Keep the quant ops the cpu kernels run (weight-only int8/int4 gemms, s8 x s8 integer gemms); decompose the rest."""
    users = g.users()
    outs = {v.id for v in g.outputs}
    kept, dec = {"weight_only": 0, "int8_gemm": 0}, {}
    for n in list(g.nodes):
        if n.body is not None or n.op not in QUANT_OPS:
            continue
        o = n.outputs[0]
        us = users.get(o.id, [])
        if (n.op == "dequantize" and weight_only_ok(n) and o.id not in outs and us
                and all(u.op == "matmul" and len(u.inputs) == 2 and u.inputs[1] is o and u.inputs[0] is not o for u in us)):
            n.meta["cpu_qweight"] = True    # every user is a matmul that the weight-only kernel runs
            kept["weight_only"] += 1
            continue
        if n.op == "quantize_dynamic" and row_quant_ok(n):
            kept["row_quantize"] = kept.get("row_quantize", 0) + 1
            continue
        if n.op == "matmul_integer" and int_gemm_ok(n):
            # the gemm can hand its consumer f32 directly when that consumer is the only one and casts to f32
            n.meta["cpu_f32_acc"] = (o.id not in outs and len(us) == 1 and us[0].op == "cast"
                                     and us[0].attrs.get("to") == "f32")
            kept["int8_gemm"] += 1
            continue
        decompose_node(g, n)
        dec[n.op] = dec.get(n.op, 0) + 1
    tidy(g)
    return {**kept, "decomposed": sum(dec.values()), **{f"op:{k}": v for k, v in dec.items()}}
