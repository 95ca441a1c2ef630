"""Optional autotuning of the gemm / conv / attention kernels' Triton schedules, with results cached on disk.

`compile_graph(..., autotune=True)`: kernels run in program order on random inputs; each tunable kernel is timed
under a few block/warp/stage configurations (triton.testing.do_bench on a GPU; one timed launch under the
interpreter, where only the mechanism — not the choice — means anything), the fastest is kept in its Schedule,
and the source is generated again. Choices are cached in `<cache>/triton/autotune.json`, keyed by device name
and the kernel's source text, so a later compile of the same kernel on the same device does not time again.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time

import numpy as np

from ...ir.kernel import Program
from .build import cache_dir
from .codegen import arg_ref
from .kernels import write_kernel

TUNABLE = ("gemm", "conv", "attention")
GEMM_CONFIGS = [(64, 64, 32, 4, 3), (128, 64, 32, 4, 3), (64, 128, 32, 4, 3), (128, 128, 32, 8, 3),
                (128, 128, 64, 8, 3), (32, 64, 32, 4, 4)]
ATTN_CONFIGS = [(64, 64, 4, 2), (128, 64, 8, 2), (64, 32, 4, 3), (128, 128, 8, 2)]


def _candidates(kind: str, interpret: bool) -> list:
    if kind == "attention":
        cs = [({"BLOCK_M": m, "BLOCK_N": n}, w, s) for m, n, w, s in ATTN_CONFIGS]
    else:
        cs = [({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, w, s) for m, n, k, w, s in GEMM_CONFIGS]
    return cs[:2] if interpret else cs


def _path() -> str:
    return os.path.join(cache_dir(), "autotune.json")


def _load() -> dict:
    try:
        with open(_path()) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _save(entries: dict) -> None:
    data = _load()
    data.update(entries)
    fd, tmp = tempfile.mkstemp(dir=cache_dir(), prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, _path())


def _device_name(device: str) -> str:
    import torch
    return torch.cuda.get_device_name() if device.startswith("cuda") else "triton-interpreter"


def _key(device: str, lines: list) -> str:
    return hashlib.sha256((_device_name(device) + "\n" + "\n".join(lines)).encode()).hexdigest()[:32]


def _time(fn, device: str) -> float:
    if device.startswith("cuda"):
        from triton.testing import do_bench
        return float(do_bench(fn, warmup=5, rep=20))
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def autotune(program: Program, exe, options: dict) -> dict:
    """Tune the program's kernels in place (their Schedules); returns {"timed": n, "cached": n}."""
    import torch
    interpret = bool(options.get("interpret"))
    cache = _load()
    new: dict = {}
    stats = {"timed": 0, "cached": 0}
    rng = np.random.default_rng(0)
    ins = []
    for b, dt in zip(program.inputs, exe._in_dtypes):
        if dt.is_floating_point:
            ins.append(torch.from_numpy(rng.standard_normal(b.numel).astype(np.float32)).to(dt).to(exe.device))
        else:
            ins.append(torch.zeros(b.numel, dtype=dt, device=exe.device))
    lists = {"inp": ins, "out": exe._outs, "w": exe._weights, "tmp": exe._temps}

    def tensor(b):
        ref = arg_ref(b)
        return lists[ref.split("[")[0]][b.index]
    for k in program.kernels:
        lines, launch, bufs = write_kernel(k, options)
        fn = getattr(exe.module, k.name)
        args = [tensor(b) for b in bufs]

        def run(ln):
            return lambda: fn[ln.grid](*args, **ln.consts, num_warps=ln.num_warps, num_stages=ln.num_stages)
        if k.kind in TUNABLE:
            key = _key(exe.device, lines)
            if key in cache:
                blk, w, s = cache[key]
                stats["cached"] += 1
            else:
                best = None
                for blk_c, w_c, s_c in _candidates(k.kind, interpret):
                    k.schedule.block, k.schedule.num_warps, k.schedule.num_stages = dict(blk_c), w_c, s_c
                    _, ln, _ = write_kernel(k, options)
                    t = _time(run(ln), exe.device)
                    if best is None or t < best[0]:
                        best = (t, blk_c, w_c, s_c)
                _, blk, w, s = best
                new[key] = [blk, w, s]
                stats["timed"] += 1
            k.schedule.block, k.schedule.num_warps, k.schedule.num_stages = dict(blk), int(w), int(s)
            _, launch, _ = write_kernel(k, options)
        run(launch)()   # later kernels are tuned on the real intermediate values
    if new:
        _save(new)
    return stats
