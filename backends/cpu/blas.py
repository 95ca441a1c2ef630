"""Find an OpenBLAS for the generated code's gemm calls: the one scipy ships (scipy.libs / scipy_openblas32).

OpenBLAS picks its kernels at load time; its build does not know every new CPU (AMD Zen 4 falls back to the
Haswell AVX2 kernels), so we load it with OPENBLAS_CORETYPE chosen from the CPU flags (AVX-512 -> SkylakeX),
measured 2x faster on such a machine. If the library is already loaded in this process, a private copy is loaded.
"""
from __future__ import annotations

import ctypes
import functools
import glob
import hashlib
import os
import shutil
from typing import Optional


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def coretype() -> Optional[str]:
    fl = cpu_flags()
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= fl:
        return "SkylakeX"
    if {"avx2", "fma"} <= fl:
        return "Haswell"
    return None


def _candidates() -> list[str]:
    out = []
    try:
        import scipy
        root = os.path.dirname(os.path.dirname(scipy.__file__))
        out += sorted(glob.glob(os.path.join(root, "scipy.libs", "libscipy_openblas-*.so")))
    except ImportError:
        pass
    try:
        import scipy_openblas32
        out += sorted(glob.glob(os.path.join(os.path.dirname(scipy_openblas32.__file__), "lib", "libscipy_openblas*.so")))
    except ImportError:
        pass
    return out


def _mapped(path: str) -> bool:
    try:
        with open("/proc/self/maps") as f:
            return os.path.realpath(path) in f.read()
    except OSError:
        return False


@functools.lru_cache(maxsize=None)
def load_blas(threads: int) -> Optional[tuple]:
    """(library, sgemm address, dgemm address) or None when no OpenBLAS is found."""
    if os.environ.get("NNFUSE_NO_BLAS"):
        return None
    from .build import cache_dir
    for path in _candidates():
        ct = coretype()
        use = path
        if _mapped(path) and ct:
            tag = hashlib.sha256(path.encode()).hexdigest()[:12]
            use = os.path.join(cache_dir(), f"openblas-{tag}.so")
            if not os.path.exists(use):
                tmp = use + f".{os.getpid()}.tmp"
                shutil.copyfile(path, tmp)
                os.replace(tmp, use)
        old = os.environ.get("OPENBLAS_CORETYPE")
        try:
            if ct and old is None:
                os.environ["OPENBLAS_CORETYPE"] = ct
            lib = ctypes.CDLL(use)
        except OSError:
            continue
        finally:
            if old is None:
                os.environ.pop("OPENBLAS_CORETYPE", None)
        try:
            s = ctypes.cast(lib.scipy_cblas_sgemm, ctypes.c_void_p).value
            d = ctypes.cast(lib.scipy_cblas_dgemm, ctypes.c_void_p).value
        except AttributeError:
            continue
        for setter in ("scipy_openblas_set_num_threads", "openblas_set_num_threads"):
            if hasattr(lib, setter):
                getattr(lib, setter)(ctypes.c_int(1))   # the generated code runs BLAS calls on its own OpenMP threads
                break
        return lib, s, d
    return None
