"""Ahead-of-time compile of a program's Triton kernels for real GPU targets (sm_80, sm_90) — no GPU needed.

The interpreter (TRITON_INTERPRET=1) checks the numbers on the CPU but accepts code the GPU compiler rejects
(type changes of loop-carried values, 0-d tensors, ops without a lowering). `compile_for_targets` imports the
generated module with @jit in compiled mode and runs Triton's full pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin
through the ptxas Triton ships) for each kernel, with the same constexprs, num_warps and num_stages the launcher uses.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Sequence

from ...ir.errors import NnfuseError
from ...ir.kernel import Program
from .build import load_module, write_source
from .codegen import generate
from .kernels import write_kernel

SIG = {"f64": "*fp64", "f32": "*fp32", "f16": "*fp16", "bf16": "*bf16", "i64": "*i64", "i32": "*i32", "i16": "*i16",
       "i8": "*i8", "u8": "*u8", "bool": "*i1"}


class TritonCompileError(NnfuseError):
    pass


@contextmanager
def _compiled_mode():
    """TRITON_INTERPRET=0 while inside: triton.jit reads it at decoration time, and the code generator at every
    constexpr function call (tl.cdiv returns a bare int instead of a constexpr when it reads 1)."""
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old


def compile_for_targets(p: Program, archs: Sequence[str] = ("sm_80", "sm_90"), **options) -> dict:
    """Compile every kernel of `p` to cubin for each arch; returns {kernel name: {arch: cubin bytes}}.
    Raises TritonCompileError naming the kernel and arch on the first failure."""
    options = dict(options, interpret=False)
    src, launches = generate(p, options)
    with _compiled_mode():
        path, name, _ = write_source(src)
        mod = load_module(path, name + "_aot")
        return _compile_kernels(p, mod, launches, archs, options)


def _compile_kernels(p: Program, mod, launches, archs: Sequence[str], options: dict) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    out: dict = {}
    for k, launch in zip(p.kernels, launches):
        _, _, bufs = write_kernel(k, options)
        sig = {f"p{j}": SIG[b.dtype.name] for j, b in enumerate(bufs)}
        sig.update({c: "constexpr" for c in launch.consts})
        ast = ASTSource(fn=getattr(mod, k.name), signature=sig, constexprs=dict(launch.consts))
        for arch in archs:
            cc = int(str(arch).lower().replace("sm_", ""))
            try:
                c = triton.compile(ast, target=GPUTarget("cuda", cc, 32),
                                   options={"num_warps": launch.num_warps, "num_stages": launch.num_stages})
            except Exception as e:   # noqa: BLE001  (triton raises many types; all mean a codegen bug here)
                raise TritonCompileError(f"triton failed to compile kernel {k.name} ({k.kind}) for {arch}: "
                                         f"{type(e).__name__}: {str(e)[:2000]}") from None
            out.setdefault(k.name, {})[arch] = c.asm["cubin"]
    return out
