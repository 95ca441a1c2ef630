"""Attention removal: replace chosen attention sub-blocks by their residual identity.

FFN fusion pays most after it: removing a layer's attention makes the FFN before it and the
FFN after it consecutive. Layers are chosen by index, or by a calibration score: the cosine
distance between the block's residual input and output (small = the block changes the stream
little), lowest first, never the first or the last layer.

Options: drop_attention = layer indices (a list, or "3,5" as in the CLI), an int k or "auto:k"
(the k lowest scores; "auto" is k = 1); calibration (see calibration.py).
"""
from __future__ import annotations

from typing import Any, Sequence

from ..ir import Graph, NnfuseError
from .blocks import Stack, bypass, discover
from .calibration import calibration_inputs, cosine_distance, output_error, outputs_of, trace
from .graphutil import remove_dead
from .manager import PassContext, register_pass


def attention_scores(g: Graph, stack: Stack, samples) -> dict[int, float]:
    """Layer index -> mean cosine distance between its attention block's input and output."""
    blocks = [L.attention for L in stack.layers if L.attention is not None]
    scores = {b.layer: 0.0 for b in blocks}
    for s in samples:
        env = trace(g, s)
        for b in blocks:
            scores[b.layer] += cosine_distance(env[b.entry.id], env[b.exit.id]) / len(samples)
    return scores


def _parse(spec: Any) -> Any:
    """'3,5' -> [3, 5] (layer indices); 'auto' -> 1 and 'auto:K' -> K (counts, chosen by score); ints/lists as given."""
    if not isinstance(spec, str):
        return spec
    s = spec.replace(" ", "")
    try:
        if s == "auto":
            return 1
        if s.startswith("auto:"):
            return int(s[5:])
        return [int(t) for t in s.split(",") if t]
    except ValueError:
        raise NnfuseError(f"drop_attention: expected layer indices like '3,5', 'auto' or 'auto:K', got {spec!r}") from None


def pick_attention(g: Graph, stack: Stack, spec: Any, samples) -> tuple[list[int], dict[int, float]]:
    """(layer indices to drop, scores) for a spec: indices, a count k, 'auto' (k = 1) or 'auto:k'."""
    spec = _parse(spec)
    have = {L.index for L in stack.layers if L.attention is not None}
    if isinstance(spec, (list, tuple)):
        bad = [i for i in spec if i not in have]
        if bad:
            raise NnfuseError(f"drop_attention: no attention block in layer(s) {bad}; layers with one: {sorted(have)}")
        return sorted(set(int(i) for i in spec)), {}
    k = int(spec)
    scores = attention_scores(g, stack, samples)
    idx = sorted(have)
    middle = [i for i in idx if i not in (idx[0], idx[-1])] if len(idx) > 2 else []
    if k > len(middle):
        raise NnfuseError(f"drop_attention: asked for {k} layers but only {len(middle)} middle layers have attention")
    return sorted(sorted(middle, key=lambda i: scores[i])[:k]), scores


def drop_attention_layers(g: Graph, stack: Stack, layers: Sequence[int]) -> None:
    bypass(g, *[L.attention for L in stack.layers if L.index in layers and L.attention is not None])
    remove_dead(g)
    g.remove_unused_constants()


@register_pass("drop-attention", exact=False)
def drop_attention(g: Graph, ctx: PassContext) -> dict:
    """Remove the attention sub-block of chosen layers (by index or calibration score); reports the output error."""
    spec = ctx.get("drop_attention", "auto")
    stack = discover(g)
    if not stack.layers:
        return {"dropped": [], "reason": "no residual blocks found"}
    samples, where = calibration_inputs(g, ctx.options)
    ref = outputs_of(g, samples)
    chosen, scores = pick_attention(g, stack, spec, samples)
    drop_attention_layers(g, stack, chosen)
    err = output_error(ref, outputs_of(g, samples))
    ctx.emit(f"drop-attention: layers {chosen}, err {err['max_abs_err']:.3g} (rel {err['rel_err']:.3g})")
    return {"dropped": chosen, "scores": {k: round(v, 5) for k, v in scores.items()}, "calibration": where, **err}
