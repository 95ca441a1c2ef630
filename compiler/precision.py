"""Accuracy report of a reduced-precision compile: the compiled model vs the f32 graph on the example inputs.

The f32 side is the reference evaluator on the graph as the frontend produced it (before any pass), so the
report measures everything the bf16/fp16 compile changed: rounded weights and activations, kernel order.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .ir import Graph


def _arrays(example_inputs: Sequence[Any]) -> list[np.ndarray]:
    out = []
    for a in example_inputs:
        if hasattr(a, "detach"):
            from .frontends.torch_fx import tensor_to_numpy
            a = tensor_to_numpy(a)
        out.append(np.asarray(a))
    return out


def compare(ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> dict:
    """max relative error (max |got - ref| / max |ref|, over all float outputs) and the cosine of the flattened
    outputs (the logits for a language model)."""
    errs, dots, na, nb = [], 0.0, 0.0, 0.0
    for r, g in zip(ref, got):
        r = np.asarray(r, np.float64)
        g = np.asarray(g, np.float64)
        if r.size == 0:
            continue
        errs.append(float(np.max(np.abs(g - r)) / max(float(np.max(np.abs(r))), 1e-30)))
        dots += float(np.dot(r.ravel(), g.ravel()))
        na += float(np.dot(r.ravel(), r.ravel()))
        nb += float(np.dot(g.ravel(), g.ravel()))
    cos = dots / max(np.sqrt(na * nb), 1e-30)
    return {"max_rel_err": max(errs) if errs else 0.0, "cosine": round(float(cos), 8)}


def accuracy_report(fp32_graph: Graph, compiled, example_inputs: Sequence[Any], precision: str) -> dict:
    """The report stored in `CompiledModel.stats()["accuracy"]` for every reduced-precision compile."""
    from .ir.evaluate import evaluate
    xs = _arrays(example_inputs)
    ref = evaluate(fp32_graph, xs)
    got = compiled.executable(xs)
    rep = {"precision": precision, "vs": "f32 reference evaluator on the example inputs"}
    rep.update(compare(ref, got))
    return rep
