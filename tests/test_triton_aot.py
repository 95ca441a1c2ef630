"""The Triton backend's kernels compile for real GPUs (sm_80, sm_90) through Triton's whole pipeline to cubin.

No GPU is needed: this catches what the interpreter accepts but the GPU compiler rejects. The numbers are
checked by the interpreter tests (test_triton_kernels.py, test_triton_models.py)."""
from __future__ import annotations

import pytest

from cpu_util import graph
from gpu_programs import attention_program, gemm_program
from nnfuse.backends.attention_fuse import fuse_attention
from nnfuse.backends.triton.aot import compile_for_targets
from nnfuse.passes.lower import lower
from test_cpu_ops import CASES

ARCHS = ("sm_80", "sm_90")


def _blocks_small(p):
    for k in p.kernels:
        if k.kind in ("reduce", "rownorm"):
            k.schedule.block = {"BLOCK_R": 16}
    return p


def _programs():
    """One program per kernel kind and code path (looped rows, f16/bf16 tensor cores, causal/masked attention)."""
    ps = {name: lower(graph(CASES[name][0], *CASES[name][1]))
          for name in ["gemm_epilogue_residual", "conv_bias_relu_stride_pad", "conv_transpose", "argmax_argmin",
                       "sdpa_gqa_mask", "gather_neg_idx", "int_arith"]}
    ps["looped_rows"] = _blocks_small(lower(graph(CASES["row_norms"][0], *CASES["row_norms"][1])))
    ps["looped_reduce"] = _blocks_small(lower(graph(CASES["reductions"][0], *CASES["reductions"][1])))
    ps["attention_causal_add"] = attention_program(causal=True, mask="add")[0]
    ps["attention_bool"] = attention_program(mask="bool")[0]
    for dt in ("f16", "bf16", "f64"):
        ps[f"gemm_{dt}"] = gemm_program(dt, batch=(2,))[0]
    return ps


def test_kernels_compile_to_cubin_for_sm80_and_sm90():
    ps = _programs()
    for p in ps.values():
        fuse_attention(p)
    kinds = {k.kind for p in ps.values() for k in p.kernels}
    assert kinds == {"pointwise", "reduce", "rownorm", "gemm", "conv", "attention"}
    for name, p in ps.items():
        out = compile_for_targets(p, ARCHS)
        assert set(out) == {k.name for k in p.kernels}, name
        assert all(len(c[a]) > 0 for c in out.values() for a in ARCHS), name


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_case_compiles_to_cubin(name):
    p = lower(graph(CASES[name][0], *CASES[name][1]))
    fuse_attention(p)
    compile_for_targets(p, ARCHS)


def test_compiles_after_an_interpreted_run_in_the_same_process(tmp_path, monkeypatch):
    """An interpreted device-function call (tl.cdiv) leaves triton.language patched for the interpreter; the AOT
    compile must not trace through those patches (it failed on a cold Triton cache after any interpreter test)."""
    import numpy as np
    from nnfuse.backends import triton as tb
    p, ins, want = gemm_program("f32")
    if tb.interpreting():
        got = tb.compile_program(p)(ins)
        np.testing.assert_allclose(np.asarray(got[0]), want[0], rtol=1e-4, atol=1e-4)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))   # cold: the front end runs, not a cache hit
    out = compile_for_targets(p, ARCHS)
    assert all(len(c[a]) > 0 for c in out.values() for a in ARCHS)
