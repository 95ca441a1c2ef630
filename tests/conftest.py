"""Shared fixtures (a seeded rng, per-dtype tolerances) and helpers the op tests import
(`from conftest import run_op, ...`): op runners that go through the IR (build a node with
inferred types, verify, evaluate with the reference interpreter, check the result against the
inferred type) and an oracle comparison with per-dtype tolerances."""
from __future__ import annotations

import os
from typing import Any

import ml_dtypes
import numpy as np
import pytest

# Triton reads TRITON_INTERPRET once it is imported, and torch.export can import it before a triton test module
# sets it: decide here, before any test module loads (the interpreter unless a CUDA GPU is present).
if "TRITON_INTERPRET" not in os.environ:
    try:
        import torch
        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"
    except ImportError:
        pass

# (rtol, atol) for comparing an op's result with an independent oracle, per result dtype
TOLERANCES = {"f64": (1e-10, 1e-10), "f32": (1e-5, 1e-5), "f16": (1e-2, 1e-2), "bf16": (2e-2, 2e-2),
              "f8e4m3": (1.5e-1, 1e-1), "f8e5m2": (2.5e-1, 1e-1)}
NP = {"f64": np.float64, "f32": np.float32, "f16": np.float16, "bf16": ml_dtypes.bfloat16, "i64": np.int64, "i32": np.int32,
      "i8": np.int8, "u8": np.uint8, "bool": np.bool_}


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def tol() -> dict:
    return TOLERANCES


def _ir():
    import nnfuse.ir as ir
    return ir


def run_op(op: str, *arrays: np.ndarray, n_out: int = 1, **attrs: Any):
    """Apply `op` to constant-free graph inputs, evaluate, and check results match the inferred types."""
    ir = _ir()
    b = ir.Builder(op)
    ins = [b.input(f"x{i}", a.shape, ir.dtype(a.dtype).name) for i, a in enumerate(arrays)]
    res = b.op(op, *ins, **attrs)
    res = list(res) if isinstance(res, list) else [res]
    g = b.output(*res)
    ir.verify(g)
    outs = ir.evaluate(g, list(arrays))
    for v, o in zip(res, outs):
        assert tuple(o.shape) == v.type.shape, f"{op}: result shape {o.shape} but inferred {v.type}"
        assert o.dtype == v.type.dtype.np, f"{op}: result dtype {o.dtype} but inferred {v.type}"
    return outs if len(outs) > 1 or n_out != 1 else outs[0]


def assert_close(got: np.ndarray, want, dtype: str = "f32", rtol: float | None = None, atol: float | None = None) -> None:
    """Compare with an oracle (numpy array or torch tensor) in float64, with the dtype's tolerance."""
    if hasattr(want, "detach"):
        want = want.detach().float().numpy() if str(want.dtype) in ("torch.bfloat16", "torch.float16") else want.detach().numpy()
    r, a = TOLERANCES.get(dtype, (0, 0))
    g = np.asarray(got).astype(np.float64) if np.asarray(got).dtype.kind in "fV" else np.asarray(got)
    w = np.asarray(want).astype(np.float64) if np.asarray(want).dtype.kind in "fV" else np.asarray(want)
    assert g.shape == w.shape, f"shape {g.shape} vs oracle {w.shape}"
    np.testing.assert_allclose(g, w, rtol=r if rtol is None else rtol, atol=a if atol is None else atol, equal_nan=True)


def rand(rng: np.random.Generator, shape, dtype: str = "f32", lo: float = -2.0, hi: float = 2.0) -> np.ndarray:
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype in ("i64", "i32", "i8", "u8"):
        return rng.integers(int(lo), int(hi) + 1, size=shape).astype(NP[dtype])
    return rng.uniform(lo, hi, size=shape).astype(NP[dtype])


def torch_of(a: np.ndarray):
    """A torch tensor holding the same values (bf16 goes through f32)."""
    import torch
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(a))


def infer(op: str, *types, **attrs):
    """Result types of `op` on TensorTypes (given as (shape, dtype) pairs or TensorTypes)."""
    ir = _ir()
    ts = [t if isinstance(t, ir.TensorType) else ir.TensorType(*t) for t in types]
    od = ir.get_op(op)
    out = od.infer_types(ts, od.normalize_attrs(attrs))
    return out[0] if len(out) == 1 else out
