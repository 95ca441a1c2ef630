"""Evaluate a graph with the ops' numpy semantics. This is the oracle every backend is tested against."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from .errors import NnfuseError
from .graph import Graph, Node
from .ops import OPS, OpError
from .types import _factors


class EvalError(NnfuseError, RuntimeError):
    pass


def evaluate(g: Graph, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    if len(inputs) != len(g.inputs):
        raise EvalError(f"graph @{g.name} takes {len(g.inputs)} inputs, got {len(inputs)}")
    env: dict[int, np.ndarray] = {}
    for v, x in zip(g.inputs, inputs):
        env[v.id] = np.asarray(x)
    syms = bind_symbols([v.type.shape for v in g.inputs], [env[v.id].shape for v in g.inputs])
    for name, v in g.constants.items():
        if v.data is None:
            raise EvalError(f"constant @{name} has no data (load the graph with its weights file)")
        env[v.id] = v.data
    for n in g.nodes:
        args = [env[v.id] for v in n.inputs]
        outs = run_node(n, args, syms)
        for v, o in zip(n.outputs, outs):
            env[v.id] = o
    return [env[v.id] for v in g.outputs]


def bind_symbols(types: Sequence[tuple], shapes: Sequence[tuple], syms: Optional[dict] = None) -> dict[str, int]:
    """Symbol -> size from the declared shapes of values and their runtime shapes (single symbols; then
    products with one unknown factor)."""
    syms = dict(syms or {})
    pairs = [(d, n) for ts, s in zip(types, shapes) if len(ts) == len(s) for d, n in zip(ts, s) if isinstance(d, str)]
    for _ in range(2):
        for d, n in pairs:
            coef, names = _factors(d)
            unknown = [x for x in names if x not in syms]
            if len(unknown) == 1 and names.count(unknown[0]) == 1:
                known = coef * math.prod(syms[x] for x in names if x != unknown[0])
                if known and n % known == 0:
                    syms[unknown[0]] = n // known
    return syms


def resolve_dims(dims: Sequence, syms: dict, what: str = "") -> tuple:
    """Replace symbolic dims by their runtime sizes."""
    out = []
    for d in dims:
        if isinstance(d, str):
            coef, names = _factors(d)
            missing = [x for x in names if x not in syms]
            if missing:
                raise EvalError(f"{what}: symbol(s) {', '.join(missing)} in {list(dims)} are not bound by the inputs")
            d = coef * math.prod(syms[x] for x in names)
        out.append(d)
    return tuple(out)


def run_node(n: Node, args: Sequence[np.ndarray], syms: Optional[dict] = None) -> list[np.ndarray]:
    if n.body is not None:
        return evaluate(n.body, args)
    od = OPS[n.op]
    attrs = n.attrs
    dim_attrs = [k for k, a in od.attrs.items() if a.kind == "dims" and any(isinstance(d, str) for d in (attrs.get(k) or ()))]
    if dim_attrs:  # symbolic dims in attributes (reshape/expand targets) take their sizes from the operands
        syms = bind_symbols([v.type.shape for v in n.inputs], [np.shape(a) for a in args], syms)
        attrs = {**attrs, **{k: resolve_dims(attrs[k], syms, f"{n.op} attribute '{k}'") for k in dim_attrs}}
    try:
        outs = od.run(args, attrs)
    except OpError:
        raise
    except Exception as e:  # numpy errors deep inside an op: say which node
        where = f" ({n.loc})" if n.loc else ""
        raise EvalError(f"{n.op}{where} failed on {[f'{a.dtype}{list(a.shape)}' for a in args]}: {e}") from e
    want = [o.type.dtype.np for o in n.outputs]
    return [np.asarray(o) if np.asarray(o).dtype == w else np.asarray(o).astype(w) for o, w in zip(outs, want)]
