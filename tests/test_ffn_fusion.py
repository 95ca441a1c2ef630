"""FFN fusion, block discovery and attention removal, checked against numpy oracles and the reference evaluator."""
import numpy as np
import pytest
from ffn_models import ffn_stack_ir, llama_ir, llama_weights, np_parallel

import nnfuse.ir as ir
from nnfuse.ir import NnfuseError
from nnfuse.passes import optimize
from nnfuse.passes.blocks import discover
from nnfuse.passes.calibration import random_inputs
from nnfuse.passes.ffn_fusion import split_run


def _ffn_params(rng, d, hidden, act="swiglu", norm="rms"):
    f = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    p = {"w1": f(d, hidden), "w2": f(hidden, d), "g": (1 + 0.5 * rng.standard_normal(d)).astype(np.float32)}
    if act == "swiglu":
        p["w3"] = f(d, hidden)
    else:
        p["b1"], p["b2"] = f(hidden), f(d)
    if norm == "layer":
        p["beta"] = f(d)
    return p


def _matmuls(g):
    return sum(n.op == "matmul" for n in g.nodes)


@pytest.mark.parametrize("loc", [True, False])
@pytest.mark.parametrize("primitive", [False, True])
def test_discovery_finds_layers_from_paths_and_structure(loc, primitive):
    g = llama_ir(llama_weights(layers=3), loc=loc, primitive_norm=primitive)
    st = discover(g)
    assert st.method == ("structure+loc" if loc else "structure")
    assert [L.index for L in st.layers] == [0, 1, 2]
    assert [b.kind for b in st.blocks] == ["attention", "ffn"] * 3
    for L in st.layers:
        assert len(L.attention.gemms) == 4 and len(L.ffn.gemms) == 3 and L.ffn.closed
        assert L.ffn.entry is L.attention.exit
    if loc:
        assert st.layers[1].ffn.loc == "model.layers.1.mlp"
    assert "layer 2: attention (" in "\n".join(st.describe())


def test_no_blocks_in_a_plain_mlp():
    b = ir.Builder("mlp")
    x = b.input("x", [2, 4])
    y = b.matmul(b.relu(b.matmul(x, b.const(np.ones((4, 8), np.float32)))), b.const(np.ones((8, 4), np.float32)))
    g = b.output(y)
    assert discover(g).blocks == []
    h, rep = optimize(g, passes=["ffn-fusion"])
    assert rep.results[0].stats["runs"] == 0 and len(h.nodes) == len(g.nodes)


@pytest.mark.parametrize("norm,act", [("rms", "swiglu"), ("layer", "gelu"), (None, "swiglu")])
def test_fused_graph_is_the_parallel_form(norm, act, rng):
    """The rewrite computes exactly x + sum_k FFN_k(norm_k(x)) (gains/shifts folded per branch, biases summed)."""
    d, rows = 16, 5
    ws = [_ffn_params(rng, d, h, act, norm or "rms") for h in (24, 40, 24)]   # unequal hidden sizes on purpose
    g = ffn_stack_ir(ws, d, rows, norm, act)
    x = rng.standard_normal((rows, d)).astype(np.float32)
    h, rep = optimize(g, passes=["ffn-fusion"], verify_each=True, ffn_threshold=2.0, calibration=[x])
    st = rep.results[0].stats
    assert st["runs"] == 1 and st["fused"][0]["gemms"] == [9 if act == "swiglu" else 6, 3 if act == "swiglu" else 2]
    assert st["fused"][0]["gemm_depth"] == [6, 2] and st["fused"][0]["shared_norm"]
    assert _matmuls(h) == (3 if act == "swiglu" else 2)
    ir.verify(h)
    np.testing.assert_allclose(ir.evaluate(h, [x])[0], np_parallel(x, ws, norm, act), rtol=1e-4, atol=1e-4)


def test_blocks_with_different_norms_keep_their_own(rng):
    """Norm statistics not shared (RMS vs layer norm): each branch normalizes x itself, first GEMMs per branch, one down GEMM."""
    d, rows = 16, 5
    ws = [_ffn_params(rng, d, 24, "swiglu", "layer") for _ in range(3)]
    ws[1]["norm"] = "layer"
    g = ffn_stack_ir(ws, d, rows, "rms", "swiglu")
    x = rng.standard_normal((rows, d)).astype(np.float32)
    h, rep = optimize(g, passes=["ffn-fusion"], verify_each=True, ffn_threshold=2.0, calibration=[x])
    f = rep.results[0].stats["fused"][0]
    assert not f["shared_norm"] and f["gemms"] == [9, 7] and _matmuls(h) == 7
    np.testing.assert_allclose(ir.evaluate(h, [x])[0], np_parallel(x, ws, "rms", "swiglu"), rtol=1e-4, atol=1e-4)


