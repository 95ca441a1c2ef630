"""Layer skipping: the unified even-spread rule, k from the cost model, and the skipped graph against a model built without those layers."""
import numpy as np
import pytest
from ffn_models import llama_ir, llama_weights

import nnfuse.ir as ir
from nnfuse.ir import NnfuseError
from nnfuse.passes import optimize
from nnfuse.passes.calibration import random_inputs
from nnfuse.passes.skip_layers import even_spread


def _paper_rule(L: int, r: float) -> list[int]:
    """The public code of the unified-skipping paper: keep first, last and every step-th layer; skip the rest."""
    n = int(L / r)
    step = int(L / (n - 1))
    keep = [0] + list(range(step, L - 1, step))[: n - 2] + [L - 1]
    return [i for i in range(L) if i not in keep]


def test_even_spread_is_spread_for_small_targets():
    # L = 12, R = 1.3: the paper's rule skips a contiguous run at the top; ours spreads the same count
    paper = _paper_rule(12, 1.3)
    assert paper == [9, 10, 11] or paper[-1] - paper[0] == len(paper) - 1   # contiguous
    ours = even_spread(12, len(paper))
    assert ours == [2, 6, 9]
    assert all(b - a > 1 for a, b in zip(ours, ours[1:]))
    for L in range(3, 40):
        for k in range(0, L - 1):
            s = even_spread(L, k)
            assert len(set(s)) == k and all(1 <= i <= L - 2 for i in s)
            if k >= 2:   # equal steps between skipped units (as integers allow), equal margins at both ends
                assert np.ptp(np.diff(s)) <= 1, (L, k, s)
            if k >= 1:
                assert abs((s[0] - 1) - (L - 2 - s[-1])) <= 1, (L, k, s)
    with pytest.raises(NnfuseError):
        even_spread(5, 4)


def test_skipped_graph_equals_model_without_those_layers():
    w = llama_weights(layers=6, seed=1)
    g = llama_ir(w)
    cal = random_inputs(g, 2, seed=3)
    h, rep = optimize(g, passes=["skip-layers"], num_skip=2, verify_each=True, calibration=cal)
    st = rep.results[0].stats
    assert st["skipped_layers"] == [2, 4] and st["num_skip"] == 2 and st["units"] == 6
    ref = llama_ir(w, skip_layers=(2, 4))
    assert len(h.nodes) == len(ref.nodes)
    for s in cal:
        np.testing.assert_allclose(ir.evaluate(h, s)[0], ir.evaluate(ref, s)[0], rtol=1e-6, atol=1e-6)
    errs = [np.abs(ir.evaluate(h, s)[0].astype(np.float64) - ir.evaluate(g, s)[0]).max() for s in cal]
    assert st["max_abs_err"] == pytest.approx(max(errs), rel=1e-9)     # the reported deviation is the real one


def test_ffn_granularity_keeps_attention():
    w = llama_weights(layers=6, seed=2)
    g = llama_ir(w)
    x = random_inputs(g, 1)[0]
    h, rep = optimize(g, passes=["skip-layers"], num_skip=3, skip_granularity="ffn", verify_each=True)
    st = rep.results[0].stats
    assert st["skipped_layers"] == even_spread(6, 3) == [1, 3, 4] and st["granularity"] == "ffn"
    assert sum(n.op == "scaled_dot_product_attention" for n in h.nodes) == 6
    np.testing.assert_allclose(ir.evaluate(h, [x[0]])[0], ir.evaluate(llama_ir(w, skip_ffn=(1, 3, 4)), [x[0]])[0], rtol=1e-6, atol=1e-6)


def test_k_comes_from_the_cost_model_counting_the_head():
    """The same stack skips more layers for R = 1.3 when a big lm_head/embedding makes each layer a smaller share."""
    small = llama_ir(llama_weights(layers=12, d=32, hidden=64, vocab=16), seq=16)
    big = llama_ir(llama_weights(layers=12, d=32, hidden=64, vocab=65536), seq=16)
    ks = []
    for g in (small, big):
        h, rep = optimize(g, passes=["skip-layers"], target_speedup=1.3, skip_measure=False)
        st = rep.results[0].stats
        ks.append(st["num_skip"])
        assert abs(st["predicted_speedup"] - 1.3) < 0.15
        assert st["flops"][1] < st["flops"][0]
        chosen = st["skipped_layers"]
        assert 0 not in chosen and 11 not in chosen and any(b - a > 1 for a, b in zip(chosen, chosen[1:]))
    assert ks[1] > ks[0]


