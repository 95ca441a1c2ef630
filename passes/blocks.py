"""Transformer block discovery: the residual stream of a stack and the blocks hanging off it.

A residual block is `y = x + f(x)`: an `add` whose one operand `x` (the residual stream) is an
ancestor of the other (`f(x)`, the branch), with a weight GEMM somewhere on the branch. Its body
is every node between the two: downstream of `x` and upstream of the branch. Values the body
reads that do not depend on `x` (rotary tables, masks, weights) are shared, not part of it.

The blocks of a stack chain: block k's residual input is block k-1's add — or, in a post-norm stack
(BERT, the original Transformer: `y = LayerNorm(x + f(x))`), the norm that is the add's only reader.
Discovery keeps the longest such chain, so adds nested inside a block (`x + c·x³` in a tanh GELU)
never count.
This is structural and works on any frontend's graph. Module paths in `node.meta["loc"]`
(torch: `model.layers.3.mlp.down_proj`; ONNX names: `/model/layers.3/mlp/down_proj/MatMul`),
when present, name each block's layer index and kind.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..ir import Graph, Node, Value
from ..ir.ops import OPS

ATTENTION_OPS = {"softmax", "scaled_dot_product_attention", "attention"}
NORM_OPS = {"layer_norm", "rms_norm"}
_LAYER_RE = re.compile(r"(?:^|[./])(?:layers?|h|blocks?|block)[./](\d+)(?:[./]|$)")
_CONST_OPS = {"transpose", "reshape", "cast", "identity", "squeeze", "unsqueeze", "expand", "flatten"}


def const_value(v: Value, depth: int = 4) -> Optional[np.ndarray]:
    """The array of a constant, or of a short layout chain over one (transpose(W), reshape(b), ...)."""
    if v.producer is None:
        return v.data
    n = v.producer
    if depth == 0 or n.body is not None or n.op not in _CONST_OPS or len(n.outputs) != 1:
        return None
    args = [const_value(a, depth - 1) for a in n.inputs]
    if any(a is None for a in args):
        return None
    return OPS[n.op].run(args, n.attrs)[0]


def gemm_weight(n: Node) -> Optional[tuple[Value, np.ndarray, Optional[np.ndarray]]]:
    """For a GEMM against a constant weight: (activation operand, W as [K, N], bias or None); else None."""
    if n.body is not None:
        return None
    if n.op == "matmul":
        w = const_value(n.inputs[1])
        if w is None or w.ndim != 2 or const_value(n.inputs[0]) is not None:
            return None
        return n.inputs[0], w, None
    if n.op == "gemm" and not n.attrs.get("trans_a"):
        w = const_value(n.inputs[1])
        if w is None:
            return None
        w = (w.T if n.attrs.get("trans_b") else w) * np.asarray(n.attrs.get("alpha", 1.0), w.dtype)
        bias = None
        if len(n.inputs) == 3:
            c = const_value(n.inputs[2])
            if c is None:
                return None
            bias = (c * np.asarray(n.attrs.get("beta", 1.0), c.dtype)).astype(w.dtype)
        return n.inputs[0], w.astype(n.outputs[0].type.dtype.np, copy=False), bias
    return None


@dataclass(eq=False)
class Block:
    """One residual block `exit = entry + branch`, branch computed by `nodes` (graph order)."""
    position: int                 # index along the residual chain
    kind: str                     # "attention" | "ffn" | "other"
    entry: Value                  # residual stream before the block
    add: Node                     # the residual add; its result is the stream after the block
    branch: Value                 # the add's operand computed by the body
    nodes: list[Node]
    layer: int = -1               # transformer layer index (from module paths, else counted)
    loc: str = ""                 # common module path of the body, when known
    closed: bool = True           # no body value is read outside the block
    post_norm: Optional[Node] = None   # post-norm stacks: the norm over the add, whose result is the stream

    @property
    def exit(self) -> Value:
        return (self.post_norm or self.add).outputs[0]

    @property
    def gemms(self) -> list[Node]:
        return [n for n in self.nodes if gemm_weight(n) is not None]

    def describe(self) -> str:
        where = f" {self.loc}" if self.loc else ""
        post = f", post-{self.post_norm.op}" if self.post_norm is not None else ""
        return f"{self.kind} ({len(self.nodes)} nodes, {len(self.gemms)} weight GEMMs{post}){where}"


@dataclass
class Layer:
    index: int
    attention: Optional[Block] = None
    ffn: Optional[Block] = None
    other: list[Block] = field(default_factory=list)

    @property
    def blocks(self) -> list[Block]:
        return [b for b in (self.attention, self.ffn) if b is not None] + self.other


@dataclass
class Stack:
    blocks: list[Block]
    layers: list[Layer]
    method: str                   # "structure" or "structure+loc"

    def of_kind(self, kind: str) -> list[Block]:
        return [b for b in self.blocks if b.kind == kind]

    def describe(self) -> list[str]:
        if not self.blocks:
            return ["no residual blocks found"]
        lines = [f"{len(self.layers)} layers, {len(self.blocks)} residual blocks (found by {self.method})"]
        for L in self.layers:
            lines.append(f"  layer {L.index}: " + "; ".join(b.describe() for b in L.blocks))
        return lines


def layer_of_loc(loc: str) -> Optional[int]:
    m = _LAYER_RE.search(loc or "")
    return int(m.group(1)) if m else None


def _common_loc(nodes: list[Node]) -> str:
    locs = [n.loc.replace("/", ".").strip(".") for n in nodes if n.loc]
    if not locs:
        return ""
    parts = [p.split(".") for p in locs]
    common = []
    for seg in zip(*parts):
        if len(set(seg)) != 1:
            break
        common.append(seg[0])
    return ".".join(common)


def _classify(nodes: list[Node]) -> str:
    ops = set()
    for n in nodes:
        ops.add(n.op)
        if n.body is not None:
            ops.update(m.op for m in n.body.walk())
            ops.add(str(n.attrs.get("kind", "")))
    if ops & ATTENTION_OPS or any("attention" in o for o in ops):
        return "attention"
    if sum(gemm_weight(n) is not None for n in nodes) >= 2:
        return "ffn"
    return "other"


def _kind_from_loc(loc: str) -> Optional[str]:
    low = loc.lower()
    if any(k in low for k in ("attn", "attention")):
        return "attention"
    if any(k in low for k in ("mlp", "ffn", "feed_forward", "feedforward")):
        return "ffn"
    return None


def _candidates(g: Graph) -> list[tuple[Value, Node, Value, list[Node]]]:
    """Every (entry, add, branch, body) with entry an ancestor of branch and a weight GEMM in the body."""
    pos = {id(n): i for i, n in enumerate(g.nodes)}
    users: dict[int, list[Node]] = {}
    for n in g.nodes:
        for v in n.inputs:
            users.setdefault(v.id, []).append(n)
    out = []
    for add in g.nodes:
        if add.op != "add" or len(add.inputs) != 2 or add.inputs[0] is add.inputs[1]:
            continue
        for skip, br in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
            if br.producer is None or id(br.producer) not in pos or skip.type != add.outputs[0].type:
                continue
            if skip.producer is None and skip.is_const:
                continue
            fwd: set[int] = set()       # nodes downstream of skip, up to the add
            stack = list(users.get(skip.id, ()))
            limit = pos[id(add)]
            while stack:
                n = stack.pop()
                if id(n) in fwd or pos[id(n)] >= limit:
                    continue
                fwd.add(id(n))
                for o in n.outputs:
                    stack.extend(users.get(o.id, ()))
            if id(br.producer) not in fwd:
                continue
            body: set[int] = set()
            stack = [br.producer]
            while stack:
                n = stack.pop()
                if id(n) in body or id(n) not in fwd:
                    continue
                body.add(id(n))
                stack.extend(v.producer for v in n.inputs if v.producer is not None)
            nodes = [n for n in g.nodes if id(n) in body]
            if any(gemm_weight(n) is not None for n in nodes):
                out.append((skip, add, br, nodes))
                break
    return out


def discover(g: Graph) -> Stack:
    """Find the transformer stack of `g`: its residual blocks in order, grouped into layers."""
    cands = _candidates(g)
    by_entry: dict[int, list[tuple]] = {}
    for c in cands:
        by_entry.setdefault(c[0].id, []).append(c)
    readers: dict[int, list[Node]] = {}
    for n in g.nodes:
        for v in n.inputs:
            readers.setdefault(v.id, []).append(n)
    outs = {v.id for v in g.outputs}

    def post_norm(add: Node) -> Optional[Node]:
        r = readers.get(add.outputs[0].id, [])
        ok = len(r) == 1 and r[0].op in NORM_OPS and r[0].inputs[0] is add.outputs[0] and add.outputs[0].id not in outs
        return r[0] if ok else None

    # a post-norm stack (BERT) has norms that start the next block; in a pre-norm stack (LLaMA) only the last add
    # has a single norm reader, the final norm, which belongs to the head, not to the last block
    post_stack = any((pn := post_norm(c[1])) is not None and pn.outputs[0].id in by_entry for c in cands)

    def exit_id(c: tuple) -> int:
        pn = post_norm(c[1]) if post_stack else None
        return (pn or c[1]).outputs[0].id

    exits = {exit_id(c) for c in cands}
    best: list[tuple] = []
    for c in cands:
        if c[0].id in exits:
            continue                        # not the start of a chain
        chain, cur = [c], c
        while True:
            nxt = by_entry.get(exit_id(cur), [])
            if not nxt:
                break
            cur = max(nxt, key=lambda t: len(t[3]))   # the outer block when several share an entry
            chain.append(cur)
        if len(chain) > len(best):
            best = chain
    inside: dict[int, int] = {}
    blocks = []
    for i, (skip, add, br, nodes) in enumerate(best):
        kind = _classify(nodes)
        loc = _common_loc(nodes)
        if kind == "other":
            kind = _kind_from_loc(loc) or kind
        blocks.append(Block(i, kind, skip, add, br, nodes, loc=loc, post_norm=post_norm(add) if post_stack else None))
        for n in nodes:
            inside[id(n)] = i
    _mark_closed(g, blocks, inside)
    layers, method = _group_layers(blocks)
    return Stack(blocks, layers, method)


def _mark_closed(g: Graph, blocks: list[Block], inside: dict[int, int]) -> None:
    outs = {v.id for v in g.outputs}
    owner = {o.id: inside[id(n)] for n in g.nodes if id(n) in inside for o in n.outputs}
    leaks: set[int] = {owner[v] for v in outs if v in owner}
    for n in g.nodes:
        here = inside.get(id(n))
        for v in n.inputs:
            b = owner.get(v.id)
            if b is not None and b != here and n is not blocks[b].add:
                leaks.add(b)
    for b in blocks:
        b.closed = b.position not in leaks


def _group_layers(blocks: list[Block]) -> tuple[list[Layer], str]:
    """Layer numbers from module paths when every block has one, else: each attention block opens a layer."""
    nums = []
    for b in blocks:
        c = Counter(x for x in (layer_of_loc(n.loc) for n in b.nodes) if x is not None)
        nums.append(c.most_common(1)[0][0] if c else None)
    from_loc = bool(blocks) and all(x is not None for x in nums)
    layers: list[Layer] = []
    for b, num in zip(blocks, nums):
        if from_loc:
            if not layers or layers[-1].index != num:
                layers.append(Layer(num))
        elif not layers or b.kind == "attention" or (b.kind == "ffn" and layers[-1].ffn is not None):
            layers.append(Layer(len(layers)))
        L = layers[-1]
        b.layer = L.index
        if b.kind == "attention" and L.attention is None:
            L.attention = b
        elif b.kind == "ffn" and L.ffn is None:
            L.ffn = b
        else:
            L.other.append(b)
    return layers, "structure+loc" if from_loc else "structure"


def bypass(g: Graph, *blocks: Block) -> None:
    """Replace blocks by their residual identity: readers of a block's exit read its entry instead.

    Later blocks go first, so when adjacent blocks go together (a whole layer) the stream skips all
    of them. Dead nodes stay for DCE."""
    for b in sorted(blocks, key=lambda b: -b.position):
        g.replace_uses(b.exit, b.entry)
