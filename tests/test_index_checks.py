"""Out-of-range gather / embedding indices are an error on every backend (as in onnxruntime), never a silent read."""
import numpy as np
import pytest
import torch

import nnfuse
from nnfuse.ir import Builder, NnfuseError

BACKENDS = ["reference", "cpu", "triton"]


def _gather_graph(op: str, axis: int, xshape, ishape):
    b = Builder("g")
    x = b.input("x", list(xshape))
    i = b.input("i", list(ishape), "i64")
    return b.output(b.op(op, x, i, axis=axis))


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op,axis,ishape", [("gather", 0, (5,)), ("gather", 1, (2, 3)), ("gather_elements", 1, (4, 2))])
def test_in_range_indices_match_reference(backend, op, axis, ishape):
    rng = np.random.default_rng(0)
    xs = (4, 3)
    g = _gather_graph(op, axis, xs, ishape)
    x = rng.standard_normal(xs).astype(np.float32)
    n = xs[axis]
    idx = rng.integers(-n, n, size=ishape).astype(np.int64)   # negatives wrap, as ONNX says
    ref = nnfuse.compile(g, backend="reference")(x, idx)
    got = nnfuse.compile(g, backend=backend)(x, idx)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [3, -4, 100])
def test_out_of_range_gather_is_an_error(backend, bad):
    g = _gather_graph("gather", 1, (4, 3), (2,))
    cm = nnfuse.compile(g, backend=backend)
    x = np.ones((4, 3), np.float32)
    cm(x, np.array([0, 2]))   # fine
    with pytest.raises(NnfuseError, match=r"out of range \[-3, 3\)"):
        cm(x, np.array([0, bad]))
    np.testing.assert_array_equal(np.asarray(cm(x, np.array([2, -3]))), x[:, [2, 0]])   # still usable afterwards


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_embedding_token_id_beyond_vocab(backend):
    m = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 2)).eval()
    ids = torch.tensor([[1, 2, 3]])
    cm = nnfuse.compile(m, (ids,), backend=backend)
    with torch.inference_mode():
        np.testing.assert_allclose(np.asarray(cm(ids)), m(ids).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(NnfuseError, match="out of range"):
        cm(torch.tensor([[1, 10, 3]]))
