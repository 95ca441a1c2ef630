"""Evaluate a graph with the ops' numpy semantics. This is the oracle every backend is tested against."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import NnfuseError
from .graph import Graph, Node
from .ops import OPS, OpError


class EvalError(NnfuseError, RuntimeError):
    pass


def evaluate(g: Graph, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    if len(inputs) != len(g.inputs):
        raise EvalError(f"graph @{g.name} takes {len(g.inputs)} inputs, got {len(inputs)}")
    env: dict[int, np.ndarray] = {}
    for v, x in zip(g.inputs, inputs):
        env[v.id] = np.asarray(x)
    for name, v in g.constants.items():
        if v.data is None:
            raise EvalError(f"constant @{name} has no data (load the graph with its weights file)")
        env[v.id] = v.data
    for n in g.nodes:
        args = [env[v.id] for v in n.inputs]
        outs = run_node(n, args)
        for v, o in zip(n.outputs, outs):
            env[v.id] = o
    return [env[v.id] for v in g.outputs]


def run_node(n: Node, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    if n.body is not None:
        return evaluate(n.body, args)
    try:
        outs = OPS[n.op].run(args, n.attrs)
    except OpError:
        raise
    except Exception as e:  # numpy errors deep inside an op: say which node
        where = f" ({n.loc})" if n.loc else ""
        raise EvalError(f"{n.op}{where} failed on {[f'{a.dtype}{list(a.shape)}' for a in args]}: {e}") from e
    want = [o.type.dtype.np for o in n.outputs]
    return [np.asarray(o) if np.asarray(o).dtype == w else np.asarray(o).astype(w) for o, w in zip(outs, want)]
