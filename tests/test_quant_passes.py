"""Quantization passes end to end on a small LLaMA-style model (torch frontend, reference backend):
rotation and reordering invariance, one test per scheme against torch eager, exclusions, errors, reports."""
import numpy as np
import pytest
import torch

import nnfuse
from torch_util import Logits, tiny_llama
from nnfuse.api import to_graph
from nnfuse.ir import NnfuseError, evaluate, parse, print_graph
from nnfuse.passes import optimize
from nnfuse.passes.quant.report import compare, layer_act_sqnr, sensitivity



@pytest.fixture(scope="module")
def llama():
    m = tiny_llama()
    with torch.no_grad():                       # non-trivial RMSNorm gains, so folding them is tested
        for n, p in m.named_parameters():
            if "norm" in n:
                p.mul_(torch.rand_like(p) + 0.5)
    m = Logits(m).eval()
    x = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        ref = m(x).numpy()
    return m, x, ref, to_graph(m, (x,))


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def test_rotation_is_invariant_in_fp32(llama):
    m, x, ref, g = llama
    r, rep = optimize(g, 2, rotate=True)
    st = rep["rotate-hadamard"].stats
    assert st["rotated"] == 4 and st["norm_gains_folded"] == 5 and st["online_hadamard"] == 2
    assert sum(n.op == "hadamard" for n in r.walk()) == 2
    assert rel(evaluate(r, [x.numpy()])[0], ref) < 1e-5


def test_reorder_is_invariant_and_reduces_block_error(llama):
    m, x, ref, g = llama
    r, rep = optimize(g, 2, reorder=True, reorder_format="mxint4")
    st = rep["reorder-channels"].stats
    assert st["reordered"] == 2
    assert st["act_block_err_after"] <= st["act_block_err_before"]
    assert rel(evaluate(r, [x.numpy()])[0], ref) < 1e-5


@pytest.mark.parametrize("scheme,tol", [("w8a8", 0.03), ("w4g32", 0.3), ("fp8", 0.1), ("mxfp4", 0.3), ("nvfp4", 0.3),
                                        ("mxint8:mxint8", 0.05), ("w4a4", 0.5), ("w8a8s", 0.05)])
def test_scheme_end_to_end(llama, scheme, tol):
    m, x, ref, g = llama
    cm = nnfuse.compile(g, quantize=scheme, calibration=[[x.numpy()]], progress=False)
    out = cm(x.numpy())
    assert 0 < rel(out, ref) < tol
    ops = {n.op for n in cm.graph.walk()}
    assert "dequantize" in ops or "matmul_integer" in ops
    assert cm.graph.op_histogram().get("fused:qgemm", 0) == 15
    q = next(r for r in cm.report.results if r.name.startswith("quantize-"))
    assert q.stats["quantized"] == 15 and q.stats["weight_bytes_after"] < q.stats["weight_bytes_before"] / 3
    assert print_graph(parse(print_graph(cm.graph))) == print_graph(cm.graph)


def test_w8a8_uses_integer_gemms(llama):
    m, x, ref, g = llama
    q, rep = optimize(g, 2, quantize="w8a8")
    assert rep["quantize-dynamic"].stats["int_gemms"] == 15
    assert sum(n.op == "quantize_dynamic" for n in q.walk()) == 9     # q/k/v and gate/up share one quantizer


def test_exclude_keeps_layers_fp32(llama):
    m, x, ref, g = llama
    q, rep = optimize(g, 1, quantize="w4g32", exclude="lm_head|layers\\.0\\.")
    st = rep["quantize-weights"].stats
    assert st["quantized"] == 7 and st["excluded"] == 8 and any("lm_head" in e for e in st["excluded_layers"])
    assert rel(evaluate(q, [x.numpy()])[0], ref) < 0.3


def test_bad_input_errors(llama):
    m, x, ref, g = llama
    with pytest.raises(NnfuseError, match=r"layer m\.model\.layers\.0\..*group size 128 does not divide .*K=64"):
        optimize(g, 1, quantize="w4g128")
    with pytest.raises(NnfuseError, match="unknown quantization scheme 'w3'"):
        optimize(g, 1, quantize="w3")
    with pytest.raises(NnfuseError, match="calibration sample 0: input 'ids' expects"):
        optimize(g, 1, quantize="w8a8s", calibration=[[np.zeros((1, 16), np.float32)]])
    q, rep = optimize(g, 1, quantize="w4g128", fallback_group=True)
    assert any("group 128 -> 64" in r.get("note", "") for r in rep["quantize-weights"].stats["layers"])


def test_reports(llama):
    m, x, ref, g = llama
    q, _ = optimize(g, 1, quantize="w8a8")      # unfused: the per-layer report reads each layer's result
    samples = [[x.numpy()]]
    c = compare(g, q, samples)
    assert c["bytes_after"] < c["bytes_before"] / 2 and c["logit_cosine"] > 0.99 and c["top1_agree"] > 0.8
    rows = layer_act_sqnr(g, q, samples)
    assert len(rows) == 15 and all(r["act_sqnr_db"] > 20 for r in rows)
    s = sensitivity(g, samples, quantize="w4g32")
    assert len(s) == 15 and s[0]["rel_err"] >= s[-1]["rel_err"] > 0


def test_trained_tiny_model_perplexity():
    from nnfuse.evaluation import heldout_tokens, perplexity, trained_byte_lm
    model, _ = trained_byte_lm("tiny", progress=False)
    toks = heldout_tokens("tiny", 4)
    m = Logits(model).eval()
    ids = torch.from_numpy(toks)
    base = perplexity(lambda t: model(torch.from_numpy(t)).logits.detach().numpy(), toks)
    cm = nnfuse.compile(m, (ids,), quantize="w8a8")
    ppl = perplexity(lambda t: cm(t).astype(np.float32) if isinstance(cm(t), np.ndarray) else cm(t), toks)
    assert ppl < base * 1.02


@pytest.mark.parametrize("scheme,kw", [("w4a4", {"rotate": True})])
def test_llama_onnx_export_matches_nnfuse(llama, scheme, kw):
    m, x, ref, g = llama
    a = nnfuse.compile(g, backend="reference", quantize=scheme, **kw)
    b = nnfuse.compile(g, backend="onnx", quantize=scheme, **kw)
    ra, rb = a(x.numpy()), b(x.numpy())
    assert rel(rb, ra) < 1e-5            # onnxruntime runs the exported QDQ / MatMulInteger / Hadamard graph
    assert rel(rb, ref) == pytest.approx(rel(ra, ref), rel=1e-3)


def test_cpu_backend_fallback_matches_reference(llama):
    m, x, ref, g = llama
    a = nnfuse.compile(g, backend="reference", quantize="w4a4", rotate=True)
    b = nnfuse.compile(g, backend="cpu", quantize="w4a4", rotate=True)
    # the cpu keeps the forms its kernels run (prepare-quant-cpu); w4a4's int4 activation gemms are decomposed
    assert b.report["prepare-quant-cpu"].stats["op:matmul_integer"] == 15
    assert rel(b(x.numpy()), a(x.numpy())) < 1e-5
    with pytest.raises(NnfuseError, match="f8e4m3 codes have no primitive-op form"):
        nnfuse.compile(g, backend="cpu", quantize="fp8")
