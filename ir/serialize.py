"""Save and load a whole graph: `model.nnir` (text) + `model.npz` (constant data, by name)."""
from __future__ import annotations

import os
import zipfile

import numpy as np

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
    """Write the text and the weights file; returns the weights path."""
    arrays = {}
    for k, v in _all_constants(g):
        if v.data is not None:
            a = np.ascontiguousarray(v.data)
            # ml_dtypes arrays (bf16, fp8, int4) are stored as their bits; the text carries the dtype.
            arrays[k] = a.view(np.uint8).reshape(a.shape + (a.dtype.itemsize,)) if a.dtype.kind == "V" or str(a.dtype) in _BITS else a
    wp = weights_path(path)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(print_graph(g))
    os.replace(tmp, path)
    with open(wp + ".tmp", "wb") as f:
        _write_npz(f, arrays)
    os.replace(wp + ".tmp", wp)
    return wp


def load(path: str, weights: str | None = None) -> Graph:
    """Parse `path`; attach constant data from the weights file beside it when present."""
    g = parse_file(path)
    wp = weights or weights_path(path)
    if os.path.exists(wp):
        with np.load(wp, allow_pickle=False) as z:
            for k, v in _all_constants(g):
                if k in z.files:
                    a = z[k]
                    want = v.type.dtype.np
                    if a.dtype != want:
                        a = a.view(want).reshape(v.type.shape)
                    v.data = a
    return g
