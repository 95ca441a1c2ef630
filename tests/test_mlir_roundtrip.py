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
from torch_util import Logits
from nnfuse.backends import mlir as mlir_backend  # noqa: E402
from nnfuse.frontends import mlir as mlir_frontend  # noqa: E402
from nnfuse.ir import NnfuseError, evaluate, verify  # noqa: E402

warnings.filterwarnings("ignore")
nn = torch.nn



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
    cm = nnfuse.compile(path, backend="mlir")  # O2: fused regions, exported as their bodies
    if name in ("gpt2", "llama", "bert"):
        assert any(n.body is not None for n in cm.graph.nodes)
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


def test_export_is_valid_linalg(exported):
    g = mlir_frontend.load(exported["gpt2"][0])
    text = mlir_backend.export_mlir(g)  # parses and verifies with torch-mlir's bindings
    assert "linalg.generic" in text and "dense_resource<" in text and "torch." not in text


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_tosa_export_verifies_and_round_trips(exported, name):
    path, ref, x = exported[name]
    g = mlir_frontend.load(path)
    text = mlir_backend.export_mlir(g, dialect="tosa")
    assert "tosa.matmul" in text and "linalg." not in text
    back = mlir_frontend.load(text)  # our own TOSA importer reads it back
    np.testing.assert_allclose(evaluate(back, [x])[0], ref, atol=1e-4, rtol=1e-4)


def test_tosa_export_names_ops_without_a_tosa_form(exported):
    g = mlir_frontend.load(exported["cnn"][0])
    with pytest.raises(NnfuseError, match="no TOSA form for op.*conv"):
        mlir_backend.export_mlir(g, dialect="tosa")


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
    %1 = torch.aten.sin %0 : !torch.vtensor<[4,4],f32> -> !torch.vtensor<[4,4],f32>
    %2 = torch.aten.triu %1, %int0 : !torch.vtensor<[4,4],f32>, !torch.int -> !torch.vtensor<[4,4],f32>
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
    assert "2 unsupported" in msg and "torch.aten.tril" in msg and "torch.aten.triu" in msg and "sin" not in msg
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


OP_CASES = {
    "argmax": (lambda b, x: b.argmax(x, axis=1, keepdims=False), [(3, 7)]),
    "argmin_last": (lambda b, x: b.argmin(x, axis=0, select_last_index=True), [(5, 4)]),
    "cumsum_rev_excl": (lambda b, x: b.cumsum(x, axis=1, exclusive=True, reverse=True), [(2, 5)]),
    "log_sum_exp": (lambda b, x: b.reduce_log_sum_exp(x, axes=[1]), [(3, 5)]),
    "gather_elements": (lambda b, x: b.gather_elements(x, b.const(np.array([[0, 2], [1, -1]]), "i", "i64"), axis=1), [(2, 3)]),
    "avg_pool": (lambda b, x: b.avg_pool(x, kernel=[2, 2], strides=[2, 2]), [(1, 2, 4, 4)]),
    "mod_and_fmod": (lambda b, x, y: b.add(b.mod(x, y), b.mod(x, y, fmod=True)), [(6,), (6,)]),
    "negative_step_slice": (lambda b, x: b.slice(x, starts=[-1], ends=[-100], axes=[1], steps=[-2]), [(2, 7)]),
    "pad_tile_split": (lambda b, x: b.split(b.tile(b.pad(x, pads=[0, 1, 1, 0], value=2.0), repeats=[1, 2]), axis=1,
                                            sizes=[3, 5])[1], [(2, 3)]),
    "cast_compare_where": (lambda b, x: b.where(b.gt(x, b.const(np.float32(0))), b.cast(b.ge(x, x), to="f32"), x), [(9,)]),
    "activations": (lambda b, x: b.gelu(b.hard_swish(b.elu(b.leaky_relu(b.selu(x)))), approximate="tanh"), [(9,)]),
}


@pytest.mark.parametrize("case", list(OP_CASES))
def test_mlir_backend_op_coverage(case):
    from nnfuse.ir import Builder
    build, shapes = OP_CASES[case]
    b = Builder(case)
    g = b.output(build(b, *[b.input(f"x{i}", s) for i, s in enumerate(shapes)]))
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    got, want = mlir_backend.compile_graph(g)(xs), evaluate(g, xs)
    for a, w in zip(got, want):
        np.testing.assert_allclose(a, w, atol=1e-5, rtol=1e-5)


class _Fn(nn.Module):
    def __init__(self, fn, *mods):
        super().__init__()
        self.fn, self.mods = fn, nn.ModuleList(mods)

    def forward(self, x):
        return self.fn(self, x)


F = torch.nn.functional
LAYER_CASES = {
    "mha": (lambda s, x: s.mods[0](x, x, x, need_weights=False)[0], [nn.MultiheadAttention(8, 2, batch_first=True)], (2, 5, 8)),
    "sdpa_causal": (lambda s, x: F.scaled_dot_product_attention(x, x, x, is_causal=True), [], (1, 2, 5, 4)),
    "conv1d_avgpool": (lambda s, x: F.avg_pool1d(s.mods[0](x), 2), [nn.Conv1d(3, 4, 3)], (2, 3, 10)),
    "grouped_and_depthwise_conv": (lambda s, x: s.mods[1](s.mods[0](x)), [nn.Conv2d(4, 8, 3, groups=2),
                                                                          nn.Conv2d(8, 8, 3, groups=8)], (1, 4, 8, 8)),
    "upsample_maxpool_ceil": (lambda s, x: F.max_pool2d(F.interpolate(x, scale_factor=2), 3, ceil_mode=True), [], (1, 2, 4, 4)),
    "flip_roll_log1p": (lambda s, x: x.flip(0) + x.roll(1, 1) + torch.log1p(x.abs()), [], (3, 4)),
}


@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_torch_layers_through_both_backends(case):
    fn, mods, shape = LAYER_CASES[case]
    torch.manual_seed(0)
    m, x = _Fn(fn, *mods).eval(), torch.randn(*shape)
    with torch.inference_mode():
        ref = m(x).numpy()
    g = mlir_frontend.load(mlir_frontend.export_torch(m, x))
    np.testing.assert_allclose(evaluate(g, [x.numpy()])[0], ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(mlir_backend.compile_graph(g)([x.numpy()])[0], ref, atol=1e-5, rtol=1e-5)


def test_hostile_names_never_reach_the_mlir_text():
    from nnfuse.backends.mlir_tosa import export_tosa
    from nnfuse.ir import Builder
    evil = 'x"} func.func @pwn() { "\n// system'
    b = Builder('g"} @pwn')
    b.meta = {"loc": '"\n} func.func @pwn2'}
    x = b.input(evil, [2, 3])
    w = b.const(np.ones((2, 3), np.float32), 'w" = dense<1> {}\n')
    g = b.output(b.relu(b.add(x, w)), names=['"} @out'])
    for text in (mlir_backend.export_mlir(g), export_tosa(g)):
        assert "pwn" not in text and "system" not in text and evil not in text and '"}' not in text
    xv = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(mlir_backend.compile_graph(g)([xv])[0], evaluate(g, [xv])[0], atol=1e-6)
