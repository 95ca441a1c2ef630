"""FFN fusion and layer skipping on transformers models (LLaMA, GPT-2) imported with torch.export, against the
torch eager model rewritten by hand into the same approximate form (the oracle)."""
import copy
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
T = pytest.importorskip("transformers")

import nnfuse.ir as ir  # noqa: E402
from nnfuse.passes import optimize  # noqa: E402
from nnfuse.passes.blocks import discover  # noqa: E402


class _Zero(torch.nn.Module):
    def __init__(self, attn: bool):
        super().__init__()
        self.attn = attn

    def forward(self, hidden_states, *args, **kwargs):
        z = torch.zeros_like(hidden_states)
        return (z, None) if self.attn else z


class _ParallelFFN(torch.nn.Module):
    """x -> sum_i mlp_i(norm_i(x)): the fused form, written with the model's own modules."""
    def __init__(self, pairs):
        super().__init__()
        self.pairs = torch.nn.ModuleList([torch.nn.ModuleList(p) for p in pairs])

    def forward(self, x):
        return sum(mlp(norm(x)) for norm, mlp in self.pairs)


# per family: (config, where the layers are, the FFN's norm, the attention module)
FAMILIES = {
    "llama": (lambda: T.LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=4, num_attention_heads=4,
                                    num_key_value_heads=2, vocab_size=128, use_cache=False),
              lambda m: m.model.layers, "post_attention_layernorm", "self_attn"),
    "gpt2": (lambda: T.GPT2Config(n_embd=64, n_layer=4, n_head=4, vocab_size=128, n_positions=32, bos_token_id=0,
                                  eos_token_id=0, use_cache=False),
             lambda m: m.transformer.h, "ln_2", "attn"),
}


def _load(family):
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    m = (T.LlamaForCausalLM if family == "llama" else T.GPT2LMHeadModel)(FAMILIES[family][0]()).eval()
    with torch.no_grad():   # larger than the default init so the layers matter; nonzero biases, gains not 1
        for p in m.parameters():
            p.mul_(4.0) if p.dim() == 2 else p.add_(0.2 * torch.randn_like(p))
    x = torch.randint(0, 128, (1, 12))
    from nnfuse.frontends import torch as torch_frontend
    return m, x, torch_frontend.load(m, (x,))


@pytest.fixture(scope="module")
def llama():
    return _load("llama")


@pytest.fixture(scope="module")
def gpt2():
    return _load("gpt2")


def _logits(m, x):
    with torch.no_grad():
        return m(x).logits.numpy()


def test_blocks_from_module_paths(llama):
    _, _, g = llama
    st = discover(g)
    assert st.method == "structure+loc" and [L.index for L in st.layers] == [0, 1, 2, 3]
    assert all(L.attention.loc.startswith(f"model.layers.{L.index}") for L in st.layers)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_ffn_fusion_matches_eager_parallel_form(family, request):
    m, x, g = request.getfixturevalue(family)
    _, get_layers, norm, attn = FAMILIES[family]
    h, rep = optimize(g, passes=["ffn-fusion"], drop_attention=[1, 2], ffn_threshold=2.0, calibration=[x.numpy()],
                      verify_each=True)
    st = rep.results[0].stats
    assert st["fused"][0]["layers"] == [0, 1, 2] and st["fused"][0]["shared_norm"]
    assert st["fused"][0]["gemms"] == ([9, 3] if family == "llama" else [6, 2])   # SwiGLU: gate, up, down; GPT-2: fc, proj
    o = copy.deepcopy(m)
    layers = get_layers(o)
    par = _ParallelFFN([(getattr(layers[i], norm), layers[i].mlp) for i in range(3)])
    setattr(layers[0], norm, torch.nn.Identity())
    layers[0].mlp = par
    for i in (1, 2):
        setattr(layers[i], attn, _Zero(True))
        layers[i].mlp = _Zero(False)
    got = ir.evaluate(h, [x.numpy()])[0]
    np.testing.assert_allclose(got, _logits(o, x), rtol=1e-4, atol=1e-4)
    assert st["max_abs_err"] == pytest.approx(float(np.abs(got.astype(np.float64) - _logits(m, x)).max()), rel=1e-4)


def test_skip_layers_matches_eager_without_those_layers(llama):
    m, x, g = llama
    h, rep = optimize(g, passes=["skip-layers"], num_skip=2, calibration=[x.numpy()], verify_each=True)
    st = rep.results[0].stats
    assert st["skipped_layers"] == [1, 2]
    o = copy.deepcopy(m)
    o.model.layers = torch.nn.ModuleList([o.model.layers[0], o.model.layers[3]])
    np.testing.assert_allclose(ir.evaluate(h, [x.numpy()])[0], _logits(o, x), rtol=1e-4, atol=1e-4)
