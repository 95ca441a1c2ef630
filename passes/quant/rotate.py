"""rotate-hadamard (QuaRot): an orthogonal rotation of the residual stream folded into the weights, plus an online
Hadamard before each FFN's down projection, so activation outliers spread over all channels (W4A4 works).

For a LLaMA-style stack (RMSNorm, residual adds, found by passes/blocks.py):
  1. fold each RMSNorm gain g into the weights that read the norm:            W <- diag(g) W, gain removed
  2. pick Q = diag(random +-1) H_n / sqrt(n) (n = hidden; a random orthogonal Q when no Hadamard of size n exists)
     embedding table E <- E Q; stream readers (after a norm) W <- Q^T W; stream writers (o_proj, down_proj) W <- W Q
     RMSNorm(xQ) = RMSNorm(x) Q because ||xQ|| = ||x||, so the fp32 model computes the same function.
  3. down_proj input h: h <- hadamard(h) (FWHT, O(n log n); n = 2^k * m with a Paley m as in the paper),
     W_down <- H^T W_down.
Anything else reading the stream (a LayerNorm, a raw output) breaks the invariance: the pass then changes nothing
and says why.
"""
from __future__ import annotations

import numpy as np

from ...ir import Graph, Node
from ...ir.ops.quant import hadamard_matrix, hadamard_split
from ..blocks import const_value, discover
from ..manager import PassContext, register_pass
from .common import Layer, add_node, tidy, weight_layers


def rotation(n: int, seed: int) -> tuple[np.ndarray, str]:
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=n)
    if hadamard_split(n) is not None:
        return signs[:, None] * hadamard_matrix(n), "randomized Hadamard"
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r)), "random orthogonal (no Hadamard of this size)"


def set_weight(g: Graph, L: Layer, w: np.ndarray, bias: "np.ndarray | None" = None) -> None:
    """Give a matmul/gemm layer the new weight [K, N] (and bias) as fresh constants."""
    n = L.node
    dt = n.outputs[0].dtype.np
    c = g.add_const((n.inputs[1].name or "w") + ".rot", np.ascontiguousarray(w.astype(dt)))
    if n.op == "matmul" and bias is None:
        n.inputs[1] = c
    else:
        y = add_node(g, n, "matmul", [L.x, c], n.meta).outputs[0]
        if bias is not None:
            y = add_node(g, n, "add", [y, g.add_const(c.name + ".bias", bias.astype(dt))], n.meta).outputs[0]
        g.replace_uses(n.outputs[0], y)
        g.nodes.remove(n)
    L.w = w
    L.bias = bias


def _readers(g: Graph) -> dict[int, list[Node]]:
    r: dict[int, list[Node]] = {}
    for n in g.nodes:
        for v in n.inputs:
            r.setdefault(v.id, []).append(n)
    return r


class NotInvariant(Exception):
    pass


def plan(g: Graph):
    """(stream values, [(norm node, gain or None, gain-mul node or None, [reader layers])], writer layers,
    embedding node); raises NotInvariant naming what breaks the rotation."""
    stack = discover(g)
    if not stack.blocks:
        raise NotInvariant("no residual stack found")
    stream = [stack.blocks[0].entry] + [b.exit for b in stack.blocks]
    adds = {id(b.add) for b in stack.blocks}
    readers = _readers(g)
    layers = {id(L.node): L for L in weight_layers(g) if L.kind == "matmul"}
    outs = {v.id for v in g.outputs}
    hidden = stream[0].shape[-1]
    norms = []
    for v in stream:
        if v.id in outs:
            raise NotInvariant(f"the residual stream value {v.name or v.id} is a graph output")
        for r in readers.get(v.id, []):
            if id(r) in adds:
                continue
            if r.op != "rms_norm" or r.inputs[0] is not v or r.attrs.get("axis", -1) % v.type.rank != v.type.rank - 1:
                raise NotInvariant(f"the residual stream is read by {r.op} ({r.loc or '?'}), not an RMSNorm")
            gain = const_value(r.inputs[1]) if len(r.inputs) > 1 else None
            if len(r.inputs) > 1 and gain is None:
                raise NotInvariant(f"RMSNorm {r.loc} has a non-constant gain")
            out, gmul = r.outputs[0], None
            rs = readers.get(out.id, [])
            if len(rs) == 1 and rs[0].op == "mul" and out.id not in outs:       # gain as a separate mul
                other = [i for i in rs[0].inputs if i is not out]
                c = const_value(other[0]) if len(other) == 1 else None
                if c is not None and c.size == hidden and c.shape[-1] == hidden:
                    gain = c.reshape(-1) * (gain if gain is not None else 1)
                    gmul, out = rs[0], rs[0].outputs[0]
                    rs = readers.get(out.id, [])
            if out.id in outs or not rs or any(id(u) not in layers or layers[id(u)].x is not out for u in rs):
                raise NotInvariant(f"RMSNorm {r.loc or '?'} feeds something other than weight GEMMs")
            norms.append((r, None if gain is None else np.asarray(gain, np.float64).reshape(-1), gmul,
                          [layers[id(u)] for u in rs]))
    writers = []
    for b in stack.blocks:
        p = b.branch.producer
        if p is None or id(p) not in layers:
            raise NotInvariant(f"block {b.position} ({b.loc or b.kind}) does not end in a weight GEMM")
        writers.append((b, layers[id(p)]))
    emb = stream[0].producer
    if emb is None or emb.op not in ("embedding", "gather") or const_value(emb.inputs[0]) is None:
        raise NotInvariant("the residual stream does not start at an embedding lookup of a constant table")
    if emb.op == "gather" and emb.attrs.get("axis", 0) != 0:
        raise NotInvariant("embedding gather is not along axis 0")
    return stack, norms, writers, emb


