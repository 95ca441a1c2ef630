"""quantize-dynamic (W8A8, W4A4, FP8: activation scales per token at run time) and quantize-static
(activation scales calibrated ahead of time: min-max, percentile or MSE-optimal search).

Integer path (int weights per-channel/tensor, int activations per-token/tensor, symmetric):
    qx, sx = quantize_dynamic(x)        (static: qx = quantize(x, sx_const))
    y = mul(mul(cast(matmul_integer(qx, Wq), f32), sx), sw)       int32 accumulation, then one rescale
Otherwise (fp8, MX blocks, group-wise weights) the activations are fake-quantized, dequantize(quantize(x)), and
the weight is dequantized: the same numbers a kernel computing in that format produces, up to fp32 summation order.
"""
from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np

from ...ir import Graph, Node, Value
from ...ir.quant_formats import Scheme, quantize_with
from ..calibration import calibration_inputs, trace
from ..manager import PassContext, register_pass
from .common import (QuantPassError, add_node, check_calibration, check_scheme, dequant_weight, quantize_weight, replace_weight,
                     summarize, tidy, weight_row)
from . import gptq
from .weights import layer_plan


def gptq_on(cfg, ctx: PassContext) -> bool:
    """Option gptq=True|False; by default on where round-to-nearest costs most: <= 4-bit integer weights with
    quantized activations (W4A4, W4A8, QuaRot's setting)."""
    on = ctx.get("gptq")
    if on is None:
        return cfg.acts is not None and cfg.weights.element.kind == "int" and cfg.weights.element.bits <= 4
    return bool(on)


def mse_clip_on(cfg, ctx: PassContext) -> bool:
    """act_clip="mse": a clipping ratio per activation, searched on calibration data; the default for <= 4-bit
    integer per-token dynamic activations (a fixed act_clip=R sets one ratio for all)."""
    a, opt = cfg.acts, ctx.get("act_clip")
    if a is None or cfg.mode != "dynamic" or a.element.kind != "int" or a.group != 0:
        return False
    return opt == "mse" or (opt is None and a.element.bits <= 4)


CLIP_RATIOS = np.linspace(0.5, 1.0, 11)


def _clip_errors(x: np.ndarray, a: Scheme) -> np.ndarray:
    """Squared error of per-token quantization of x [T, K] at each CLIP_RATIOS ratio."""
    amax = np.abs(x).max(axis=-1, keepdims=True)
    out = []
    for r in CLIP_RATIOS:
        sc = np.where(amax > 0, amax * np.float32(r) / np.float32(a.element.qmax), np.float32(1)).astype(np.float32)
        q = quantize_with(x, sc, None, a.element, axis=-1).astype(np.float32) * sc
        out.append(float(((q - x) ** 2).sum()))
    return np.array(out)


def calibrate(g: Graph, ctx: PassContext, cfg, plan) -> tuple[dict, dict, dict]:
    """One trace of the fp32 graph on calibration samples gives what round-to-nearest does not need: the input
    Hessians x^T x of the layers GPTQ rounds and the MSE-best clipping ratio of each quantized activation.
    Returns (hessians by value id, clip ratio by value id, report entries)."""
    gq, mc = gptq_on(cfg, ctx), mse_clip_on(cfg, ctx)
    hv = sorted({L.x.id for L, s, _ in plan if L.kind == "matmul" and gptq.supports(s)}) if gq else []
    cv = sorted({L.x.id for L, _, _ in plan if L.x.dtype.is_float}) if mc else []
    if not hv and not cv:
        return {}, {}, ({"gptq": "no integer matmul weights"} if gq else {})
    opts = dict(ctx.options)
    opts.setdefault("calibration_samples", int(ctx.get("gptq_samples", 8)))
    samples, origin = calibration_inputs(g, opts)
    check_calibration(g, samples)
    hess: dict = {}
    errs: dict = {}
    for smp in samples:
        env = trace(g, smp)
        for vid in hv:
            hess[vid] = gptq.accumulate(hess.get(vid), env[vid])
        for vid in cv:
            x = np.asarray(env[vid], np.float32)
            errs[vid] = errs.get(vid, 0) + _clip_errors(x.reshape(-1, x.shape[-1]), cfg.acts)
    clips = {vid: float(CLIP_RATIOS[int(np.argmin(e))]) for vid, e in errs.items()}
    note = {"calibration": origin}
    if hv:
        note["gptq_layers_inputs"] = len(hv)
    if clips:
        note["act_clip_mse"] = {"min": min(clips.values()), "max": max(clips.values())}
    return hess, clips, note


