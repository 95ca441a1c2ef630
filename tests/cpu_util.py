"""Helpers for the cpu backend tests: compile a Builder graph and compare with the reference evaluator."""
from __future__ import annotations

import numpy as np

from nnfuse.ir import Builder, evaluate


def run_both(g, inputs):
    from nnfuse.backends import cpu
    exe = cpu.compile_graph(g)
    return exe, exe(inputs), evaluate(g, inputs)


def check(g, inputs, rtol=1e-4, atol=1e-5):
    exe, got, ref = run_both(g, inputs)
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
        if a.dtype.kind == "f" or "float" in str(a.dtype):  # bfloat16 / fp8 (ml_dtypes) have kind "V"
            np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=rtol, atol=atol)
        else:
            np.testing.assert_array_equal(a, b)
    return exe


def graph(fn, *specs, name="t"):
    """fn(builder, *input_values) -> output value(s); specs: (shape, dtype) per input."""
    b = Builder(name)
    ins = [b.input(f"x{i}", shape, dt) for i, (shape, dt) in enumerate(specs)]
    outs = fn(b, *ins)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    return b.output(*outs)


def rand(rng, shape, dt="f32"):
    if dt in ("f32", "f64"):
        return rng.standard_normal(shape).astype(dt.replace("f", "float"))
    if dt == "bool":
        return rng.random(shape) > 0.5
    return rng.integers(-5, 5, shape).astype({"i64": np.int64, "i32": np.int32, "i8": np.int8}[dt])
