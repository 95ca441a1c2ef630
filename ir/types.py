"""Tensor types: a shape whose dims are ints or symbols, and a dtype.

A symbolic dim is a string: a symbol (`B`, `S`) or a product of symbols and an integer
(`B*S`, `2*S`), kept in a canonical order so equal products compare equal.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Union

from .dtypes import DType, dtype as to_dtype

Dim = Union[int, str]

_SYM = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _factors(d: Dim) -> tuple[int, list[str]]:
    if isinstance(d, int):
        return d, []
    coef, syms = 1, []
    for f in d.split("*"):
        f = f.strip()
        if f.lstrip("-").isdigit():
            coef *= int(f)
        elif _SYM.fullmatch(f):
            syms.append(f)
        else:
            raise ValueError(f"bad symbolic dim {d!r}")
    return coef, syms


def _make(coef: int, syms: list[str]) -> Dim:
    if not syms or coef == 0:
        return coef
    syms = sorted(syms)
    return "*".join(([str(coef)] if coef != 1 else []) + syms)


def dim_mul(*dims: Dim) -> Dim:
    """Product of dims, symbolic when any factor is."""
    coef, syms = 1, []
    for d in dims:
        c, s = _factors(d)
        coef *= c
        syms += s
    return _make(coef, syms)


def dim_div(a: Dim, b: Dim) -> Dim | None:
    """a / b when it divides exactly (symbols cancel), else None."""
    ca, sa = _factors(a)
    cb, sb = _factors(b)
    sa = list(sa)
    for s in sb:
        if s not in sa:
            return None
        sa.remove(s)
    if cb == 0 or ca % cb:
        return None
    return _make(ca // cb, sa)


def canonical_dim(d: Dim) -> Dim:
    if isinstance(d, bool):
        raise ValueError("a dim cannot be a bool")
    if isinstance(d, int):
        return d
    if hasattr(d, "__index__"):
        return int(d)
    return _make(*_factors(str(d)))


def is_static(shape: Iterable[Dim]) -> bool:
    return all(isinstance(d, int) for d in shape)


def numel(shape: Iterable[Dim]) -> Dim:
    return dim_mul(*shape) if shape else 1


def broadcast_shapes(*shapes: tuple[Dim, ...]) -> tuple[Dim, ...]:
    """Numpy broadcasting over int and symbolic dims; raises ValueError naming the dims that clash."""
    shapes = tuple(tuple(canonical_dim(d) for d in s) for s in shapes)  # "S*B" and "B*S" are one dim
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        res: Dim = 1
        for d in dims:
            if d == 1 or d == res:
                continue
            if res == 1:
                res = d
            else:
                raise ValueError(f"cannot broadcast {' and '.join(fmt_shape(s) for s in shapes)} (dim {i}: {res} vs {d})")
        out.append(res)
    return tuple(out)


def fmt_dim(d: Dim) -> str:
    return str(d)


def fmt_shape(shape: Iterable[Dim]) -> str:
    return "[" + ",".join(fmt_dim(d) for d in shape) + "]"


@dataclass(frozen=True)
class TensorType:
    shape: tuple[Dim, ...]
    dtype: DType

    def __init__(self, shape: Iterable[Dim], dtype: "DType | str"):
        object.__setattr__(self, "shape", tuple(canonical_dim(d) for d in shape))
        object.__setattr__(self, "dtype", to_dtype(dtype))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def static(self) -> bool:
        return is_static(self.shape)

    @property
    def numel(self) -> Dim:
        return numel(self.shape)

    @property
    def nbytes(self) -> int:
        n = self.numel
        return math.ceil(n * self.dtype.bits / 8) if isinstance(n, int) else 0

    def with_shape(self, shape: Iterable[Dim]) -> "TensorType":
        return TensorType(shape, self.dtype)

    def with_dtype(self, dt: "DType | str") -> "TensorType":
        return TensorType(self.shape, dt)

    def __str__(self) -> str:
        return f"{self.dtype.name}{fmt_shape(self.shape)}"

    __repr__ = __str__