def online_hadamard_kinds(opt) -> tuple[str, ...]:
    """Blocks whose output projection gets an online Hadamard on its input. "all": FFN down_proj and attention out_proj
    (QuaRot rotates both: its per-head V rotation plus the online one across heads is one Hadamard of the attention
    output, which this applies directly); True / "ffn": down_proj only (the default: on the outlier bar the
    out_proj rotation changed the W4A4 error by < 1%, and it costs an online transform); False: none."""
    if opt == "all":
        return ("ffn", "attention")
    if opt is True or opt == "ffn":
        return ("ffn",)
    return ("attention",) if opt == "attention" else ()


@register_pass("rotate-hadamard", exact=False)
def rotate_hadamard(g: Graph, ctx: PassContext) -> dict:
    """QuaRot: fold RMSNorm gains and a randomized Hadamard into the residual-stream weights; online FWHT before down_proj."""
    try:
        stack, norms, writers, emb = plan(g)
    except NotInvariant as e:
        return {"rotated": 0, "reason": str(e)}
    hidden = int(stack.blocks[0].entry.shape[-1])
    q, how = rotation(hidden, int(ctx.get("seed", 0)))
    # 1 + 2: readers of each norm get diag(g) then Q^T
    for r, gain, gmul, Ls in norms:
        for L in Ls:
            w = L.w.astype(np.float64)
            if gain is not None:
                w = gain[:, None] * w
            set_weight(g, L, q.T @ w)
        if len(r.inputs) > 1:
            r.inputs = r.inputs[:1]
        if gmul is not None:
            g.replace_uses(gmul.outputs[0], r.outputs[0])
    # writers: W Q (bias Q); the online Hadamard goes before FFN down projections
    online, online_skipped = 0, []
    online_kinds = online_hadamard_kinds(ctx.get("online_hadamard", True))
    for b, L in writers:
        w = L.w.astype(np.float64)
        if b.kind in online_kinds:
            k = w.shape[0]
            if hadamard_split(k) is not None and isinstance(L.x.shape[-1], int):
                h = add_node(g, L.node, "hadamard", [L.x], L.node.meta).outputs[0]
                L.node.inputs = [h] + list(L.node.inputs[1:])
                L.x = h
                w = hadamard_matrix(k).T @ w
                online += 1
            else:
                online_skipped.append(f"{L.name} (K={k})")
        bias = None if L.bias is None else (L.bias.astype(np.float64) @ q)
        set_weight(g, L, w @ q, bias)
    table = const_value(emb.inputs[0]).astype(np.float64)
    emb.inputs[0] = g.add_const((emb.inputs[0].name or "embed") + ".rot", (table @ q).astype(emb.outputs[0].dtype.np))
    tidy(g)
    return {"rotated": len(stack.blocks), "hidden": hidden, "rotation": how, "norm_gains_folded": len(norms),
            "online_hadamard": online, **({"online_skipped": online_skipped} if online_skipped else {})}
