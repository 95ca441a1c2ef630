"""Graph, builder, clone, rewriting helpers, networkx/DOT views, types and dtypes."""
import ml_dtypes
import networkx as nx
import numpy as np
import pytest

import nnfuse.ir as ir
from nnfuse.ir import Builder, OpError, TensorType, broadcast_shapes, dtypes, evaluate, make_fused, to_dot, verify
from nnfuse.ir.types import dim_div, dim_mul


def mlp():
    b = Builder("mlp")
    x = b.input("x", ["B", 8])
    b.meta = {"loc": "model.fc1"}
    h = b.relu(b.add(b.matmul(x, b.const(np.full((8, 16), 0.5, np.float32), "fc1.weight")), b.const(np.ones(16, np.float32), "fc1.bias")))
    b.meta = {"loc": "model.fc2"}
    y = b.matmul(h, b.const(np.full((16, 4), 0.25, np.float32), "fc2.weight"))
    return b.output(y)


def test_builder_infers_types_and_meta():
    g = mlp()
    verify(g)
    assert [n.op for n in g.nodes] == ["matmul", "add", "relu", "matmul"]
    assert g.outputs[0].type == TensorType(["B", 4], "f32")
    assert g.nodes[0].loc == "model.fc1" and g.nodes[3].meta == {"loc": "model.fc2"}
    assert g.op_histogram() == {"matmul": 2, "add": 1, "relu": 1}
    assert g.param_bytes() == (8 * 16 + 16 + 16 * 4) * 4
    y = evaluate(g, [np.ones((3, 8), np.float32)])[0]
    np.testing.assert_allclose(y, np.full((3, 4), (8 * 0.5 + 1) * 16 * 0.25))


def test_builder_rejects_ill_typed():
    b = Builder()
    x = b.input("x", ["B", 8])
    with pytest.raises(OpError, match=r"op 'matmul' on \(f32\[B,8\], f32\[4,2\]\): inner dims differ"):
        b.matmul(x, b.const(np.zeros((4, 2), np.float32), "w"))
    assert b.graph.nodes == []  # nothing half-built


def test_constants_held_by_reference_and_clone_shares():
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = Builder()
    x = b.input("x", [2, 3])
    c = b.const(w, "w")
    assert c.data is w  # no copy on add_const
    g = b.output(b.matmul(x, c))
    g2 = g.clone()
    assert np.shares_memory(g2.constants["w"].data, w)
    assert g2.nodes[0] is not g.nodes[0] and g2.nodes[0].inputs[0] is g2.inputs[0]
    assert {v.id for n in g2.nodes for v in n.inputs}.isdisjoint({v.id for n in g.nodes for v in n.outputs})
    assert str(g2) == str(g)
    g2.nodes[0].meta["loc"] = "changed"  # meta is copied, not shared
    assert "loc" not in g.nodes[0].meta


def test_clone_copies_fused_bodies():
    b = Builder()
    x = b.input("x", [4])
    body = Builder("body")
    bx = body.input("x", [4])
    body.output(body.exp(body.mul(bx, body.const(np.float32(2), "two"))))
    b.fused("pointwise", [x], body.graph)
    g = b.output(b.graph.nodes[0].outputs[0])
    g2 = g.clone()
    assert g2.nodes[0].body is not g.nodes[0].body
    assert np.shares_memory(g2.nodes[0].body.constants["two"].data, g.nodes[0].body.constants["two"].data)
    assert str(g2) == str(g)
    np.testing.assert_allclose(evaluate(g2, [np.ones(4, np.float32)])[0], np.exp(2.0), rtol=1e-6)


def test_replace_uses_and_dead_constants():
    g = mlp()
    add, relu = g.nodes[1], g.nodes[2]
    g.replace_uses(relu.output, add.output)  # drop the relu
    g.nodes.remove(relu)
    verify(g)
    assert g.nodes[2].inputs[0] is add.output
    x = np.full((1, 8), -1.0, np.float32)
    np.testing.assert_allclose(evaluate(g, [x])[0], np.full((1, 4), (-8 * 0.5 + 1) * 16 * 0.25))
    g.replace_uses(g.outputs[0], g.inputs[0])
    assert g.outputs[0] is g.inputs[0]
    g.nodes.clear()
    assert g.remove_unused_constants() == 3 and g.constants == {}


