"""Compile C source with the system compiler into a shared library, through an on-disk cache.

Cache key: sha256 of source + compiler identity + flags. Entries are written atomically (temp file + os.replace)
and carry a sha256 of the library bytes beside them, so a truncated or corrupted entry is detected and rebuilt.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from typing import Optional

from ...ir.errors import NnfuseError

FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math", "-std=gnu11"]


class BuildError(NnfuseError):
    pass


def cache_dir() -> str:
    d = os.environ.get("NNFUSE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "nnfuse")
    os.makedirs(d, exist_ok=True)
    return d


def find_compiler() -> str:
    for cand in [os.environ.get("CC"), "cc", "gcc", "clang"]:
        if cand:
            path = shutil.which(cand)
            if path:
                return path
    raise BuildError("the cpu backend needs a C compiler, and none was found (looked for $CC, cc, gcc, clang); "
                     "install gcc, or use backend='reference'")


@functools.lru_cache(maxsize=None)
def target_macros(cc: str, flags: tuple = tuple(FLAGS)) -> frozenset:
    """The predefined macros of `cc` under `flags` (which ISA extensions -march=native enabled), e.g. __AVX512F__."""
    try:
        r = subprocess.run([cc, *[f for f in flags if f.startswith(("-m", "-D"))], "-dM", "-E", "-x", "c", os.devnull],
                           capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    return frozenset(ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("#define "))


@functools.lru_cache(maxsize=None)
def compiler_id(cc: str) -> str:
    try:
        r = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        raise BuildError(f"C compiler {cc} does not run ({e}); use backend='reference'") from None
    return r.stdout.splitlines()[0] if r.stdout else cc


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _valid(so: str, sums: str) -> bool:
    try:
        with open(sums) as f:
            want = f.read().strip()
        return bool(want) and _digest(so) == want
    except OSError:
        return False


def build(source: str, flags: Optional[list] = None) -> tuple[str, bool, float]:
    """Return (path of the shared library, cache hit?, compile seconds)."""
    import time
    cc = find_compiler()
    flags = list(flags or FLAGS)
    key = hashlib.sha256("\0".join([source, compiler_id(cc), *flags]).encode()).hexdigest()[:40]
    d = cache_dir()
    so = os.path.join(d, f"nnf-{key}.so")
    sums = so + ".sha256"
    if os.path.exists(so) and _valid(so, sums):
        return so, True, 0.0
    t0 = time.perf_counter()
    work = tempfile.mkdtemp(prefix=".build-", dir=d)
    try:
        src = os.path.join(work, "model.c")
        with open(src, "w") as f:
            f.write(source)
        out = os.path.join(work, "model.so")
        r = subprocess.run([cc, *flags, src, "-o", out, "-lm"], capture_output=True, text=True)
        if r.returncode != 0:
            raise BuildError(f"C compiler failed (a bug in nnfuse's cpu codegen; use backend='reference'):\n{r.stderr[-3000:]}")
        digest = _digest(out)
        os.replace(out, so)                 # atomic: readers see the old entry or the whole new one
        _atomic_write(sums, digest.encode())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return so, False, time.perf_counter() - t0


# OpenMP threads that finish a loop spin before sleeping. libgomp's default (300k spins) wastes whole time slices
# when the machine is shared (measured 3x slower with other jobs running); a short spin still covers the gap
# between two back-to-back kernels. Applies only if the user has not set it, and only to the libgomp we load.
OMP_ENV = {"GOMP_SPINCOUNT": "10000"}


def load(path: str) -> ctypes.CDLL:
    saved = {k: os.environ.get(k) for k in OMP_ENV}
    for k, v in OMP_ENV.items():
        if saved[k] is None and not os.environ.get("OMP_WAIT_POLICY"):
            os.environ[k] = v
    try:
        return ctypes.CDLL(path)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
