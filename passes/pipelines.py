"""The O1-O3 presets for the passes of this package (the manager appends other helpers' passes after).

O1 cleanup: exact local simplifications. O2: O1 + BatchNorm folding, recognition of written-out
softmax / norms / GELU / attention, and fusion into regions. O3: O2 + regions absorbing multi-reader pointwise
producers as extra results.
"""
from .manager import PIPELINES

O1 = ["infer-shapes", "canonicalize", "simplify-algebra", "fold-constants", "cse", "dce"]
O2 = ["fold-batchnorm", "recognize-softmax", "recognize-norms", "recognize-gelu", "recognize-attention",
      "cleanup-late", "fuse-attention", "fuse-gemm", "fuse-reduction", "fuse-pointwise"]
O3 = ["fuse-producers"]

for _lvl, _names in (("O1", O1), ("O2", O2), ("O3", O3)):
    PIPELINES[_lvl][:0] = [n for n in _names if n not in PIPELINES[_lvl]]
