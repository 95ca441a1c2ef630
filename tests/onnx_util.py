"""Helpers for the ONNX tests: build small models, run them in onnxruntime, import them and compare."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

NP2ONNX = {np.uint8: TensorProto.UINT8, np.int8: TensorProto.INT8, np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE, np.int64: TensorProto.INT64,
           np.int32: TensorProto.INT32, np.bool_: TensorProto.BOOL, np.float16: TensorProto.FLOAT16}


def vi(name, shape, dt=np.float32):
    return helper.make_tensor_value_info(name, NP2ONNX[dt], shape)


def init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def model(nodes, inputs, outputs, inits=(), opset=17, domains=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in domains])


def ort_run(m, feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(m.SerializeToString() if isinstance(m, onnx.ModelProto) else m, so, providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def assert_close(got, want, rtol=1e-4, atol=1e-5):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape, (g.shape, w.shape)
        if w.dtype.kind == "f":
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
        else:
            np.testing.assert_array_equal(g, w)


def check_import_export(m, feeds, rtol=1e-4, atol=1e-5):
    """Import `m`, evaluate it (reference) and export it back (onnxruntime); both must match onnxruntime on `m`."""
    from nnfuse.backends.onnx import export
    from nnfuse.frontends.onnx import load
    from nnfuse.ir import evaluate
    want = ort_run(m, feeds)
    g = load(m)
    args = [feeds[v.name] for v in g.inputs]
    assert_close(evaluate(g, args), want, rtol, atol)
    m2 = export(g)  # checked with full_check inside
    assert_close(ort_run(m2, {v.name: feeds[v.name] for v in g.inputs}), want, rtol, atol)
    return g
