"""numpy <-> torch device tensors for the backends that run on torch (triton, cuda): one dtype table, bf16 by bits."""
from __future__ import annotations

import numpy as np

from ..ir import NnfuseError

TORCH_DTYPES = {"f64": "float64", "f32": "float32", "f16": "float16", "bf16": "bfloat16", "i64": "int64",
                "i32": "int32", "i16": "int16", "i8": "int8", "u8": "uint8", "bool": "bool"}


def torch_dtype(name: str, backend: str):
    """The torch dtype for IR dtype `name`; an NnfuseError naming the backend when it has none."""
    import torch
    if name not in TORCH_DTYPES:
        raise NnfuseError(f"dtype {name} is not supported on the {backend} backend (supported: {', '.join(TORCH_DTYPES)})")
    return getattr(torch, TORCH_DTYPES[name])


def to_torch(a: np.ndarray, device: str):
    """A contiguous numpy array on `device` (ml_dtypes bf16 reinterpreted through its bits)."""
    import torch
    a = np.ascontiguousarray(a)
    if a.dtype.name == "bfloat16":
        t = torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
    else:
        t = torch.from_numpy(a)
    return t.to(device)


def to_numpy(t) -> np.ndarray:
    """A host copy of a tensor (bf16 comes back as ml_dtypes bfloat16)."""
    import torch
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        import ml_dtypes
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    return t.numpy().copy()
