"""Helpers for the pass tests: run passes on a copy and compare reference outputs before and after."""
from __future__ import annotations

import numpy as np

from nnfuse.ir import Graph, evaluate, verify
from nnfuse.passes import optimize


def random_inputs(g: Graph, seed: int = 0, sym: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    xs = []
    for v in g.inputs:
        shape = [d if isinstance(d, int) else sym for d in v.type.shape]
        if v.type.dtype.name == "bool":
            xs.append(rng.random(shape) > 0.5)
        elif v.type.dtype.is_float:
            xs.append(rng.standard_normal(shape).astype(v.type.dtype.np))
        else:
            xs.append(rng.integers(-5, 5, shape).astype(v.type.dtype.np))
    return xs


def check_passes(g: Graph, passes=None, level=None, rtol: float = 1e-5, atol: float = 1e-5, seed: int = 0, **options):
    """Optimize a copy of g (verifying after each pass); outputs must match the reference evaluation of g."""
    verify(g)
    opt, report = optimize(g, opt_level=level if level is not None else 2, passes=passes, verify_each=True, **options)
    xs = random_inputs(g, seed)
    want, got = evaluate(g, xs), evaluate(opt, xs)
    assert len(want) == len(got)
    for a, b in zip(want, got):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(b.astype(np.float64), a.astype(np.float64), rtol=rtol, atol=atol)
    return opt, report


def ops(g: Graph) -> list[str]:
    return [n.op if n.body is None else f"fused:{n.attrs['kind']}" for n in g.nodes]
