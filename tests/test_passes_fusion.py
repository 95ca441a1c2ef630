"""recognize-* rewrites and each fusion kind: it fires on its pattern, refuses illegal or costly groups,
and the optimized graph agrees with the reference evaluator."""
import importlib.util
import math
import os

import numpy as np
import pytest

from _passes_check import check_passes, ops
from nnfuse.ir import Builder, verify
from nnfuse.passes import optimize
from nnfuse.passes.legality import View

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("fusion_stats", os.path.join(ROOT, "examples", "fusion_stats.py"))
ex = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ex)


def c32(b, v, name="c"):
    return b.const(np.asarray(v, np.float32), name)


def regions(g):
    return sorted(n.attrs["kind"] for n in g.nodes if n.body is not None)


# ---- recognition
@pytest.mark.parametrize("with_max", [True, False])
def test_recognize_softmax(with_max):
    b = Builder()
    x = b.input("x", [3, 5, 7])
    t = b.sub(x, b.reduce_max(x, axes=[1], keepdims=True)) if with_max else x
    e = b.exp(t)
    g = b.output(b.div(e, b.reduce_sum(e, axes=[1], keepdims=True)))
    opt, _ = check_passes(g, passes=["recognize-softmax"])
    assert ops(opt) == ["softmax"] and opt.nodes[0].attrs["axis"] == 1


@pytest.mark.parametrize("form", ["pow-div", "mul-rsqrt", "recip-sqrt"])
def test_recognize_layer_norm_with_affine(form):
    rng = np.random.default_rng(0)
    b = Builder()
    x = b.input("x", [2, 4, 16])
    mean = b.reduce_mean(x, axes=[-1], keepdims=True)
    d = b.sub(x, mean)
    sq = b.pow(d, c32(b, 2.0)) if form == "pow-div" else b.mul(d, d)
    ve = b.add(b.reduce_mean(sq, axes=[2], keepdims=True), c32(b, 1e-5, "eps"))
    y = {"pow-div": lambda: b.div(d, b.sqrt(ve)), "mul-rsqrt": lambda: b.mul(d, b.rsqrt(ve)),
         "recip-sqrt": lambda: b.mul(b.reciprocal(b.sqrt(ve)), d)}[form]()
    y = b.add(c32(b, rng.standard_normal(16), "bias"), b.mul(y, c32(b, rng.standard_normal(16), "w")))
    g = b.output(y)
    opt, rep = check_passes(g, passes=["recognize-norms"])
    assert ops(opt) == ["layer_norm"] and len(opt.nodes[0].inputs) == 3
    assert opt.nodes[0].attrs["eps"] == pytest.approx(1e-5)


def test_layer_norm_over_non_trailing_axes_is_not_recognized():
    b = Builder()
    x = b.input("x", [4, 6, 5])
    d = b.sub(x, b.reduce_mean(x, axes=[1], keepdims=True))
    g = b.output(b.div(d, b.sqrt(b.add(b.reduce_mean(b.mul(d, d), axes=[1], keepdims=True), c32(b, 1e-5)))))
    opt, _ = check_passes(g, passes=["recognize-norms"])
    assert "layer_norm" not in ops(opt) and "rms_norm" not in ops(opt)


def test_recognize_rms_norm_with_weight():
    b = Builder()
    x = b.input("x", [2, 3, 8])
    ms = b.reduce_mean(b.pow(x, c32(b, 2.0)), axes=[-1], keepdims=True)
    y = b.mul(c32(b, np.linspace(0.5, 1.5, 8), "w"), b.mul(x, b.rsqrt(b.add(ms, c32(b, 1e-6, "eps")))))
    g = b.output(y)
    opt, _ = check_passes(g, passes=["recognize-norms"])
    assert ops(opt) == ["rms_norm"] and len(opt.nodes[0].inputs) == 2


@pytest.mark.parametrize("approx", ["none", "tanh"])
def test_recognize_gelu(approx):
    b = Builder()
    x = b.input("x", [4, 9])
    if approx == "tanh":
        y = ex.gelu_tanh_prims(b, x)
    else:
        y = b.mul(b.mul(x, c32(b, 0.5)), b.add(b.erf(b.div(x, c32(b, math.sqrt(2)))), c32(b, 1.0)))
    g = b.output(y)
    opt, _ = check_passes(g, passes=["recognize-gelu"])
    assert ops(opt) == ["gelu"] and opt.nodes[0].attrs["approximate"] == approx


