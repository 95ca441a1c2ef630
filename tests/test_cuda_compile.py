"""CUDA backend: every kernel kind's generated CUDA C compiles with nvcc for sm_80 and sm_90 (one translation unit,
one nvcc run); numerical checks against the reference evaluator run only where a CUDA GPU exists."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cpu_util import graph
from gpu_programs import attention_program, gemm_program
from nnfuse.backends import cuda
from nnfuse.backends.cuda import nvcc as cuda_build
from nnfuse.backends.cuda.codegen import generate, generate_many
from nnfuse.ir import NnfuseError, evaluate
from nnfuse.passes.lower import lower
from test_cpu_ops import CASES
from test_triton_kernels import case_inputs, compare

HAS_GPU = torch.cuda.is_available()
NO_GPU = "no CUDA GPU on this machine: the cuda backend's numerical checks need one (nvcc compile checks still ran)"


def _nvcc_or_skip():
    try:
        return cuda_build.find_nvcc()
    except NnfuseError:
        pytest.skip("nvcc is not installed here: the CUDA compile checks need the CUDA toolkit")


def hand_programs():
    """Kernel IR the graph lowering does not emit (fused attention) plus gemm dtypes that pick the WMMA path."""
    out = [attention_program(causal=c, mask=m)[0] for c, m in [(False, None), (True, "add"), (False, "bool")]]
    out += [gemm_program(dt, batch=b)[0] for dt, b in [("f32", ()), ("f16", (2,)), ("bf16", ())]]
    return out


def test_every_kernel_kind_compiles_for_sm80_and_sm90(tmp_path, monkeypatch):
    _nvcc_or_skip()
    monkeypatch.setenv("NNFUSE_CACHE_DIR", str(tmp_path))   # a fresh cache: nvcc really runs
    programs = [lower(graph(fn, *specs)) for fn, specs in (CASES[n] for n in sorted(CASES))] + hand_programs()
    kinds = {k.kind for p in programs for k in p.kernels}
    assert kinds == {"pointwise", "reduce", "rownorm", "gemm", "conv", "attention"}
    src = generate_many(programs, "sm_80")
    assert "wmma::mma_sync" in src and "__nv_bfloat16" in src and "nnf_block_max" in src
    path, hit, secs = cuda_build.build(src, ["sm_80", "sm_90"])   # raises CudaBuildError with nvcc's message
    assert not hit and path.endswith(".so")
    # an sm_90 compile of one program through the public entry point (build only: no GPU needed)
    g = graph(CASES["gemm_epilogue_residual"][0], *CASES["gemm_epilogue_residual"][1])
    exe = cuda.compile_graph(g, arch="sm_90", build_only=True)
    assert exe.archs == ["sm_90"] and "nnf_run" in exe.source()


def test_tensor_cores_only_where_the_target_has_them():
    p = gemm_program("bf16")[0]
    assert "wmma::" in generate(p, "sm_80") and "wmma::" in generate(p, "sm_90")
    assert "wmma::" not in generate(p, "sm_75")   # bf16 WMMA needs sm_80: the shared-memory tiled kernel instead
    assert "wmma::" not in generate(gemm_program("f32")[0], "sm_90")


def test_build_only_executable_refuses_to_run():
    _nvcc_or_skip()
    g = graph(lambda b, x: b.relu(x), ((3, 4), "f32"))
    exe = cuda.compile_graph(g, arch="sm_80", build_only=True)
    with pytest.raises(NnfuseError, match="no CUDA GPU.*available backends here: reference, cpu, triton"):
        exe([np.zeros((3, 4), np.float32)])


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU: the no-GPU error path cannot happen")
def test_no_gpu_is_a_clear_error():
    import nnfuse
    g = graph(lambda b, x: b.relu(x), ((3, 4), "f32"))
    with pytest.raises(NnfuseError, match="no CUDA GPU"):
        nnfuse.compile(g, backend="cuda")


def test_missing_nvcc_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(cuda_build.shutil, "which", lambda name: None)
    g = graph(lambda b, x: b.relu(x), ((3, 4), "f32"))
    with pytest.raises(NnfuseError, match="needs nvcc.*available backends without it: reference, cpu, triton"):
        cuda.compile_graph(g, build_only=True)


def test_bad_arch_is_a_clear_error():
    with pytest.raises(NnfuseError, match="bad CUDA target architecture"):
        generate(gemm_program("f32")[0], "sm_xx")
    with pytest.raises(NnfuseError, match="bad CUDA target architecture"):
        cuda_build.arch_flags(["sm_80; rm -rf /"])


@pytest.mark.skipif(not HAS_GPU, reason=NO_GPU)
@pytest.mark.parametrize("name", sorted(CASES))
def test_cuda_matches_reference(name):
    fn, specs = CASES[name]
    g = graph(fn, *specs)
    ins = case_inputs(name, specs)
    compare(cuda.compile_graph(g)(ins), evaluate(g, ins), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not HAS_GPU, reason=NO_GPU)
@pytest.mark.parametrize("which", range(6))
def test_cuda_hand_programs(which):
    makers = [lambda: attention_program(), lambda: attention_program(causal=True, mask="add"),
              lambda: attention_program(mask="bool"), lambda: gemm_program("f32", batch=(2,)),
              lambda: gemm_program("f16", M=130, N=70, K=40), lambda: gemm_program("bf16")]
    p, ins, want = makers[which]()
    tol = 1e-4 if which < 4 else 5e-2
    compare(cuda.compile_program(p)(ins), want, rtol=tol, atol=tol)


def test_hostile_names_never_reach_the_cuda_source():
    """Model-controlled names (graph, inputs, constants, output names, locations) must not reach the .cu text."""
    from nnfuse.ir import Builder
    from nnfuse.passes.lower import lower
    evil = 'x"); system("touch PWNED"); /*\n*/ int main'
    b = Builder('g"; int main(){}//')
    b.meta = {"loc": "*/ system(\"id\"); /*"}
    x = b.input(evil, [2, 3])
    w = b.const(np.ones((2, 3), np.float32), "w\n*/ #include </etc/passwd>")
    g = b.output(b.softmax(b.add(b.relu(x), w), axis=-1), names=["return", "*/"])
    src = cuda.generate(lower(g), "sm_80")
    for bad in ("system", "PWNED", "passwd", "return\"", evil):
        assert bad not in src
    for line in src.splitlines():   # the graph name survives only inside a one-line comment, defanged
        if "int main" in line:
            assert line.startswith("/*") and line.endswith("*/") and line.count("*/") == 1, line


def test_unlowerable_graphs_are_refused_naming_the_cuda_backend():
    """Checked before nvcc runs: symbolic inputs, and a reduction over an empty axis (lowering clamps dims to 1)."""
    from nnfuse.ir import Builder, NnfuseError
    b = Builder("dyn")
    g = b.output(b.relu(b.input("x", ["B", 4])))
    with pytest.raises(NnfuseError, match="the cuda backend needs static shapes"):
        cuda.compile_graph(g, build_only=True)
    b = Builder("empty")
    g = b.output(b.reduce_sum(b.input("x", [0, 4]), axes=[0]))
    with pytest.raises(NnfuseError, match="zero-size tensor f32\\[0,4\\]: the cuda backend"):
        cuda.compile_graph(g, build_only=True)
