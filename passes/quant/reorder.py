"""reorder-channels ("Accurate Block Quantization"): permute each FFN's intermediate channels by their calibration
range so a block of 32 (16) channels holds similar magnitudes; the permutation goes into the producers' columns
(gate/up) and the consumer's rows (down_proj), so the fp32 model computes the same numbers (the down_proj sum
runs in a different order: equal up to fp32 summation order). Reports the block quantization error of the
down_proj input and weight before and after."""
from __future__ import annotations

import numpy as np

from ...ir import Graph
from ...ir.quant_formats import FORMATS, Scheme, fake_quant, scheme
from ..blocks import discover
from ..calibration import calibration_inputs, trace
from ..graphutil import is_pointwise
from ..manager import PassContext, register_pass
from .config import parse_config
from .rotate import set_weight
from .common import check_calibration, weight_layers


def _block_scheme(ctx: PassContext) -> Scheme:
    f = ctx.get("reorder_format")
    if f:
        return scheme(f)
    q = ctx.get("quantize")
    if q:
        cfg = parse_config(q, ctx.options)
        for s in (cfg.acts, cfg.weights):
            if s is not None and s.group > 0:
                return s
    return FORMATS["mxfp4"]


def _rel(ref: np.ndarray, got: np.ndarray) -> float:
    d = float(np.linalg.norm(ref))
    return float(np.linalg.norm(got - ref) / d) if d > 0 else 0.0


@register_pass("reorder-channels", exact=False)
def reorder_channels(g: Graph, ctx: PassContext) -> dict:
    """Permute FFN intermediate channels by calibration range (exact in fp32); report block error before/after."""
    stack = discover(g)
    s = _block_scheme(ctx)
    layers = {id(L.node): L for L in weight_layers(g) if L.kind == "matmul"}
    todo, skipped = [], []
    for b in stack.of_kind("ffn"):
        down = layers.get(id(b.branch.producer)) if b.branch.producer is not None else None
        if down is None:
            skipped.append(f"{b.loc or b.position}: does not end in a weight GEMM")
            continue
        k = down.w.shape[0]
        # walk back from the down_proj input through pointwise ops to the producing GEMMs
        prods, frontier, ok, path = [], [down.x], True, set()
        while frontier:
            v = frontier.pop()
            p = v.producer
            if p is None:
                ok = ok and v.data is not None and v.data.size == 1
                continue
            if id(p) in layers and layers[id(p)].w.shape[1] == k:
                prods.append(layers[id(p)])
            elif is_pointwise(p) and v.shape[-1] == k and id(p) not in path:
                path.add(id(p))
                frontier.extend(p.inputs)
            else:
                ok = False
        if not ok or not prods or s.group <= 0 or k % s.group:
            skipped.append(f"{down.name}: " + ("not fed by GEMMs through pointwise ops" if not ok or not prods
                                               else f"K={k} not a multiple of block {s.group}"))
            continue
        todo.append((b, down, prods))
    if not todo:
        return {"reordered": 0, "skipped": skipped}
    samples, origin = calibration_inputs(g, ctx.options)
    check_calibration(g, samples)
    envs = [trace(g, smp) for smp in samples]
    rows = []
    for b, down, prods in todo:
        h = np.concatenate([envs[i][down.x.id].reshape(-1, down.w.shape[0]) for i in range(len(envs))], 0)
        perm = np.argsort(np.abs(h).max(0), kind="stable")
        before = (_rel(h, fake_quant(h, s, axis=1)), _rel(down.w, fake_quant(down.w, s, axis=0)))
        hp, wp = h[:, perm], down.w[perm]
        after = (_rel(hp, fake_quant(hp, s, axis=1)), _rel(wp, fake_quant(wp, s, axis=0)))
        for L in prods:
            set_weight(g, L, L.w[:, perm], None if L.bias is None else L.bias[perm])
        set_weight(g, down, wp, down.bias)
        rows.append({"layer": down.name, "format": s.describe(), "act_err_before": round(before[0], 5),
                     "act_err_after": round(after[0], 5), "weight_err_before": round(before[1], 5),
                     "weight_err_after": round(after[1], 5)})
    g.remove_unused_constants()
    mean = lambda k: round(float(np.mean([r[k] for r in rows])), 5)  # noqa: E731
    return {"reordered": len(rows), "calibration": origin, "act_block_err_before": mean("act_err_before"),
            "act_block_err_after": mean("act_err_after"), "weight_block_err_before": mean("weight_err_before"),
            "weight_block_err_after": mean("weight_err_after"), "layers": rows, "skipped": skipped}
