"""Element types of the IR, with their numpy storage type.

Low-precision storage types (bf16, fp8, int4) use `ml_dtypes`, which numpy understands.
"""
from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np


@dataclass(frozen=True)
class DType:
    name: str          # the IR spelling: f32, bf16, i4, f8e4m3 ...
    bits: int
    kind: str          # "float", "int", "uint", "bool"
    np_type: type      # numpy scalar type used to hold values of this dtype

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    @property
    def is_int(self) -> bool:
        return self.kind in ("int", "uint")

    @property
    def np(self) -> np.dtype:
        return np.dtype(self.np_type)

    @property
    def itemsize(self) -> float:
        """Bytes per element (0.5 for the 4-bit types)."""
        return self.bits / 8

    def __repr__(self) -> str:
        return self.name

    __str__ = __repr__


_ALL = [
    DType("f64", 64, "float", np.float64),
    DType("f32", 32, "float", np.float32),
    DType("f16", 16, "float", np.float16),
    DType("bf16", 16, "float", ml_dtypes.bfloat16),
    DType("f8e4m3", 8, "float", ml_dtypes.float8_e4m3fn),
    DType("f8e5m2", 8, "float", ml_dtypes.float8_e5m2),
    DType("f4e2m1", 4, "float", ml_dtypes.float4_e2m1fn),
    DType("f8e8m0", 8, "float", ml_dtypes.float8_e8m0fnu),   # MX block scale: a power of two (quantization)
    DType("i64", 64, "int", np.int64),
    DType("i32", 32, "int", np.int32),
    DType("i16", 16, "int", np.int16),
    DType("i8", 8, "int", np.int8),
    DType("i4", 4, "int", ml_dtypes.int4),
    DType("u8", 8, "uint", np.uint8),
    DType("u4", 4, "uint", ml_dtypes.uint4),
    DType("bool", 8, "bool", np.bool_),
]
DTYPES: dict[str, DType] = {d.name: d for d in _ALL}
f64 = DTYPES["f64"]; f32 = DTYPES["f32"]; f16 = DTYPES["f16"]; bf16 = DTYPES["bf16"]  # noqa: E702
i64 = DTYPES["i64"]; i32 = DTYPES["i32"]; i8 = DTYPES["i8"]; u8 = DTYPES["u8"]; boolean = DTYPES["bool"]  # noqa: E702

_BY_NP = {np.dtype(d.np_type): d for d in reversed(_ALL)}


def dtype(x: "str | DType | np.dtype | type") -> DType:
    """The DType named by an IR name, a DType, or a numpy dtype."""
    if isinstance(x, DType):
        return x
    if isinstance(x, str) and x in DTYPES:
        return DTYPES[x]
    try:
        return _BY_NP[np.dtype(x)]
    except (TypeError, KeyError):
        raise ValueError(f"unknown dtype {x!r}; valid: {', '.join(DTYPES)}") from None


def promote(a: DType, b: DType) -> DType:
    """Result dtype of a binary arithmetic op (numpy-like, bf16/f16 kept)."""
    if a == b:
        return a
    if a.is_float != b.is_float:
        return a if a.is_float else b
    if a.name == "bool":
        return b
    if b.name == "bool":
        return a
    return a if a.bits >= b.bits else b
