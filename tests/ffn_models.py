"""Small transformer stacks built directly in graph IR for the FFN-fusion / layer-skipping tests,
plus numpy oracles computed without the IR (the parallel FFN form, the stack without some layers)."""
from __future__ import annotations

from typing import Optional

import numpy as np

import nnfuse.ir as ir


def llama_weights(layers: int = 4, d: int = 32, hidden: int = 48, vocab: int = 64, seed: int = 0, scale: float = 0.2) -> dict:
    rng = np.random.default_rng(seed)
    f = lambda *s: (rng.standard_normal(s) * scale).astype(np.float32)  # noqa: E731
    gain = lambda: (1 + 0.3 * rng.standard_normal(d)).astype(np.float32)  # noqa: E731
    w = {"embed": f(vocab, d), "norm": gain(), "lm_head": f(d, vocab), "layers": []}
    for _ in range(layers):
        w["layers"].append({"ln1": gain(), "wq": f(d, d), "wk": f(d, d), "wv": f(d, d), "wo": f(d, d),
                            "ln2": gain(), "w1": f(d, hidden), "w3": f(d, hidden), "w2": f(hidden, d)})
    return w


def _rms(b: ir.Builder, x, gain, primitive: bool):
    if not primitive:
        return b.rms_norm(x, b.const(gain, "g"), eps=1e-6)
    ms = b.reduce_mean(b.pow(x, b.const(np.float32(2.0), "two")), axes=[-1], keepdims=True)
    r = b.reciprocal(b.sqrt(b.add(ms, b.const(np.float32(1e-6), "eps"))))
    return b.mul(b.const(gain, "g"), b.mul(x, r))


def llama_ir(w: dict, seq: int = 8, heads: int = 2, skip_layers=(), skip_ffn=(), drop_attn=(),
             loc: bool = True, primitive_norm: bool = False) -> ir.Graph:
    """LLaMA-style decoder (pre-RMSNorm, causal SDPA, SwiGLU FFN) on token ids [1, seq] -> logits.
    Layers / FFNs / attentions listed in skip_* are left out (the oracle for skipping)."""
    d = w["embed"].shape[1]
    b = ir.Builder("llama")
    ids = b.input("input_ids", [1, seq], "i64")
    b.meta = {"loc": "model.embed_tokens"} if loc else {}
    x = b.gather(b.const(w["embed"], "embed"), ids, axis=0)
    dh = d // heads
    for i, L in enumerate(w["layers"]):
        if i in skip_layers:
            continue
        if i not in drop_attn:
            b.meta = {"loc": f"model.layers.{i}.self_attn"} if loc else {}
            h = _rms(b, x, L["ln1"], primitive_norm)
            qkv = []
            for name in ("wq", "wk", "wv"):
                t = b.matmul(h, b.const(L[name], name))
                qkv.append(b.transpose(b.reshape(t, shape=[1, seq, heads, dh]), perm=[0, 2, 1, 3]))
            a = b.scaled_dot_product_attention(*qkv, causal=True)
            a = b.reshape(b.transpose(a, perm=[0, 2, 1, 3]), shape=[1, seq, d])
            x = b.add(x, b.matmul(a, b.const(L["wo"], "wo")))
        if i not in skip_ffn:
            b.meta = {"loc": f"model.layers.{i}.mlp"} if loc else {}
            h = _rms(b, x, L["ln2"], primitive_norm)
            m = b.mul(b.silu(b.matmul(h, b.const(L["w1"], "w1"))), b.matmul(h, b.const(L["w3"], "w3")))
            x = b.add(x, b.matmul(m, b.const(L["w2"], "w2")))
    b.meta = {"loc": "lm_head"} if loc else {}
    logits = b.matmul(_rms(b, x, w["norm"], primitive_norm), b.const(w["lm_head"], "lm_head"))
    return b.output(logits, names=["logits"])


def ffn_stack_ir(ws: list[dict], d: int, rows: int = 6, norm: Optional[str] = "rms", act: str = "swiglu") -> ir.Graph:
    """x [rows, d] -> a stack of FFN-only residual blocks (no attention). Each dict: w1, w2, and
    w3 (swiglu) or b1/b2 (gelu); g (and beta for layer norm) when normed."""
    b = ir.Builder("ffns")
    x = b.input("x", [rows, d])
    for i, p in enumerate(ws):
        b.meta = {"loc": f"layers.{i}.mlp"}
        h, nm = x, p.get("norm", norm)     # a block may override the stack's norm
        if nm == "rms":
            h = b.rms_norm(x, b.const(p["g"], "g"))
        elif nm == "layer":
            h = b.layer_norm(x, b.const(p["g"], "g"), b.const(p["beta"], "beta"))
        if act == "swiglu":
            m = b.mul(b.silu(b.matmul(h, b.const(p["w1"], "w1"))), b.matmul(h, b.const(p["w3"], "w3")))
            y = b.matmul(m, b.const(p["w2"], "w2"))
        else:
            m = b.gelu(b.add(b.matmul(h, b.const(p["w1"], "w1")), b.const(p["b1"], "b1")))
            y = b.add(b.matmul(m, b.const(p["w2"], "w2")), b.const(p["b2"], "b2"))
        x = b.add(x, y)
    return b.output(x)


def np_norm(x: np.ndarray, p: dict, norm: Optional[str]) -> np.ndarray:
    x = x.astype(np.float64)
    if norm == "rms":
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * p["g"]
    if norm == "layer":
        mu = x.mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * p["g"] + p["beta"]
    return x


def np_ffn(h: np.ndarray, p: dict, act: str) -> np.ndarray:
    from scipy import special
    if act == "swiglu":
        g = h @ p["w1"]
        return (g * special.expit(g) * (h @ p["w3"])) @ p["w2"]
    u = h @ p["w1"] + p["b1"]
    return (0.5 * u * (1 + special.erf(u / np.sqrt(2)))) @ p["w2"] + p["b2"]


def np_parallel(x: np.ndarray, ws: list[dict], norm: Optional[str], act: str) -> np.ndarray:
    """The fused form computed in float64 numpy: x + sum_k FFN_k(norm_k(x))."""
    return x.astype(np.float64) + sum(np_ffn(np_norm(x, p, p.get("norm", norm)), p, act) for p in ws)
