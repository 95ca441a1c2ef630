"""Differential tests: every op family and kernel kind on the cpu backend vs the reference evaluator."""
from __future__ import annotations

import numpy as np
import pytest

from cpu_util import check, graph, rand
from nnfuse.ir import evaluate

F = "f32"
R = np.random.default_rng(1)


def W(*shape, pos=False):
    a = R.standard_normal(shape).astype(np.float32)
    return np.abs(a) + 0.5 if pos else a


def C(b, arr, name="c"):
    return b.const(np.asarray(arr), name)


CASES = {
    "conv_bias_relu_stride_pad": (lambda b, x: b.relu(b.conv(x, C(b, W(8, 3, 3, 3)), C(b, W(8)), pads=[1, 1, 1, 1], strides=[2, 2])),
                                  [((2, 3, 9, 9), F)]),
    "conv_1x1_groups": (lambda b, x: b.conv(x, C(b, W(8, 2, 1, 1)), groups=2), [((1, 4, 5, 5), F)]),
    "conv_depthwise_dilated": (lambda b, x: b.conv(x, C(b, W(4, 1, 3, 3)), groups=4, pads=[2, 2, 2, 2], dilations=[2, 2]),
                               [((1, 4, 7, 7), F)]),
    "conv1d": (lambda b, x: b.conv(x, C(b, W(4, 3, 3)), pads=[1, 1], dilations=[2]), [((1, 3, 10), F)]),
    "conv3d_groups_stride": (lambda b, x: b.conv(x, C(b, W(4, 1, 2, 3, 3)), C(b, W(4)), groups=2, strides=[1, 2, 2], pads=[0, 1, 1, 1, 0, 1]),
                             [((1, 2, 4, 6, 7), F)]),
    "conv_transpose": (lambda b, x: b.conv_transpose(x, C(b, W(4, 3, 3, 3)), C(b, W(6)), groups=2, strides=[2, 2], pads=[1, 0, 1, 1],
                                                     output_padding=[1, 0]), [((2, 4, 5, 4), F)]),
    "conv_transpose_1d_dil": (lambda b, x: b.conv_transpose(x, C(b, W(3, 2, 3)), dilations=[2]), [((1, 3, 6), F)]),
    "max_pool": (lambda b, x: b.max_pool(x, kernel=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), [((1, 2, 7, 7), F)]),
    "avg_pool_ceil": (lambda b, x: b.avg_pool(x, kernel=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=True), [((1, 2, 8, 8), F)]),
    "avg_pool_incl_pad": (lambda b, x: b.avg_pool(x, kernel=[2, 2], pads=[1, 1, 1, 1], count_include_pad=True), [((1, 2, 5, 5), F)]),
    "global_pools": (lambda b, x: [b.global_avg_pool(x), b.global_max_pool(x)], [((2, 3, 4, 4), F)]),
    "batch_norm": (lambda b, x: b.batch_norm(x, *[C(b, W(3, pos=True), n) for n in "sbmv"]), [((2, 3, 4, 4), F)]),
    "batch_norm_dynamic": (lambda b, x, s: b.batch_norm(x, s, s, s, C(b, W(3, pos=True))), [((2, 3, 4, 4), F), ((3,), F)]),
    "instance_norm": (lambda b, x: b.instance_norm(x, C(b, W(3)), C(b, W(3))), [((2, 3, 4, 4), F)]),
    "group_norm": (lambda b, x: b.group_norm(x, C(b, W(4)), C(b, W(4)), groups=2), [((2, 4, 3, 3), F)]),
    "lrn": (lambda b, x: b.lrn(x, size=3), [((1, 5, 3, 3), F)]),
    "pad_modes": (lambda b, x: [b.pad(x, pads=[1, 0, 2, 1]), b.pad(x, pads=[1, 2, 1, 2], mode="reflect"),
                                b.pad(x, pads=[1, 1, 1, 1], mode="edge"), b.pad(x, pads=[-1, 1, 0, -2])], [((3, 4), F)]),
    "tile": (lambda b, x: b.tile(x, repeats=[2, 3]), [((2, 3), F)]),
    "gather_neg_idx": (lambda b, x, i: b.gather(x, i, axis=1), [((3, 5), F), ((2, 2), "i64")]),
    "gather_elements": (lambda b, x, i: b.gather_elements(x, i, axis=1), [((3, 5), F), ((3, 2), "i64")]),
    "embedding": (lambda b, i: b.embedding(C(b, W(7, 4)), i), [((2, 3), "i64")]),
    "cumsum": (lambda b, x: [b.cumsum(x, axis=1), b.cumsum(x, axis=1, exclusive=True, reverse=True)], [((3, 5), F)]),
    "reduce_l2_lse": (lambda b, x: [b.reduce_log_sum_exp(x, axes=[1]), b.reduce_l2(x, axes=[0], keepdims=True)], [((3, 5), F)]),
    "reductions": (lambda b, x: [b.reduce_sum(x, axes=[0, 2]), b.reduce_mean(x, axes=[1], keepdims=True), b.reduce_max(x),
                                 b.reduce_min(x, axes=[-1]), b.reduce_prod(x, axes=[1])], [((2, 3, 4), F)]),
    "sdpa_causal": (lambda b, q, k, v: b.scaled_dot_product_attention(q, k, v, causal=True), [((1, 2, 6, 4), F)] * 3),
    "sdpa_gqa_mask": (lambda b, q, k, v, m: b.scaled_dot_product_attention(q, k, v, m),
                      [((1, 4, 6, 4), F), ((1, 2, 6, 4), F), ((1, 2, 6, 4), F), ((6, 6), F)]),
    "argmax_argmin": (lambda b, x: [b.argmax(x, axis=1), b.argmin(x, axis=0, keepdims=False),
                                    b.argmax(x, axis=1, select_last_index=True)], [((3, 5), F)]),
    "int_arith": (lambda b, x, y: [b.add(x, y), b.div(x, y), b.mod(x, y), b.max(x, y), b.abs(x), b.eq(x, y), b.neg(y)],
                  [((3, 5), "i64"), ((3, 5), "i64")]),
    "unary_float": (lambda b, x: [getattr(b, o)(x) for o in ["exp", "tanh", "sigmoid", "gelu", "erf", "silu", "softplus", "relu",
                                                             "neg", "abs", "sin", "cos", "floor", "ceil", "round", "sign",
                                                             "hard_swish", "hard_sigmoid", "elu", "selu", "leaky_relu"]]
                    + [b.gelu(x, approximate="tanh"), b.log(b.abs(x)), b.sqrt(b.abs(x)), b.rsqrt(b.abs(x)), b.reciprocal(x)],
                    [((4, 33), F)]),
    "broadcast_where_pow_clip": (lambda b, x, y: [b.where(b.gt(x, y), x, y), b.sub(x, y), b.pow(b.abs(x), y),
                                                  b.clip(x, min=-0.5, max=0.5), b.prelu(x, C(b, W(5)))],
                                 [((2, 1, 5), F), ((3, 1), F)]),
    "logical": (lambda b, x, y: [b.and_(x, y) if hasattr(b, "and_") else b.op("and", x, y), b.op("or", x, y), b.op("xor", x, y),
                                 b.op("not", x)], [((3, 4), "bool"), ((3, 4), "bool")]),
    "views": (lambda b, x: [b.transpose(b.reshape(x, shape=[2, 3, 4]), perm=[2, 0, 1]), b.slice(x, starts=[1], ends=[5], axes=[1], steps=[2]),
                            b.slice(x, starts=[-1], ends=[-10**9], axes=[0], steps=[-1]),
                            b.concat(x, b.neg(x), axis=0), *b.split(x, axis=1, sizes=[2, 4]), b.flatten(b.unsqueeze(x, axes=[0]), axis=2),
                            b.expand(b.unsqueeze(b.reduce_sum(x, axes=[1]), axes=[1]), shape=[4, 6]), b.squeeze(b.reshape(x, shape=[1, 4, 6]))],
              [((4, 6), F)]),
    "reshape_of_transpose": (lambda b, x: b.relu(b.reshape(b.transpose(b.exp(x), perm=[1, 0, 2]), shape=[3, 8])), [((2, 3, 4), F)]),
    "matmul_batched": (lambda b, x, y: [b.matmul(x, y), b.matmul(b.transpose(x, perm=[0, 2, 1]), x)], [((2, 3, 4), F), ((4, 5), F)]),
    "matmul_vec": (lambda b, x, y: [b.matmul(x, y), b.matmul(y, y), b.matmul(y, x)], [((4, 4), F), ((4,), F)]),
    "matmul_int": (lambda b, x, y: b.matmul(x, y), [((3, 4), "i64"), ((4, 2), "i64")]),
    "gemm_op": (lambda b, x: b.gemm(x, C(b, W(6, 4)), C(b, W(6)), trans_b=True, alpha=0.5, beta=2.0), [((3, 4), F)]),
    "gemm_epilogue_residual": (lambda b, x: b.add(b.gelu(b.add(b.matmul(x, C(b, W(8, 8))), C(b, W(8)))), x), [((2, 5, 8), F)]),
    "row_norms": (lambda b, x: [b.softmax(x, axis=0), b.log_softmax(x, axis=1), b.rms_norm(x, C(b, W(6))), b.layer_norm(x)],
                  [((4, 6), F)]),
    "layer_norm_multi_axis": (lambda b, x: b.layer_norm(x, C(b, W(3, 4)), axis=1), [((2, 3, 4), F)]),
    "casts": (lambda b, x: [b.cast(x, to="i32"), b.cast(b.gt(x, b.const(np.float32(0))), to="f32"), b.cast(x, to="f64")], [((3, 4), F)]),
    "f64": (lambda b, x: [b.exp(x), b.tanh(x), b.matmul(x, b.transpose(x, perm=[1, 0]))], [((3, 4), "f64")]),
    "generators": (lambda b, x: [b.add(x, b.cast(b.arange(end=4.0, dtype="i64"), to="f32")), b.constant_of_shape(shape=[2, 2], value=3.0),
                                 b.shape(x)], [((3, 4), F)]),
    "output_is_input_and_dup": (lambda b, x: [x, b.relu(x), x], [((3, 4), F)]),
    "large_parallel": (lambda b, x: [b.softmax(b.mul(x, x)), b.reduce_sum(b.exp(x), axes=[1])], [((64, 1030), F)]),
}


