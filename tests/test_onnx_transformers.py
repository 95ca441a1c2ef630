"""torch.onnx.export of small GPT-2 / BERT / LLaMA configs (random weights): the importer, the reference
evaluator, the optimizer and the exporter against onnxruntime on the original export."""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
T = pytest.importorskip("transformers")

from nnfuse.backends.onnx import export  # noqa: E402
from nnfuse.frontends.onnx import load  # noqa: E402
from nnfuse.ir import evaluate  # noqa: E402
from nnfuse.passes import optimize  # noqa: E402
from onnx_util import assert_close, ort_run  # noqa: E402


def _export(model, x, path, dynamic=False):
    """The dynamo exporter first, the TorchScript one second (as transformers 5.x needs)."""
    errors = []
    kws = [dict(dynamo=True), dict(dynamo=False, opset_version=17)]
    if dynamic:
        kws = [dict(dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch"), 1: torch.export.Dim("seq", max=64)},))]
    for kw in kws:
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (x,), path, input_names=["input_ids"], output_names=["out"], **kw)
            return path
        except Exception as e:  # noqa: BLE001
            errors.append(f"{kw}: {type(e).__name__}: {str(e)[:200]}")
    raise RuntimeError(" | ".join(errors))


def _models():
    torch.manual_seed(0)
    gpt2 = T.GPT2LMHeadModel(T.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=300, n_positions=64))
    bert = T.BertModel(T.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=300))
    llama = T.LlamaForCausalLM(T.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             intermediate_size=128, vocab_size=300))
    for m in (gpt2, llama):
        m.config.use_cache = False
    return {"gpt2": gpt2.eval(), "bert": bert.eval(), "llama": llama.eval()}


@pytest.fixture(scope="module")
def models():
    return _models()


@pytest.mark.parametrize("name", ["gpt2", "bert", "llama"])
def test_transformer_import_optimize_export(name, models, tmp_path):
    x = torch.randint(0, 300, (1, 16))
    p = _export(models[name], x, str(tmp_path / f"{name}.onnx"))
    feeds = {"input_ids": x.numpy()}
    want = ort_run(p, feeds)
    g = load(p)
    assert_close(evaluate(g, [x.numpy()]), want, rtol=1e-4, atol=1e-4)
    g2, _ = optimize(g, opt_level=2)
    assert len(g2.nodes) < len(g.nodes)
    assert_close(ort_run(export(g2), feeds), want, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "bert", "llama"])
def test_dynamic_shape_export_imports_with_fixed_shapes(name, models, tmp_path):
    """Dynamic-shape exports: shape subgraphs (Shape/Gather/Range/Expand/GatherND masks) fold once shapes are fixed."""
    x = torch.randint(0, 300, (2, 16))
    p = _export(models[name], x, str(tmp_path / f"{name}_dyn.onnx"), dynamic=True)
    g = load(p, input_shapes={"input_ids": [2, 16]})
    assert not any(n.op in ("shape", "arange") for n in g.nodes)
    assert_close(evaluate(g, [x.numpy()]), ort_run(p, {"input_ids": x.numpy()}), rtol=1e-4, atol=1e-4)


class _Attn(torch.nn.Module):
    """Attention with the view/reshape/arange/zeros-by-size patterns TorchScript exports as shape subgraphs."""

    def __init__(self, d=32, h=4):
        super().__init__()
        self.h, self.qkv, self.o, self.ln = h, torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d), torch.nn.LayerNorm(d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln(x)).split(d, dim=-1)
        q, k = q.view(b, t, self.h, d // self.h).transpose(1, 2), k.view(b, t, self.h, -1).transpose(1, 2)
        v = v.reshape(b, t, self.h, -1).transpose(1, 2)
        a = torch.softmax(q @ k.transpose(-1, -2) / (d // self.h) ** 0.5, dim=-1) @ v
        pos = torch.arange(t).float().unsqueeze(-1).expand(t, d)
        return x + self.o(a.transpose(1, 2).reshape(b, t, d)) + torch.zeros(x.size(0), t, d) + pos * 0.01


def test_torchscript_dynamic_axes_export_folds_shape_subgraphs(tmp_path):
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape, Range, ConstantOfShape, Expand over dynamic axes fold into
    symbolic attributes; the graph runs for several shapes, on the reference and exported back to onnxruntime."""
    torch.manual_seed(0)
    p = str(tmp_path / "attn.onnx")
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Attn().eval(), (torch.randn(2, 5, 32),), p, input_names=["x"], output_names=["y"], dynamo=False,
                          opset_version=17, dynamic_axes={"x": {0: "batch", 1: "seq"}})
    g = load(p)
    assert g.inputs[0].type.shape == ("batch", "seq", 32)
    assert not any(n.op in ("shape", "gather", "concat") for n in g.nodes)
    m2 = export(g)
    for shape in [(2, 5, 32), (3, 7, 32)]:
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        want = ort_run(p, {"x": x})
        assert_close(evaluate(g, [x]), want, rtol=1e-4, atol=1e-5)
        assert_close(ort_run(m2, {"x": x}), want, rtol=1e-4, atol=1e-5)


def test_dynamo_export_module_paths_become_loc(tmp_path):
    """The dynamo exporter records torch module paths; they become node locs, as from the torch frontend."""
    import contextlib, io  # noqa: E401
    import torch
    import transformers as T
    from nnfuse.frontends.onnx import load
    m = T.LlamaForCausalLM(T.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                         num_key_value_heads=2, vocab_size=50, use_cache=False)).eval()
    p = str(tmp_path / "l.onnx")
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(m, (torch.randint(0, 50, (1, 4)),), p, dynamo=True)
    locs = {n.meta["loc"] for n in load(p).nodes}
    assert {"model.layers.1.mlp.down_proj", "model.layers.0.self_attn.q_proj", "lm_head"} <= locs
