"""Write generated Triton source to a content-addressed cache file (atomically) and import it with importlib.

Triton's @jit reads the source of the functions it decorates, so the module must be a real file; nothing is
exec'd from a string. The module name is derived from the content hash only.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from types import ModuleType

from ...ir.errors import NnfuseError
from .. import cache_dir as shared_cache_dir


class TritonBuildError(NnfuseError):
    pass


def cache_dir() -> str:
    return shared_cache_dir("triton")


def write_source(source: str) -> tuple[str, str, bool]:
    """(path, module name, cache hit?) for the source, written once per content hash."""
    key = hashlib.sha256(source.encode()).hexdigest()[:32]
    name = f"nnf_triton_{key}"
    path = os.path.join(cache_dir(), name + ".py")
    try:
        with open(path) as f:
            if f.read() == source:
                return path, name, True
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".py")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(source)
        os.replace(tmp, path)   # atomic: concurrent readers see the old file or the whole new one
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path, name, False


def load_module(path: str, name: str) -> ModuleType:
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == path:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TritonBuildError(f"cannot import generated triton module {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod   # triton's jit looks the module up when it inspects the kernels' globals
    try:
        spec.loader.exec_module(mod)
    except Exception as e:
        del sys.modules[name]
        raise TritonBuildError(f"generated triton module {path} failed to import (a bug in the triton codegen): "
                               f"{type(e).__name__}: {e}") from None
    return mod
