"""Ahead-of-time compile of a program's Triton kernels for real GPU targets (sm_80, sm_90) — no GPU needed.

The interpreter (TRITON_INTERPRET=1) checks the numbers on the CPU but accepts code the GPU compiler rejects
(type changes of loop-carried values, 0-d tensors, ops without a lowering). `compile_for_targets` runs Triton's
full pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin through the ptxas Triton ships) on the generated module for
each kernel, with the same constexprs, num_warps and num_stages the launcher uses.

The compile runs in a child Python with TRITON_INTERPRET=0: an interpreted device-function call patches
triton.language in place and never restores it (triton 3.9 `InterpretedFunction.__call__`), so a process that
has run a kernel in the interpreter can no longer trace one for the GPU ('value' object has no attribute
'dtype'), and the jit decorators of the generated module must be evaluated in compiled mode anyway.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
from typing import Sequence

from ...ir.errors import NnfuseError
from ...ir.kernel import Program
from .build import write_source
from .codegen import generate
from .kernels import write_kernel

SIG = {"f64": "*fp64", "f32": "*fp32", "f16": "*fp16", "bf16": "*bf16", "i64": "*i64", "i32": "*i32", "i16": "*i16",
       "i8": "*i8", "u8": "*u8", "bool": "*i1"}

# The child: job (JSON) on stdin; writes {kernel: {arch: base64 cubin}} or {"error": ...} to job["result"]
# (a file, not stdout: triton or the generated module may print).
_CHILD = r"""
import base64, importlib.util, json, sys
job = json.load(sys.stdin)
spec = importlib.util.spec_from_file_location(job["module"], job["path"])
mod = importlib.util.module_from_spec(spec)
sys.modules[job["module"]] = mod   # triton's jit looks the module up when it inspects the kernels' globals
spec.loader.exec_module(mod)
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
out = {}
for k in job["kernels"]:
    ast = ASTSource(fn=getattr(mod, k["name"]), signature=k["sig"], constexprs=k["consts"])
    for arch in job["archs"]:
        cc = int(str(arch).lower().replace("sm_", ""))
        try:
            c = triton.compile(ast, target=GPUTarget("cuda", cc, 32),
                               options={"num_warps": k["num_warps"], "num_stages": k["num_stages"]})
        except Exception as e:
            out = {"error": {"kernel": k["name"], "kind": k["kind"], "arch": arch,
                             "message": f"{type(e).__name__}: {str(e)[:2000]}"}}
            break
        out.setdefault(k["name"], {})[arch] = base64.b64encode(c.asm["cubin"]).decode()
    if "error" in out:
        break
with open(job["result"], "w") as f:
    json.dump(out, f)
"""


class TritonCompileError(NnfuseError):
    pass


def compile_for_targets(p: Program, archs: Sequence[str] = ("sm_80", "sm_90"), **options) -> dict:
    """Compile every kernel of `p` to cubin for each arch; returns {kernel name: {arch: cubin bytes}}.
    Raises TritonCompileError naming the kernel and arch on the first failure."""
    options = dict(options, interpret=False)
    src, launches = generate(p, options)
    path, name, _ = write_source(src)
    kernels = []
    for k, launch in zip(p.kernels, launches):
        _, _, bufs = write_kernel(k, options)
        sig = {f"p{j}": SIG[b.dtype.name] for j, b in enumerate(bufs)}
        sig.update({c: "constexpr" for c in launch.consts})
        kernels.append({"name": k.name, "kind": k.kind, "sig": sig, "consts": dict(launch.consts),
                        "num_warps": launch.num_warps, "num_stages": launch.num_stages})
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "result.json")
        job = {"module": name + "_aot", "path": path, "archs": list(archs), "kernels": kernels, "result": result}
        env = dict(os.environ, TRITON_INTERPRET="0")
        r = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps(job), capture_output=True, text=True,
                           env=env)
        if r.returncode != 0 or not os.path.exists(result):
            raise TritonCompileError(f"triton AOT compile of {path} failed (exit {r.returncode}): {r.stderr[-2000:]}")
        with open(result) as f:
            res = json.load(f)
    if "error" in res:
        e = res["error"]
        raise TritonCompileError(f"triton failed to compile kernel {e['kernel']} ({e['kind']}) for {e['arch']}: "
                                 f"{e['message']}")
    return {k: {a: base64.b64decode(v) for a, v in per.items()} for k, per in res.items()}
