"""Whole models on the cpu backend: small transformers and a CNN through the torch frontend at every opt level,
and an ONNX light model, against PyTorch eager / the reference backend."""
from __future__ import annotations

import glob
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import nnfuse  # noqa: E402


def _hf(kind: str):
    T = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "gpt2":
        m = T.GPT2LMHeadModel(T.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=32, use_cache=False))
    elif kind == "bert":
        m = T.BertModel(T.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                     vocab_size=100, max_position_embeddings=32))
    else:
        m = T.LlamaForCausalLM(T.LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                                             num_key_value_heads=2, vocab_size=100, use_cache=False))

    class Out(torch.nn.Module):
        def __init__(s):
            super().__init__()
            s.m = m

        def forward(s, x):
            o = s.m(x)
            return o.logits if hasattr(o, "logits") else o.last_hidden_state
    return Out().eval(), torch.randint(0, 100, (2, 16))


@pytest.mark.parametrize("kind", ["gpt2", "bert", "llama"])
def test_transformers_match_eager(kind):
    model, x = _hf(kind)
    with torch.inference_mode():
        ref = model(x).numpy()
    cm = nnfuse.compile(model, (x,), backend="cpu")
    got = np.asarray(cm(x))
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4)
    st = cm.stats()
    assert st["arena_bytes"] < st["naive_bytes"]


class SmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.f = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
                               nn.Conv2d(8, 16, 3, 1, 1, groups=2), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                               nn.Flatten(), nn.Linear(16, 10))
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        return torch.softmax(self.f(x), -1)


@pytest.mark.parametrize("opt_level", [0, 1, 2, 3])
def test_cnn_every_opt_level(opt_level):
    torch.manual_seed(0)
    m = SmallCNN().eval()
    x = torch.randn(2, 3, 20, 20)
    with torch.inference_mode():
        ref = m(x).numpy()
    cm = nnfuse.compile(m, (x,), backend="cpu", opt_level=opt_level)
    np.testing.assert_allclose(np.asarray(cm(x)), ref, rtol=1e-3, atol=1e-5)


def test_onnx_light_model_matches_reference():
    import onnx
    path = glob.glob(os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light/light_squeezenet.onnx"))
    if not path:
        pytest.skip("the onnx wheel ships no light models")
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    got = nnfuse.compile(path[0], backend="cpu")(x)
    ref = nnfuse.compile(path[0], backend="reference")(x)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)
