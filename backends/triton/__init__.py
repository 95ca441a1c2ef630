"""The triton backend: kernel IR -> Triton source (one module per program) -> launched with torch tensors.

On a CUDA GPU the kernels run there; with TRITON_INTERPRET=1 (set before triton is imported) they run in Triton's
interpreter on torch CPU tensors, which is how the tests check this backend without a GPU. Weights are moved to the
device once; outputs and one byte arena for all temporaries are allocated once and reused by every call.
"""
from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np

from ...ir import Graph, NnfuseError
from ...ir.kernel import Program
from ..torch_io import to_numpy, to_torch, torch_dtype
from .build import TritonBuildError, load_module, write_source  # noqa: F401
from .codegen import generate
from .expr import TritonCodegenError  # noqa: F401

def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def pick_device(device: str | None = None) -> str:
    import torch
    if device:
        return device
    if interpreting():
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    raise NnfuseError("the triton backend needs a CUDA GPU, or TRITON_INTERPRET=1 in the environment before triton "
                      "is imported (runs the kernels on the CPU, slowly); available here: reference, cpu")


class TritonExecutable:
    name = "triton"

    def __init__(self, program: Program, src: str, path: str, module, device: str, cache_hit: bool, gen_s: float):
        import torch
        self.program = program
        self._src = src
        self.path = path
        self.module = module
        self.device = device
        self.cache_hit = cache_hit
        self.gen_s = gen_s
        self.autotuned: dict = {}
        p = program

        def tdt(b):
            return torch_dtype(b.dtype.name, "triton")
        self._weights = [to_torch(a, device).reshape(-1) for a in p.const_data]
        self._outs = [torch.empty(b.numel, dtype=tdt(b), device=device) for b in p.outputs]
        self._arena = torch.empty(max(p.arena_bytes, 64), dtype=torch.uint8, device=device)
        self._temps = [self._arena[b.offset:b.offset + b.numel * b.dtype.bits // 8].view(tdt(b)) for b in p.temps]
        self._in_dtypes = [tdt(b) for b in p.inputs]

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        p = self.program
        if len(inputs) != len(p.inputs):
            raise NnfuseError(f"model takes {len(p.inputs)} inputs, got {len(inputs)}")
        ins = []
        for x, b, dt in zip(inputs, p.inputs, self._in_dtypes):
            t = to_torch(np.asarray(x), self.device).reshape(-1)
            if t.numel() != b.numel and not (t.numel() == 0 and b.numel == 1):
                raise NnfuseError(f"input {b.index}: expected {b.numel} elements of {b.dtype.name}, got shape {list(np.shape(x))}")
            ins.append(t.to(dt))
        self.module.nnf_run(ins, self._outs, self._weights, self._temps)
        for i, (kind, j) in p.output_aliases.items():
            src = {"input": ins, "const": self._weights, "output": self._outs}[kind][j]
            self._outs[i].copy_(src.reshape(-1)[: self._outs[i].numel()])
        return p.finish([to_numpy(o[: int(np.prod(shape))].reshape(shape)) for o, shape in zip(self._outs, p.output_shapes)])

    def source(self) -> str:
        return self._src

    def stats(self) -> dict:
        s = self.program.stats()
        s.update({"device": self.device, "interpreter": interpreting(), "cache_hit": self.cache_hit,
                  "codegen_seconds": round(self.gen_s, 3), "module": self.path})
        if self.autotuned:
            s["autotune"] = self.autotuned
        return s


def compile_program(program: Program, device: str | None = None, **options) -> TritonExecutable:
    t0 = time.perf_counter()
    if options.pop("fuse_attention", True):
        from ..attention_fuse import fuse_attention
        fuse_attention(program)
    options.setdefault("interpret", interpreting())
    src, _ = generate(program, options)
    path, name, hit = write_source(src)
    dev = pick_device(device)
    try:
        import triton  # noqa: F401
    except ImportError:
        raise NnfuseError("the triton backend needs the 'triton' package: pip install triton") from None
    mod = load_module(path, name)
    exe = TritonExecutable(program, src, path, mod, dev, hit, time.perf_counter() - t0)
    if options.get("autotune"):
        from .autotune import autotune
        tuned = autotune(program, exe, options)
        src, _ = generate(program, options)   # the chosen schedules are now in the kernels
        path, name, hit = write_source(src)
        exe = TritonExecutable(program, src, path, load_module(path, name), dev, hit, time.perf_counter() - t0)
        exe.autotuned = tuned
    return exe


def compile_graph(graph: Graph, device: str | None = None, **options) -> TritonExecutable:
    """Lower a graph to kernel IR, generate Triton source, import it and return the executable."""
    from ...passes.graphutil import check_lowerable
    from ...passes.lower import lower
    check_lowerable(graph, "triton")
    return compile_program(lower(graph), device, **options)
