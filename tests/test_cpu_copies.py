"""Head split / merge copies around attention folded away (backends/cpu/copies.py): exact in fp32, the same
rounding in bf16, and left alone where the folded form would change what is read."""
from __future__ import annotations

import numpy as np
import pytest

import nnfuse

torch = pytest.importorskip("torch")


class Heads(torch.nn.Module):
    """q/k/v projections, split into heads, attention, heads merged, output projection; `tap` also returns k's
    projection (a second reader of it)."""
    def __init__(s, d=64, h=4, tap=False):
        super().__init__()
        s.h, s.tap = h, tap
        s.q, s.k, s.v, s.o = (torch.nn.Linear(d, d) for _ in range(4))

    def forward(s, x):
        b, t, d = x.shape
        split = lambda y: y.view(b, t, s.h, d // s.h).transpose(1, 2)  # noqa: E731
        kp = s.k(x)
        a = torch.nn.functional.scaled_dot_product_attention(split(s.q(x)), split(kp), split(s.v(x)), is_causal=True)
        y = s.o(a.transpose(1, 2).reshape(b, t, d))
        return (y, kp * 2) if s.tap else y


def _kinds(cm):
    return [k.kind for k in cm.executable.program.kernels]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_head_copies_fold_into_attention(precision):
    torch.manual_seed(0)
    m = Heads().eval()
    x = torch.randn(2, 24, 64)
    opts = {} if precision == "fp32" else {"precision": "bf16", "accuracy_report": False}
    cm = nnfuse.compile(m, (x,), backend="cpu", **opts)
    ks = cm.executable.program.kernels
    att = next(k for k in ks if k.kind == "attention")
    gemms = [k for k in ks if k.kind == "gemm"]
    # attention reads the projections' outputs in place and writes what the output projection reads
    assert all(any(a.buf is g.out.buf for g in gemms) for a in (att.q, att.k, att.v))
    pws = [k for k in ks if k.kind == "pointwise"]
    if precision == "fp32":
        assert _kinds(cm) == ["gemm", "gemm", "gemm", "attention", "gemm"]
        assert gemms[-1].a.buf is att.out.buf
    else:   # only the roundings to bf16 storage the gemms read are left (the input's and attention's output's)
        assert len(pws) == 2 and all(k.stores[0][0].buf.dtype.name == "bf16" for k in pws)
        assert any(a.buf is att.out.buf for a in pws[1].reads())
    with torch.no_grad():
        want = m(x).numpy()
    got = np.asarray(cm(x))
    if precision == "fp32":
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    else:   # the same rounding as the reference with the policy
        ref = nnfuse.compile(m, (x,), backend="reference", precision="bf16")
        np.testing.assert_allclose(got, np.asarray(ref(x)), rtol=2e-2, atol=2e-2 * np.abs(want).max())
        unfused = nnfuse.compile(m, (x,), backend="cpu", fuse_attention=False, **opts)
        np.testing.assert_allclose(got, np.asarray(unfused(x)), rtol=1e-2, atol=1e-2 * np.abs(want).max())


def test_rounding_stays_in_the_copy_when_the_projection_has_another_reader():
    """k's projection is also an output: its values must stay unrounded, so the bf16 rounding cannot move into
    the gemm; the copy stays and attention reads it."""
    torch.manual_seed(1)
    m = Heads(tap=True).eval()
    x = torch.randn(1, 16, 64)
    cm = nnfuse.compile(m, (x,), backend="cpu", precision="bf16", accuracy_report=False)
    with torch.no_grad():
        y, kp2 = m(x)
    ks = cm.executable.program.kernels
    att = next(k for k in ks if k.kind == "attention")
    kcopy = [k for k in ks if k.kind == "pointwise" and k.stores[0][0].buf is att.k.buf]
    assert len(kcopy) == 1 and not any(k.kind == "gemm" and k.out.buf is att.k.buf for k in ks)
    assert any(k.kind == "gemm" and k.out.buf is att.q.buf for k in ks)   # q and v still folded
    got_y, got_k = (np.asarray(t) for t in cm(x))
    np.testing.assert_allclose(got_k, kp2.numpy(), rtol=2e-2, atol=2e-2)
    ref = nnfuse.compile(m, (x,), backend="reference", precision="bf16")
    np.testing.assert_allclose(got_y, np.asarray(ref(x)[0]), rtol=2e-2, atol=2e-2 * np.abs(y.numpy()).max())
