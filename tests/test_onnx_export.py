"""ONNX exporter: IR graphs (fused regions, symbolic dims, ops without a 1:1 ONNX op, odd outputs and names)
export to models that pass onnx.checker(full_check) and run in onnxruntime like the reference evaluator."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from nnfuse.backends.onnx import compile_graph, export
from nnfuse.ir import Builder, Graph, evaluate, make_fused
from onnx_util import assert_close, ort_run

R = np.random.default_rng(1)


def f32(*shape):
    return R.standard_normal(shape).astype(np.float32)


def roundtrip(g: Graph, *inputs, rtol=1e-5, atol=1e-5):
    """Exported model == reference evaluator; returns the ModelProto."""
    m = export(g)  # runs onnx.checker.check_model(full_check=True)
    got = ort_run(m, {v.name: x for v, x in zip(g.inputs, inputs)})
    assert_close(got, evaluate(g, list(inputs)), rtol, atol)
    return m


def _unary(op, **attrs):
    b = Builder(op)
    x = b.input("x", [3, 4])
    return b.output(b.op(op, x, **attrs))


@pytest.mark.parametrize("op,attrs", [("rsqrt", {}), ("silu", {}), ("gelu", {"approximate": "tanh"}), ("gelu", {}),
                                      ("clip", {"min": -0.3}), ("log_softmax", {"axis": 0}), ("cumsum", {"axis": 1, "reverse": True}),
                                      ("reduce_l2", {"axes": [1], "keepdims": True}), ("hard_sigmoid", {}), ("elu", {"alpha": 0.5})])
def test_unary_ops(op, attrs):
    x = np.abs(f32(3, 4)) + 0.1 if op == "rsqrt" else f32(3, 4)
    roundtrip(_unary(op, **attrs), x)


def test_binary_ops_without_direct_onnx_form():
    b = Builder("bin")
    x, y = b.input("x", [2, 5]), b.input("y", [5])
    m = b.mod(x, y)                           # numpy mod (sign of the divisor), not ONNX fmod
    ne = b.cast(b.ne(x, b.neg(x)), to="f32")
    b.output(m, ne, b.max(x, y), names=["mod", "ne", "max"])
    roundtrip(b.graph, f32(2, 5) * 4, np.abs(f32(5)) + 0.5)


def test_norms_and_attention():
    b = Builder("blk")
    x = b.input("x", [2, 6, 8])
    w = b.const(np.abs(f32(8)) + 0.5, "w")
    h = b.rms_norm(x, w, eps=1e-6)
    ln = b.layer_norm(h, eps=1e-5)                       # no weight: the exporter adds ones
    q = b.reshape(ln, shape=[2, 6, 4, 2])
    q = b.transpose(q, perm=[0, 2, 1, 3])                # [2,4,6,2]
    kv = b.slice(q, starts=[0], ends=[2], axes=[1])      # 2 kv heads: grouped-query attention
    a = b.scaled_dot_product_attention(q, kv, kv, causal=True)
    gn = b.group_norm(b.reshape(a, shape=[2, 4, 12]), b.const(f32(4), "gs"), b.const(f32(4), "gb"), groups=2)
    b.output(gn)
    roundtrip(b.graph, f32(2, 6, 8), rtol=1e-4, atol=1e-5)


def test_attention_with_bool_mask():
    b = Builder("att")
    q, k = b.input("q", [1, 2, 3, 4]), b.input("k", [1, 2, 5, 4])
    mask = b.input("mask", [3, 5], "bool")
    b.output(b.scaled_dot_product_attention(q, k, k, mask, scale=0.3))
    m = np.ones((3, 5), bool)
    m[:, 3:] = False
    roundtrip(b.graph, f32(1, 2, 3, 4), f32(1, 2, 5, 4), m)


def test_fused_region_exports_as_body_ops():
    body = Builder("body")
    x, w = body.input("x", [4, 8]), body.input("w", [8, 3])
    body.output(body.relu(body.add(body.matmul(x, w), body.const(f32(3), "bias"))))
    b = Builder("outer")
    xi = b.input("inp", [4, 8])
    wc = b.const(f32(8, 3), "weight")
    n = make_fused("gemm", [xi, wc], body.graph)
    b.graph.add_node(n)
    b.output(b.sigmoid(n.outputs[0]), names=["probs"])
    m = roundtrip(b.graph, f32(4, 8))
    assert [o.name for o in m.graph.output] == ["probs"]
    assert [n.op_type for n in m.graph.node] == ["MatMul", "Add", "Relu", "Sigmoid"]


def test_symbolic_dims_are_rebuilt_at_runtime():
    b = Builder("sym")
    x = b.input("x", ["B", "S", 6])
    y = b.reshape(x, shape=["B*S", 6])
    z = b.expand(b.const(f32(1, 6), "row"), shape=["B*S", 6])
    b.output(b.add(y, z))
    m = export(b.graph)
    assert [d.dim_param for d in m.graph.input[0].type.tensor_type.shape.dim[:2]] == ["B", "S"]
    for shape in [(2, 3, 6), (1, 5, 6)]:
        x = f32(*shape)
        assert_close(ort_run(m, {"x": x}), evaluate(b.graph, [x]))


def test_odd_outputs_and_hostile_names():
    evil = 'x"); system("touch PWNED"); /*\n*/'
    b = Builder('g"raph')
    x = b.input(evil, [2, 3])
    r = b.relu(x)
    c = b.const(np.arange(3, dtype=np.float32), "k")
    # the same value twice, an input returned as is, a constant output, names that clash with inputs
    b.output(r, r, x, c, names=["int", "int", evil, "return"])
    m = roundtrip(b.graph, f32(2, 3))
    names = [o.name for o in m.graph.output]
    assert len(set(names)) == 4 and names[0] == "int" and names[3] == "return"
    onnx.checker.check_model(m, full_check=True)


def test_compile_graph_backend_runs_in_onnxruntime():
    b = Builder("mlp")
    x = b.input("x", [3, 5])
    b.output(b.softmax(b.gemm(x, b.const(f32(4, 5), "w"), b.const(f32(4), "b"), trans_b=True)))
    exe = compile_graph(b.graph)
    x = f32(3, 5)
    assert_close(exe([x]), evaluate(b.graph, [x]))
    assert "Gemm" in exe.source()


@pytest.mark.parametrize("codes", ["i8", "i4", "u8"])
def test_weight_only_quantized_matmul(codes):
    from nnfuse.ir import dtype
    k, n, g = 16, 6, 4
    w = f32(k, n)
    scale = (np.abs(w).reshape(k // g, g, n).max(1) / 7).astype(np.float32)
    zero = None if codes != "u8" else np.full((k // g, n), 8, dtype(codes).np)
    q = np.clip(np.round(w / np.repeat(scale, g, 0)) + (8 if zero is not None else 0), -8, 15).astype(dtype(codes).np)
    b = Builder("wq")
    x = b.input("x", [3, k])
    deq = b.dequantize(*([b.const(q, "wq"), b.const(scale, "s")] + ([b.const(zero, "z")] if zero is not None else [])), axis=0, group=g)
    b.output(b.matmul(x, deq))
    roundtrip(b.graph, f32(3, k), rtol=1e-5, atol=1e-5)


def test_activation_qdq_matmul_integer_and_hadamard():
    b = Builder("q")
    x = b.input("x", [4, 8])
    s = b.const(np.float32(0.05), "sx")
    qx = b.quantize(x, s, dtype="i8")
    wq = b.const(np.random.default_rng(3).integers(-100, 100, (8, 5)).astype(np.int8), "wq")
    acc = b.matmul_integer(qx, wq)
    y = b.mul(b.cast(acc, to="f32"), b.const(np.float32(0.05 * 0.01), "s2"))
    b.output(y, b.dequantize(qx, s), b.hadamard(x))
    roundtrip(b.graph, f32(4, 8) * 3, rtol=1e-5, atol=1e-5)


def test_dynamic_w8a8_matmul():
    b = Builder("w8a8")
    x = b.input("x", [2, 3, 8])
    qx, sx = b.quantize_dynamic(x, dtype="i8")
    wq = b.const(np.random.default_rng(4).integers(-127, 127, (8, 4)).astype(np.int8), "wq")
    acc = b.matmul_integer(qx, wq)
    b.output(b.mul(b.mul(b.cast(acc, to="f32"), sx), b.const(np.float32(0.01), "sw")), qx, names=["y", "qx"])
    roundtrip(b.graph, f32(2, 3, 8), rtol=1e-5, atol=1e-5)