@pytest.mark.parametrize("qdtype", ["i8", "i4", "f8e4m3"])
def test_weight_only_dequantize_in_gemm(qdtype):
    import ml_dtypes
    npdt = {"i8": np.int8, "i4": ml_dtypes.int4, "f8e4m3": ml_dtypes.float8_e4m3fn}[qdtype]
    rng = np.random.default_rng(0)
    q = (rng.integers(-7, 7, (64, 16)) if qdtype != "f8e4m3" else rng.standard_normal((64, 16))).astype(npdt)
    s = rng.random((2, 16)).astype(np.float32)
    z = rng.integers(-2, 2, (2, 16)).astype(npdt) if qdtype == "i8" else None

    def fn(b, x):
        args = [b.const(q, "q"), b.const(s, "s")] + ([b.const(z, "z")] if z is not None else [])
        return b.matmul(x, b.dequantize(*args, axis=0, group=32))
    check(graph(fn, ((3, 64), "f32")), [rng.standard_normal((3, 64)).astype(np.float32)], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(CASES))
def test_cpu_matches_reference(name):
    fn, specs = CASES[name]
    rng = np.random.default_rng(0)
    g = graph(fn, *specs)
    ins = [rand(rng, s, d) for s, d in specs]
    if name.startswith("gather"):
        ins[1] = rng.integers(-3, 3, specs[1][0]).astype(np.int64)
    if name == "embedding":
        ins[0] = rng.integers(0, 7, specs[0][0]).astype(np.int64)
    if name == "int_arith":
        ins[1][ins[1] == 0] = 3
    check(g, ins, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dt", ["bf16", "f16"])
def test_low_precision_floats(dt):
    import ml_dtypes
    npdt = ml_dtypes.bfloat16 if dt == "bf16" else np.float16
    g = graph(lambda b, x, y: [b.softmax(b.matmul(x, y)), b.layer_norm(b.gelu(x)),
                               b.add(x, b.cast(b.reduce_sum(x, axes=[1], keepdims=True), to=dt))], ((4, 8), dt), ((8, 5), dt))
    rng = np.random.default_rng(0)
    check(g, [rng.standard_normal((4, 8)).astype(npdt), rng.standard_normal((8, 5)).astype(npdt)], rtol=2e-2, atol=2e-2)


WINDOW_CASES = {   # outputs >= 8 wide: the reduce vectorizes across outputs (codegen.window_reduce)
    "max_pool": lambda b, x: b.max_pool(x, kernel=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "avg_pool_ceil": lambda b, x: b.avg_pool(x, kernel=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=True),
    "avg_pool_incl_pad": lambda b, x: b.avg_pool(x, kernel=[2, 2], pads=[1, 1, 1, 1], count_include_pad=True),
    "reduce_channels": lambda b, x: [b.reduce_sum(x, axes=[1]), b.reduce_max(x, axes=[1], keepdims=True),
                                     b.reduce_min(x, axes=[1]), b.reduce_prod(x, axes=[1])],
}


@pytest.mark.parametrize("name", sorted(WINDOW_CASES))
def test_window_reduce_matches_reference(name):
    """Pooling and a reduce over channels on outputs wide enough for the window form: the form is taken, the
    results equal the reference (max/min exactly), NaN and -inf propagate through max/min as in the reference."""
    from nnfuse.backends.cpu.codegen import window_reduce
    rng = np.random.default_rng(1)
    g = graph(WINDOW_CASES[name], ((2, 3, 20, 21), "f32"))
    x = rng.standard_normal((2, 3, 20, 21)).astype(np.float32)
    x[0, 1, 4, 7], x[1, 2, 9, 9], x[1, 0, 0, 0] = np.nan, -np.inf, np.inf
    exe = check(g, [x], rtol=1e-5, atol=1e-6)
    assert any(window_reduce(k) for k in exe.program.kernels if k.kind == "reduce")
    got, ref = exe([x]), evaluate(g, [x])
    for a, b in zip(got, ref):
        assert (np.isnan(a) == np.isnan(b)).all()


def test_erf_and_gelu_keep_relative_accuracy():
    """erf / GELU in the C backend against the reference over [-6, 6] and at tiny magnitudes (1e-7..1e-2, where
    1 - P(t)exp(-x^2) forms lose all relative accuracy: 13 % at 1e-6 before the rational form)."""
    xs = np.concatenate([np.linspace(-6, 6, 4001), np.geomspace(1e-7, 1e-2, 200), -np.geomspace(1e-7, 1e-2, 200),
                         [0.0, np.inf, -np.inf, np.nan]]).astype(np.float32)
    g = graph(lambda b, x: [b.erf(x), b.gelu(x)], ((xs.size,), "f32"))
    exe, got, ref = __import__("cpu_util").run_both(g, [xs])
    for a, r in zip(got, ref):
        np.testing.assert_allclose(a, r, rtol=2e-6, atol=2e-6)   # 1 + erf(x) cancels for x << 0 (both sides)
        tiny = (np.abs(xs) > 0) & (np.abs(xs) < 1e-2)
        np.testing.assert_allclose(a[tiny], r[tiny], rtol=2e-6, atol=0)
