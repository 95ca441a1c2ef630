"""The cuda backend: kernel IR -> CUDA C -> nvcc -> shared library loaded with ctypes, run on torch CUDA tensors.

`compile_graph(graph, arch="sm_80" | ["sm_80", "sm_90"], build_only=False)`. The target architecture defaults
to the GPU's own (or sm_80 without one). Without a GPU, `build_only=True` still generates and compiles (what CI
checks); calling such an executable raises a clear error naming the backends available here.
"""
from __future__ import annotations

import ctypes
from typing import Sequence, Union

import numpy as np

from ...ir import Graph, NnfuseError
from ...ir.kernel import Program
from ..torch_io import to_numpy, to_torch, torch_dtype
from .nvcc import CudaBuildError, build, find_nvcc  # noqa: F401
from .codegen import ABI_VERSION, CudaCodegenError, arch_number, generate  # noqa: F401

def gpu_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def no_gpu_error() -> NnfuseError:
    return NnfuseError("no CUDA GPU: the cuda backend compiles here (build_only=True) but cannot run; "
                       "available backends here: reference, cpu, triton (with TRITON_INTERPRET=1)")


def default_arch() -> str:
    if gpu_available():
        import torch
        major, minor = torch.cuda.get_device_capability()
        return f"sm_{major}{minor}"
    return "sm_80"


class CudaExecutable:
    name = "cuda"

    def __init__(self, program: Program, src: str, lib_path: str, archs: list, cache_hit: bool, build_s: float,
                 build_only: bool):
        self.program = program
        self._src = src
        self.lib_path = lib_path
        self.archs = archs
        self.cache_hit = cache_hit
        self.build_s = build_s
        self.build_only = build_only
        self.lib = None
        if not build_only:
            self._setup()

    def _setup(self) -> None:
        import torch
        p = self.program
        self.lib = ctypes.CDLL(self.lib_path)
        if self.lib.nnf_abi() != ABI_VERSION:
            raise CudaBuildError(f"{self.lib_path}: stale cuda backend library")
        self._run = self.lib.nnf_run
        self._run.argtypes = [ctypes.c_void_p] * 5
        self._run.restype = ctypes.c_int
        dev = "cuda"

        def tdt(b):
            return torch_dtype(b.dtype.name, "cuda")

        def to_dev(a: np.ndarray):
            return to_torch(a, dev).reshape(-1)
        self._to_dev = to_dev
        self._weights = [to_dev(a) for a in p.const_data]
        self._outs = [torch.empty(max(b.numel, 1), dtype=tdt(b), device=dev) for b in p.outputs]
        self._arena = torch.empty(max(p.arena_bytes, 64), dtype=torch.uint8, device=dev)
        self._in_dtypes = [tdt(b) for b in p.inputs]
        ptrs = lambda ts: (ctypes.c_void_p * max(len(ts), 1))(*[t.data_ptr() for t in ts])  # noqa: E731
        self._wp, self._op = ptrs(self._weights), ptrs(self._outs)

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self.build_only or not gpu_available():
            raise no_gpu_error()
        import torch
        p = self.program
        if len(inputs) != len(p.inputs):
            raise NnfuseError(f"model takes {len(p.inputs)} inputs, got {len(inputs)}")
        ins = [self._to_dev(np.asarray(x)).to(dt) for x, dt in zip(inputs, self._in_dtypes)]
        for t, b in zip(ins, p.inputs):
            if t.numel() != b.numel:
                raise NnfuseError(f"input {b.index}: expected {b.numel} elements of {b.dtype.name}, got {t.numel()}")
        ip = (ctypes.c_void_p * max(len(ins), 1))(*[t.data_ptr() for t in ins])
        stream = torch.cuda.current_stream().cuda_stream
        rc = self._run(ip, self._op, self._wp, ctypes.c_void_p(self._arena.data_ptr()), ctypes.c_void_p(stream))
        if rc != 0:
            raise NnfuseError(f"cuda backend: kernel launch failed (cudaError {rc})")
        torch.cuda.synchronize()
        return p.finish([to_numpy(o[: int(np.prod(shape))].reshape(shape)) for o, shape in zip(self._outs, p.output_shapes)])

    def source(self) -> str:
        return self._src

    def stats(self) -> dict:
        s = self.program.stats()
        s.update({"archs": self.archs, "cache_hit": self.cache_hit, "nvcc_seconds": round(self.build_s, 3),
                  "library": self.lib_path, "build_only": self.build_only})
        return s


def compile_program(program: Program, arch: Union[str, Sequence[str], None] = None, build_only: bool = False,
                    **options) -> CudaExecutable:
    archs = [arch] if isinstance(arch, str) else list(arch or [default_arch()])
    if not build_only and not gpu_available():
        raise no_gpu_error()
    if options.pop("fuse_attention", True):
        from ..attention_fuse import fuse_attention
        fuse_attention(program)
    # kernels pick their code path (tensor cores or not) for the lowest target they must run on
    src = generate(program, min(archs, key=arch_number))
    path, hit, secs = build(src, archs)
    return CudaExecutable(program, src, path, archs, hit, secs, build_only)


def compile_graph(graph: Graph, arch: Union[str, Sequence[str], None] = None, build_only: bool = False,
                  **options) -> CudaExecutable:
    """Lower a graph to kernel IR, generate CUDA C, build it with nvcc (cached) and load it."""
    from ...passes.graphutil import check_lowerable
    from ...passes.lower import lower
    check_lowerable(graph, "cuda")
    find_nvcc()
    return compile_program(lower(graph), arch, build_only, **options)
