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
        np.testing.assert_allclose(got, np.asarray(ref(x)), rtol=2e-3, atol=2e-3 * np.abs(want).max())
        unfused = nnfuse.compile(m, (x,), backend="cpu", fuse_attention=False, **opts)
        np.testing.assert_allclose(got, np.asarray(unfused(x)), rtol=1e-3, atol=1e-3 * np.abs(want).max())


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
    ref = nnfuse.compile(m, (x,), backend="reference", precision="bf16")
    ref_y, ref_k = (np.asarray(t) for t in ref(x))
    np.testing.assert_allclose(got_k, ref_k, rtol=1e-4, atol=1e-5 * np.abs(ref_k).max())   # f32: not rounded by the fold
    np.testing.assert_allclose(got_y, ref_y, rtol=2e-3, atol=2e-3 * np.abs(y.numpy()).max())


@pytest.mark.parametrize("dim,heads,t,causal", [(64, 4, 24, True), (160, 4, 70, False), (52, 4, 33, True)])
def test_bf16_scores_match_the_f32_attention(dim, heads, t, causal):
    """Under bf16, q @ kᵀ runs on the bf16 gemm kernel (q and k hold bf16 values; kᵀ packed as pairs 16 keys at a
    time): head dims 16, 40 (two 16-pair blocks) and 13 (odd: a half pair), key counts that are not whole
    16-key blocks or 64-column panels, causal and not; against the unfused chain (the same rounded operands in
    f32) and the reference."""
    torch.manual_seed(2)

    class M(Heads):
        def forward(s, x):
            b, n, d = x.shape
            split = lambda y: y.view(b, n, s.h, d // s.h).transpose(1, 2)  # noqa: E731
            a = torch.nn.functional.scaled_dot_product_attention(split(s.q(x)), split(s.k(x)), split(s.v(x)),
                                                                 is_causal=causal)
            return s.o(a.transpose(1, 2).reshape(b, n, d))
    m = M(dim, heads).eval()
    x = torch.randn(2, t, dim)
    opts = {"precision": "bf16", "accuracy_report": False}
    cm = nnfuse.compile(m, (x,), backend="cpu", **opts)
    att = next(k for k in cm.executable.program.kernels if k.kind == "attention")
    assert att.meta.get("bf16_qk")
    got = np.asarray(cm(x))
    unfused = np.asarray(nnfuse.compile(m, (x,), backend="cpu", fuse_attention=False, **opts)(x))
    np.testing.assert_allclose(got, unfused, rtol=1e-3, atol=1e-3 * np.abs(unfused).max())
    ref = np.asarray(nnfuse.compile(m, (x,), backend="reference", precision="bf16")(x))
    np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())


def test_bf16_scores_after_rope():
    """LLaMA-style q/k: rotate-half copies, then the rounded rotation in place (the last writer covers the whole
    buffer), so they hold bf16 values and the scores take the bf16 kernel; against the unfused chain."""
    pytest.importorskip("transformers")
    from torch_util import Logits, tiny_llama
    lm = Logits(tiny_llama(3)).eval()
    x = torch.randint(0, 256, (1, 20))
    opts = {"precision": "bf16", "accuracy_report": False}
    cm = nnfuse.compile(lm, (x,), backend="cpu", **opts)
    assert all(k.meta.get("bf16_qk") for k in cm.executable.program.kernels if k.kind == "attention")
    got = np.asarray(cm(x))
    unfused = np.asarray(nnfuse.compile(lm, (x,), backend="cpu", fuse_attention=False, **opts)(x))
    np.testing.assert_allclose(got, unfused, rtol=1e-3, atol=1e-3 * np.abs(unfused).max())