def _attention_graph(mask: str, scale: str, kt_given: bool):
    rng = np.random.default_rng(3)
    b = Builder()
    q, k, v = (b.input(n, [2, 3, 5, 4]) for n in "qkv")
    kt = b.input("kt", [2, 3, 4, 5]) if kt_given else b.transpose(k, perm=[0, 1, 3, 2])
    s = b.matmul(q, kt)
    if scale == "mul":
        s = b.mul(s, c32(b, 0.5, "scale"))
    elif scale == "div":
        s = b.div(s, c32(b, 2.0, "scale"))
    if mask == "add":
        s = b.add(s, c32(b, rng.standard_normal((1, 1, 5, 5)), "mask"))
    elif mask == "where":
        cond = b.const(np.tril(np.ones((5, 5), bool)), "causal")
        s = b.where(cond, s, c32(b, np.finfo(np.float32).min, "fill"))
    g = b.output(b.matmul(b.softmax(s, axis=-1), v))
    if kt_given:
        g.inputs.remove(k)
    return g


@pytest.mark.parametrize("mask,scale,kt_given", [("add", "mul", False), ("where", "div", False), ("none", "none", True),
                                                 ("add", "div", True)])
def test_recognize_attention(mask, scale, kt_given):
    g = _attention_graph(mask, scale, kt_given)
    opt, rep = check_passes(g, passes=["recognize-attention", "fold-constants", "dce"])
    assert rep["recognize-attention"].stats["attention"] == 1
    assert "scaled_dot_product_attention" in ops(opt) and "softmax" not in ops(opt)


def test_recognize_torch_sdpa_decomposition():
    """q*sqrt(s) @ (k*sqrt(s))ᵀ through a batch-flattened transpose, + mask, softmax, NaN guard, @ v."""
    rng = np.random.default_rng(6)
    b = Builder()
    q, k, v = (b.input(n, [1, 2, 6, 4]) for n in "qkv")
    r = c32(b, 4 ** -0.25, "sqrt_scale")
    kt = b.reshape(b.transpose(b.reshape(k, shape=[-1, 6, 4]), perm=[0, 2, 1]), shape=[1, 2, 4, 6])
    s = b.add(b.matmul(b.mul(q, r), b.mul(kt, r)), c32(b, np.triu(np.full((6, 6), -np.inf), 1)[None, None], "mask"))
    p = b.softmax(s, axis=-1)
    p = b.where(b.ne(p, p), c32(b, 0.0, "zero"), p)
    g = b.output(b.matmul(p, v))
    opt, rep = check_passes(g, level=1, passes=["canonicalize", "recognize-attention", "canonicalize", "dce"])
    assert ops(opt) == ["scaled_dot_product_attention"]
    assert opt.nodes[0].attrs["scale"] == pytest.approx(0.5)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_guard_with_fully_masked_rows_is_kept():
    b = Builder()
    q, k, v = (b.input(n, [3, 4]) for n in "qkv")
    mask = np.zeros((3, 3), np.float32)
    mask[1] = -np.inf                                  # row 1 attends nowhere: the guard makes it 0, sdpa would give NaN
    p = b.softmax(b.add(b.matmul(q, b.transpose(k, perm=[1, 0])), c32(b, mask, "mask")), axis=-1)
    g = b.output(b.matmul(b.where(b.ne(p, p), c32(b, 0.0, "zero"), p), v))
    opt, _ = check_passes(g, passes=["recognize-attention"])
    assert "scaled_dot_product_attention" not in ops(opt)


def test_canonicalize_unflattens_exported_linears():
    rng = np.random.default_rng(7)
    b = Builder()
    x = b.input("x", [2, 5, 8])
    y = b.matmul(b.reshape(x, shape=[-1, 8]), c32(b, rng.standard_normal((8, 6)), "w"))
    y = b.reshape(b.add(y, c32(b, rng.standard_normal(6), "b")), shape=[2, 5, 6])
    g = b.output(b.relu(y))
    opt, _ = check_passes(g, passes=["canonicalize", "dce"])
    assert ops(opt) == ["matmul", "add", "relu"] and opt.nodes[0].inputs[0] is opt.inputs[0]
    opt, _ = check_passes(g, level=2)
    assert regions(opt) == ["gemm"] and len(opt.nodes) == 1


def test_attention_whose_probabilities_are_also_returned_is_left_alone():
    b = Builder()
    q, k, v = (b.input(n, [2, 5, 4]) for n in "qkv")
    p = b.softmax(b.matmul(q, b.transpose(k, perm=[0, 2, 1])), axis=-1)
    g = b.output(b.matmul(p, v), p)
    opt, _ = check_passes(g, passes=["recognize-attention"])
    assert "scaled_dot_product_attention" not in ops(opt)


# ---- fusion kinds
def test_pointwise_chain_with_broadcasting_operands():
    b = Builder()
    x = b.input("x", [4, 8])
    y = x
    for i in range(6):
        y = b.tanh(b.add(b.mul(y, c32(b, np.linspace(0.5, 1, 8), f"s{i}")), c32(b, 0.1)))
    g = b.output(b.cast(b.where(b.gt(y, c32(b, 0.0)), y, b.neg(y)), to="f64"))
    opt, rep = check_passes(g, level=2)
    assert regions(opt) == ["pointwise"] and len(opt.nodes) == 1
    body = opt.nodes[0].body
    assert len(body.nodes) == len(g.nodes) and all(n.body is None for n in body.nodes)
    assert rep["fuse-pointwise"].stats["regions"] == 1


