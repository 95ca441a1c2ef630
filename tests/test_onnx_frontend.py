"""ONNX importer: each op family against onnxruntime (imported graph on the reference evaluator, and the
graph exported back to ONNX), shape-subgraph folding, symbols, constants, sequences, meta."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from nnfuse.frontends.onnx import load
from nnfuse.ir import NnfuseError, evaluate
from onnx_util import assert_close, check_import_export, init, model, ort_run, vi

N = helper.make_node
R = np.random.default_rng(0)


def f32(*shape):
    return R.standard_normal(shape).astype(np.float32)


def unary_case(op, x=None, opset=17, out_dt=np.float32, **attrs):
    x = f32(2, 3, 4) if x is None else x
    return model([N(op, ["x"], ["y"], **attrs)], [vi("x", list(x.shape))], [vi("y", None, out_dt)], opset=opset), {"x": x}


def binary_case(op, a, b, opset=17, out_dt=None, **attrs):
    return (model([N(op, ["a", "b"], ["y"], **attrs)], [vi("a", list(a.shape), a.dtype.type), vi("b", list(b.shape), b.dtype.type)],
                  [vi("y", None, out_dt or a.dtype.type)], opset=opset), {"a": a, "b": b})


def pos(*shape):
    return (R.random(shape) + 0.5).astype(np.float32)


CASES = {
    **{op: unary_case(op) for op in ["Abs", "Neg", "Exp", "Tanh", "Sigmoid", "Relu", "Erf", "Sin", "Cos", "Floor", "Ceil",
                                     "Round", "Sign", "Softplus", "Softsign", "HardSwish", "Identity"]},
    "Sqrt": unary_case("Sqrt", pos(3, 4)), "Log": unary_case("Log", pos(3, 4)), "Reciprocal": unary_case("Reciprocal", pos(3, 4)),
    "LeakyRelu": unary_case("LeakyRelu", alpha=0.2), "Elu": unary_case("Elu", alpha=0.7), "Selu": unary_case("Selu"),
    "HardSigmoid": unary_case("HardSigmoid", alpha=0.3, beta=0.4), "Shrink": unary_case("Shrink", bias=0.2, lambd=0.6),
    "Celu": unary_case("Celu", opset=12, alpha=1.5), "Mish": unary_case("Mish", opset=18), "Gelu": unary_case("Gelu", opset=20),
    "GeluTanh": unary_case("Gelu", opset=20, approximate="tanh"), "ThresholdedRelu": unary_case("ThresholdedRelu", opset=10, alpha=0.3),
    "Softmax13": unary_case("Softmax", axis=1), "LogSoftmax": unary_case("LogSoftmax", axis=-1),
    "Softmax11_axis1": unary_case("Softmax", opset=11, axis=1),   # pre-13: over the flattened dims [1:]
    "Flatten": unary_case("Flatten", axis=2), "Transpose": unary_case("Transpose", perm=[2, 0, 1]),
    "ArgMax": unary_case("ArgMax", axis=1, keepdims=0, out_dt=np.int64),
    "ArgMinLast": unary_case("ArgMin", axis=-1, select_last_index=1, out_dt=np.int64),
    "LRN": unary_case("LRN", f32(1, 5, 3, 3), size=3, alpha=1e-3), "GlobalAveragePool": unary_case("GlobalAveragePool", f32(2, 3, 4, 5)),
    "GlobalMaxPool": unary_case("GlobalMaxPool", f32(2, 3, 4, 5)),
    "ReduceMean13": unary_case("ReduceMean", opset=13, axes=[1], keepdims=0), "ReduceL2": unary_case("ReduceL2", opset=13, axes=[2]),
    "ReduceL1": unary_case("ReduceL1", opset=13, axes=[0, 2]), "ReduceSumSquare": unary_case("ReduceSumSquare", opset=13),
    "ReduceLogSumExp": unary_case("ReduceLogSumExp", opset=13, axes=[-1]), "ReduceLogSum": unary_case("ReduceLogSum", pos(3, 4), opset=13),
    "MaxPoolCeil": unary_case("MaxPool", f32(1, 2, 7, 7), kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    "MaxPoolSame": unary_case("MaxPool", f32(1, 2, 7, 6), kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
    "AvgPoolPad": unary_case("AveragePool", f32(1, 2, 6, 6), kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),
    "AvgPool1d": unary_case("AveragePool", f32(1, 2, 9), kernel_shape=[2], strides=[2]),
    "Add_bcast": binary_case("Add", f32(2, 3, 4), f32(4)), "Sub": binary_case("Sub", f32(3, 1), f32(1, 4)),
    "Mul": binary_case("Mul", f32(2, 3), f32(2, 3)), "Div": binary_case("Div", f32(2, 3), pos(3)),
    "Pow_int_exp": binary_case("Pow", pos(2, 3), np.array(2, np.int64)), "Max": binary_case("Max", f32(2, 3), f32(3)),
    "Min": binary_case("Min", f32(2, 3), f32(2, 1)), "Equal": binary_case("Equal", np.array([1, 2, 3]), np.array([1, 0, 3]), out_dt=np.bool_),
    "Less": binary_case("Less", f32(3), f32(3), out_dt=np.bool_), "GreaterOrEqual": binary_case("GreaterOrEqual", f32(4), f32(4), out_dt=np.bool_),
    "And": binary_case("And", R.random(5) < 0.5, R.random(5) < 0.5), "Mod_int": binary_case("Mod", np.array([7, -7, 5]), np.array([3, 3, -2])),
    "Mod_fmod": binary_case("Mod", f32(6) * 5, pos(6), fmod=1), "MatMul_batched": binary_case("MatMul", f32(2, 3, 4), f32(4, 5)),
    "PRelu": binary_case("PRelu", f32(2, 3, 4, 4), f32(3, 1, 1)),
}


def _conv(auto_pad=None, group=1, opset=17):
    x, w, b = f32(1, 4, 7, 7), f32(6, 4 // group, 3, 3), f32(6)
    kw = dict(auto_pad=auto_pad) if auto_pad else dict(pads=[1, 0, 1, 2])
    m = model([N("Conv", ["x", "w", "b"], ["y"], strides=[2, 1], group=group, **kw)], [vi("x", [1, 4, 7, 7])], [vi("y", None)],
              [init("w", w), init("b", b)], opset=opset)
    return m, {"x": x}


CASES.update({
    "Conv": _conv(), "ConvSameUpperGroups": _conv("SAME_UPPER", group=2), "ConvOpset7": _conv(opset=7),
    "ConvTranspose": (model([N("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], pads=[1, 1, 0, 0], output_padding=[1, 0])],
                            [vi("x", [1, 3, 4, 4])], [vi("y", None)], [init("w", f32(3, 2, 3, 3))]), {"x": f32(1, 3, 4, 4)}),
    "ConvTransposeOutputShape": (model([N("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], output_shape=[9, 8])],
                                       [vi("x", [1, 3, 4, 4])], [vi("y", None)], [init("w", f32(3, 2, 3, 3))]), {"x": f32(1, 3, 4, 4)}),
    "ConvTransposeSameUpper": (model([N("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], auto_pad="SAME_UPPER")],
                                     [vi("x", [1, 3, 4, 5])], [vi("y", None)], [init("w", f32(3, 2, 3, 2))]), {"x": f32(1, 3, 4, 5)}),
    "Gemm": (model([N("Gemm", ["a", "w", "c"], ["y"], alpha=0.5, beta=2.0, transB=1)], [vi("a", [3, 4])], [vi("y", None)],
                   [init("w", f32(5, 4)), init("c", f32(5))]), {"a": f32(3, 4)}),
    "BatchNorm": (model([N("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)], [vi("x", [2, 3, 4])], [vi("y", None)],
                        [init("s", f32(3)), init("b", f32(3)), init("m", f32(3)), init("v", pos(3))]), {"x": f32(2, 3, 4)}),
    "InstanceNorm": (model([N("InstanceNormalization", ["x", "s", "b"], ["y"])], [vi("x", [2, 3, 5])], [vi("y", None)],
                           [init("s", f32(3)), init("b", f32(3))]), {"x": f32(2, 3, 5)}),
    "GroupNorm18": (model([N("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=2)], [vi("x", [2, 4, 3])], [vi("y", None)],
                          [init("s", f32(2)), init("b", f32(2))], opset=18), {"x": f32(2, 4, 3)}),
    "LayerNorm": (model([N("LayerNormalization", ["x", "s", "b"], ["y"], axis=-1, epsilon=1e-5)], [vi("x", [2, 3, 8])], [vi("y", None)],
                        [init("s", f32(8)), init("b", f32(8))]), {"x": f32(2, 3, 8)}),
    "ClipRuntimeMin": (model([N("Clip", ["x", "lo"], ["y"])], [vi("x", [4, 3]), vi("lo", [])], [vi("y", None)]),
                       {"x": f32(4, 3), "lo": np.array(0.1, np.float32)}),
    "ClipOpset7": (model([N("Clip", ["x"], ["y"], min=-0.5, max=0.5)], [vi("x", [4, 3])], [vi("y", None)], opset=7), {"x": f32(4, 3)}),
    "ReduceSum13_axes_input": (model([N("ReduceSum", ["x", "ax"], ["y"], keepdims=1)], [vi("x", [2, 3, 4])], [vi("y", None)],
                                     [init("ax", np.array([0, 2]))], opset=13), {"x": f32(2, 3, 4)}),
    "ReduceMax18": (model([N("ReduceMax", ["x", "ax"], ["y"], keepdims=0)], [vi("x", [2, 3, 4])], [vi("y", None)],
                          [init("ax", np.array([-1]))], opset=18), {"x": f32(2, 3, 4)}),
    "Split18_num_outputs": (model([N("Split", ["x"], ["y1", "y2", "y3"], axis=1, num_outputs=3)], [vi("x", [2, 7])],
                                  [vi("y1", None), vi("y2", None), vi("y3", None)], opset=18), {"x": f32(2, 7)}),
    "Split13_sizes": (model([N("Split", ["x", "s"], ["y1", "y2"], axis=0)], [vi("x", [5, 2])], [vi("y1", None), vi("y2", None)],
                            [init("s", np.array([2, 3]))], opset=13), {"x": f32(5, 2)}),
    "SliceNegStep": (model([N("Slice", ["x", "st", "en", "ax", "sp"], ["y"])], [vi("x", [6, 5])], [vi("y", None)],
                           [init("st", np.array([-1, 0])), init("en", np.array([-7, 9223372036854775807])), init("ax", np.array([0, 1])),
                            init("sp", np.array([-2, 2]))]), {"x": f32(6, 5)}),
    "PadReflect": (model([N("Pad", ["x", "p"], ["y"], mode="reflect")], [vi("x", [1, 2, 4, 4])], [vi("y", None)],
                         [init("p", np.array([0, 0, 1, 2, 0, 0, 2, 1]))]), {"x": f32(1, 2, 4, 4)}),
    "PadConstOpset7": (model([N("Pad", ["x"], ["y"], pads=[1, 0, 0, 2], value=1.5)], [vi("x", [2, 3])], [vi("y", None)], opset=7),
                       {"x": f32(2, 3)}),
    "Tile": (model([N("Tile", ["x", "r"], ["y"])], [vi("x", [2, 3])], [vi("y", None)], [init("r", np.array([2, 1]))]), {"x": f32(2, 3)}),
    "Expand": (model([N("Expand", ["x", "s"], ["y"])], [vi("x", [3, 1])], [vi("y", None)], [init("s", np.array([2, 1, 4]))]), {"x": f32(3, 1)}),
    "Where": (model([N("Where", ["c", "a", "b"], ["y"])], [vi("c", [3, 1], np.bool_), vi("a", [3, 4]), vi("b", [4])], [vi("y", None)]),
              {"c": R.random((3, 1)) < 0.5, "a": f32(3, 4), "b": f32(4)}),
    "GatherNeg": (model([N("Gather", ["x", "i"], ["y"], axis=1)], [vi("x", [3, 5])], [vi("y", None)], [init("i", np.array([[0, -1], [2, 4]]))]),
                  {"x": f32(3, 5)}),
    "GatherElements": (model([N("GatherElements", ["x", "i"], ["y"], axis=1)], [vi("x", [3, 4])], [vi("y", None)],
                             [init("i", np.array([[0, 3], [1, 1], [2, 0]]))]), {"x": f32(3, 4)}),
    "GatherND": (model([N("GatherND", ["x", "i"], ["y"])], [vi("x", [3, 4, 2])], [vi("y", None)], [init("i", np.array([[0, 1], [2, -1]]))]),
                 {"x": f32(3, 4, 2)}),
    "CumSum": (model([N("CumSum", ["x", "a"], ["y"], exclusive=1, reverse=1)], [vi("x", [3, 4])], [vi("y", None)], [init("a", np.array(1))]),
               {"x": f32(3, 4)}),
    "Trilu": (model([N("Trilu", ["x", "k"], ["y"], upper=0)], [vi("x", [4, 5])], [vi("y", None)], [init("k", np.array(1))]), {"x": f32(4, 5)}),
    "Range_ConstantOfShape": (model([N("Range", ["s", "l", "d"], ["r"]), N("Shape", ["r"], ["sh"]),
                                     N("ConstantOfShape", ["sh"], ["c"], value=helper.make_tensor("v", 1, [1], [2.5])),
                                     N("Add", ["x", "c"], ["y"])], [vi("x", [4])], [vi("y", None)],
                                    [init("s", np.array(1.0, np.float32)), init("l", np.array(9.0, np.float32)), init("d", np.array(2.0, np.float32))]),
                              {"x": f32(4)}),
    "CastIsNaN": (model([N("Div", ["x", "x"], ["d"]), N("IsNaN", ["d"], ["n"]), N("Cast", ["n"], ["y"], to=1)], [vi("x", [5])], [vi("y", None)]),
                  {"x": np.array([0, 1, 2, 0, 3], np.float32)}),
    "SumMean": (model([N("Sum", ["a", "b", "a"], ["s"]), N("Mean", ["s", "b"], ["y"])], [vi("a", [2, 3]), vi("b", [3])], [vi("y", None)]),
                {"a": f32(2, 3), "b": f32(3)}),
    "DropoutIdentity": (model([N("Dropout", ["x"], ["y"])], [vi("x", [3])], [vi("y", None)], opset=12), {"x": f32(3)}),
    "SqueezeUnsqueeze13": (model([N("Unsqueeze", ["x", "a"], ["u"]), N("Squeeze", ["u", "b"], ["y"])], [vi("x", [2, 1, 3])], [vi("y", None)],
                                 [init("a", np.array([0, 4])), init("b", np.array([0, 2]))], opset=13), {"x": f32(2, 1, 3)}),
    "Concat": (model([N("Concat", ["a", "b"], ["y"], axis=-1)], [vi("a", [2, 3]), vi("b", [2, 1])], [vi("y", None)]),
               {"a": f32(2, 3), "b": f32(2, 1)}),
})


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_matches_onnxruntime(name):
    m, feeds = CASES[name]
    check_import_export(m, feeds)


def test_shape_subgraph_folds_to_symbolic_reshape():
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape over dim_param dims becomes one reshape with symbols."""
    nodes = [N("Shape", ["x"], ["s"]), N("Gather", ["s", "i0"], ["b"], axis=0), N("Gather", ["s", "i1"], ["q"], axis=0),
             N("Unsqueeze", ["b", "ax"], ["bu"]), N("Unsqueeze", ["q", "ax"], ["qu"]), N("Concat", ["bu", "qu", "c"], ["shp"], axis=0),
             N("Reshape", ["x", "shp"], ["r"]), N("Transpose", ["r"], ["y"], perm=[0, 2, 1, 3])]
    inits = [init("i0", np.array(0)), init("i1", np.array(1)), init("ax", np.array([0])), init("c", np.array([2, 4]))]
    m = model(nodes, [vi("x", ["batch", "seq", 8])], [vi("y", None)], inits)
    g = load(m)
    assert [n.op for n in g.nodes] == ["reshape", "transpose"]
    assert g.nodes[0].attrs["shape"] == ("batch", "seq", 2, 4)
    x = f32(3, 5, 8)
    assert_close(evaluate(g, [x]), ort_run(m, {"x": x}))
    from nnfuse.backends.onnx import export
    x2 = f32(2, 7, 8)  # the exported model keeps the dims symbolic
    assert_close(ort_run(export(g), {"x": x2}), ort_run(m, {"x": x2}))


