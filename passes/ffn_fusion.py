"""FFN fusion ("FFN Fusion: Rethinking Sequential Computation in LLMs", NVIDIA 2025).

A run of consecutive FFN blocks x_{k+1} = x_k + FFN_k(norm_k(x_k)) is replaced by the parallel
form x + Σ_k FFN_k(norm_k(x)), computed as ONE wide FFN: the first-layer weights (gate/up, W1/W3)
concatenated along the hidden dim, the down weights (W2) along their input dim, so the sum is a
single GEMM chain (3 GEMMs, 2 deep, instead of 3n GEMMs, 2n deep).

Norms: every branch normalizes the shared input x. When the blocks' norms differ only by their
gains (same op chain, same eps: the statistics of x are shared) one norm is computed and each
block's gain g_k (and a layer-norm shift b_k) folds into its rows: (n·g_k) W = n (diag(g_k) W).
Otherwise each branch keeps its own norm and first-layer GEMMs, concatenated before the shared
down GEMM.

Dependency (the paper's M): M[i, j] = cosine distance between block j's contribution computed on
its usual input and on that input without block i's contribution. A run is fused when the max of
its sub-matrix is at most `ffn_threshold`; longer runs are split greedily. The pass reports per run
the blocks fused, the GEMM count and sequential depth before/after, the score and the output
error on calibration data, and the total error of the rewritten graph against the input graph.

Options (ctx.options): ffn_threshold (float, default 0.5), calibration (see calibration.py),
drop_attention (layer indices, or a count k / "auto:k" chosen by score) applied first, auto_drop_attention (int,
default 1: when the stack has no two consecutive FFN blocks and drop_attention is not given,
remove the attention of that many layers, those whose output is closest to their input, so
there is a run to fuse; 0 disables), ffn_min_run (default 2), ffn_max_run (default: no limit).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from ..ir import Graph, Node, Value, make_node
from .blocks import Block, Stack, const_value, discover, gemm_weight
from .calibration import calibration_inputs, cosine_distance, output_error, outputs_of, run_nodes, trace
from .drop_attention import drop_attention_layers, pick_attention
from .graphutil import is_pointwise, remove_dead
from .manager import PassContext, register_pass

DEFAULT_THRESHOLD = 0.5


@dataclass(eq=False)
class FFNParts:
    """An FFN block taken apart: pre (norm) -> first GEMMs -> pointwise mid -> down GEMM -> post (bias)."""
    block: Block
    h: Value                      # the first GEMMs' shared input (the normalized stream)
    pre: list[Node]
    first: list[Node]
    mid: list[Node]
    down: Node
    post: list[Node]
    hidden: int
    gain_node: Optional[Node] = None      # node applying the norm's affine gain (mul, rms_norm, layer_norm)
    gain: Optional[np.ndarray] = None
    shift: Optional[np.ndarray] = None
    normalized: Optional[Value] = None    # the value before the gain (for a gain `mul`)


def analyze(block: Block) -> Union[FFNParts, str]:
    """Take an FFN block apart, or say why it does not have the two-GEMM-layer form fusion needs."""
    level: dict[int, int] = {block.entry.id: 0}
    mine = {o.id for n in block.nodes for o in n.outputs}
    first, down, pre, mid, post = [], [], [], [], []
    late = ""       # a problem after the down GEMM; reported unless a worse one turns up
    for n in block.nodes:
        if n.body is not None:
            return f"contains a fused region ({n.attrs.get('kind', '?')})"
        gw = gemm_weight(n)
        ins = []
        for v in (n.inputs[:1] if gw else n.inputs):
            if v.id in level:
                ins.append(level[v.id])
            elif v.id in mine:
                return "body is not in topological order"
            elif const_value(v) is None:
                return f"reads {v.name or 'a value'} from outside the block ({n.op})"
        lv = max(ins, default=0)
        if gw:
            if lv >= 2:
                return "has more than two GEMM layers"
            (first if lv == 0 else down).append(n)
            lv += 1
        elif len(n.outputs) != 1:
            return f"op {n.op} with several results"
        else:
            [pre, mid, post][lv].append(n)
            if lv == 1 and (not (is_pointwise(n) or _keeps_last_dim(n)) or any(level.get(v.id, 1) == 0 for v in n.inputs)):
                return f"op {n.op} between the GEMM layers is not pointwise on the hidden activations"
            if lv == 2 and not (_keeps_last_dim(n) or n.op == "add" and any(const_value(v) is not None for v in n.inputs)):
                late = late or f"op {n.op} after the down projection (only a bias add or a reshape is fused)"
        for o in n.outputs:
            level[o.id] = lv
    if late:
        return late
    if len(down) != 1 or not first:
        return f"has {len(first)} first-layer and {len(down)} down GEMMs (needs >=1 and 1)"
    if level.get(block.branch.id) != 2:
        return "the branch does not end at the down projection"
    hs = {gemm_weight(n)[0].id for n in first}
    if len(hs) != 1:
        return "first-layer GEMMs read different values"
    h = gemm_weight(first[0])[0]
    hidden = {gemm_weight(n)[1].shape[1] for n in first}
    wd = gemm_weight(down[0])[1]
    if len(hidden) != 1 or wd.shape[0] not in hidden:
        return "first-layer and down GEMM shapes do not chain"
    parts = FFNParts(block, h, pre, first, mid, down[0], post, hidden.pop())
    _find_gain(parts)
    return parts


def _keeps_last_dim(n: Node) -> bool:
    """A reshape that only regroups leading dims (GPT-2's Conv1D flattens [B,S,D] to [B*S,D] around its GEMM)."""
    return n.op == "reshape" and n.inputs[0].type.shape[-1:] == n.outputs[0].type.shape[-1:]


def _find_gain(p: FFNParts) -> None:
    """Spot the norm's affine part on h (through leading-dim reshapes) so it can fold into the first-layer weights."""
    n = p.h.producer
    while n is not None and n in p.pre and _keeps_last_dim(n):
        n = n.inputs[0].producer
    if n is None or n not in p.pre:
        return
    t = n.outputs[0].type
    d = t.shape[-1]
    if n.op == "mul":
        for i in (0, 1):
            c = const_value(n.inputs[i])
            if c is not None and c.size == d and c.shape[-1:] == (d,) and n.inputs[1 - i].type == t:
                p.gain_node, p.gain, p.normalized = n, c.reshape(-1), n.inputs[1 - i]
                return
    if n.op in ("rms_norm", "layer_norm") and len(n.inputs) >= 2 and isinstance(d, int):
        consts = [const_value(v) for v in n.inputs[1:]]
        if all(c is not None and c.size == d for c in consts) and n.attrs.get("axis", -1) in (-1, t.rank - 1):
            p.gain_node, p.gain = n, consts[0].reshape(-1)
            p.shift = consts[1].reshape(-1) if len(consts) > 1 else None


def _signature(nodes: list[Node], entry: Value) -> list[tuple]:
    """Nodes as a structural signature: per node (op, attrs, operand references); constants by rank only."""
    local = {}
    sig = []
    for i, n in enumerate(nodes):
        refs = []
        for v in n.inputs:
            if v is entry:
                refs.append(("x",))
            elif v.id in local:
                refs.append(("n",) + local[v.id])
            elif const_value(v) is not None:
                refs.append(("c", v.type.rank, v.type.dtype.name))   # sizes may differ (hidden dims)
            else:
                refs.append(("e", v.id))
        sig.append((n.op, sorted(n.attrs.items(), key=lambda kv: kv[0]), len(n.outputs), tuple(refs)))
        for j, o in enumerate(n.outputs):
            local[o.id] = (i, j)
    return sig


def _core(p: FFNParts) -> list[tuple]:
    """Signature of the GEMM part (first GEMMs -> mid -> down -> post) from h on: must match across a run."""
    core = {id(n) for n in p.first + p.mid + [p.down] + p.post}
    return _signature([n for n in p.block.nodes if id(n) in core], p.h)


def _same_norm(a: FFNParts, b: FFNParts) -> bool:
    """True when b's pre nodes equal a's up to the affine gain (so the statistics are shared)."""
    if (a.gain is None) != (b.gain is None) or (a.shift is None) != (b.shift is None):
        return False
    if _signature(a.pre, a.block.entry) != _signature(b.pre, b.block.entry):
        return False
    if a.gain_node is not None and a.pre.index(a.gain_node) != b.pre.index(b.gain_node):
        return False
    for na, nb in zip(a.pre, b.pre):
        skip = {1, 2} if na is a.gain_node and na.op != "mul" else set()
        if na is a.gain_node and na.op == "mul":
            continue
        for q, (va, vb) in enumerate(zip(na.inputs, nb.inputs)):
            if q in skip:
                continue
            ca, cb = const_value(va), const_value(vb)
            if (ca is None) != (cb is None) or (ca is not None and not np.array_equal(ca, cb)):
                return False
    return True


class _Emitter:
    def __init__(self, g: Graph, tag: str):
        self.g, self.tag, self.nodes = g, tag, []

    def op(self, op: str, ins, attrs: Optional[dict] = None) -> Value:
        n = make_node(op, list(ins), attrs, {"loc": self.tag})
        self.nodes.append(n)
        return n.outputs[0]

    def node(self, n: Node, ins) -> list[Value]:
        m = make_node(n.op, list(ins), n.attrs, {"loc": self.tag})
        self.nodes.append(m)
        return m.outputs

    def const(self, arr: np.ndarray, what: str) -> Value:
        return self.g.add_const(f"{self.tag}.{what}", np.ascontiguousarray(arr))


def fuse_run(g: Graph, run: list[FFNParts]) -> dict:
    """Replace a run of FFN blocks by one wide FFN on the run's input. Raises ValueError when shapes disagree."""
    T, x = run[0], run[0].block.entry
    layers = [p.block.layer for p in run]
    em = _Emitter(g, f"ffn_fusion.layers_{layers[0]}_{layers[-1]}")
    shared = all(_same_norm(T, p) for p in run[1:])
    dt = x.type.dtype.np
    slots = range(len(T.first))
    weights = [[gemm_weight(p.first[s]) for s in slots] for p in run]
    biases: list[list[Optional[np.ndarray]]] = [[w[2] for w in ws] for ws in weights]
    ys = []
    if shared:
        vmap = {x.id: x}
        for n in T.pre:
            if n is T.gain_node and n.op == "mul":     # the gain folds into the weights: pass n through
                vmap[n.outputs[0].id] = vmap.get(T.normalized.id, T.normalized)
                continue
            ins = [vmap.get(v.id, v) for v in n.inputs]
            outs = em.node(n, ins[:1] if n is T.gain_node else ins)
            for o, m in zip(n.outputs, outs):
                vmap[o.id] = m
        hn = vmap[T.h.id]
        for s in slots:
            ws = []
            for k, p in enumerate(run):
                w = weights[k][s][1]
                if p.gain is not None:
                    if p.shift is not None:   # layer norm: (n·g + b) W = n (diag(g) W) + b W
                        bw = (p.shift.astype(np.float64) @ w.astype(np.float64)).astype(dt)
                        biases[k][s] = bw if biases[k][s] is None else biases[k][s] + bw
                    w = (p.gain.astype(np.float64)[:, None] * w.astype(np.float64)).astype(dt)
                ws.append(w)
            ys.append(em.op("matmul", [hn, em.const(np.concatenate(ws, axis=1), f"w1_{s}")]))
    else:
        hs = []
        for p in run:
            vmap = {p.block.entry.id: x}    # every branch reads the run's input
            for n in p.pre:
                for o, m in zip(n.outputs, em.node(n, [vmap.get(v.id, v) for v in n.inputs])):
                    vmap[o.id] = m
            hs.append(vmap.get(p.h.id, x))
        for s in slots:
            parts = [em.op("matmul", [hs[k], em.const(weights[k][s][1], f"w1_{s}_{k}")]) for k in range(len(run))]
            ys.append(em.op("concat", parts, {"axis": -1}))
    for s in slots:
        if any(b[s] is not None for b in biases):
            b = np.concatenate([bk[s] if bk[s] is not None else np.zeros(p.hidden, dt) for bk, p in zip(biases, run)])
            ys[s] = em.op("add", [ys[s], em.const(b.astype(dt), f"b1_{s}")])
    vmap = {n.outputs[0].id: ys[s] for s, n in enumerate(T.first)}
    for i, n in enumerate(T.mid):
        ins = []
        for q, v in enumerate(n.inputs):
            if v.id in vmap:
                ins.append(vmap[v.id])
                continue
            cs = [const_value(p.mid[i].inputs[q]) for p in run]
            if all(c.ndim == cs[0].ndim and c.ndim and c.shape[-1] == p.hidden and c.size == p.hidden for c, p in zip(cs, run)):
                ins.append(em.const(np.concatenate(cs, axis=-1), f"c{i}_{q}"))     # per hidden unit: concatenate
            elif all(c.shape[-1:] in ((), (1,)) and np.array_equal(c, cs[0]) for c in cs):
                ins.append(v if v.producer is None else em.const(cs[0], f"c{i}_{q}"))   # a broadcast scalar, shared
            else:
                raise ValueError(f"constant operand {q} of {n.op} differs between the blocks and is not per-hidden-unit")
        if n.op == "reshape":       # regroups leading dims only: the hidden dim becomes the fused one
            vmap[n.outputs[0].id] = em.op("reshape", ins, {**n.attrs, "shape": tuple(n.attrs["shape"][:-1]) + (-1,)})
        else:
            vmap[n.outputs[0].id] = em.node(n, ins)[0]
    wd = np.concatenate([gemm_weight(p.down)[1] for p in run], axis=0)
    y = em.op("matmul", [vmap[gemm_weight(T.down)[0].id], em.const(wd, "w2")])
    down_bias = [gemm_weight(p.down)[2] for p in run]
    if any(b is not None for b in down_bias):
        y = em.op("add", [y, em.const(sum(b.astype(np.float64) for b in down_bias if b is not None).astype(dt), "b2")])
    for i, n in enumerate(T.post):      # bias adds (biases summed over the branches) and leading-dim reshapes
        if n.op == "reshape":
            y = em.node(n, [y])[0]
            continue
        b = sum(next(c for c in map(const_value, p.post[i].inputs) if c is not None).astype(np.float64) for p in run)
        y = em.op("add", [y, em.const(np.asarray(b).astype(dt), f"b2_{i}")])
    out = em.op("add", [x, y])
    old = {id(n) for p in run for n in p.block.nodes + [p.block.add]}
    at = min(i for i, n in enumerate(g.nodes) if id(n) in old)
    g.replace_uses(run[-1].block.exit, out)
    g.nodes[at:at] = em.nodes
    g.nodes = [n for n in g.nodes if id(n) not in old]
    n_slots = len(T.first)
    gemms_after = n_slots + 1 if shared else n_slots * len(run) + 1
    return {"layers": layers, "blocks": [p.block.position for p in run], "shared_norm": shared,
            "gemms": [len(run) * (n_slots + 1), gemms_after], "gemm_depth": [2 * len(run), 2],
            "hidden": [p.hidden for p in run]}


def ffn_runs(stack: Stack) -> list[list[Block]]:
    """Maximal runs of consecutive FFN blocks along the residual chain."""
    runs, cur = [], []
    for b in stack.blocks:
        if b.kind == "ffn" and b.post_norm is None:   # post-norm FFNs do not add into one stream: nothing to widen
            cur.append(b)
        else:
            if len(cur) > 1:
                runs.append(cur)
            cur = []
    if len(cur) > 1:
        runs.append(cur)
    return runs


def dependency_matrix(g: Graph, run: list[Block], samples) -> np.ndarray:
    """M[i, j] (i < j): cosine distance of block j's contribution with and without block i's, mean over samples."""
    n = len(run)
    M = np.zeros((n, n))
    for s in samples:
        env = trace(g, s)
        for j in range(n):
            bj = run[j]
            fj = env[bj.branch.id]
            for i in range(j):
                xj = env[bj.entry.id] - env[run[i].branch.id]
                alt = run_nodes(bj.nodes, env, {bj.entry.id: xj}, bj.branch)
                M[i, j] += cosine_distance(fj, alt) / len(samples)
    return M


def split_run(M: np.ndarray, threshold: float, min_run: int, max_run: Optional[int]) -> list[tuple[int, int]]:
    """Greedy: grow a run while the max of its dependency sub-matrix stays <= threshold."""
    out, start, n = [], 0, M.shape[0]
    while start < n:
        end = start + 1
        while end < n and (max_run is None or end - start < max_run) and M[start:end + 1, start:end + 1].max() <= threshold:
            end += 1
        if end - start >= min_run:
            out.append((start, end))
        start = end
    return out


@register_pass("ffn-fusion", exact=False)
def ffn_fusion(g: Graph, ctx: PassContext) -> dict:
    """Fuse runs of weakly dependent consecutive FFN blocks into one wide FFN (approximate; reports its error)."""
    threshold = float(ctx.get("ffn_threshold", DEFAULT_THRESHOLD))
    min_run, max_run = int(ctx.get("ffn_min_run", 2)), ctx.get("ffn_max_run")
    stack = discover(g)
    stats: dict = {"runs": 0, "blocks_fused": 0, "threshold": threshold}
    if not stack.blocks:
        stats["reason"] = "no residual blocks found"
        return stats
    samples, where = calibration_inputs(g, ctx.options)
    stats["calibration"] = where
    ref = outputs_of(g, samples)
    drop = ctx.get("drop_attention")
    if not any(b.kind == "ffn" and b.post_norm is None for b in stack.blocks):
        stats["reason"] = "no pre-norm FFN blocks (post-norm FFNs do not add into one residual stream)"
        return stats
    if drop is None and not ffn_runs(stack) and int(ctx.get("auto_drop_attention", 1)) > 0:
        drop = int(ctx.get("auto_drop_attention", 1))
        stats["auto_drop_attention"] = drop
    if drop is not None:
        chosen, scores = pick_attention(g, stack, drop, samples)
        drop_attention_layers(g, stack, chosen)
        stats["attention_dropped"] = chosen
        stats["attention_scores"] = {k: round(v, 5) for k, v in scores.items()}
        stack = discover(g)
    runs = []
    for run in ffn_runs(stack):
        parts = [analyze(b) for b in run]
        bad = [(b, p) for b, p in zip(run, parts) if isinstance(p, str)]
        if bad:
            stats.setdefault("skipped", []).append(f"layer {bad[0][0].layer}: {bad[0][1]}")
            continue   # keep it simple: a run with one unfit block is left alone
        sigs = [_core(p) for p in parts]
        M = dependency_matrix(g, run, samples)
        for a, b in split_run(M, threshold, min_run, None if max_run is None else int(max_run)):
            if any(sigs[k] != sigs[a] for k in range(a, b)):
                stats.setdefault("skipped", []).append(f"layers {run[a].layer}-{run[b - 1].layer}: blocks differ in structure")
                continue
            runs.append((parts[a:b], float(M[a:b, a:b].max())))
        stats.setdefault("dependency", []).append({"layers": [b.layer for b in run], "M": np.round(M, 4).tolist()})
    reports = []
    cur = ref if drop is None else outputs_of(g, samples)
    for parts, score in runs:
        try:
            info = fuse_run(g, parts)
        except ValueError as e:
            stats.setdefault("skipped", []).append(f"layers {parts[0].block.layer}-{parts[-1].block.layer}: {e}")
            continue
        new = outputs_of(g, samples)
        err = output_error(cur, new)    # this run's own error: the graph just before it vs just after
        cur = new
        reports.append({**info, "score": round(score, 5), **{k: float(f"{v:.4g}") for k, v in err.items()}})
    remove_dead(g)
    g.remove_unused_constants()
    stats["runs"] = len(reports)
    stats["blocks_fused"] = sum(len(r["layers"]) for r in reports)
    stats["fused"] = reports
    stats.update(output_error(ref, cur))    # everything this pass did (attention removal included) vs its input
    for r in reports:
        ctx.emit(f"ffn-fusion: layers {r['layers']} -> one FFN (hidden {sum(r['hidden'])}), GEMMs {r['gemms'][0]}->{r['gemms'][1]}, "
                 f"depth {r['gemm_depth'][0]}->{r['gemm_depth'][1]}, M max {r['score']}, err {r['max_abs_err']:.3g} "
                 f"(rel {r['rel_err']:.3g})")
    return stats
