"""Triton backend vs the reference evaluator, kernel kind by kernel kind (Triton's interpreter when no GPU).

TRITON_INTERPRET is read by triton.jit when the generated module's kernels are decorated, so it is set here,
before any kernel is generated; on a machine with a CUDA GPU the same tests run on the GPU.
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cpu_util import graph, rand  # noqa: E402
from gpu_programs import attention_program, gemm_program  # noqa: E402
from nnfuse.backends import triton as tb  # noqa: E402
from nnfuse.ir import evaluate  # noqa: E402
from nnfuse.passes.lower import lower  # noqa: E402
from test_cpu_ops import CASES  # noqa: E402  (the cpu backend's op/kernel-kind cases, reused)


def compare(got, ref, rtol=1e-4, atol=1e-5):
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
        if a.dtype.kind == "f":
            np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=rtol, atol=atol)
        else:
            np.testing.assert_array_equal(a, b)


def case_inputs(name, specs):
    rng = np.random.default_rng(0)
    ins = [rand(rng, s, d) for s, d in specs]
    if name.startswith("gather"):
        ins[1] = rng.integers(-3, 3, specs[1][0]).astype(np.int64)
    if name == "embedding":
        ins[0] = rng.integers(0, 7, specs[0][0]).astype(np.int64)
    if name == "int_arith":
        ins[1][ins[1] == 0] = 3
    return ins


@pytest.mark.parametrize("name", sorted(CASES))
def test_triton_matches_reference(name):
    fn, specs = CASES[name]
    g = graph(fn, *specs)
    ins = case_inputs(name, specs)
    compare(tb.compile_graph(g)(ins), evaluate(g, ins))


def _small_blocks(p, block_r=16, block=16):
    """Force looped reductions / multi-program pointwise kernels by shrinking the schedule's blocks."""
    for k in p.kernels:
        if k.kind in ("reduce", "rownorm"):
            k.schedule.block = {"BLOCK_R": block_r}
        elif k.kind == "pointwise":
            k.schedule.block = {"BLOCK": block}
        elif k.kind == "gemm":
            k.schedule.block = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}
    return p


