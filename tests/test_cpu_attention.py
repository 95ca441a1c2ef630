"""The cpu backend's fused Attention kernel (backends/cpu/attention.py) vs the reference evaluator, and whole
transformer models (llama, gpt2, bert) on the cpu backend vs torch eager."""
import numpy as np
import pytest
import torch
from cpu_util import graph, rand

from nnfuse.backends import cpu
from nnfuse.ir import evaluate
from nnfuse.ir.kernel import Attention


def _attention_kernels(exe):
    return [k for k in exe.program.kernels if isinstance(k, Attention)]


def _check(g, ins, atol=2e-5, fused=1):
    exe = cpu.compile_graph(g, threads=2)
    got, ref = exe(ins), evaluate(g, ins)
    if fused is not None:
        assert len(_attention_kernels(exe)) == fused, exe.program.stats()
    for a, b in zip(got, ref):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=atol)
    return exe


def _padding_mask(rng, batch, skv, additive=True):
    """BERT-style key padding: [B, 1, 1, skv], the first key always kept."""
    keep = rng.random((batch, 1, 1, skv)) > 0.3
    keep[..., 0] = True
    return np.where(keep, 0.0, -10000.0).astype(np.float32) if additive else keep


@pytest.mark.parametrize("batch,hq,hkv,sq,skv,d,causal,mask", [
    (2, 4, 4, 7, 7, 32, False, None),
    (2, 4, 4, 7, 7, 32, True, None),
    (1, 2, 2, 1, 1, 64, True, None),          # one token
    (1, 2, 2, 1, 64, 64, False, None),        # one query over many keys (decode)
    (1, 8, 2, 128, 128, 64, True, None),      # GQA, causal, llama-like
    (3, 4, 4, 64, 64, 80, False, "add"),      # head dim 80 (ragged micro-kernel panel), BERT padding
    (2, 4, 2, 200, 200, 80, True, "add"),     # longer than one q tile, not a multiple of it; GQA
    (2, 2, 2, 128, 128, 32, False, "bool"),
    (2, 4, 2, 7, 200, 64, False, "add"),      # sq != skv
    (1, 2, 2, 33, 33, 40, True, None),        # head dim not a multiple of 16: ragged edges of the kᵀ pack
    (1, 2, 2, 64, 1100, 64, False, "add"),    # long keys: per-task scratch on the heap
])
def test_attention_vs_reference(batch, hq, hkv, sq, skv, d, causal, mask, rng):
    specs = [((batch, hq, sq, d), "f32"), ((batch, hkv, skv, d), "f32"), ((batch, hkv, skv, d), "f32")]
    ins = [rand(rng, s) for s, _ in specs]
    if mask is not None:
        m = _padding_mask(rng, batch, skv, additive=mask == "add")
        specs.append((m.shape, "f32" if mask == "add" else "bool"))
        ins.append(m)
    g = graph(lambda b, *xs: b.scaled_dot_product_attention(*xs, causal=causal), *specs)
    _check(g, ins)


def test_single_kv_head_still_correct(rng):
    """One kv head for all query heads: the lowering folds the heads into the gemm rows (no per-head batch), a chain
    the attention fusion leaves as it is; the numbers must hold either way."""
    specs = [((2, 2, 7, 64), "f32"), ((2, 1, 50, 64), "f32"), ((2, 1, 50, 64), "f32")]
    g = graph(lambda b, *xs: b.scaled_dot_product_attention(*xs), *specs)
    _check(g, [rand(rng, s) for s, _ in specs], fused=None)


def test_attention_strided_operands(rng):
    """[B, S, H, D] activations viewed as heads (the layout of a fused qkv projection): q/k/v/out all strided,
    k read through its transpose, v with a non-unit inner stride."""
    B, S, H, D = 2, 33, 3, 16

    specs = [((B, S, H, D), "f32"), ((B, S, H, D), "f32"), ((B, H, D, S), "f32")]
    ins = [rand(rng, s) for s, _ in specs]
    ins[2] = np.ascontiguousarray(rand(rng, (B, S, H, D)).transpose(0, 2, 3, 1))

    def f2(b, q, k, vt):
        qh = b.transpose(q, perm=[0, 2, 1, 3])
        kh = b.transpose(k, perm=[0, 2, 1, 3])
        vh = b.transpose(vt, perm=[0, 1, 3, 2])         # [B, H, S, D] read with inner stride S
        o = b.scaled_dot_product_attention(qh, kh, vh, causal=True, scale=0.3)
        return b.transpose(o, perm=[0, 2, 1, 3])
    _check(graph(f2, *specs), ins)


