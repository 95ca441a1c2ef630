"""transformers models with random weights (GPT-2, LLaMA, BERT, ViT) through nnfuse.compile on the reference
backend, against PyTorch eager. Tolerance: max abs error 1e-4 (f32, outputs of magnitude ~1)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
T = pytest.importorskip("transformers")
import nnfuse  # noqa: E402

warnings.filterwarnings("ignore", message=".*(bos|eos)_token_id.*")
ATOL = 1e-4


def _gpt2():
    return T.GPT2LMHeadModel(T.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=256, n_positions=32))


def _llama():
    return T.LlamaForCausalLM(T.LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                                            num_key_value_heads=2, vocab_size=256, max_position_embeddings=64))


def _bert():
    return T.BertModel(T.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                    vocab_size=256, max_position_embeddings=32))


def _vit():
    return T.ViTModel(T.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                  image_size=16, patch_size=4))


MODELS = {"gpt2": (_gpt2, "logits"), "llama": (_llama, "logits"), "bert": (_bert, "last_hidden_state"),
          "vit": (_vit, "last_hidden_state")}


def _model(name):
    torch.manual_seed(0)
    m = MODELS[name][0]().eval()
    if hasattr(m.config, "use_cache"):
        m.config.use_cache = False
    return m


def _input(name, batch=2):
    g = torch.Generator().manual_seed(batch)
    return torch.randn(batch, 3, 16, 16, generator=g) if name == "vit" else torch.randint(0, 256, (batch, 8), generator=g)


def _ref(m, x):
    with torch.no_grad():
        out = m(x)
    return [v for v in out.values() if isinstance(v, torch.Tensor)]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_transformers_model_matches_eager(name):
    m, x = _model(name), _input(name)
    cm = nnfuse.compile(m, (x,), backend="reference")
    got = cm(x)
    got = list(got) if isinstance(got, tuple) else [got]
    ref = _ref(m, x)
    assert cm.graph.output_names[0] == MODELS[name][1]  # logits / last_hidden_state first, extras after
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert isinstance(g, torch.Tensor) and g.shape == r.shape
        np.testing.assert_allclose(g.numpy(), r.numpy(), atol=ATOL, rtol=0)


def test_llama_meta_dynamic_batch_and_no_weight_copies():
    m = _llama()
    cm = nnfuse.compile(m, (_input("llama"),), dynamic=True, opt_level=0)
    g = cm.graph
    assert g.inputs[0].type.shape == ("B", 8)
    locs = [n.meta.get("loc", "") for n in g.walk()]
    assert any("model.layers.1.mlp" in loc for loc in locs)
    assert "model.layers.1.mlp.down_proj" in locs and "model.layers.0.self_attn.o_proj" in locs
    mlp = next(n for n in g.walk() if n.meta.get("loc") == "model.layers.1.mlp.down_proj")
    assert mlp.meta["src"].endswith(".py:" + mlp.meta["src"].rsplit(":", 1)[1]) and mlp.meta["src"].split(":")[1].isdigit()
    assert {"scaled_dot_product_attention", "silu", "embedding"} <= {n.op for n in g.walk()}
    w = g.constants["model.layers.1.mlp.down_proj.weight"].data
    assert np.shares_memory(w, m.model.layers[1].mlp.down_proj.weight.detach().numpy())
    for b in (1, 3):
        x = _input("llama", b)
        np.testing.assert_allclose(cm(x).numpy(), _ref(m, x)[0].numpy(), atol=ATOL, rtol=0)


def test_bert_dynamic_batch_and_sequence():
    m = _model("bert")
    dims = {"input_ids": {0: torch.export.Dim("B"), 1: torch.export.Dim("S", max=32)}}
    cm = nnfuse.compile(m, (_input("bert"),), dynamic_shapes=dims, opt_level=0)
    assert cm.graph.inputs[0].type.shape == ("B", "S")
    for b, s in ((1, 5), (3, 17)):
        x = torch.randint(0, 256, (b, s), generator=torch.Generator().manual_seed(s))
        got = cm(x)
        for g, r in zip(got, _ref(m, x)):
            np.testing.assert_allclose(g.numpy(), r.numpy(), atol=ATOL, rtol=0)


def test_dynamic_shapes_survive_the_default_pipeline():
    """One O2 compile (folding, recognition, fusion) serves several batch sizes / sequence lengths."""
    m = _llama()
    cm = nnfuse.compile(m, (_input("llama"),), dynamic=True)
    for b in (1, 3):
        x = _input("llama", b)
        np.testing.assert_allclose(cm(x).numpy(), _ref(m, x)[0].numpy(), atol=ATOL, rtol=0)
    m = _model("bert")
    dims = {"input_ids": {0: torch.export.Dim("B"), 1: torch.export.Dim("S", max=32)}}
    cm = nnfuse.compile(m, (_input("bert"),), dynamic_shapes=dims)
    for b, s in ((1, 5), (2, 17)):
        x = torch.randint(0, 256, (b, s), generator=torch.Generator().manual_seed(s))
        np.testing.assert_allclose(cm(x)[0].numpy(), _ref(m, x)[0].numpy(), atol=ATOL, rtol=0)