def test_dim_params_become_symbols_and_input_shapes_fix_them():
    m = model([N("Relu", ["x"], ["y"])], [vi("x", ["N", 3, None])], [vi("y", None)])
    g = load(m)
    assert g.inputs[0].type.shape == ("N", 3, "x_d2")
    g = load(m, input_shapes={"x": [2, 3, 5]})
    assert g.inputs[0].type.shape == (2, 3, 5)
    with pytest.raises(NnfuseError, match="unknown input"):
        load(m, input_shapes={"nope": [1]})


def test_runtime_shape_input_uses_declared_output_shape():
    """Expand whose shape is a graph input: the model's declared output shape decides the IR shape."""
    m = model([N("Expand", ["x", "s"], ["y"])], [vi("x", [1, 3, 1]), vi("s", [3], np.int64)], [vi("y", [3, 3, 3])])
    g = load(m)
    x, s = f32(1, 3, 1), np.array([3, 1, 3])
    assert_close(evaluate(g, [x, s]), ort_run(m, {"x": x, "s": s}))


def test_constants_initializers_external_data_and_meta(tmp_path):
    w = f32(64, 64)
    nodes = [N("Constant", [], ["k"], name="kconst", value=helper.make_tensor("k", 1, [64], np.ones(64, np.float32))),
             N("MatMul", ["x", "w"], ["m"], name="layer0/matmul"), N("Add", ["m", "k"], ["y"], name="layer0/add")]
    m = model(nodes, [vi("x", [2, 64])], [vi("y", None)], [init("w", w)])
    x = f32(2, 64)
    want = ort_run(m, {"x": x})
    p = str(tmp_path / "m.onnx")
    onnx.save(m, p, save_as_external_data=True, all_tensors_to_one_file=True, location="m.data", size_threshold=0)
    assert (tmp_path / "m.data").exists()
    g = load(p)
    assert np.array_equal(g.constants["w"].data, w)
    assert [(n.meta["loc"], n.meta["onnx_op"]) for n in g.nodes] == [("layer0/matmul", "MatMul"), ("layer0/add", "Add")]
    assert_close(evaluate(g, [x]), want)
    assert g.output_names == ["y"]


