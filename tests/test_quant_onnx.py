"""Quantized graphs exported to ONNX run in onnxruntime and match nnfuse; the `nnfuse quantize` CLI."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from nnfuse.cli import main
from nnfuse.ir import evaluate
from nnfuse.passes import optimize


def _mlp(path):
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((64, 128)).astype(np.float32) * 0.1, "fc1.weight")
    b1 = numpy_helper.from_array(rng.standard_normal(128).astype(np.float32) * 0.1, "fc1.bias")
    w2 = numpy_helper.from_array(rng.standard_normal((128, 32)).astype(np.float32) * 0.1, "fc2.weight")
    nodes = [helper.make_node("MatMul", ["x", "fc1.weight"], ["h"], name="fc1/MatMul"),
             helper.make_node("Add", ["h", "fc1.bias"], ["hb"], name="fc1/Add"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "fc2.weight"], ["y"], name="fc2/MatMul")]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])], [w1, b1, w2])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, path)
    return m


def _ort(path, x):
    import onnxruntime as ort
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("scheme", ["w8a8", "w4g32", "w4a4"])
def test_cli_quantize_onnx_roundtrip(tmp_path, capsys, scheme):
    src, dst = str(tmp_path / "mlp.onnx"), str(tmp_path / "q.onnx")
    _mlp(src)
    assert main(["quantize", src, "-o", dst, "--scheme", scheme, "--exclude", "fc2" if scheme == "w4a4" else "$^"]) == 0
    text = capsys.readouterr().out
    assert "model size" in text and "rel err" in text and "fc1" in text
    onnx.checker.check_model(onnx.load(dst), full_check=True)
    x = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    want = _ort(src, x)
    got = _ort(dst, x)
    from nnfuse.api import to_graph
    q, _ = optimize(to_graph(src), 1, quantize=scheme, exclude="fc2" if scheme == "w4a4" else "")
    ours = evaluate(q, [x])[0]
    np.testing.assert_allclose(got, ours, rtol=1e-5, atol=1e-5)            # onnxruntime == nnfuse on the quantized model
    err = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert 0 < err < {"w8a8": 0.02, "w4g32": 0.2, "w4a4": 0.3}[scheme]


def test_cli_quantize_errors(tmp_path, capsys):
    src = str(tmp_path / "mlp.onnx")
    _mlp(src)
    assert main(["quantize", src, "-o", str(tmp_path / "q.onnx"), "--scheme", "int4_g48"]) == 1
    assert "unknown quantization scheme" in capsys.readouterr().err
    assert main(["quantize", src, "-o", str(tmp_path / "q.onnx"), "--scheme", "w4g128"]) == 1
    assert "group size 128 does not divide the reduction dim K=64" in capsys.readouterr().err


def test_optimize_passes_by_name(tmp_path, capsys):
    src, dst = str(tmp_path / "mlp.onnx"), str(tmp_path / "o.onnx")
    _mlp(src)
    assert main(["optimize", src, "-o", dst, "--passes", "canonicalize,quantize-weights,dce", "--quant-scheme", "w4g32"]) == 0
    ops = {n.op_type for n in onnx.load(dst).graph.node}
    assert "MatMul" in ops and any(i.data_type == TensorProto.INT4 for i in onnx.load(dst).graph.initializer)
