"""Layer skipping ("Unified Layer Skipping", FFN-SkipLLM): drop blocks spread evenly through the middle.

From a target speedup R (or a count k) pick k units — whole layers, or FFN sub-blocks only with
granularity "ffn" — and replace each by its residual identity. The choice is input-independent
(batching and KV caches keep working) and spread out: the first and the last unit are kept and
the k skipped ones sit nearest an even spacing over units 1..L-2 (`even_spread`). The paper's
public code keeps every int(L/(n-1))-th layer, which for small R (L=12, R=1.3: step 1)
degenerates into a contiguous run; this rule does not.

k comes from the cost model (passes/cost.py), not a formula on L: for each k the rewritten graph
is costed whole (embeddings, lm_head, everything), and the k whose predicted speedup is nearest R
wins. Reports the chosen blocks, the predicted speedup (cost model time; FLOPs before/after) and
the output deviation on calibration inputs.

Options: target_speedup (alias skip_layers) or num_skip, skip_granularity "layer" | "ffn",
calibration (see calibration.py), skip_measure (default True: measure the deviation).
"""
from __future__ import annotations

import math

from ..ir import Graph, NnfuseError
from .blocks import Block, Stack, bypass, discover
from .calibration import calibration_inputs, cosine_distance, output_error, outputs_of
from .cost import dims_from_inputs, graph_cost
from .graphutil import remove_dead
from .manager import PassContext, register_pass


def even_spread(count: int, k: int) -> list[int]:
    """k of the indices 1..count-2 (the first and last kept), each nearest an even spacing of k points."""
    inner = count - 2
    if k < 0 or k > max(inner, 0):
        raise NnfuseError(f"cannot skip {k} of {count} units while keeping the first and the last")
    return [1 + int(math.floor((j + 0.5) * inner / k)) for j in range(k)]


def units(stack: Stack, granularity: str) -> list[list[Block]]:
    if granularity == "layer":
        return [L.blocks for L in stack.layers]
    if granularity == "ffn":
        return [[L.ffn] for L in stack.layers if L.ffn is not None]
    raise NnfuseError(f"skip granularity must be 'layer' or 'ffn', got {granularity!r}")


def skipped_graph(g: Graph, granularity: str, chosen: list[int]) -> Graph:
    """A copy of g with the chosen units bypassed and dead code removed."""
    h = g.clone()
    us = units(discover(h), granularity)
    bypass(h, *[b for i in chosen for b in us[i]])
    remove_dead(h)
    h.remove_unused_constants()
    return h


def plan(g: Graph, granularity: str, target: float | None, num_skip: int | None, dims: dict) -> dict:
    """Choose k and the units to skip; predicted speedups from the cost model."""
    us = units(discover(g), granularity)
    if len(us) < 3:
        raise NnfuseError(f"skip-layers: found {len(us)} {granularity} units; need at least 3 (first and last are kept)")
    base = graph_cost(g, dims)
    ks = [int(num_skip)] if num_skip is not None else list(range(0, len(us) - 1))
    best = None
    for k in ks:
        chosen = even_spread(len(us), k)
        c = graph_cost(skipped_graph(g, granularity, chosen), dims)
        pred = base["seconds"] / c["seconds"]
        cand = {"k": k, "chosen": chosen, "predicted_speedup": pred, "flops": [base["flops"], c["flops"]]}
        if target is None:
            best = cand
            break
        if best is None or abs(math.log(pred / target)) < abs(math.log(best["predicted_speedup"] / target)) - 1e-12:
            best = cand
        if pred > target * 1.5:
            break
    best["units"] = len(us)
    return best


@register_pass("skip-layers", exact=False)
def skip_layers(g: Graph, ctx: PassContext) -> dict:
    """Skip layers (or FFN sub-blocks) spread evenly through the middle, sized by a target speedup or count."""
    gran = str(ctx.get("skip_granularity", ctx.get("granularity", "layer")))
    target = ctx.get("target_speedup", ctx.get("skip_layers"))
    num = ctx.get("num_skip")
    if target is None and num is None:
        raise NnfuseError("skip-layers needs target_speedup=R (e.g. 1.3) or num_skip=k")
    if target is not None and float(target) < 1.0:
        raise NnfuseError(f"skip-layers: target_speedup must be >= 1, got {target}")
    stack = discover(g)
    if not stack.blocks:
        return {"skipped": [], "reason": "no residual blocks found"}
    samples, where = calibration_inputs(g, ctx.options)
    dims = dims_from_inputs(g, samples[0])
    p = plan(g, gran, None if target is None else float(target), None if num is None else int(num), dims)
    us = units(stack, gran)
    layers = [us[i][0].layer for i in p["chosen"]]
    measure = bool(ctx.get("skip_measure", True))
    ref = outputs_of(g, samples) if measure else None
    bypass(g, *[b for i in p["chosen"] for b in us[i]])
    remove_dead(g)
    g.remove_unused_constants()
    stats = {"granularity": gran, "units": p["units"], "num_skip": p["k"], "skipped_layers": layers,
             "target_speedup": None if target is None else float(target),
             "predicted_speedup": round(p["predicted_speedup"], 4), "flops": [int(f) for f in p["flops"]]}
    if measure:
        got = outputs_of(g, samples)
        err = output_error(ref, got)
        cos = sum(cosine_distance(r[0], o[0]) for r, o in zip(ref, got)) / len(samples)
        stats.update({**err, "cos_dist": cos, "calibration": where})
    ctx.emit(f"skip-layers: skipped {gran} {layers} of {p['units']} (k={p['k']}), predicted speedup "
             f"{p['predicted_speedup']:.3f}x" + (f", err {stats['max_abs_err']:.3g} (rel {stats['rel_err']:.3g})" if measure else ""))
    return stats
