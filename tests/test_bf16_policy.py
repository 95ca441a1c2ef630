"""The precision policy (passes/precision.py): which ops get bf16 operands, which stay f32, errors, reports."""
import numpy as np
import pytest

import nnfuse
from nnfuse.ir import Builder, NnfuseError, evaluate
from nnfuse.passes.precision import LOW, apply_precision, policy_table

rng = np.random.default_rng(0)


def block_graph():
    """x -> layer_norm -> matmul(+bias) -> gelu -> matmul -> + x (residual) -> softmax -> reduce_mean."""
    b = Builder("blk")
    x = b.input("x", [6, 32])
    w1 = b.const(rng.standard_normal((32, 48)).astype(np.float32) * 0.2, "w1")
    w2 = b.const(rng.standard_normal((48, 32)).astype(np.float32) * 0.2, "w2")
    bias = b.const(rng.standard_normal(48).astype(np.float32), "bias")
    gamma = b.const(np.ones(32, np.float32), "gamma")
    h = b.op("layer_norm", x, gamma, axis=-1, eps=1e-5)
    h = b.op("add", b.op("matmul", h, w1), bias)
    h = b.op("gelu", h)
    h = b.op("softmax", b.op("add", b.op("matmul", h, w2), x), axis=-1)
    return b.output(b.op("reduce_mean", h, axes=[1], keepdims=False))


def producer_ops(v):
    return v.producer.op if v.producer is not None else ("const" if v.is_const else "input")


def test_policy_rewrites_gemms_only():
    g = block_graph()
    x = rng.standard_normal((6, 32)).astype(np.float32)
    ref = evaluate(g, [x])[0]
    s = apply_precision(g, "bf16")
    assert s["ops"] == 2 and s["weights"] == 2
    assert s["weight_bytes_after"] * 2 == s["weight_bytes_before"]
    for n in g.nodes:
        if n.op == "matmul":   # both operands: cast(bf16 -> f32) of a bf16 constant or of cast(x, bf16)
            for v in n.inputs:
                assert v.producer.op == "cast" and v.producer.inputs[0].dtype.name == "bf16"
                assert v.dtype.name == "f32"
        elif n.op in ("layer_norm", "softmax", "add", "gelu", "reduce_mean"):   # the f32 side of the table
            for v in n.inputs:
                assert v.dtype.name == "f32"
                assert not (producer_ops(v) == "cast" and v.producer.inputs[0].dtype.name == "bf16"), n.op
            assert n.outputs[0].dtype.name == "f32"
    consts = {k: v.dtype.name for k, v in g.constants.items()}
    assert consts.get("w1.bf16") == "bf16" and "w1" not in consts          # the f32 weight is gone: half the bytes
    assert consts["bias"] == "f32" and consts["gamma"] == "f32"             # bias / norm gains stay f32
    got = evaluate(g, [x])[0]
    assert np.abs(got - ref).max() / np.abs(ref).max() < 2e-2
    assert not np.array_equal(got, ref)                                     # the rounding really happened


def test_weight_shared_with_embedding_keeps_f32_table():
    b = Builder("tied")
    ids = b.input("ids", [5], "i64")
    table = b.const(rng.standard_normal((40, 16)).astype(np.float32), "wte")
    e = b.op("embedding", table, ids)
    logits = b.op("matmul", e, b.op("transpose", table, perm=[1, 0]))
    g = b.output(logits)
    idx = np.array([1, 3, 5, 7, 39])
    ref = evaluate(g, [idx])[0]
    apply_precision(g, "bf16")
    kinds = sorted(v.dtype.name for v in g.constants.values())
    assert kinds == ["bf16", "f32"]   # table for the gather, a bf16 transposed copy for the gemm
    got = evaluate(g, [idx])[0]
    np.testing.assert_allclose(got, ref, rtol=3e-2, atol=3e-2 * np.abs(ref).max())


def test_policy_table_names_both_sides():
    t = policy_table("bf16")
    for op in LOW:
        assert op in t
    for kept in ("softmax", "layer_norm", "rms_norm", "reductions", "residual"):
        assert kept in t
    assert "every op computes in f32" in policy_table("fp32")


def test_unknown_precision_lists_valid_ones():
    g = block_graph()
    with pytest.raises(NnfuseError, match=r"unknown precision 'int3'.*fp32, bf16, fp16"):
        nnfuse.compile(g, backend="reference", precision="int3")


def test_reference_compile_reports_accuracy_and_pass():
    g = block_graph()
    x = rng.standard_normal((6, 32)).astype(np.float32)
    cm = nnfuse.compile(g, [x], backend="reference", precision="bf16")
    st = cm.stats()
    acc = st["accuracy"]
    assert acc["precision"] == "bf16" and 0 < acc["max_rel_err"] < 2e-2 and acc["cosine"] > 0.999
    p = next(r for r in st["passes"] if r["pass"] == "precision")
    assert p["ops"] == 2
    # the pass runs after constant folding (else the weight casts would fold back to f32) and before fusion
    names = [r["pass"] for r in st["passes"]]
    assert names.index("precision") > names.index("fold-constants")
    assert names.index("precision") < min(i for i, n in enumerate(names) if n.startswith("fuse-"))


def test_fp16_policy_on_reference():
    g = block_graph()
    x = rng.standard_normal((6, 32)).astype(np.float32)
    ref = evaluate(g, [x])[0]
    cm = nnfuse.compile(g, [x], backend="reference", precision="fp16")
    assert any(v.dtype.name == "f16" for v in cm.graph.constants.values())
    np.testing.assert_allclose(cm(x), ref, rtol=1e-2, atol=1e-2 * np.abs(ref).max())


def test_fp16_on_cpu_warns_that_it_is_emulated():
    g = block_graph()
    x = rng.standard_normal((6, 32)).astype(np.float32)
    ref = evaluate(g, [x])[0]
    with pytest.warns(UserWarning, match="computes in f32"):
        cm = nnfuse.compile(g, [x], backend="cpu", precision="fp16")
    np.testing.assert_allclose(cm(x), ref, rtol=1e-2, atol=1e-2 * np.abs(ref).max())