def test_constant_foldable_nodes_do_not_become_ops():
    nodes = [N("Shape", ["x"], ["s"]), N("Cast", ["s"], ["sf"], to=1), N("ReduceProd", ["sf"], ["n"], keepdims=0),
             N("Div", ["x", "n"], ["y"])]
    m = model(nodes, [vi("x", [2, 5])], [vi("y", None)], opset=13)
    g = load(m)
    assert [n.op for n in g.nodes] == ["div"]
    check_import_export(m, {"x": f32(2, 5)})


def test_sequences_resolve_at_import():
    nodes = [N("SequenceConstruct", ["a", "b"], ["s"]), N("SequenceInsert", ["s", "c", "p"], ["s2"]),
             N("SequenceErase", ["s2", "e"], ["s3"]), N("ConcatFromSequence", ["s3"], ["y"], axis=0, new_axis=1),
             N("SequenceLength", ["s3"], ["n"]), N("SplitToSequence", ["a"], ["t"], axis=1, keepdims=0), N("SequenceAt", ["t", "p"], ["z"])]
    inits = [init("p", np.array(1)), init("e", np.array(-1))]
    m = model(nodes, [vi("a", [2, 3]), vi("b", [2, 3]), vi("c", [2, 3])], [vi("y", None), vi("n", None, np.int64), vi("z", None)], inits)
    feeds = {"a": f32(2, 3), "b": f32(2, 3), "c": f32(2, 3)}
    g = load(m)
    got = evaluate(g, [feeds[v.name] for v in g.inputs])
    assert_close(got, ort_run(m, feeds))