def test_bad_options():
    g = llama_ir(llama_weights(layers=4))
    with pytest.raises(NnfuseError, match="target_speedup"):
        optimize(g, passes=["skip-layers"])
    with pytest.raises(NnfuseError, match=">= 1"):
        optimize(g, passes=["skip-layers"], target_speedup=0.5)
    with pytest.raises(NnfuseError, match="granularity"):
        optimize(g, passes=["skip-layers"], num_skip=1, skip_granularity="head")
    with pytest.raises(NnfuseError, match="cannot skip 3 of 4"):
        optimize(g, passes=["skip-layers"], num_skip=3)


def test_cli_flags_and_inspect(tmp_path, capsys):
    """`nnfuse optimize --skip-layers/--ffn-fusion/--drop-attention` on an ONNX file, and `nnfuse inspect` listing the blocks."""
    import onnx
    import onnxruntime as ort
    from ffn_models import llama_ir, llama_weights
    from nnfuse.backends.onnx import export
    from nnfuse.cli import main
    src, skip, fused = (str(tmp_path / n) for n in ("m.onnx", "skip.onnx", "ffn.onnx"))
    g = llama_ir(llama_weights(layers=6, seed=4), loc=False)
    export(g, src)
    assert main(["optimize", src, "-o", skip, "--skip-layers", "1.3", "--skip-granularity", "ffn"]) == 0
    assert "skip-layers: skipped ffn" in capsys.readouterr().err
    assert main(["optimize", src, "-o", fused, "--ffn-fusion", "--drop-attention", "2,3", "--ffn-threshold", "9"]) == 0
    assert "ffn-fusion: layers [1, 2, 3] -> one FFN" in capsys.readouterr().err
    mm = lambda p: sum(n.op_type == "MatMul" for n in onnx.load(p).graph.node)  # noqa: E731
    assert mm(fused) < mm(src) - 2 * 4
    x = random_inputs(g, 1)[0][0]
    for p in (skip, fused):
        s = ort.InferenceSession(p, providers=["CPUExecutionProvider"])
        assert s.run(None, {s.get_inputs()[0].name: x})[0].shape == (1, 8, 64)
    assert main(["inspect", src]) == 0
    text = capsys.readouterr().out
    assert "6 layers, 12 residual blocks" in text and "layer 5: attention (" in text


def test_post_norm_bert_layers_skip_like_removing_them():
    """Post-LN stacks (y = LayerNorm(x + f(x))) chain through the norm: skipping a layer equals deleting it."""
    import copy

    import torch
    import transformers as T

    import nnfuse
    from nnfuse.passes.blocks import discover
    torch.manual_seed(0)
    cfg = T.BertConfig(hidden_size=64, num_hidden_layers=6, num_attention_heads=4, intermediate_size=128, vocab_size=100)

    class Hidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x).last_hidden_state
    m = Hidden(T.BertModel(cfg)).eval()
    x = torch.randint(0, 100, (2, 16))
    g = nnfuse.compile(m, (x,), backend="reference", opt_level=0).graph
    stack = discover(g)
    assert len(stack.layers) == 6 and all(b.post_norm is not None for b in stack.blocks)
    assert [b.kind for b in stack.blocks] == ["attention", "ffn"] * 6
    h, rep = optimize(g, passes=["skip-layers"], num_skip=2, verify_each=True)
    skipped = rep.results[0].stats["skipped_layers"]
    assert len(skipped) == 2 and 0 not in skipped and 5 not in skipped
    m2 = copy.deepcopy(m)
    m2.m.encoder.layer = torch.nn.ModuleList([lay for i, lay in enumerate(m2.m.encoder.layer) if i not in skipped])
    with torch.inference_mode():
        want = m2(x).numpy()
    got = ir.evaluate(h, [x.numpy()])[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # FFN fusion leaves post-norm FFNs alone (they do not add into one stream)
    h2, rep2 = optimize(g, passes=["ffn-fusion"], verify_each=True)
    st2 = rep2.results[0].stats
    assert st2["runs"] == 0 and "post-norm" in st2["reason"] and len(h2.nodes) == len(g.nodes)
