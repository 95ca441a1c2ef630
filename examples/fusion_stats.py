"""Fusion statistics for a transformer block and a ResNet block built with ir.Builder (no torch needed).

The transformer block writes layer norm, softmax-attention and the tanh GELU out as primitive ops, the way
ONNX exports and torch decompositions produce them; O3 recognizes and fuses them. Run:

    .venv/bin/python examples/fusion_stats.py
"""
from __future__ import annotations

import math

import numpy as np

from nnfuse.ir import Builder, Graph, Value, evaluate
from nnfuse.passes import optimize


def layer_norm_prims(b: Builder, x: Value, d: int, rng, eps: float = 1e-5) -> Value:
    mean = b.reduce_mean(x, axes=[-1], keepdims=True)
    c = b.sub(x, mean)
    var = b.reduce_mean(b.pow(c, b.const(np.float32(2.0), "two")), axes=[-1], keepdims=True)
    y = b.div(c, b.sqrt(b.add(var, b.const(np.float32(eps), "eps"))))
    w = b.const((1 + 0.1 * rng.standard_normal(d)).astype(np.float32), "ln.w")
    return b.add(b.mul(y, w), b.const((0.1 * rng.standard_normal(d)).astype(np.float32), "ln.b"))


def softmax_prims(b: Builder, x: Value) -> Value:
    e = b.exp(b.sub(x, b.reduce_max(x, axes=[-1], keepdims=True)))
    return b.div(e, b.reduce_sum(e, axes=[-1], keepdims=True))


def gelu_tanh_prims(b: Builder, x: Value) -> Value:
    c = lambda v, n: b.const(np.float32(v), n)  # noqa: E731
    inner = b.mul(b.add(x, b.mul(b.pow(x, c(3.0, "three")), c(0.044715, "k"))), c(math.sqrt(2 / math.pi), "s2pi"))
    return b.mul(b.mul(x, c(0.5, "half")), b.add(b.tanh(inner), c(1.0, "one")))


def linear(b: Builder, x: Value, din: int, dout: int, rng, name: str) -> Value:
    w = b.const((rng.standard_normal((din, dout)) / math.sqrt(din)).astype(np.float32), name + ".w")
    return b.add(b.matmul(x, w), b.const((0.1 * rng.standard_normal(dout)).astype(np.float32), name + ".b"))


def transformer_block(batch: int = 2, seq: int = 16, d: int = 64, heads: int = 4, seed: int = 0) -> Graph:
    """Pre-LN GPT-style block: x + attn(ln1(x)); then + mlp(ln2(.)), everything written out."""
    rng = np.random.default_rng(seed)
    b = Builder("transformer_block")
    x = b.input("x", [batch, seq, d])
    dh = d // heads
    h = layer_norm_prims(b, x, d, rng)

    def split_heads(t: Value) -> Value:
        return b.transpose(b.reshape(t, shape=[batch, seq, heads, dh]), perm=[0, 2, 1, 3])

    q, k, v = (split_heads(linear(b, h, d, d, rng, n)) for n in ("q", "k", "v"))
    scores = b.mul(b.matmul(q, b.transpose(k, perm=[0, 1, 3, 2])), b.const(np.float32(1 / math.sqrt(dh)), "scale"))
    causal = np.triu(np.full((seq, seq), -1e9, np.float32), 1)
    probs = softmax_prims(b, b.add(scores, b.const(causal, "causal_mask")))
    ctx = b.reshape(b.transpose(b.matmul(probs, v), perm=[0, 2, 1, 3]), shape=[batch, seq, d])
    x = b.add(linear(b, ctx, d, d, rng, "o"), x)
    h = layer_norm_prims(b, x, d, rng)
    h = linear(b, gelu_tanh_prims(b, linear(b, h, d, 4 * d, rng, "fc1")), 4 * d, d, rng, "fc2")
    return b.output(b.add(x, h))


def resnet_block(n: int = 1, c: int = 16, hw: int = 8, seed: int = 0) -> Graph:
    """conv-bn-relu, conv-bn, + identity, relu."""
    rng = np.random.default_rng(seed)
    b = Builder("resnet_block")
    x = b.input("x", [n, c, hw, hw])

    def conv_bn(t: Value, name: str) -> Value:
        w = b.const((rng.standard_normal((c, c, 3, 3)) / math.sqrt(9 * c)).astype(np.float32), name + ".w")
        y = b.conv(t, w, pads=[1, 1, 1, 1])
        p = [(1 + 0.1 * rng.standard_normal(c)).astype(np.float32), (0.1 * rng.standard_normal(c)).astype(np.float32),
             (0.1 * rng.standard_normal(c)).astype(np.float32), (1 + 0.1 * rng.random(c)).astype(np.float32)]
        return b.batch_norm(y, *[b.const(a, f"{name}.bn{i}") for i, a in enumerate(p)], eps=1e-5)

    y = b.relu(conv_bn(x, "conv1"))
    y = conv_bn(y, "conv2")
    return b.output(b.relu(b.add(y, x)))


def fusion_stats(g: Graph, level: int = 3) -> dict:
    """Optimize `g`, check it against the reference evaluator, and summarize nodes and regions."""
    opt, report = optimize(g, opt_level=level, verify_each=True)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal([int(d) for d in v.type.shape]).astype(np.float32) for v in g.inputs]
    err = max(float(np.abs(a - b_).max()) for a, b_ in zip(evaluate(g, xs), evaluate(opt, xs)))
    kinds: dict[str, int] = {}
    for n in opt.nodes:
        if n.body is not None:
            kinds[n.attrs["kind"]] = kinds.get(n.attrs["kind"], 0) + 1
    return {"nodes_before": len(g.nodes), "nodes_after": len(opt.nodes), "regions": kinds,
            "unfused": sorted(n.op for n in opt.nodes if n.body is None), "max_err": err, "report": report}


def main() -> None:
    for name, g in (("transformer block", transformer_block()), ("ResNet block", resnet_block())):
        s = fusion_stats(g)
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(s["regions"].items()))
        print(f"{name}: nodes {s['nodes_before']} -> {s['nodes_after']}; regions: {kinds}; "
              f"left unfused: {', '.join(s['unfused']) or '-'}; max |diff| vs reference {s['max_err']:.1e}")
        print(s["report"].table())
        print()


if __name__ == "__main__":
    main()
