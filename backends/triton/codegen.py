"""A kernel IR Program -> one Python module of @triton.jit kernels plus `nnf_run`, which launches them in order.

Only generated identifiers reach the source (k0, p3, v12; buffers are passed as inp[i] / out[i] / w[i] / tmp[i]);
model-provided names appear only in comments, through `safe_comment`.
"""
from __future__ import annotations

from ...ir.kernel import Buffer, Program, safe_comment
from .expr import PRELUDE
from .kernels import Launch, write_kernel


def arg_ref(b: Buffer) -> str:
    return {"input": "inp", "output": "out", "const": "w", "temp": "tmp"}[b.kind] + f"[{b.index}]"


def launch_line(launch: Launch, bufs: list) -> str:
    grid = ", ".join(str(int(g)) for g in launch.grid)
    args = [arg_ref(b) for b in bufs] + [f"{k}={int(v)}" for k, v in launch.consts.items()]
    args += [f"num_warps={int(launch.num_warps)}", f"num_stages={int(launch.num_stages)}"]
    return f"    {launch.name}[({grid},)]({', '.join(args)})"


def generate(p: Program, options: dict | None = None) -> tuple[str, list[Launch]]:
    options = options or {}
    parts = [f"# nnfuse triton backend: program {safe_comment(p.name)}", PRELUDE]
    calls, launches = [], []
    for k in p.kernels:
        lines, launch, bufs = write_kernel(k, options)
        ops = ", ".join(safe_comment(o, 30) for o in k.meta.get("ops", []))[:100]
        parts.append(f"\n# {k.name}: {k.kind} ({ops})\n" + "\n".join(lines) + "\n")
        calls.append(launch_line(launch, bufs))
        launches.append(launch)
    parts.append("\ndef nnf_run(inp, out, w, tmp):\n" + ("\n".join(calls) if calls else "    pass") + "\n")
    return "\n".join(parts), launches