def test_gradient_of_mul_add():
    nodes = [N("Mul", ["a", "b"], ["m"]), N("Add", ["m", "a"], ["y"]),
             N("Gradient", ["a", "b"], ["da", "db"], domain="ai.onnx.preview.training", xs=["a", "b"], y="y")]
    m = model(nodes, [vi("a", [3]), vi("b", [3])], [vi("y", None), vi("da", None), vi("db", None)],
              domains=[("ai.onnx.preview.training", 1)])
    g = load(m)
    a, b = f32(3), f32(3)
    y, da, db = evaluate(g, [a, b])
    np.testing.assert_allclose(da, b + 1, rtol=1e-6)
    np.testing.assert_allclose(db, a, rtol=1e-6)


def test_opset6_legacy_semantics():
    """onnxruntime no longer runs opset 6; numpy is the oracle for its legacy broadcast and Softmax forms."""
    a, b, x = f32(2, 3, 4, 5), f32(3), f32(2, 3, 4)
    nodes = [N("Add", ["a", "b"], ["s"], broadcast=1, axis=1), N("Softmax", ["x"], ["y"]), N("Mul", ["a", "c"], ["m"], broadcast=1)]
    m = model(nodes, [vi("a", [2, 3, 4, 5]), vi("b", [3]), vi("x", [2, 3, 4])], [vi("s", None), vi("y", None), vi("m", None)],
              [init("c", np.float32(2.0))], opset=6)
    s, y, mm = evaluate(load(m), [a, b, x])
    np.testing.assert_allclose(s, a + b.reshape(3, 1, 1), rtol=1e-6)
    flat = x.reshape(2, 12)
    e = np.exp(flat - flat.max(1, keepdims=True))
    np.testing.assert_allclose(y, (e / e.sum(1, keepdims=True)).reshape(2, 3, 4), rtol=1e-5)
    np.testing.assert_allclose(mm, a * 2, rtol=1e-6)