def integer_path(w: Scheme, a: Scheme) -> bool:
    return (w.element.kind == "int" and a.element.kind == "int" and w.group <= 0 and a.group <= 0 and w.symmetric
            and a.symmetric and w.scale_dtype == "f32" and a.scale_dtype == "f32")


def _act_node(g: Graph, x: Value, a: Scheme, anchor: Node, static_scale=None) -> tuple[Value, Value]:
    """(codes, scale) of activation x: quantize_dynamic, or quantize with a calibrated per-tensor scale."""
    if static_scale is not None:
        s = g.add_const((x.name or "act") + ".scale", np.full([1] * x.type.rank, static_scale, np.float32))
        q = add_node(g, anchor, "quantize", [x, s], anchor.meta, dtype=a.element.dtype, axis=-1, group=0)
        return q.outputs[0], s
    n = add_node(g, anchor, "quantize_dynamic", [x], anchor.meta, dtype=a.element.dtype, axis=-1, group=a.group,
                 symmetric=True, scale_dtype=a.scale_dtype, clip=a.clip)
    return n.outputs[0], n.outputs[1]


def rewrite(g: Graph, ctx: PassContext, static_scales: "dict | None" = None) -> dict:
    cfg, plan, excluded = layer_plan(g, ctx)
    a = cfg.acts
    rows, skipped, acts = [], [], {}
    hess, clips, cal_note = calibrate(g, ctx, cfg, plan) if static_scales is None else ({}, {}, {})
    for L, w_s, note in plan:
        if L.kind == "conv":
            raise QuantPassError(f"layer {L.name} (conv): activation quantization ({a.describe()}) is not supported on "
                                 "conv; exclude it or quantize weights only")
        check_scheme(L, a, "activations")
        x, n = L.x, L.node
        if a.group > 0 and (not isinstance(x.shape[-1], int) or x.shape[-1] % a.group):
            raise QuantPassError(f"layer {L.name}: activation block {a.group} does not divide its features {x.shape[-1]}")
        if not x.dtype.is_float:
            skipped.append({"layer": L.name, "reason": f"activation dtype {x.dtype}"})
            continue
        h = hess.get(L.x.id) if L.kind == "matmul" and gptq.supports(w_s) else None
        qt = quantize_weight(L, w_s) if h is None else gptq.gptq(L.w, h, w_s, float(ctx.get("gptq_damp", 0.01)))
        st = None if static_scales is None else static_scales[x.id]
        key = (x.id, a)
        if key not in acts:
            acts[key] = _act_node(g, x, replace(a, clip=clips[x.id]) if x.id in clips else a, n, st)
        qx, sx = acts[key]
        base = n.inputs[1].name or "w"
        if integer_path(w_s, a):
            wq = g.add_const(base + ".q", qt.q)
            acc = add_node(g, n, "matmul_integer", [qx, wq], n.meta).outputs[0]
            y = add_node(g, n, "cast", [acc], n.meta, to="f32").outputs[0]
            y = add_node(g, n, "mul", [y, sx], n.meta).outputs[0]
            sw = g.add_const(base + ".scale", qt.scale.astype(np.float32))
            y = add_node(g, n, "mul", [y, sw], n.meta).outputs[0]
            if L.bias is not None:
                y = add_node(g, n, "add", [y, g.add_const(base + ".bias", np.asarray(L.bias, np.float32))], n.meta).outputs[0]
            if y.dtype != n.outputs[0].dtype:
                y = add_node(g, n, "cast", [y], n.meta, to=n.outputs[0].dtype.name).outputs[0]
            g.replace_uses(n.outputs[0], y)
            g.nodes.remove(n)
        else:
            xd = add_node(g, n, "dequantize", [qx, sx], n.meta, axis=-1, group=max(a.group, 0)).outputs[0]
            if xd.dtype != x.dtype:
                xd = add_node(g, n, "cast", [xd], n.meta, to=x.dtype.name).outputs[0]
            n.inputs = [xd] + list(n.inputs[1:])
            L.x = xd
            replace_weight(g, L, dequant_weight(g, L, qt, base))
        row = weight_row(L, qt, note)
        row["act_format"] = a.describe().replace("per-channel", "per-token") + (" static" if static_scales is not None else "")
        rows.append(row)
    tidy(g)
    return {"scheme": cfg.describe(), **cal_note, "int_gemms": sum(1 for n in g.nodes if n.op == "matmul_integer"),
            **summarize(rows, excluded, skipped)}


