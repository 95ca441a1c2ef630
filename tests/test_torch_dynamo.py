"""torch.compile(backend="nnfuse"): entry point, graph breaks, fallback with one warning, options, dynamic
batch, weight updates. Oracle: eager; tolerance rtol=atol=1e-5 (f32)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402

import nnfuse.dynamo as nd  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def runners(monkeypatch):
    """Every SubgraphRunner the backend builds."""
    made = []
    init = nd.SubgraphRunner.__init__

    def spy(self, *a, **k):
        init(self, *a, **k)
        made.append(self)
    monkeypatch.setattr(nd.SubgraphRunner, "__init__", spy)
    return made


def close(a, b):
    np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-5, atol=1e-5)


class Net(nn.Module):
    def __init__(self, brk=False):
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4)
        self.brk = brk

    def forward(self, x):
        h = torch.relu_(self.norm(self.fc1(x)))
        if self.brk:
            torch._dynamo.graph_break()
        return torch.softmax(self.fc2(h), -1) + x.sum()


def fallback_warnings(rec):
    return [w for w in rec if issubclass(w.category, nd.NnfuseFallbackWarning)]


def test_entry_point_in_a_process_that_never_imports_nnfuse():
    script = textwrap.dedent("""
        import sys, warnings
        import torch
        m = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)).eval()
        assert "nnfuse" not in sys.modules
        f = torch.compile(m, backend="nnfuse")
        with warnings.catch_warnings(record=True) as rec, torch.no_grad():
            warnings.simplefilter("always")
            for b in (4, 2, 7):
                x = torch.randn(b, 16)
                assert torch.allclose(f(x), m(x), atol=1e-5), b
        assert "nnfuse.dynamo" in sys.modules, "the backend did not come from nnfuse"
        bad = [str(w.message) for w in rec if "nnfuse" in str(w.message)]
        assert not bad, bad
        print("entry-point-ok")
        """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env, cwd="/")
    assert r.returncode == 0 and "entry-point-ok" in r.stdout, r.stderr[-3000:]


def test_graph_break_compiles_each_subgraph(runners):
    m = Net(brk=True).eval()
    f = torch.compile(m, backend="nnfuse")
    x = torch.randn(3, 8)
    with warnings.catch_warnings(record=True) as rec, torch.no_grad():
        warnings.simplefilter("always")
        close(f(x), m(x))
    assert not fallback_warnings(rec)
    assert len(runners) == 2 and all(r.compiled is not None and r.fallback is None for r in runners)
    ops = set().union(*(r.compiled.graph.op_histogram() for r in runners))
    assert ops, "empty subgraphs"
    consts = set().union(*(r.compiled.graph.constants for r in runners))
    assert any("fc1" in c for c in consts), consts  # weights baked in under their module names


class WithTopK(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return torch.topk(self.fc(x), 3).values.relu()


def test_unlowerable_ops_fall_back_with_one_warning(runners):
    m = WithTopK().eval()
    f = torch.compile(m, backend="nnfuse")
    x = torch.randn(4, 8)
    with warnings.catch_warnings(record=True) as rec, torch.no_grad():
        warnings.simplefilter("always")
        close(f(x), m(x))
        close(f(x), m(x))
    fb = fallback_warnings(rec)
    assert len(fb) == 1, [str(w.message) for w in rec]
    assert "aten.topk.default" in str(fb[0].message) and "test_torch_dynamo.py:" in str(fb[0].message)
    assert runners[0].fallback is not None


def test_options_pick_backend_and_pipeline(runners):
    m = Net().eval()
    f = torch.compile(m, backend="nnfuse", options={"backend": "reference", "opt_level": 0})
    x = torch.randn(2, 8)
    with torch.no_grad():
        close(f(x), m(x))
    assert runners[0].backend == "reference" and runners[0].compiled.report.results == []


def test_unknown_backend_option_falls_back_not_crashes():
    m = Net().eval()
    f = torch.compile(m, backend="nnfuse", options={"backend": "nope"})
    x = torch.randn(2, 8)
    with pytest.warns(nd.NnfuseFallbackWarning, match="unknown backend 'nope'"), torch.no_grad():
        close(f(x), m(x))


def test_dynamic_batch_and_weight_updates(runners):
    m = Net().eval()
    f = torch.compile(m, backend="nnfuse")
    with warnings.catch_warnings(record=True) as rec, torch.no_grad():
        warnings.simplefilter("always")
        for b in (2, 3, 5, 9):
            x = torch.randn(b, 8)
            close(f(x), m(x))
        assert len(runners) <= 2  # a static compile, then one with a symbolic batch serves 3, 5, 9
        assert any(isinstance(d, str) for d in runners[-1].compiled.graph.inputs[0].type.shape)
        m.fc2.weight.mul_(2)  # in place: the version counter moves
        close(f(x), m(x))
        m.fc1.weight = nn.Parameter(torch.randn(16, 8))  # replaced
        close(f(x), m(x))
    assert not fallback_warnings(rec)


def test_grad_enabled_runs_in_torch_with_a_warning():
    m = Net()
    f = torch.compile(m, backend="nnfuse")
    x = torch.randn(2, 8)
    with pytest.warns(nd.NnfuseFallbackWarning, match="no_grad"):
        y = f(x)
    close(y, m(x))
    y.sum().backward()
    assert m.fc1.weight.grad is not None
