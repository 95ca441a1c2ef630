"""Save and load a whole graph: `model.nnir` (text) + `model.npz` (constant data, by name)."""
from __future__ import annotations

import os
import zipfile

import numpy as np

from .errors import NnfuseError
from .graph import Graph
from .parser import parse_file
from .printer import print_graph


def weights_path(nnir_path: str) -> str:
    return os.path.splitext(nnir_path)[0] + ".npz"


def _all_constants(g: Graph, prefix: str = ""):
    """(key, Value) for every constant; a region's constants are keyed by the path of their fused node
    ("3/" = body of node 3), so equal names in different bodies do not collide."""
    for k, v in g.constants.items():
        yield prefix + k, v
    for i, n in enumerate(g.nodes):
        if n.body is not None:
            yield from _all_constants(n.body, f"{prefix}{i}/")


_BITS = ("bfloat16", "float8_e4m3fn", "float8_e5m2", "int4", "uint4", "float4_e2m1fn")


def _write_npz(f, arrays: dict) -> None:
    """np.savez without its keyword pitfalls (a constant named 'file' or 'allow_pickle')."""
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        for k, a in arrays.items():
            with z.open(k + ".npy", "w", force_zip64=True) as out:
                np.lib.format.write_array(out, a, allow_pickle=False)


def save(g: Graph, path: str) -> str:
    """Write the text and the weights file; returns the weights path. Each file is written to a temp file
    (unique per process) and renamed, so a reader never sees half a file."""
    arrays = {}
    for k, v in _all_constants(g):
        if v.data is not None:
            a = np.ascontiguousarray(v.data)
            # ml_dtypes arrays (bf16, fp8, int4) are stored as their bits; the text carries the dtype.
            arrays[k] = a.view(np.uint8).reshape(a.shape + (a.dtype.itemsize,)) if a.dtype.kind == "V" or str(a.dtype) in _BITS else a
    wp = weights_path(path)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(print_graph(g))
    os.replace(tmp, path)
    save_arrays(wp, arrays)
    return wp


def save_arrays(path: str, arrays: dict) -> None:
    """Write arrays to an .npz by name (any name, even 'file'), atomically; np.load(allow_pickle=False) reads it."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        _write_npz(f, arrays)
    os.replace(tmp, path)


def _attach(v, a: np.ndarray, key: str, wp: str) -> None:
    """Give constant `v` the stored array `a`, which must match the type the text declares."""
    t = v.type
    want = t.dtype.np
    if a.dtype != want:   # bf16/fp8/int4 are stored as raw bytes: reinterpret them
        if a.dtype != np.uint8 or a.size != int(np.prod(t.shape, dtype=np.int64)) * want.itemsize:
            raise NnfuseError(f"{wp}: constant @{key} is {a.dtype}{list(a.shape)} but the graph declares {t}")
        a = a.view(want).reshape(t.shape)
    if tuple(a.shape) != tuple(t.shape):
        raise NnfuseError(f"{wp}: constant @{key} has shape {list(a.shape)} but the graph declares {t} "
                          "(is this the weights file of another model?)")
    v.data = a


def load(path: str, weights: str | None = None) -> Graph:
    """Parse `path`; attach constant data from the weights file beside it when present (checked against the text)."""
    g = parse_file(path)
    wp = weights or weights_path(path)
    if weights and not os.path.exists(wp):
        raise NnfuseError(f"{wp}: no such weights file")
    if os.path.exists(wp):
        try:
            with np.load(wp, allow_pickle=False) as z:
                for k, v in _all_constants(g):
                    if k in z.files:
                        _attach(v, z[k], k, wp)
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise NnfuseError(f"{wp}: not a readable nnfuse weights file ({e})") from None
    return g