def test_transposed_keys_relaid_out(rng):
    """Keys computed by a pointwise op (RoPE-like) used to be written in kᵀ layout with row-strided loads; the cpu
    backend rewrites them in natural layout (producer loop nest reordered) and the kernel packs kᵀ itself."""
    S, D = 40, 16
    table = rng.standard_normal((S, D)).astype(np.float32)

    def f(b, q, k, v):
        kr = b.op("add", b.op("mul", k, b.const(table, "cos")), k)
        return b.scaled_dot_product_attention(q, kr, v, causal=True)
    specs = [((2, 3, S, D), "f32")] * 3    # batch x heads: the producer writes them as one loop axis, split here
    exe = _check(graph(f, *specs), [rand(rng, s) for s, _ in specs])
    (att,) = _attention_kernels(exe)
    assert att.k.strides[-1] == 1
    producer = [k for k in exe.program.kernels if any(a.buf is att.k.buf for a in k.writes())][0]
    assert producer.stores[0][0].strides[-1] == 1


def test_constant_causal_mask_becomes_causal(rng):
    """A constant lower-triangular bool mask (what HF models build) is recognized: the kernel skips hidden keys."""
    S, D = 40, 32
    tri = np.tril(np.ones((S, S), bool))[None, None]

    def f(b, q, k, v):
        return b.scaled_dot_product_attention(q, k, v, b.const(tri, "causal_mask"))
    specs = [((1, 2, S, D), "f32")] * 3
    exe = _check(graph(f, *specs), [rand(rng, s) for s, _ in specs])
    (att,) = _attention_kernels(exe)
    assert att.causal and att.mask is None

    # an all-true constant mask (BERT without padding) is dropped
    ones = np.ones((1, 1, S, S), bool)

    def f2(b, q, k, v):
        return b.scaled_dot_product_attention(q, k, v, b.const(ones, "no_padding"))
    exe = _check(graph(f2, *specs), [rand(rng, s) for s, _ in specs])
    (att,) = _attention_kernels(exe)
    assert not att.causal and att.mask is None

    # a constant mask that is not triangular stays a mask
    odd = tri.copy()
    odd[..., 5, 0] = False

    def f3(b, q, k, v):
        return b.scaled_dot_product_attention(q, k, v, b.const(odd, "odd_mask"))
    exe = _check(graph(f3, *specs), [rand(rng, s) for s, _ in specs])
    (att,) = _attention_kernels(exe)
    assert not att.causal and att.mask is not None


def test_fuse_attention_option_off(rng):
    specs = [((1, 2, 16, 32), "f32")] * 3
    g = graph(lambda b, q, k, v: b.scaled_dot_product_attention(q, k, v, causal=True), *specs)
    exe = cpu.compile_graph(g, fuse_attention=False)
    assert not _attention_kernels(exe)
    ins = [rand(rng, s) for s, _ in specs]
    np.testing.assert_allclose(exe(ins)[0], evaluate(g, ins)[0], rtol=1e-4, atol=2e-5)


def test_f16_attention_stays_unfused(rng):
    """The fused kernel is f32-only; other dtypes keep the gemm -> softmax -> gemm chain (and stay correct)."""
    specs = [((1, 2, 9, 8), "f16")] * 3
    g = graph(lambda b, q, k, v: b.scaled_dot_product_attention(q, k, v, causal=True), *specs)
    ins = [rand(rng, s).astype(np.float16) for s, _ in specs]
    exe = cpu.compile_graph(g)
    assert not _attention_kernels(exe)
    np.testing.assert_allclose(exe(ins)[0].astype(np.float32), evaluate(g, ins)[0].astype(np.float32), atol=1e-2)


# ---------------------------------------------------------------- whole models vs torch eager
def _hf(name):
    import transformers as T
    torch.manual_seed(0)
    if name == "llama":   # GQA (2 kv heads for 4 heads), RoPE, causal, batch 2
        c = T.LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=500, use_cache=False)
        return T.LlamaForCausalLM(c).eval(), (torch.randint(0, 500, (2, 24)),)
    if name == "gpt2":
        c = T.GPT2Config(n_embd=128, n_layer=2, n_head=4, vocab_size=500, n_positions=64, use_cache=False)
        return T.GPT2LMHeadModel(c).eval(), (torch.randint(0, 500, (2, 20)),)
    c = T.BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, vocab_size=500)
    ids = torch.randint(0, 500, (2, 19))
    am = torch.ones(2, 19, dtype=torch.long)
    am[1, 13:] = 0     # padding in the second sequence: an additive mask from an input
    return T.BertModel(c).eval(), (ids, am)


class _First(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, *xs):
        o = self.m(*xs)
        return o.logits if hasattr(o, "logits") else o.last_hidden_state


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert"])
def test_transformer_vs_eager(name):
    import nnfuse
    model, xs = _hf(name)
    model = _First(model).eval()
    with torch.inference_mode():
        want = model(*xs).numpy()
    cm = nnfuse.compile(model, xs, backend="cpu")
    assert any(k.kind == "attention" for k in cm.executable.program.kernels)
    got = cm(*xs)
    got = got[0] if isinstance(got, (list, tuple)) else got
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-3, atol=2e-4)
