"""Build CUDA C source with nvcc into a shared library, through an on-disk cache (atomic writes).

Cache key: sha256 of source + nvcc identity + flags. nvcc is run with an argument list (never a shell).
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from typing import Sequence

from ...ir.errors import NnfuseError
from .. import cache_dir as shared_cache_dir


class CudaBuildError(NnfuseError):
    pass


def find_nvcc() -> str:
    cands = [os.environ.get("NVCC")]
    if os.environ.get("CUDA_HOME"):
        cands.append(os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc"))
    cands += ["nvcc", "/usr/local/cuda/bin/nvcc"]
    for c in cands:
        if c:
            path = shutil.which(c)
            if path:
                return path
    raise CudaBuildError("the cuda backend needs nvcc (the CUDA toolkit), and none was found (looked for $NVCC, "
                         "$CUDA_HOME/bin/nvcc, nvcc on PATH, /usr/local/cuda/bin/nvcc); "
                         "available backends without it: reference, cpu, triton")


@functools.lru_cache(maxsize=None)
def nvcc_id(nvcc: str) -> str:
    try:
        r = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise CudaBuildError(f"nvcc {nvcc} does not run ({e})") from None
    return r.stdout.strip().splitlines()[-1] if r.stdout.strip() else nvcc


def arch_flags(archs: Sequence[str]) -> list[str]:
    out = []
    for a in archs:
        n = str(a).lower().replace("sm_", "")
        if not n.isdigit():
            raise CudaBuildError(f"bad CUDA target architecture {a!r} (expected e.g. sm_80 or sm_90)")
        out += ["-gencode", f"arch=compute_{n},code=sm_{n}"]
    return out


def flags_for(archs: Sequence[str]) -> list[str]:
    return ["-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", "-lineinfo"] + arch_flags(archs)


def cache_dir() -> str:
    return shared_cache_dir("cuda")


def build(source: str, archs: Sequence[str]) -> tuple[str, bool, float]:
    """(path of the shared library, cache hit?, nvcc seconds). One nvcc call builds every arch in `archs`."""
    nvcc = find_nvcc()
    flags = flags_for(archs)
    key = hashlib.sha256("\0".join([source, nvcc_id(nvcc), *flags]).encode()).hexdigest()[:40]
    so = os.path.join(cache_dir(), f"nnf-cuda-{key}.so")
    if os.path.exists(so) and os.path.getsize(so) > 0:
        return so, True, 0.0
    t0 = time.perf_counter()
    work = tempfile.mkdtemp(prefix=".build-", dir=cache_dir())
    try:
        src = os.path.join(work, "model.cu")
        with open(src, "w") as f:
            f.write(source)
        out = os.path.join(work, "model.so")
        r = subprocess.run([nvcc, *flags, src, "-o", out], capture_output=True, text=True)
        if r.returncode != 0:
            raise CudaBuildError("nvcc failed (a bug in nnfuse's cuda codegen; use backend='reference'):\n"
                                 + (r.stderr or r.stdout)[-4000:])
        os.replace(out, so)   # atomic: readers see no library or the whole one
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return so, False, time.perf_counter() - t0