@pytest.mark.parametrize("what", ["softmax", "log_softmax", "layer_norm", "rms_norm", "reductions", "argminmax"])
def test_looped_row_kernels(what):
    """Rows longer than BLOCK_R take the looped path (online max for softmax, multi-pass norms)."""
    w = np.random.default_rng(1).standard_normal(50).astype(np.float32)
    fns = {"softmax": lambda b, x: b.softmax(x, axis=1),
           "log_softmax": lambda b, x: b.log_softmax(x, axis=1),
           "layer_norm": lambda b, x: b.layer_norm(x, b.const(w, "w"), b.const(w, "b")),
           "rms_norm": lambda b, x: b.rms_norm(x, b.const(w, "w")),
           "reductions": lambda b, x: [b.reduce_sum(x, axes=[1]), b.reduce_max(x, axes=[1]), b.reduce_min(x, axes=[1]),
                                       b.reduce_prod(b.add(b.mul(x, b.const(np.float32(0.05))), b.const(np.float32(1.0))), axes=[1]),
                                       b.reduce_mean(x, axes=[0])],
           "argminmax": lambda b, x: [b.argmax(x, axis=1), b.argmin(x, axis=1),
                                      b.argmax(b.floor(x), axis=1, select_last_index=True)]}
    g = graph(fns[what], ((3, 50), "f32"))
    x = np.random.default_rng(2).standard_normal((3, 50)).astype(np.float32) * 3
    p = _small_blocks(lower(g))
    exe = tb.compile_program(p)
    assert "for r_start in range" in exe.source()
    compare(exe([x]), evaluate(g, [x]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("causal,mask", [(False, None), (True, None), (False, "add"), (True, "bool")])
def test_flash_attention(causal, mask):
    p, ins, want = attention_program(SQ=20, SKV=37, D=12, DV=6, causal=causal, mask=mask)
    p.kernels[0].schedule.block = {"BLOCK_M": 16, "BLOCK_N": 16}   # several query and key blocks
    exe = tb.compile_program(p)
    assert "m_new = tl.maximum" in exe.source()
    compare(exe(ins), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dt,tol", [("f32", 1e-4), ("f16", 2e-2), ("bf16", 1e-1)])
def test_gemm_grouped_tiles_and_epilogue(dt, tol):
    p, ins, want = gemm_program(dt, M=150, N=40, K=37, batch=(2,), alpha=0.5)
    p.kernels[0].schedule.block = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16}   # 10 row tiles: 2 groups of 8
    exe = tb.compile_program(p)
    src = exe.source()
    assert "tl.dot(" in src and "GROUP_M" in src
    compare(exe(ins), want, rtol=tol, atol=tol)


def test_multi_program_pointwise_and_gather_blocks():
    g = graph(lambda b, x, i: [b.gelu(b.mul(x, x)), b.gather(x, i, axis=0)], ((37, 5), "f32"), ((3, 4), "i64"))
    rng = np.random.default_rng(0)
    ins = [rng.standard_normal((37, 5)).astype(np.float32), rng.integers(-37, 37, (3, 4)).astype(np.int64)]
    exe = tb.compile_program(_small_blocks(lower(g)))
    compare(exe(ins), evaluate(g, ins))


def test_arena_and_outputs_reused_across_calls():
    g = graph(lambda b, x: b.softmax(b.relu(b.matmul(x, b.transpose(x, perm=[1, 0])))), ((6, 5), "f32"))
    exe = tb.compile_graph(g)
    arena, outs = exe._arena, list(exe._outs)
    x1, x2 = [np.random.default_rng(s).standard_normal((6, 5)).astype(np.float32) for s in (1, 2)]
    r1 = exe([x1])
    r2 = exe([x2])
    assert exe._arena is arena and all(a is b for a, b in zip(exe._outs, outs))
    compare(r1, evaluate(g, [x1]))
    compare(r2, evaluate(g, [x2]))   # the first result was a copy: not overwritten by the second call
    compare(r1, evaluate(g, [x1]))


def test_source_is_cached_file_without_model_names(tmp_path, monkeypatch):
    monkeypatch.setenv("NNFUSE_CACHE_DIR", str(tmp_path))
    from nnfuse.ir import Builder
    b = Builder("evil\"); import os #")
    x = b.input("x'); os.system('echo pwned') #", (3, 4), "f32")
    w = b.const(np.ones((4, 2), np.float32), "w\nimport os")
    g = b.output(b.relu(b.matmul(x, w)))
    exe = tb.compile_graph(g)
    src = exe.source()
    assert "os.system" not in src and "import os" not in src and "pwned" not in src
    assert exe.path.startswith(str(tmp_path)) and open(exe.path).read() == src
    exe2 = tb.compile_graph(g)
    assert exe2.cache_hit and exe2.path == exe.path
    xin = np.arange(12, dtype=np.float32).reshape(3, 4)
    compare(exe2([xin]), evaluate(g, [xin]))


def test_bad_inputs_are_clear_errors():
    from nnfuse.ir import NnfuseError
    g = graph(lambda b, x: b.relu(x), ((3, 4), "f32"))
    exe = tb.compile_graph(g)
    with pytest.raises(NnfuseError, match="takes 1 inputs"):
        exe([])
    with pytest.raises(NnfuseError, match="expected 12 elements"):
        exe([np.zeros((5,), np.float32)])


def test_autotune_times_then_reuses_cached_choices(tmp_path, monkeypatch):
    """The mechanism (candidates timed, the choice cached per device + kernel source, reused); under the interpreter
    the timings mean nothing, so only the numbers and the cache behaviour are asserted."""
    monkeypatch.setenv("NNFUSE_CACHE_DIR", str(tmp_path))
    g = graph(lambda b, x, y: b.relu(b.matmul(x, y)), ((70, 20), "f32"), ((20, 40), "f32"))
    rng = np.random.default_rng(0)
    ins = [rng.standard_normal((70, 20)).astype(np.float32), rng.standard_normal((20, 40)).astype(np.float32)]
    exe = tb.compile_graph(g, autotune=True)
    assert exe.stats()["autotune"] == {"timed": 1, "cached": 0}
    assert (tmp_path / "triton" / "autotune.json").exists()
    compare(exe(ins), evaluate(g, ins))
    exe2 = tb.compile_graph(g, autotune=True)
    assert exe2.stats()["autotune"] == {"timed": 0, "cached": 1}
    assert exe2.source() == exe.source()
    compare(exe2(ins), evaluate(g, ins))