def test_reduction_with_producers_and_consumers():
    b = Builder()
    x = b.input("x", [6, 10])
    s = b.reduce_sum(b.exp(b.mul(x, c32(b, 0.5))), axes=[1], keepdims=True)
    g = b.output(b.log(b.add(s, c32(b, 1.0))))
    opt, rep = check_passes(g, level=2)
    assert regions(opt) == ["reduction"] and len(opt.nodes) == 1
    assert [n.op for n in opt.nodes[0].body.nodes] == ["mul", "exp", "reduce_sum", "add", "log"]


@pytest.mark.parametrize("kind", ["softmax", "layer_norm", "rms_norm"])
def test_normalization_regions(kind):
    b = Builder()
    x = b.input("x", [3, 16])
    h = b.add(x, c32(b, 1.0))
    y = getattr(b, kind)(h) if kind != "softmax" else b.softmax(h, axis=-1)
    g = b.output(b.relu(y))
    opt, _ = check_passes(g, level=2)
    assert regions(opt) == [kind]
    assert [n.op for n in opt.nodes[0].body.nodes] == ["add", kind, "relu"]


def test_gemm_epilogue_bias_activation_residual_scale():
    rng = np.random.default_rng(4)
    b = Builder()
    x = b.input("x", [5, 8])
    y = b.add(b.matmul(x, c32(b, rng.standard_normal((8, 8)), "w")), c32(b, rng.standard_normal(8), "bias"))
    y = b.mul(b.add(b.gelu(y), x), c32(b, 0.5))
    g = b.output(y)
    opt, _ = check_passes(g, level=2)
    assert regions(opt) == ["gemm"] and len(opt.nodes) == 1
    assert [n.op for n in opt.nodes[0].body.nodes] == ["matmul", "add", "gelu", "add", "mul"]


def test_conv_epilogue_and_resnet_block():
    g = ex.resnet_block()
    opt, rep = check_passes(g, level=3, rtol=1e-4, atol=1e-5)
    assert regions(opt) == ["conv", "conv"] and len(opt.nodes) == 2
    assert [n.op for n in opt.nodes[1].body.nodes] == ["conv", "add", "relu"]


def test_transformer_block_regions():
    g = ex.transformer_block()
    opt, rep = check_passes(g, level=3, rtol=1e-4, atol=1e-5)
    assert regions(opt).count("attention") == 1 and regions(opt).count("layer_norm") == 2 and regions(opt).count("gemm") == 6
    assert len(opt.nodes) <= len(g.nodes) * 0.35
    for n in opt.nodes:
        if n.body is not None:
            verify(n.body)


# ---- legality and cost
def test_cycle_is_refused():
    """relu(x) feeds both a matmul and an add that also reads the matmul: {relu, add} would be a cycle."""
    rng = np.random.default_rng(5)
    b = Builder()
    x = b.input("x", [4, 4])
    a = b.relu(x)
    m = b.matmul(a, c32(b, rng.standard_normal((4, 4)), "w"))
    g = b.output(b.add(a, m))
    view = View(g)
    relu, mm, add = g.nodes
    assert view.creates_cycle([relu, add]) and not view.creates_cycle([relu, mm, add]) and not view.creates_cycle([mm, add])
    opt, rep = check_passes(g, passes=["fuse-pointwise"])
    assert rep["fuse-pointwise"].stats["refused_cycle"] >= 1 and regions(opt) == []
    opt, rep = check_passes(g, passes=["fuse-gemm"])  # matmul + add is fine (a is computed before the region)
    assert regions(opt) == ["gemm"]


def test_recomputing_a_broadcast_operand_is_refused_by_cost():
    b = Builder()
    x = b.input("x", [64, 64, 8])
    v = b.input("v", [8])
    g = b.output(b.mul(x, b.exp(b.tanh(v))))
    opt, rep = check_passes(g, passes=["fuse-pointwise"])
    assert rep["fuse-pointwise"].stats["refused_cost"] >= 1
    assert ops(opt) == ["fused:pointwise", "mul"]  # tanh+exp fused on the small vector, the big mul apart


