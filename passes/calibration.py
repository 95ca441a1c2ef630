"""Calibration data for the approximate passes (FFN fusion, layer skipping, attention removal).

`calibration=` (a pass option) is a list of samples, each a list of arrays in graph-input order
(one sample may be given as a bare list of arrays). Without it the passes draw random samples of
the declared input shapes: token ids uniform over the vocabulary (the row count of the embedding
table the input indexes), floats standard normal, inputs named like masks all ones. Random tokens
are a weaker proxy than real text: the dependency scores and errors they give are what random
text does to the model, so pass real samples when the numbers matter.

Also here: running a graph while keeping every intermediate value (a trace), re-running one
block on another residual input, and the error / cosine-distance measures the reports use.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from ..ir import Graph, NnfuseError, Node, Value
from ..ir.evaluate import run_node

DEFAULT_SAMPLES = 2
DEFAULT_DIMS = {"B": 1, "batch": 1, "batch_size": 1, "N": 1}
DEFAULT_SYMBOL = 32     # any other symbolic dim (sequence length, ...)


def _is_array(a: Any) -> bool:
    return hasattr(a, "shape") and hasattr(a, "dtype")


def _np(a: Any) -> np.ndarray:
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def _index_bound(g: Graph, v: Value) -> Optional[int]:
    """Row count of the table an integer input indexes (gather/embedding), if it does."""
    for n in g.nodes:
        if n.op == "gather" and len(n.inputs) == 2 and n.inputs[1] is v and n.attrs.get("axis", 0) == 0:
            d = n.inputs[0].type.shape[0]
            return d if isinstance(d, int) else None
        if n.op == "embedding" and len(n.inputs) == 2 and n.inputs[1] is v:
            d = n.inputs[0].type.shape[0]
            return d if isinstance(d, int) else None
    return None


def _dim(d: Any, dims: dict) -> int:
    if isinstance(d, int):
        return d
    total = 1
    for f in str(d).split("*"):
        f = f.strip()
        total *= int(f) if f.lstrip("-").isdigit() else int(dims.get(f, DEFAULT_DIMS.get(f, DEFAULT_SYMBOL)))
    return total


def random_inputs(g: Graph, samples: int = DEFAULT_SAMPLES, seed: int = 0, dims: Optional[dict] = None) -> list[list[np.ndarray]]:
    """Random samples of the graph's declared inputs (see the module doc for the distributions)."""
    rng = np.random.default_rng(seed)
    dims = dict(dims or {})
    out = []
    for _ in range(samples):
        sample = []
        for v in g.inputs:
            shape = tuple(_dim(d, dims) for d in v.type.shape)
            dt = v.type.dtype.np
            if v.type.dtype.name == "bool":
                a = np.ones(shape, bool) if "mask" in v.name.lower() else rng.random(shape) < 0.5
            elif np.dtype(dt).kind in "iu":
                if "mask" in v.name.lower():
                    a = np.ones(shape, dt)
                else:
                    a = rng.integers(0, _index_bound(g, v) or 2, size=shape).astype(dt)
            else:
                a = rng.standard_normal(shape).astype(dt)
            sample.append(a)
        out.append(sample)
    return out


def calibration_inputs(g: Graph, options: dict) -> tuple[list[list[np.ndarray]], str]:
    """(samples, where they came from). Reads options `calibration`, `calibration_samples`, `seed`, `calibration_dims`."""
    cal = options.get("calibration")
    if cal is None:
        n = int(options.get("calibration_samples", DEFAULT_SAMPLES))
        return random_inputs(g, n, int(options.get("seed", 0)), options.get("calibration_dims")), f"{n} random samples"
    if isinstance(cal, dict) or _is_array(cal):
        cal = [cal]
    cal = list(cal)
    if cal and _is_array(cal[0]):
        cal = [cal]                         # one sample given as a bare list of arrays
    samples = []
    for i, s in enumerate(cal):
        if isinstance(s, dict):
            missing = [v.name for v in g.inputs if v.name not in s]
            if missing:
                raise NnfuseError(f"calibration sample {i}: no value for input(s) {', '.join(missing)}")
            s = [s[v.name] for v in g.inputs]
        s = [_np(a) for a in s]
        if len(s) != len(g.inputs):
            raise NnfuseError(f"calibration sample {i}: {len(s)} arrays for a graph with {len(g.inputs)} inputs "
                              f"({', '.join(v.name for v in g.inputs)})")
        for v, a in zip(g.inputs, s):
            if a.dtype != v.type.dtype.np or a.ndim != v.type.rank:
                raise NnfuseError(f"calibration sample {i}: input '{v.name}' expects {v.type}, got {a.dtype}{list(a.shape)}")
        samples.append(s)
    if not samples:
        raise NnfuseError("calibration: empty list of samples")
    return samples, f"{len(samples)} user samples"


def trace(g: Graph, inputs: Sequence[np.ndarray]) -> dict[int, np.ndarray]:
    """Evaluate `g` with the reference semantics, keeping every value: value id -> array."""
    env: dict[int, np.ndarray] = {v.id: np.asarray(x) for v, x in zip(g.inputs, inputs)}
    for v in g.constants.values():
        env[v.id] = v.data
    for n in g.nodes:
        for v, o in zip(n.outputs, run_node(n, [env[v.id] for v in n.inputs])):
            env[v.id] = o
    return env


def run_nodes(nodes: Sequence[Node], env: dict[int, np.ndarray], subst: dict[int, np.ndarray], want: Value) -> np.ndarray:
    """Re-run `nodes` with some values replaced (`subst`), reading everything else from `env`."""
    local = dict(subst)
    for n in nodes:
        args = [local[v.id] if v.id in local else env[v.id] for v in n.inputs]
        for v, o in zip(n.outputs, run_node(n, args)):
            local[v.id] = o
    return local[want.id] if want.id in local else env[want.id]


def outputs_of(g: Graph, samples: Sequence[Sequence[np.ndarray]]) -> list[list[np.ndarray]]:
    from ..ir import evaluate
    return [evaluate(g, s) for s in samples]


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    """1 - cos(a, b) per row (last axis = features), averaged over rows (tokens)."""
    a = np.asarray(a, np.float64).reshape(-1, a.shape[-1] if a.ndim else 1)
    b = np.asarray(b, np.float64).reshape(-1, b.shape[-1] if b.ndim else 1)
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1), 1.0)
    return float(np.mean(1.0 - cos))


def output_error(ref: Sequence[Sequence[np.ndarray]], got: Sequence[Sequence[np.ndarray]]) -> dict:
    """max |got - ref| and relative L2 error ||got - ref|| / ||ref|| over all samples and float outputs."""
    max_abs, num, den = 0.0, 0.0, 0.0
    for rs, gs in zip(ref, got):
        for r, o in zip(rs, gs):
            if np.asarray(r).dtype.kind not in "fV":
                continue
            d = np.asarray(o, np.float64) - np.asarray(r, np.float64)
            max_abs = max(max_abs, float(np.abs(d).max()) if d.size else 0.0)
            num += float((d * d).sum())
            den += float((np.asarray(r, np.float64) ** 2).sum())
    return {"max_abs_err": max_abs, "rel_err": float(np.sqrt(num / den)) if den > 0 else float(np.sqrt(num))}