def test_qdq_import_matches_onnxruntime():
    w = R.integers(-127, 127, (8, 5)).astype(np.int8)
    nodes = [N("QuantizeLinear", ["x", "sx", "zx"], ["qx"]), N("DequantizeLinear", ["qx", "sx", "zx"], ["dx"]),
             N("DequantizeLinear", ["w", "sw"], ["dw"], axis=1), N("MatMul", ["dx", "dw"], ["y"]),
             N("MatMulInteger", ["qx", "w8", "zx"], ["acc"])]
    inits = [init("sx", np.float32(0.02)), init("zx", np.uint8(128)), init("w", w), init("sw", np.abs(f32(5)) * 0.01),
             init("w8", R.integers(0, 255, (8, 5)).astype(np.uint8))]
    m = model(nodes, [vi("x", [3, 8])], [vi("y", None), vi("acc", None, np.int32)], inits)
    check_import_export(m, {"x": f32(3, 8)})


@pytest.mark.parametrize("op,dt", [("ReduceMax", np.float32), ("ReduceMin", np.float32), ("ReduceMax", np.int64),
                                   ("ReduceSum", np.float32)])
def test_reduction_over_an_empty_axis_matches_onnxruntime(op, dt):
    """max/min of an empty set is the identity (-inf/+inf, int min/max); the reference evaluator raised instead."""
    m = model([helper.make_node(op, ["x"], ["y"], keepdims=0, axes=[0])], [vi("x", [0, 4], dt)], [vi("y", [4], dt)], opset=11)
    feeds = {"x": np.zeros((0, 4), dt)}
    want = ort_run(m, feeds)
    assert_close(evaluate(load(m), [feeds["x"]]), want)
    import nnfuse
    assert_close([nnfuse.compile(m, backend="cpu")(feeds["x"])], want)
