"""The GPU backends take the same precision policy: bf16 operands reach tl.dot (Triton) and WMMA (CUDA) with f32
accumulation. Triton runs under its interpreter without a GPU; CUDA is compile-checked with nvcc (numbers need a GPU)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import nnfuse  # noqa: E402
from nnfuse.ir import NnfuseError, evaluate  # noqa: E402
from test_bf16_cpu import linear_graph, relerr  # noqa: E402

HAS_GPU = torch.cuda.is_available()


def _case():
    g = linear_graph(7, 33, 100)
    x = np.random.default_rng(3).standard_normal((7, 33)).astype(np.float32)
    return g, x


def test_triton_bf16_matches_reference_policy():
    pytest.importorskip("triton")
    g, x = _case()
    f32 = evaluate(g, [x])[0]
    cm = nnfuse.compile(g, [x], backend="triton", precision="bf16")
    gemms = [k for k in cm.program.kernels if k.kind == "gemm"]
    assert gemms and all(k.a.buf.dtype.name == k.b.buf.dtype.name == "bf16" for k in gemms)   # tl.dot gets bf16 tiles
    assert "tl.dot" in cm.source()
    got = np.asarray(cm(x))
    ref = np.asarray(nnfuse.compile(g, [x], backend="reference", precision="bf16")(x))
    # Triton's interpreter rounds the f32 -> bf16 casts of the intermediates differently from numpy (about one bf16
    # ulp apart, seen here): compare at bf16 resolution, and against f32 at the policy's bound
    np.testing.assert_allclose(got, ref, rtol=1e-2, atol=1e-2 * np.abs(f32).max())
    assert relerr(got, f32) < 2e-2


def test_cuda_bf16_gemms_take_the_wmma_path(tmp_path, monkeypatch):
    from nnfuse.backends.cuda import nvcc as cuda_build
    try:
        cuda_build.find_nvcc()
    except NnfuseError:
        pytest.skip("nvcc is not installed here: the CUDA compile check needs the CUDA toolkit")
    monkeypatch.setenv("NNFUSE_CACHE_DIR", str(tmp_path))
    g, x = _case()
    cm = nnfuse.compile(g, [x], backend="cuda", precision="bf16", arch="sm_90", build_only=not HAS_GPU,
                        accuracy_report=HAS_GPU)
    src = cm.source()
    assert "wmma::mma_sync" in src and "__nv_bfloat16" in src
    if HAS_GPU:
        assert cm.stats()["accuracy"]["max_rel_err"] < 2e-2