@register_pass("quantize-dynamic", exact=False)
def quantize_dynamic(g: Graph, ctx: PassContext) -> dict:
    """Weights and activations (default W8A8: int8 per-channel weights, int8 per-token dynamic activations)."""
    if ctx.get("quantize") is None:
        ctx.options["quantize"] = "w8a8"
    return rewrite(g, ctx)


# ---------------------------------------------------------------- static calibration
def calibrated_scale(samples: list[np.ndarray], a: Scheme, method: str, percentile: float) -> float:
    """One per-tensor scale for an activation from its calibration values."""
    flat = np.concatenate([np.abs(np.asarray(s, np.float32)).reshape(-1) for s in samples])
    qmax = a.element.qmax
    if method == "minmax":
        amax = float(flat.max(initial=0.0))
    elif method == "percentile":
        amax = float(np.percentile(flat, percentile))
    elif method == "mse":
        # search clipping thresholds, keep the one with the least squared error on the calibration values
        top = float(flat.max(initial=0.0))
        sub = flat if flat.size <= 1 << 18 else np.random.default_rng(0).choice(flat, 1 << 18, replace=False)
        best, amax = np.inf, top
        for r in np.linspace(0.3, 1.0, 36):
            t = top * r
            sc = np.array(t / qmax if t > 0 else 1.0, np.float32)
            q = quantize_with(sub, sc, None, a.element)
            err = float(((q.astype(np.float32) * sc - sub) ** 2).sum())
            if err < best:
                best, amax = err, t
    else:
        raise QuantPassError(f"calib_method must be minmax, percentile or mse, got {method!r}")
    return amax / qmax if amax > 0 else 1.0


@register_pass("quantize-static", exact=False)
def quantize_static(g: Graph, ctx: PassContext) -> dict:
    """Weights + activations with per-tensor scales calibrated on `calibration` samples (calib_method=minmax|percentile|mse)."""
    if ctx.get("quantize") is None:
        ctx.options["quantize"] = "w8a8s"
    cfg, plan, _ = layer_plan(g, ctx)
    if cfg.acts is None:
        raise QuantPassError(f"quantize-static needs an activation format; '{cfg.name}' is weight-only")
    method = str(ctx.get("calib_method", "minmax"))
    pct = float(ctx.get("percentile", 99.99))
    samples, origin = calibration_inputs(g, ctx.options)
    check_calibration(g, samples)
    wanted = {L.x.id for L, _, _ in plan}
    seen: dict[int, list] = {i: [] for i in wanted}
    for i, s in enumerate(samples):
        env = trace(g, s)
        for vid in wanted:
            seen[vid].append(env[vid])
        if ctx.get("progress", True):
            print(f"\r  calibrating ({origin}): {i + 1}/{len(samples)} [{'#' * (20 * (i + 1) // len(samples)):20s}]",
                  end="" if i + 1 < len(samples) else "\n", file=sys.stderr, flush=True)
    static = {vid: calibrated_scale(v, cfg.acts, method, pct) for vid, v in seen.items()}
    stats = rewrite(g, ctx, static)
    stats.update({"calibration": origin, "calib_method": method})
    return stats