def test_networkx_view_and_cycles():
    g = mlp()
    d = g.to_networkx()
    assert nx.is_directed_acyclic_graph(d)
    order = [n for n in nx.topological_sort(d) if isinstance(n, int)]
    assert order == [0, 1, 2, 3]
    assert d.nodes[0]["op"] == "matmul" and d.nodes[0]["type"] == "f32[B,16]"
    assert d.has_edge(("in", 0), 0) and d.has_edge(("const", "fc1.bias"), 1) and d.has_edge(3, ("out", 0))
    # fusion legality: merging nodes 0 and 2 while 1 sits between them would create a cycle
    merged = nx.contracted_nodes(d, 0, 2, self_loops=False)
    assert not nx.is_directed_acyclic_graph(merged)
    assert nx.find_cycle(merged)
    assert nx.is_directed_acyclic_graph(nx.contracted_nodes(d, 1, 2, self_loops=False))


def test_dot_output():
    g = mlp()
    dot = to_dot(g)
    assert dot.startswith('digraph "mlp" {') and dot.rstrip().endswith("}")
    for s in ("matmul\\nf32[B,16]", "relu\\nf32[B,16]", "add\\nf32[B,16]", "%x\\nf32[B,8]", "->"):
        assert s in dot
    assert "fc1.weight" not in dot and "fc1.weight" in to_dot(g, with_constants=True)
    b = Builder('we"ird')
    x = b.input('a"b', [2])
    dot = to_dot(b.output(b.relu(x)))
    assert 'digraph "we\\"ird"' in dot or "digraph" in dot
    assert '%a\\"b' in dot  # quotes in names are escaped in labels


def test_symbolic_broadcasting_rules():
    assert broadcast_shapes(("B", 3), (1, 3)) == ("B", 3)  # B vs 1
    assert broadcast_shapes(("B", 3), ("B", 1)) == ("B", 3)  # B vs B
    assert broadcast_shapes(("B",), (2, 1, 1)) == (2, 1, "B")
    assert broadcast_shapes(("B*S", 1), ("S*B", 4)) == ("B*S", 4)  # canonical products compare equal
    with pytest.raises(ValueError, match="B vs 3"):  # B vs 3: not provably equal
        broadcast_shapes(("B",), (3,))
    with pytest.raises(ValueError, match="B vs S"):
        broadcast_shapes(("B",), ("S",))


def test_dim_arithmetic():
    assert dim_mul("B", 4, "S") == "4*B*S" and dim_mul(2, 3) == 6 and dim_mul("B", 0) == 0
    assert dim_div("4*B*S", "S") == "4*B" and dim_div("B", "S") is None and dim_div(12, 5) is None and dim_div("6*B", 3) == "2*B"
    assert TensorType(["S*B", 2], "f32").shape == ("B*S", 2)
    assert TensorType(["B", 4], "bf16").nbytes == 0 and TensorType([3, 5], "i4").nbytes == 8
    with pytest.raises(ValueError):
        TensorType(["B+1"], "f32")


def test_dtypes():
    assert ir.dtype("bf16").np == np.dtype(ml_dtypes.bfloat16) and ir.dtype(np.float16).name == "f16"
    assert ir.dtype(ml_dtypes.int4).name == "i4" and ir.dtype("f8e4m3").bits == 8 and ir.dtype("u4").itemsize == 0.5
    assert dtypes.promote(dtypes.bf16, dtypes.i64) == dtypes.bf16 and dtypes.promote(dtypes.i8, dtypes.i64) == dtypes.i64
    assert {"f64", "f32", "f16", "bf16", "i64", "i32", "i16", "i8", "u8", "bool", "i4", "u4", "f8e4m3", "f8e5m2"} <= set(ir.DTYPES)
    with pytest.raises(ValueError, match="unknown dtype 'f33'"):
        ir.dtype("f33")


def test_evaluate_fused_and_errors():
    b = Builder()
    x = b.input("x", ["N"])
    body = Builder("body")
    bx = body.input("x", ["N"])
    body.output(body.neg(bx), body.exp(bx))
    n = make_fused("pointwise", [x], body.graph)
    b.graph.add_node(n)
    g = b.output(b.add(n.outputs[0], n.outputs[1]))
    verify(g)
    xin = np.linspace(-1, 1, 5).astype(np.float32)
    np.testing.assert_allclose(evaluate(g, [xin])[0], -xin + np.exp(xin), rtol=1e-6)
    with pytest.raises(ir.EvalError, match="takes 1 inputs, got 2"):
        evaluate(g, [xin, xin])
    with pytest.raises(OpError, match="operand f32\\[M\\] does not match body input f32\\[N\\]"):
        make_fused("pointwise", [b.input("m", ["M"])], body.graph)
