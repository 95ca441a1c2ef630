"""Property test: random graphs (pointwise chains with broadcasting, reductions, written-out norms and
softmax, matmul/gemm, shape round trips, neutral elements, duplicates, dead code) through the whole O3
pipeline with verification after every pass; the reference outputs must not change."""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _passes_check import check_passes
from nnfuse.ir import Builder

UNARY = ["relu", "tanh", "sigmoid", "neg", "abs"]
BINARY = ["add", "sub", "mul", "max", "min"]
STEPS = ["unary", "binary", "binary_const", "neutral", "div", "where", "cast", "reduce", "softmax", "softmax_prims",
         "layer_norm_prims", "rms_norm_prims", "matmul", "gemm", "shape_trip", "duplicate", "dead", "exp_tanh", "gelu_prims",
         "linear_flat", "attention_prims"]


@st.composite
def random_graph(draw):
    rows, cols = draw(st.sampled_from([(2, 3), (3, 8), (4, 16)]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    b = Builder("random")
    full = [b.input(f"x{i}", [rows, cols]) for i in range(draw(st.integers(1, 3)))]
    col = []  # [rows, 1] values (reduction results) that broadcast against full ones

    def const(shape, scale=1.0):
        return b.const((scale * rng.standard_normal(shape)).astype(np.float32), "k")

    def pick(pool):
        return pool[draw(st.integers(0, len(pool) - 1))]

    for _ in range(draw(st.integers(2, 12))):
        step = draw(st.sampled_from(STEPS))
        a = pick(full)
        if step == "unary":
            full.append(getattr(b, draw(st.sampled_from(UNARY)))(a))
        elif step == "exp_tanh":
            full.append(b.exp(b.tanh(a)))
        elif step == "binary":
            other = pick(full + col)
            op = draw(st.sampled_from(BINARY))
            full.append(getattr(b, op)(a, other) if draw(st.booleans()) else getattr(b, op)(other, a))
        elif step == "binary_const":
            c = const(draw(st.sampled_from([(), (cols,), (rows, 1)])))
            full.append(getattr(b, draw(st.sampled_from(BINARY)))(a, c))
        elif step == "neutral":
            op, v = draw(st.sampled_from([("mul", 1.0), ("add", 0.0), ("sub", 0.0), ("div", 1.0), ("pow", 1.0)]))
            full.append(getattr(b, op)(a, b.const(np.float32(v), "n")))
        elif step == "div":
            full.append(b.div(a, b.add(b.abs(pick(full + col)), b.const(np.float32(1.0), "one"))))
        elif step == "where":
            full.append(b.where(b.gt(a, pick(full + col)), a, pick(full)))
        elif step == "cast":
            full.append(b.cast(b.cast(a, to="f64"), to="f32"))
        elif step == "reduce":
            op = draw(st.sampled_from(["reduce_sum", "reduce_mean", "reduce_max"]))
            col.append(getattr(b, op)(a, axes=[-1], keepdims=True))
        elif step == "softmax":
            full.append(b.softmax(a, axis=-1))
        elif step == "softmax_prims":
            e = b.exp(b.sub(a, b.reduce_max(a, axes=[-1], keepdims=True)))
            full.append(b.div(e, b.reduce_sum(e, axes=[-1], keepdims=True)))
        elif step == "layer_norm_prims":
            d = b.sub(a, b.reduce_mean(a, axes=[-1], keepdims=True))
            v = b.reduce_mean(b.mul(d, d), axes=[-1], keepdims=True)
            y = b.div(d, b.sqrt(b.add(v, b.const(np.float32(1e-5), "eps"))))
            full.append(b.add(b.mul(y, const((cols,))), const((cols,))))
        elif step == "rms_norm_prims":
            ms = b.reduce_mean(b.pow(a, b.const(np.float32(2.0), "two")), axes=[-1], keepdims=True)
            full.append(b.mul(b.mul(a, b.rsqrt(b.add(ms, b.const(np.float32(1e-6), "eps")))), const((cols,))))
        elif step == "gelu_prims":
            full.append(b.mul(b.mul(a, b.const(np.float32(0.5), "h")),
                              b.add(b.erf(b.div(a, b.const(np.float32(math.sqrt(2)), "r2"))), b.const(np.float32(1.0), "one"))))
        elif step == "matmul":
            full.append(b.add(b.matmul(a, const((cols, cols), 1 / math.sqrt(cols))), const((cols,))))
        elif step == "gemm":
            full.append(b.gemm(a, const((cols, cols), 1 / math.sqrt(cols)), const((cols,)), trans_b=True, alpha=0.5))
        elif step == "shape_trip":
            t = b.transpose(b.transpose(b.reshape(b.reshape(a, shape=[rows * cols]), shape=[cols, rows]), perm=[1, 0]), perm=[1, 0])
            full.append(b.reshape(b.unsqueeze(t, axes=[0]), shape=[rows, cols]))
        elif step == "duplicate":
            full.append(b.add(b.tanh(a), b.tanh(a)))
        elif step == "linear_flat":  # exporters' Linear: flatten leading dims, 2-D GEMM, unflatten
            x3 = b.reshape(a, shape=[1, rows, cols])
            y = b.add(b.matmul(b.reshape(x3, shape=[-1, cols]), const((cols, cols), 1 / math.sqrt(cols))), const((cols,)))
            full.append(b.reshape(b.reshape(y, shape=[1, rows, cols]), shape=[rows, cols]))
        elif step == "attention_prims":
            s = b.mul(b.matmul(a, b.transpose(pick(full), perm=[1, 0])), b.const(np.float32(1 / math.sqrt(cols)), "sc"))
            if draw(st.booleans()):
                s = b.add(s, b.const(np.triu(np.full((rows, rows), -1e9, np.float32), 1), "causal"))
            e = b.exp(b.sub(s, b.reduce_max(s, axes=[-1], keepdims=True)))
            full.append(b.matmul(b.div(e, b.reduce_sum(e, axes=[-1], keepdims=True)), pick(full)))
        elif step == "dead":
            b.exp(b.relu(a))
    outs = [full[-1]] + [pick(full + col) for _ in range(draw(st.integers(0, 2)))]
    return b.output(*outs)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_graph(), st.integers(0, 3))
def test_random_graphs_through_o3(g, seed):
    check_passes(g, level=3, rtol=1e-4, atol=1e-5, seed=seed)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_graph())
def test_random_graphs_each_pass_alone(g):
    from nnfuse.passes import pipeline
    for name in pipeline(3):
        check_passes(g, passes=[name], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_graph(), st.integers(0, 3))
def test_random_graphs_through_o3_long(g, seed):
    check_passes(g, level=3, rtol=1e-4, atol=1e-5, seed=seed)
