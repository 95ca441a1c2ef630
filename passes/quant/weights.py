"""quantize-weights: weight-only quantization of matmul/gemm/conv weights (int8 per-channel, int4 group g, fp8,
MX and NV block formats). Each weight becomes `dequantize(codes, scale)` feeding the layer; fuse-qdq then puts
the dequantize inside the gemm region, and the kernels dequantize in registers (no f32 copy of the weight)."""
from __future__ import annotations

from ...ir import Graph
from ..manager import PassContext, register_pass
from .common import (check_scheme, dequant_weight, fit_group, quantize_weight, replace_weight, summarize, tidy, weight_layers,
                     weight_row)
from .config import parse_config


def layer_plan(g: Graph, ctx: PassContext):
    """(config, [(layer, weight scheme, note)], excluded names) for the layers of `g`."""
    cfg = parse_config(ctx.get("quantize") or "w8", ctx.options)
    plan, excluded = [], []
    fallback = bool(ctx.get("fallback_group", False))
    for L in weight_layers(g):
        if cfg.excluded(L.name) or cfg.excluded(L.weight_name):
            excluded.append(L.name)
            continue
        s, note = fit_group(L, cfg.weights, fallback)
        check_scheme(L, s)
        plan.append((L, s, note))
    if cfg.exclude and not excluded:
        ctx.emit(f"warning: exclude pattern {cfg.exclude!r} matched no layer (module paths or weight names)")
    return cfg, plan, excluded


@register_pass("quantize-weights", exact=False)
def quantize_weights(g: Graph, ctx: PassContext) -> dict:
    """Weight-only quantization (option quantize=FORMAT; exclude=REGEX keeps matching layers in fp32)."""
    cfg, plan, excluded = layer_plan(g, ctx)
    rows, done = [], {}
    for L, s, note in plan:
        qt = quantize_weight(L, s)
        key = (L.node.inputs[1].id, s)
        if key not in done:                       # a weight shared by several layers is quantized once
            done[key] = dequant_weight(g, L, qt, L.node.inputs[1].name or "w")
        replace_weight(g, L, done[key])
        rows.append(weight_row(L, qt, note))
    tidy(g)
    return {"scheme": cfg.describe(), **summarize(rows, excluded, [])}
