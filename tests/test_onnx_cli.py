"""The ONNX CLI: bad input (one clear message, exit 1, no traceback), optimize/inspect/verify/run on small models."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

from nnfuse.cli import main
from onnx_util import init, model, ort_run, vi

N = helper.make_node
X = lambda n: vi(n, [2, 3])  # noqa: E731
GOOD = model([N("Relu", ["x"], ["y"])], [X("x")], [X("y")])

BAD = {
    "truncated": (GOOD.SerializeToString()[:-7], "truncated or corrupt"),
    "not_onnx": (b"this is not a protobuf \x00\xff" * 10, "not a valid ONNX file"),
    "empty": (b"", "empty file"),
    "unknown_ops": (model([N("FrobnicateX", ["x"], ["t"], name="f1"), N("Zork", ["t"], ["u"], name="z1"),
                           N("FrobnicateX", ["u"], ["y"], name="f2")], [X("x")], [X("y")]).SerializeToString(),
                    "2 unsupported ONNX op type(s): FrobnicateX (nodes: 'f1', 'f2'); Zork (nodes: 'z1')"),
    "missing_input": (model([N("Add", ["x", "nope"], ["y"], name="add1")], [X("x")], [X("y")]).SerializeToString(),
                      "node 'add1' (Add) reads 'nope'"),
    "cycle": (model([N("Add", ["x", "b"], ["a"], name="n1"), N("Relu", ["a"], ["b"], name="n2")], [X("x")], [X("b")]).SerializeToString(),
              "cycle through 2 node(s): 'n1' (Add), 'n2' (Relu)"),
    "bad_opset": (model([N("Relu", ["x"], ["y"])], [X("x")], [X("y")], opset=99).SerializeToString(), "opset 99 is out of the supported range"),
    "shape_mismatch": (model([N("MatMul", ["x", "w"], ["y"], name="proj")], [X("x")], [X("y")],
                             [init("w", np.ones((5, 4), np.float32))]).SerializeToString(),
                       "node 'proj' (MatMul): op 'matmul' on (f32[2,3], f32[5,4])"),
    "output_dtype": (model([N("Relu", ["x"], ["y"])], [X("x")], [helper.make_tensor_value_info("y", onnx.TensorProto.INT64, [2, 3])]
                           ).SerializeToString(), "graph output 'y' is declared i64 but its producer computes f32"),
    "string_input": (model([N("Identity", ["s"], ["y"])], [helper.make_tensor_value_info("s", onnx.TensorProto.STRING, [2])],
                           [X("y")]).SerializeToString(), "element type string"),
}


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("cmd", ["inspect", "optimize", "verify", "dump", "compile"])
def test_bad_input_gets_one_clear_error(case, cmd, tmp_path, capsys):
    data, msg = BAD[case]
    p = tmp_path / f"{case}.onnx"
    p.write_bytes(data)
    argv = [cmd, str(p)] + (["-o", str(tmp_path / "o.onnx")] if cmd == "optimize" else [])
    assert main(argv) == 1
    cap = capsys.readouterr()
    text = cap.out + cap.err
    assert msg in text and "Traceback" not in text
    assert text.strip().count("\n") == 0, text  # one line


def test_bad_input_exit_code_from_the_real_cli(tmp_path):
    p = tmp_path / "cycle.onnx"
    p.write_bytes(BAD["cycle"][0])
    exe = os.path.join(os.path.dirname(sys.executable), "nnfuse")
    r = subprocess.run([exe, "inspect", str(p)], capture_output=True, text=True)
    assert r.returncode == 1 and "cycle" in r.stderr and "Traceback" not in r.stderr + r.stdout
    r = subprocess.run([exe, "--debug", "inspect", str(p)], capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" in r.stderr


def _mlp(tmp_path):
    rng = np.random.default_rng(0)
    nodes = [N("MatMul", ["x", "w1"], ["h"], name="fc1/matmul"), N("Add", ["h", "b1"], ["hb"], name="fc1/add"),
             N("Relu", ["hb"], ["r"], name="act"), N("MatMul", ["r", "w2"], ["o"], name="fc2/matmul"),
             N("Add", ["o", "b2"], ["logits"], name="fc2/add"), N("Softmax", ["logits"], ["probs"], axis=-1)]
    inits = [init("w1", rng.standard_normal((8, 16)).astype(np.float32)), init("b1", rng.standard_normal(16).astype(np.float32)),
             init("w2", rng.standard_normal((16, 4)).astype(np.float32)), init("b2", rng.standard_normal(4).astype(np.float32))]
    m = model(nodes, [vi("x", ["batch", 8])], [vi("probs", ["batch", 4])], inits)
    p = tmp_path / "mlp.onnx"
    onnx.save(m, str(p))
    return m, str(p)


def test_optimize_writes_a_verified_smaller_model(tmp_path, capsys):
    m, p = _mlp(tmp_path)
    o = str(tmp_path / "opt.onnx")
    assert main(["optimize", p, "-o", o, "-O2", "--verify", "--input-shape", "x:3,8"]) == 0
    text = capsys.readouterr().out
    assert "nodes" in text and "verify" in text and "probs" in text and "yes" in text
    out = onnx.load(o)
    onnx.checker.check_model(out, full_check=True)
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)  # --input-shape fixed the batch
    np.testing.assert_allclose(ort_run(out, {"x": x})[0], ort_run(m, {"x": x})[0], rtol=1e-5, atol=1e-6)
    assert [i.name for i in out.graph.input] == ["x"] and [o.name for o in out.graph.output] == ["probs"]


def test_optimize_passes_disable_and_real_inputs(tmp_path, capsys):
    m, p = _mlp(tmp_path)
    data = tmp_path / "in.npz"
    np.savez(data, x=np.ones((2, 8), np.float32))
    o = str(tmp_path / "o0.onnx")
    assert main(["optimize", p, "-o", o, "-O0", "--verify", "--inputs", str(data)]) == 0
    assert len(onnx.load(o).graph.node) == len(m.graph.node)
    assert main(["optimize", p, "-o", o, "--passes", "dce", "--disable", "dce"]) == 0
    assert main(["optimize", p, "-o", o, "--disable", "no-such-pass"]) == 1
    assert "unknown pass" in capsys.readouterr().err


def test_inspect_reports_params_flops_memory(tmp_path, capsys):
    _, p = _mlp(tmp_path)
    assert main(["inspect", p, "--input-shape", "x:4,8"]) == 0
    text = capsys.readouterr().out
    assert "x: f32[4,8]" in text and "probs: f32[4,4]" in text
    assert "parameters: 212 " in text                          # 8*16 + 16 + 16*4 + 4
    assert "FLOPs (estimate): 1.76 K" in text                  # 2*4*8*16 + 4*16 + 4*16 + 2*4*16*4 + 4*4 + 5*16
    assert "peak activation memory" in text


def test_verify_and_run(tmp_path, capsys):
    m, p = _mlp(tmp_path)
    assert main(["verify", p, "--input-shape", "x:3,8"]) == 0
    assert "reference" in capsys.readouterr().out
    assert main(["verify", p, p]) == 0
    x = np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out.npz"
    assert main(["run", p, "--input", f"x={tmp_path / 'x.npy'}", "-o", str(out)]) == 0
    with np.load(out) as z:
        np.testing.assert_allclose(z["probs"], ort_run(m, {"x": x})[0], rtol=1e-5, atol=1e-6)
    capsys.readouterr()
    assert main(["run", p, "--input", "nope=x.npy"]) == 1
    assert "no input(s) ['nope']" in capsys.readouterr().err
    assert main(["run", p]) == 1


def test_verify_detects_a_wrong_model(tmp_path, capsys):
    m, p = _mlp(tmp_path)
    bad = onnx.load(p)
    bad.graph.node[2].op_type = "Sigmoid"   # a different model with the same interface
    q = str(tmp_path / "bad.onnx")
    onnx.save(bad, q)
    assert main(["verify", p, q, "--input-shape", "x:2,8"]) == 1
    assert "NO" in capsys.readouterr().out


def test_optimize_accepts_nnir_input(tmp_path, capsys):
    """A non-ONNX input (.nnir here; .mlir goes the same way) is compared against its own unoptimized export."""
    from nnfuse.frontends.onnx import load
    from nnfuse.ir import save
    m, p = _mlp(tmp_path)
    src = str(tmp_path / "mlp.nnir")
    save(load(p, input_shapes={"x": [3, 8]}), src)
    o = str(tmp_path / "opt.onnx")
    assert main(["optimize", src, "-o", o, "-O2", "--verify"]) == 0
    assert "yes" in capsys.readouterr().out
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    np.testing.assert_allclose(ort_run(onnx.load(o), {"x": x})[0], ort_run(m, {"x": x})[0], rtol=1e-5, atol=1e-6)


def _one_error(capsys, want: str) -> None:
    cap = capsys.readouterr()
    text = cap.err.strip()
    assert want in text and text.startswith("error:") and "internal error" not in text and "\n" not in text, text


def test_bad_arguments_are_user_errors_not_internal_ones(tmp_path, capsys):
    """Each of these was an 'internal error' (a raw TypeError/ValueError/OSError) or a wrong success."""
    m = model([N("MatMul", ["x", "w"], ["file"]), N("Relu", ["file"], ["allow_pickle"])], [vi("x", ["B", 4])],
              [vi("file", ["B", 3]), vi("allow_pickle", ["B", 3])], [init("w", np.eye(4, 3, dtype=np.float32))])
    p = str(tmp_path / "m.onnx")
    onnx.save(m, p)
    x = np.arange(8, dtype=np.float32).reshape(2, 4) - 3
    np.save(tmp_path / "x.npy", x)
    out = str(tmp_path / "out.npz")
    # outputs named like np.savez's own parameters
    assert main(["run", p, "--input", f"x={tmp_path / 'x.npy'}", "-o", out]) == 0
    with np.load(out) as z:
        np.testing.assert_array_equal(z["allow_pickle"], np.maximum(x @ np.eye(4, 3, dtype=np.float32), 0))
    capsys.readouterr()
    assert main(["run", p, "--random", "-o", str(tmp_path / "no" / "dir" / "o.npz")]) == 1
    _one_error(capsys, "No such file or directory")
    assert main(["optimize", p, "-o", str(tmp_path / "no" / "o.onnx")]) == 1
    _one_error(capsys, "No such file or directory")
    for spec, want in [("x:1,,2", "dims must be"), ("x:-3,4", "dims must be"), ("x:7", "does not fit"), ("x:2,5", "does not fit")]:
        assert main(["run", p, "--random", "--input-shape", spec]) == 1, spec
        _one_error(capsys, want)


def test_verify_refuses_inputs_of_the_wrong_kind_and_reports_ort_failures(tmp_path, capsys):
    m = model([N("Gather", ["e", "ids"], ["y"])], [vi("ids", [2], np.int64)], [vi("y", [2, 3])],
              [init("e", np.arange(30, dtype=np.float32).reshape(10, 3))])
    p = str(tmp_path / "g.onnx")
    onnx.save(m, p)
    np.savez(tmp_path / "f.npz", ids=np.array([1.7, 2.9]))   # would silently truncate to [1, 2]
    assert main(["verify", p, "--inputs", str(tmp_path / "f.npz")]) == 1
    _one_error(capsys, "wrong kind for input(s) ids (float64 -> int64)")
    np.savez(tmp_path / "oob.npz", ids=np.array([3, 99]))
    assert main(["verify", p, "--inputs", str(tmp_path / "oob.npz")]) == 1
    _one_error(capsys, "onnxruntime failed to run")


def test_compile_reports_and_saves_a_reloadable_model(tmp_path, capsys):
    import nnfuse
    p = tmp_path / "m.onnx"
    w = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    onnx.save(model([N("MatMul", ["x", "w"], ["t"]), N("Relu", ["t"], ["y"])], [X("x")], [vi("y", [2, 4])], [init("w", w)]), p)
    o = tmp_path / "m.nnir"
    assert main(["compile", str(p), "--backend", "cpu", "-o", str(o)]) == 0
    text = capsys.readouterr().out
    assert "fuse-gemm" in text and "kernels" in text and "arena bytes" in text
    cm = nnfuse.load(str(o))
    assert cm.backend == "cpu"
    x = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(cm(x)), np.maximum(x @ w, 0), rtol=1e-5, atol=1e-6)
