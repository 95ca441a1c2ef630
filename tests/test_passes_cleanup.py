"""Cleanup passes, each differentially tested against the reference evaluator on hand-built graphs."""
import numpy as np
import pytest

from _passes_check import check_passes, ops
from nnfuse.ir import Builder, NnfuseError, TensorType
from nnfuse.passes import optimize, pipeline


def f32(*a):
    return np.asarray(a, np.float32)


def test_o1_order():
    assert pipeline(1)[:6] == ["infer-shapes", "canonicalize", "simplify-algebra", "fold-constants", "cse", "dce"]
    assert pipeline(2)[:6] == pipeline(1)[:6] and "fuse-pointwise" in pipeline(2)


def test_fold_constants_folds_and_keeps_big_duplicates_out():
    rng = np.random.default_rng(0)
    b = Builder()
    x = b.input("x", [4, 8])
    w = b.const(rng.standard_normal((8, 4)).astype(np.float32), "w")
    wt = b.transpose(b.transpose(w, perm=[1, 0]), perm=[1, 0])  # const-only chain
    s = b.mul(b.const(f32(2.0), "a"), b.const(f32(3.0), "b"))
    g = b.output(b.mul(b.matmul(x, wt), s))
    opt, rep = check_passes(g, passes=["fold-constants"])
    assert ops(opt) == ["matmul", "mul"] and rep["fold-constants"].stats["folded"] == 3
    # size cap: a big result that would duplicate its (still used) input is not folded
    b = Builder()
    x = b.input("x", [64, 64])
    w = b.const(rng.standard_normal((64, 64)).astype(np.float32), "w")
    g = b.output(b.add(b.matmul(x, b.neg(w)), b.matmul(x, w)))
    opt, rep = check_passes(g, passes=["fold-constants"], fold_max_elements=1000)
    assert "neg" in ops(opt) and rep["fold-constants"].stats["skipped_size"] == 1
    opt, rep = check_passes(g, passes=["fold-constants"])  # default cap (1M elements) folds it
    assert "neg" not in ops(opt)
    # a big constant made from attributes alone stays an op (materializing it would only grow the model)
    b = Builder()
    x = b.input("x", [64, 64])
    g = b.output(b.add(x, b.constant_of_shape(shape=[64, 64], value=2.0)), b.mul(x, b.constant_of_shape(shape=[64], value=3.0)))
    opt, rep = check_passes(g, passes=["fold-constants"], fold_max_elements=1000)
    assert ops(opt) == ["constant_of_shape", "add", "mul"] and rep["fold-constants"].stats["skipped_size"] == 1
    # ... unless it is only read as a weight (ONNX light models fill every weight so): the backend packs constants
    b = Builder()
    x = b.input("x", [4, 64])
    g = b.output(b.matmul(x, b.constant_of_shape(shape=[64, 64], value=0.5)))
    opt, rep = check_passes(g, passes=["fold-constants"], fold_max_elements=1000)
    assert ops(opt) == ["matmul"] and rep["fold-constants"].stats["folded"] == 1


def test_dce_and_cse():
    b = Builder()
    x = b.input("x", [3, 4])
    a1, a2 = b.exp(x), b.exp(x)
    c1, c2 = b.const(f32(1.5), "c1"), b.const(f32(1.5), "c2")
    _dead = b.tanh(b.relu(x))
    g = b.output(b.add(b.mul(a1, c1), b.mul(a2, c2)))
    opt, rep = check_passes(g, passes=["cse", "dce"])
    assert ops(opt) == ["exp", "mul", "add"]
    assert rep["cse"].stats == {"merged": 2, "constants_merged": 1} and rep["dce"].stats["removed"] == 2


def test_simplify_algebra():
    b = Builder()
    x = b.input("x", [3, 4])
    one, zero = b.const(f32(1.0), "one"), b.const(np.zeros((4,), np.float32), "zero")
    y = b.sub(b.add(b.mul(x, one), zero), zero)
    y = b.neg(b.neg(b.div(y, one)))
    y = b.cast(b.pow(y, one), to="f32")
    y = b.reshape(b.reshape(y, shape=[12]), shape=[2, 6])
    big = b.mul(b.input("s", [4]), b.const(np.ones((3, 4), np.float32), "ones"))  # x*1 that broadcasts: kept
    g = b.output(y, big)
    opt, rep = check_passes(g, passes=["simplify-algebra"])
    assert ops(opt) == ["reshape", "mul"]
    assert rep["simplify-algebra"].stats["rewrites"] == 8


def test_canonicalize_gemm_reshape_transpose_identity():
    rng = np.random.default_rng(1)
    b = Builder()
    x = b.input("x", [5, 6])
    w = b.const(rng.standard_normal((7, 6)).astype(np.float32), "w")
    c = b.const(rng.standard_normal((7,)).astype(np.float32), "c")
    y = b.gemm(x, w, c, trans_b=True, alpha=0.5, beta=2.0)
    y = b.identity(b.flatten(b.unsqueeze(y, axes=[0]), axis=1))       # [1,5,7] -> [1,35]
    y = b.transpose(b.transpose(b.reshape(y, shape=[5, 7]), perm=[1, 0]), perm=[1, 0])
    t = b.transpose(b.transpose(b.input("z", [2, 3, 4]), perm=[1, 2, 0]), perm=[0, 2, 1])
    g = b.output(y, t)
    opt, rep = check_passes(g, passes=["canonicalize"])
    assert ops(opt).count("reshape") == 0 and ops(opt).count("transpose") == 2   # trans_b + the composed pair
    assert "gemm" not in ops(opt) and {"matmul", "mul", "add"} <= set(ops(opt))
    assert rep["canonicalize"].stats["gemm-to-matmul"] == 1
    opt, _ = check_passes(g, level=1)  # fold-constants then folds the weight transpose
    assert ops(opt).count("transpose") == 1


