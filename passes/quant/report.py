"""Accuracy reports of a quantized graph against its fp32 original: per-layer activation SQNR, whole-model size,
output relative error, logit cosine, top-1 agreement (and perplexity via nnfuse.evaluation), and a per-layer
sensitivity ranking (quantize one layer at a time) to choose `exclude=` patterns."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ...ir import Graph, evaluate
from ...ir.quant_formats import sqnr_db
from ..calibration import trace
from ..manager import optimize
from .common import weight_layers


def model_metrics(ref_outs: Sequence[np.ndarray], got_outs: Sequence[np.ndarray]) -> dict:
    """rel error, mean logit cosine, top-1 agreement over the last axis of the first output."""
    r = np.concatenate([np.asarray(o, np.float64).reshape(-1, np.shape(o)[-1]) for o in ref_outs])
    q = np.concatenate([np.asarray(o, np.float64).reshape(-1, np.shape(o)[-1]) for o in got_outs])
    cos = (r * q).sum(-1) / np.maximum(np.linalg.norm(r, axis=-1) * np.linalg.norm(q, axis=-1), 1e-30)
    return {"rel_err": float(np.linalg.norm(q - r) / max(np.linalg.norm(r), 1e-30)), "logit_cosine": float(cos.mean()),
            "top1_agree": float((r.argmax(-1) == q.argmax(-1)).mean()), "sqnr_db": round(sqnr_db(r, q), 2)}


def layer_act_sqnr(orig: Graph, quant: Graph, samples: Sequence[Sequence[np.ndarray]]) -> list[dict]:
    """SQNR of each weight layer's output (matched by module path) in the quantized graph vs the original,
    each evaluated end to end on the samples (so errors of earlier layers count). Both graphs unfused
    (opt_level 1): values inside fused regions are not traced."""
    locs = {}
    for L in weight_layers(orig):
        locs.setdefault(L.node.loc, L.node.outputs[0])
    rows: dict[str, list] = {}
    for s in samples:
        a, b = trace(orig, s), trace(quant, s)
        last = {}
        for n in quant.walk():
            if n.loc in locs:
                last[n.loc] = n.outputs[0]
        for loc, v in locs.items():
            w = last.get(loc)
            if w is not None and w.id in b and tuple(np.shape(b[w.id])) == tuple(np.shape(a[v.id])):
                rows.setdefault(loc, []).append((a[v.id], b[w.id]))
    out = []
    for loc, pairs in rows.items():
        r = np.concatenate([np.ravel(p[0]) for p in pairs])
        q = np.concatenate([np.ravel(p[1]) for p in pairs])
        out.append({"layer": loc, "act_sqnr_db": round(sqnr_db(r, q), 2)})
    return out


def compare(orig: Graph, quant: Graph, samples: Sequence[Sequence[np.ndarray]]) -> dict:
    ref = [evaluate(orig, s)[0] for s in samples]
    got = [evaluate(quant, s)[0] for s in samples]
    return {"bytes_before": orig.param_bytes(), "bytes_after": quant.param_bytes(), **model_metrics(ref, got)}


def sensitivity(g: Graph, samples: Sequence[Sequence[np.ndarray]], opt_level: int = 1, **options: Any) -> list[dict]:
    """Quantize one layer at a time (everything else fp32) and rank the layers by the model output error."""
    ref = [evaluate(g, s)[0] for s in samples]
    names = [L.name for L in weight_layers(g)]
    rows = []
    for name in names:
        import re
        others = "|".join(re.escape(n) for n in names if n != name) or "$^"
        q, _ = optimize(g, opt_level, exclude=f"^(?:{others})$", **options)
        got = [evaluate(q, s)[0] for s in samples]
        rows.append({"layer": name, **model_metrics(ref, got)})
    return sorted(rows, key=lambda r: -r["rel_err"])
