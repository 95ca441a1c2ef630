"""torch-mlir frontend, MLIR export and the `mlir` backend (issue 11).

PyTorch -> torch-mlir (torch / tosa dialect) -> nnfuse -> reference must match eager;
nnfuse -> linalg-on-tensors -> MLIR ExecutionEngine must match the reference backend."""
import os
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_mlir", reason="torch-mlir is not installed (pip install 'nnfuse[mlir]')")
T = pytest.importorskip("transformers")

import nnfuse  # noqa: E402
from nnfuse.backends import mlir as mlir_backend  # noqa: E402
from nnfuse.frontends import mlir as mlir_frontend  # noqa: E402
from nnfuse.ir import NnfuseError, evaluate, verify  # noqa: E402

warnings.filterwarnings("ignore")
nn = torch.nn


class Logits(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        o = self.m(x)
        return o.logits if hasattr(o, "logits") else o.last_hidden_state


def _models():
    torch.manual_seed(0)
    yield "mlp", nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 32), nn.Tanh()), torch.randn(3, 64)
    yield "cnn", nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                               nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                               nn.Linear(16, 10)), torch.randn(2, 3, 16, 16)
    c = T.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=200, n_positions=32, use_cache=False)
    yield "gpt2", Logits(T.GPT2LMHeadModel(c)), torch.randint(0, 200, (1, 12))
    c = T.LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=200, use_cache=False)
    yield "llama", Logits(T.LlamaForCausalLM(c)), torch.randint(0, 200, (1, 12))
    c = T.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=200)
    yield "bert", Logits(T.BertModel(c)), torch.randint(0, 200, (2, 8))


MODELS = {name: (m.eval(), x) for name, m, x in _models()}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (path of the torch-dialect .mlir, eager output, input)."""
    d = tmp_path_factory.mktemp("mlir")
    out = {}
    for name, (m, x) in MODELS.items():
        with torch.inference_mode():
            ref = m(x).float().numpy()
        path = d / f"{name}.mlir"
        path.write_text(str(mlir_frontend.export_torch(m, x, output_type="torch")))
        out[name] = (str(path), ref, x.numpy())
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_torch_dialect_import_matches_eager(exported, name):
    path, ref, x = exported[name]
    g = mlir_frontend.load(path)
    verify(g)
    got = evaluate(g, [x])[0]
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
    locs = [n.meta.get("loc", "") for n in g.nodes]
    assert all(loc.startswith(path + ":") for loc in locs), locs[:3]  # every node knows its line in the .mlir


@pytest.mark.parametrize("name", ["mlp", "cnn", "gpt2", "llama", "bert"])
def test_mlir_backend_matches_reference(exported, name):
    path, ref, x = exported[name]
    cm = nnfuse.compile(path, backend="mlir")
    got = cm(x)
    want = evaluate(cm.graph, [x])[0]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(got, ref, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("name", ["mlp", "cnn", "gpt2"])
def test_tosa_import_matches_eager(name):
    m, x = MODELS[name]
    with torch.inference_mode():
        ref = m(x).float().numpy()
    module = mlir_frontend.export_torch(m, x, output_type="tosa")
    assert any(op.operation.name.startswith("tosa.") for op in module.body.operations[0].regions[0].blocks[0].operations)
    cm = nnfuse.compile(module, backend="reference")  # a torch_mlir module object goes straight in
    np.testing.assert_allclose(cm(x.numpy()), ref, atol=1e-4, rtol=1e-4)


def test_dense_resource_weights_are_the_parameters(exported):
    g = mlir_frontend.load(exported["mlp"][0])
    m = MODELS["mlp"][0]
    want = {tuple(p.shape): p.detach().numpy() for p in m.parameters()}
    got = [c.data for c in g.constants.values() if c.data.ndim == 2]
    assert got and all(any(np.array_equal(a, w) or np.array_equal(a.T, w) for w in want.values()) for a in got)


def test_export_is_valid_linalg_and_runs(exported):
    g = mlir_frontend.load(exported["gpt2"][0])
    text = mlir_backend.export_mlir(g)  # parses and verifies with torch-mlir's bindings
    assert "linalg.generic" in text and "dense_resource<" in text and "torch." not in text
    x = exported["gpt2"][2]
    exe = mlir_backend.compile_graph(g)
    np.testing.assert_allclose(exe([x])[0], evaluate(g, [x])[0], atol=1e-4, rtol=1e-4)


def test_export_of_hand_built_graph_with_fused_region():
    from nnfuse.ir import Builder, Graph
    body = Builder("body")
    a = body.input("a", [4, 8])
    bb = body.input("b", [8])
    body.output(body.silu(body.add(a, bb)))
    b = Builder("g")
    x = b.input("x", [4, 8])
    w = b.const(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32), "w")
    bias = b.const(np.arange(8, dtype=np.float32), "bias")
    y = b.fused("pointwise", [b.matmul(x, w), bias], body.graph)
    g = b.output(b.softmax(b.transpose(y, perm=[1, 0]), axis=-1))
    xv = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    text = mlir_backend.export_mlir(g)
    assert "fused" not in text
    np.testing.assert_allclose(mlir_backend.compile_graph(g)([xv])[0], evaluate(g, [xv])[0], atol=1e-5, rtol=1e-5)


UNSUPPORTED = """module {
  func.func @main(%arg0: !torch.vtensor<[4,4],f32>) -> !torch.vtensor<[4,4],f32> {
    %int0 = torch.constant.int 0
    %0 = torch.aten.tril %arg0, %int0 : !torch.vtensor<[4,4],f32>, !torch.int -> !torch.vtensor<[4,4],f32>
    %1 = torch.prim.ListConstruct %int0 : (!torch.int) -> !torch.list<int>
    %2 = torch.aten.flip %0, %1 : !torch.vtensor<[4,4],f32>, !torch.list<int> -> !torch.vtensor<[4,4],f32>
    return %2 : !torch.vtensor<[4,4],f32>
  }
}
"""


def test_unsupported_ops_reported_together(tmp_path):
    p = tmp_path / "unsup.mlir"
    p.write_text(UNSUPPORTED)
    with pytest.raises(NnfuseError) as e:
        mlir_frontend.load(str(p))
    msg = str(e.value)
    assert "torch.aten.tril" in msg and "torch.aten.flip" in msg
    assert f"{p}:4:" in msg and f"{p}:6:" in msg


def test_malformed_mlir_gets_located_diagnostic(tmp_path, capsys):
    from nnfuse.cli import main
    p = tmp_path / "bad.mlir"
    p.write_text("module {\n  func.func @main(%arg0: !torch.vtensor<[4],f32>) -> !torch.vtensor<[4],f32> {\n"
                 "    %0 = torch.aten.relu %arg0 :\n  }\n}\n")
    rc = main(["dump", str(p)])
    err = capsys.readouterr().err
    assert rc != 0 and f"{p}:3:" in err and "Traceback" not in err
    with pytest.raises(NnfuseError, match="bad.mlir:3:"):
        mlir_frontend.load(str(p))


def test_cli_dump_mlir(exported, capsys):
    from nnfuse.cli import main
    assert main(["dump", exported["llama"][0]]) == 0
    out = capsys.readouterr().out
    assert "graph @llama" in out and "matmul(" in out