def test_canonicalize_symbolic_reshape_chain():
    b = Builder()
    x = b.input("x", ["B", 4, 6])
    y = b.reshape(b.reshape(x, shape=[-1, 24]), shape=[0, 4, 6])
    g = b.output(b.relu(b.squeeze(b.unsqueeze(y, axes=[1]), axes=[1])))
    opt, _ = check_passes(g, passes=["canonicalize"])
    assert ops(opt) == ["relu"]


def test_infer_shapes_binds_symbols():
    b = Builder()
    x = b.input("x", ["B", "S", 8])
    y = b.reshape(b.relu(x), shape=["B*S", 8])
    g = b.output(y)
    opt, rep = optimize(g, passes=["infer-shapes"], symbols={"B": 2}, verify_each=True)
    assert opt.inputs[0].type == TensorType([2, "S", 8], "f32") and opt.outputs[0].type == TensorType(["2*S", 8], "f32")
    assert rep["infer-shapes"].stats["types_changed"] >= 2


def test_fold_batchnorm_conv_matmul_and_affine():
    rng = np.random.default_rng(2)

    def bn_params(b, c, name):
        return [b.const(a.astype(np.float32), f"{name}{i}") for i, a in enumerate(
            (1 + 0.2 * rng.standard_normal(c), 0.2 * rng.standard_normal(c), 0.2 * rng.standard_normal(c), 0.5 + rng.random(c)))]

    b = Builder()
    x = b.input("x", [2, 3, 6, 6])
    w = b.const(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    cb = b.const(rng.standard_normal(4).astype(np.float32), "cb")
    y1 = b.batch_norm(b.conv(x, w, cb, pads=[1, 1, 1, 1]), *bn_params(b, 4, "p"), eps=1e-3)
    y2 = b.batch_norm(b.conv(x, w, strides=[2, 2]), *bn_params(b, 4, "q"))
    z = b.input("z", [5, 3])
    m = b.const(rng.standard_normal((3, 4)).astype(np.float32), "m")
    y3 = b.batch_norm(b.add(b.matmul(z, m), b.const(rng.standard_normal(4).astype(np.float32), "mb")), *bn_params(b, 4, "r"))
    y4 = b.batch_norm(b.relu(x), *bn_params(b, 3, "s"))  # nothing to fold into: becomes mul + add
    g = b.output(y1, y2, y3, y4)
    opt, rep = check_passes(g, passes=["fold-batchnorm"], rtol=1e-4, atol=1e-5)
    assert "batch_norm" not in ops(opt)
    assert rep["fold-batchnorm"].stats["folded"] == 3 and rep["fold-batchnorm"].stats["to_affine"] == 1
    assert ops(opt).count("conv") == 2 and ops(opt).count("matmul") == 1


def test_pass_that_breaks_the_graph_is_named():
    from nnfuse.passes import PASSES, register_pass
    if "test-break" not in PASSES:
        @register_pass("test-break")
        def _break(g, ctx):
            g.nodes.reverse()
    b = Builder()
    x = b.input("x", [2])
    g = b.output(b.exp(b.relu(x)))
    with pytest.raises(NnfuseError, match="test-break"):
        optimize(g, passes=["test-break"], verify_each=True)


def test_fold_decomposed_batchnorm_into_conv():
    """conv * s[C,1,1] + t[1,C,1,1] (a batch norm written out, as torch-mlir emits it) folds into the conv."""
    rng = np.random.default_rng(3)
    b = Builder()
    x = b.input("x", [2, 3, 5, 5])
    y = b.conv(x, b.const(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"), pads=[1, 1, 1, 1])
    y = b.add(b.mul(y, b.const(rng.standard_normal((4, 1, 1)).astype(np.float32), "s")),
              b.const(rng.standard_normal((1, 4, 1, 1)).astype(np.float32), "t"))
    z = b.mul(b.conv(x, b.const(rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "w2")),
              b.const(rng.standard_normal(5).astype(np.float32), "not_per_channel"))  # varies along W: kept
    g = b.output(b.relu(y), z)
    opt, rep = check_passes(g, passes=["fold-batchnorm"], rtol=1e-4, atol=1e-5)
    assert sorted(ops(opt)) == ["conv", "conv", "mul", "relu"] and rep["fold-batchnorm"].stats["conv_affine_folded"] == 2


def test_shape_ops_of_a_splat_become_a_splat():
    b = Builder()
    x = b.input("x", [6, 4])
    w = b.transpose(b.reshape(b.constant_of_shape(shape=[2, 12], value=0.5), shape=[4, 6]), perm=[1, 0])
    g = b.output(b.add(x, w))
    opt, _ = check_passes(g, passes=["canonicalize"], fold_max_elements=4)
    assert ops(opt) == ["constant_of_shape", "add"] and opt.nodes[0].attrs["shape"] == (6, 4)


def test_fold_constants_leaves_symbolic_results_alone():
    """expand(const, [B,4]) has constant operands but a run-time shape: it must not be folded (it used to crash)."""
    import numpy as np
    import nnfuse
    from nnfuse.ir import Builder
    b = Builder("sym")
    x = b.input("x", ["B", 4])
    c = b.const(np.arange(4, dtype=np.float32).reshape(1, 4), "c")
    g = b.output(b.add(x, b.expand(c, shape=["B", 4])))
    cm = nnfuse.compile(g, opt_level=2)
    for batch in (1, 3):
        xs = np.random.default_rng(batch).standard_normal((batch, 4)).astype(np.float32)
        np.testing.assert_allclose(cm(xs), xs + np.arange(4, dtype=np.float32), rtol=1e-6)