def test_large_multi_reader_producer_is_not_duplicated_small_cheap_one_is():
    b = Builder()
    x = b.input("x", [64, 128])
    h = b.add(x, c32(b, 1.0))                      # read by the softmax and returned: big -> not duplicated
    g = b.output(b.softmax(h, axis=-1), h)
    opt, rep = check_passes(g, passes=["fuse-reduction"])
    assert rep["fuse-reduction"].stats["refused_dup"] == 1 and ops(opt)[0] == "add"
    b = Builder()
    x = b.input("x", [4, 8])
    h = b.add(x, c32(b, 1.0))                      # small and cheap: recomputed inside the region
    g = b.output(b.softmax(h, axis=-1), h)
    opt, rep = check_passes(g, passes=["fuse-reduction"])
    assert rep["fuse-reduction"].stats["duplicated"] == 1 and [n.op for n in opt.nodes[-1].body.nodes] == ["add", "softmax"]


def test_o3_regions_absorb_multi_reader_producers():
    """x + r read by the layer norm and returned (a skip connection): O2 keeps the add apart, O3 merges it
    into the layer_norm region as a second result."""
    b = Builder()
    x, r = b.input("x", [64, 128]), b.input("r", [64, 128])
    h = b.add(x, r)
    g = b.output(b.layer_norm(h), h)
    opt2, rep2 = check_passes(g, level=2)
    assert ops(opt2) == ["add", "fused:layer_norm"] and rep2["fuse-reduction"].stats["refused_dup"] == 1
    opt3, rep3 = check_passes(g, level=3)
    assert ops(opt3) == ["fused:layer_norm"] and len(opt3.nodes[0].outputs) == 2 and rep3["fuse-producers"].stats["merged"] == 1
    assert [n.op for n in opt3.nodes[0].body.nodes] == ["add", "layer_norm"]


def test_o3_merge_refuses_a_cycle():
    """relu(x) feeds a transpose whose result the softmax region also reads: merging would be a cycle."""
    b = Builder()
    x = b.input("x", [64, 64])
    a = b.relu(x)
    g = b.output(b.softmax(b.add(a, b.transpose(a, perm=[1, 0])), axis=-1), a)
    opt, rep = check_passes(g, level=3)
    assert rep["fuse-producers"].stats["refused_cycle"] >= 1 and rep["fuse-producers"].stats["merged"] == 0


def test_operand_footprint_limit():
    b = Builder()
    y = b.input("x0", [4])
    for i in range(1, 8):
        y = b.add(y, b.input(f"x{i}", [4]))
    g = b.output(y)
    opt, rep = check_passes(g, passes=["fuse-pointwise"], max_region_operands=4)
    assert rep["fuse-pointwise"].stats["refused_cost"] >= 1 and all(len(n.inputs) <= 4 for n in opt.nodes)


def test_print_after_all_shows_region_bodies():
    g = ex.resnet_block()
    dumps = []
    optimize(g, opt_level=3, print_after_all=True, emit=dumps.append)
    last = dumps[-1]
    assert "IR after fuse-producers" in last and 'fused(' in last and "{kind = \"conv\"}" in last
    assert last.count("graph @") == 3  # the graph and two nested region bodies


def test_symbolic_dims_through_o3():
    rng = np.random.default_rng(9)
    b = Builder()
    x = b.input("x", ["B", 4, 16])
    d = b.sub(x, b.reduce_mean(x, axes=[-1], keepdims=True))
    h = b.div(d, b.sqrt(b.add(b.reduce_mean(b.mul(d, d), axes=[-1], keepdims=True), c32(b, 1e-5))))
    y = b.matmul(b.reshape(h, shape=[-1, 16]), c32(b, rng.standard_normal((16, 16)), "w"))
    y = b.reshape(b.add(y, c32(b, rng.standard_normal(16), "bias")), shape=[-1, 4, 16])
    g = b.output(b.relu(y))
    opt, _ = check_passes(g, level=3)
    assert ops(opt) == ["fused:layer_norm", "fused:gemm"] and opt.outputs[0].type.shape == ("B", 4, 16)


def test_cli_dump_print_after_all_shows_nested_regions(tmp_path, capsys):
    from nnfuse.cli import main
    from nnfuse.ir import save
    path = str(tmp_path / "block.nnir")
    save(ex.resnet_block(), path)
    assert main(["dump", path, "--print-after-all", "-O", "3"]) == 0
    text = capsys.readouterr().out
    assert text.count("// ----- IR after") == len(__import__("nnfuse.passes", fromlist=["pipeline"]).pipeline(3))
    assert "IR after fold-batchnorm" in text and "batch_norm" not in text.split("IR after fold-batchnorm")[1]
    final = text.split("IR after fuse-producers")[1]
    assert final.count('fused(') >= 2 and final.count("graph @conv(") >= 2  # regions print as nested bodies


def test_legality_view_is_the_networkx_view():
    from nnfuse.passes.legality import dag
    g = ex.transformer_block()
    full = g.to_networkx()
    want = {(u, v) for u, v in full.edges if isinstance(u, int) and isinstance(v, int)}
    assert set(dag(g).edges) == want and set(dag(g).nodes) == {n for n in full.nodes if isinstance(n, int)}