def test_exact_when_blocks_commute(rng):
    """Blocks that read only channels [:d/2] and write only [d/2:]: no block sees another, fusion is exact."""
    d, hid, rows = 16, 32, 7
    ws = []
    for _ in range(4):
        p = _ffn_params(rng, d, hid, "swiglu")
        p["w1"][d // 2:] = 0
        p["w3"][d // 2:] = 0
        p["w2"][:, : d // 2] = 0
        ws.append(p)
    g = ffn_stack_ir(ws, d, rows, norm=None)
    x = rng.standard_normal((rows, d)).astype(np.float32)
    h, rep = optimize(g, passes=["ffn-fusion"], verify_each=True, ffn_threshold=1e-9, calibration=[x])
    st = rep.results[0].stats
    assert st["runs"] == 1 and st["blocks_fused"] == 4
    assert np.max(st["dependency"][0]["M"]) < 1e-9
    np.testing.assert_allclose(ir.evaluate(h, [x])[0], ir.evaluate(g, [x])[0], rtol=1e-5, atol=1e-5)
    assert st["max_abs_err"] < 1e-5


def test_reported_error_equals_independent_measurement(rng):
    w = llama_weights(layers=4, seed=3)
    g = llama_ir(w)
    cal = random_inputs(g, samples=3, seed=7)
    h, rep = optimize(g, passes=["ffn-fusion"], drop_attention=[1, 2], ffn_threshold=1.0, calibration=cal)
    st = rep.results[0].stats
    assert st["attention_dropped"] == [1, 2] and st["fused"][0]["layers"] == [0, 1, 2]
    errs = [np.abs(ir.evaluate(h, s)[0].astype(np.float64) - ir.evaluate(g, s)[0]).max() for s in cal]
    assert st["max_abs_err"] == pytest.approx(max(errs), rel=1e-9, abs=1e-12)
    # and the graph is the model with attention 1, 2 gone and FFNs 0-2 in parallel: check against that oracle
    no_attn = llama_ir(w, drop_attn=(1, 2))
    assert st["max_abs_err"] > 0 and not np.allclose(ir.evaluate(no_attn, cal[0])[0], ir.evaluate(g, cal[0])[0])


def test_threshold_is_respected_and_runs_split():
    M = np.array([[0, .1, .9, .1], [0, 0, .1, .1], [0, 0, 0, .1], [0, 0, 0, 0]])
    assert split_run(M, 0.2, 2, None) == [(0, 2), (2, 4)]
    assert split_run(M, 1.0, 2, None) == [(0, 4)]
    assert split_run(M, 1.0, 2, 3) == [(0, 3)]
    assert split_run(M, 0.0, 2, None) == []
    g = llama_ir(llama_weights(layers=4))
    h, rep = optimize(g, passes=["ffn-fusion"], drop_attention=[1, 2], ffn_threshold=0.0)
    st = rep.results[0].stats
    assert st["runs"] == 0 and _matmuls(h) == _matmuls(g) - 2 * 4   # q,k,v,o of two layers gone, FFNs untouched
    assert st["dependency"][0]["layers"] == [0, 1, 2]


def test_auto_drop_attention_creates_a_run():
    g = llama_ir(llama_weights(layers=4))
    h, rep = optimize(g, passes=["ffn-fusion"], ffn_threshold=1.0)
    st = rep.results[0].stats
    (layer,) = st["attention_dropped"]
    assert layer in (1, 2) and st["attention_scores"][layer] == min(st["attention_scores"][i] for i in (1, 2))
    assert st["fused"][0]["layers"] == [layer - 1, layer]
    assert _matmuls(h) == _matmuls(g) - 4 - 3
    h2, rep2 = optimize(g, passes=["ffn-fusion"], auto_drop_attention=0)
    assert rep2.results[0].stats["runs"] == 0 and _matmuls(h2) == _matmuls(g)


def test_unfit_block_is_reported_not_fused(rng):
    d = 8
    b = ir.Builder("odd")
    x = b.input("x", [3, d])
    for i in range(2):
        h = b.matmul(x, b.const(rng.standard_normal((d, 12)).astype(np.float32)))
        h = b.softmax(b.relu(h), axis=-1) if i == 1 else b.relu(h)     # softmax would not concatenate
        x = b.add(x, b.matmul(h, b.const(rng.standard_normal((12, d)).astype(np.float32))))
    g = b.output(x)
    st = discover(g)
    assert [blk.kind for blk in st.blocks] == ["ffn", "attention"]   # a softmax marks attention
    b = ir.Builder("odd2")
    x = b.input("x", [3, d])
    for i in range(2):
        h = b.relu(b.matmul(x, b.const(rng.standard_normal((d, 12)).astype(np.float32))))
        h = b.matmul(h, b.const(rng.standard_normal((12, 12)).astype(np.float32)))   # three GEMM layers
        x = b.add(x, b.matmul(b.relu(h), b.const(rng.standard_normal((12, d)).astype(np.float32))))
    g = b.output(x)
    h, rep = optimize(g, passes=["ffn-fusion"], ffn_threshold=5.0)
    s = rep.results[0].stats
    assert s["runs"] == 0 and "more than two GEMM layers" in s["skipped"][0]


def test_drop_attention_pass_and_bad_indices():
    w = llama_weights(layers=4)
    g = llama_ir(w)
    x = random_inputs(g, 1)[0]
    h, rep = optimize(g, passes=["drop-attention"], drop_attention="1,2", verify_each=True)
    assert rep.results[0].stats["dropped"] == [1, 2]
    np.testing.assert_allclose(ir.evaluate(h, x)[0], ir.evaluate(llama_ir(w, drop_attn=(1, 2)), x)[0], rtol=1e-5, atol=1e-5)
    h, rep = optimize(g, passes=["drop-attention"], drop_attention="auto:1")
    s = rep.results[0].stats
    assert s["dropped"] == [min((1, 2), key=lambda i: s["scores"][i])]
    with pytest.raises(NnfuseError, match="no attention block in layer"):
        optimize(g, passes=["drop-attention"], drop_attention=[7])
    with pytest.raises(NnfuseError, match="calibration sample 0"):
        optimize(g, passes=["drop-attention"], drop_attention=1, calibration=[np.zeros((1, 8), np.float32)])


@pytest.mark.parametrize("passes,opts", [(["ffn-fusion"], dict(drop_attention=[1, 2], ffn_threshold=1.0)),
                                         (["skip-layers"], dict(num_skip=2, skip_granularity="ffn"))])
def test_rewritten_models_run_on_every_backend(passes, opts):
    """The approximate passes leave normal graphs: the O2 pipeline, ONNX export (onnxruntime) and the C backend take them."""
    import nnfuse
    from nnfuse.passes import pipeline
    g = llama_ir(llama_weights(layers=4, seed=5))
    x = random_inputs(g, 1, seed=1)[0]
    want = ir.evaluate(optimize(g, passes=passes, **opts)[0], x)[0]
    for backend in ("reference", "onnx", "cpu"):
        cm = nnfuse.compile(g, backend=backend, passes=passes + pipeline(2), verify_each=True, **opts)
        np.testing.assert_allclose(cm(*x), want, rtol=1e-4, atol=1e-4, err_msg=backend)


def test_near_independent_ffns_fuse_at_the_default_threshold_with_small_error():
    """LLaMA-style stack whose FFNs 1-3 barely move the stream: low M, fused by default, small measured error."""
    w = llama_weights(layers=5, seed=6)
    for L in w["layers"][1:4]:
        L["w2"] *= 0.02
    g = llama_ir(w)
    h, rep = optimize(g, passes=["ffn-fusion"], drop_attention=[2, 3])
    st = rep.results[0].stats
    assert [f["layers"] for f in st["fused"]] == [[1, 2, 3]] and st["fused"][0]["score"] < 0.01
    assert st["fused"][0]["rel_err"] < 1e-3          # the error of the fusion itself (attention removal excluded)
    g2 = llama_ir(w, drop_attn=(2, 3))
    x = random_inputs(g, 1, seed=9)[0]
    ref = ir.evaluate(g2, x)[0]
    assert np.linalg.norm(ir.evaluate(h, x)[0] - ref) / np.linalg.norm(ref) < 1e-3
