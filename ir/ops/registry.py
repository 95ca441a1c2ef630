"""The op registry: each op is defined once — attribute schema, type inference, numpy semantics.

`kind` tells passes and lowering which family an op belongs to:
"unary", "binary", "reduce", "matmul", "conv", "pool", "norm", "attention", "shape", "misc", "region".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..errors import NnfuseError
from ..types import TensorType


class OpError(NnfuseError, ValueError):
    """An op applied to operands or attributes it cannot take."""


REQUIRED = object()
ATTR_KINDS = ("int", "float", "str", "bool", "ints", "floats", "dims", "dtype")


@dataclass(frozen=True)
class Attr:
    kind: str
    default: Any = REQUIRED
    choices: Optional[tuple] = None


@dataclass
class OpDef:
    name: str
    kind: str
    attrs: dict[str, Attr]
    infer: Callable[[list[TensorType], dict], list[TensorType]]
    ref: Callable[..., Any]
    arity: tuple[int, int] = (1, 1)          # min, max operand count (-1: variadic)
    doc: str = ""
    extra: dict = field(default_factory=dict)  # family data, e.g. the numpy function of an elementwise op

    def check_arity(self, n: int) -> None:
        lo, hi = self.arity
        if n < lo or (hi >= 0 and n > hi):
            want = f"{lo}" if lo == hi else f"{lo}..{'any' if hi < 0 else hi}"
            raise OpError(f"op '{self.name}' takes {want} operands, got {n}")

    def normalize_attrs(self, attrs: dict) -> dict:
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise OpError(f"op '{self.name}': unknown attribute(s) {sorted(unknown)}; valid: {sorted(self.attrs)}")
        out = {}
        for k, spec in self.attrs.items():
            if k in attrs and attrs[k] is not None:
                out[k] = _coerce(self.name, k, spec, attrs[k])
            elif spec.default is REQUIRED:
                raise OpError(f"op '{self.name}': missing required attribute '{k}'")
            else:
                out[k] = spec.default
        return out

    def infer_types(self, types: Sequence[TensorType], attrs: dict) -> list[TensorType]:
        try:
            self.check_arity(len(types))
            out = self.infer(list(types), attrs)
        except (OpError, ValueError, IndexError, TypeError, KeyError, ArithmeticError) as e:
            raise OpError(self.error_text(types, str(e))) from None
        return out if isinstance(out, list) else [out]

    def error_text(self, types: Sequence[TensorType], rule: str) -> str:
        """"op 'NAME' on (TYPES): RULE" — every construction error names the op, the operand types and the rule."""
        head = f"op '{self.name}' on ({', '.join(map(str, types))})"
        if rule.startswith(head):
            return rule
        for p in (f"op '{self.name}': ", f"op '{self.name}' ", f"{self.name}: "):
            if rule.startswith(p):
                rule = rule[len(p):]
                break
        return f"{head}: {rule}"

    def run(self, arrays: Sequence[np.ndarray], attrs: dict) -> list[np.ndarray]:
        out = self.ref(*arrays, **attrs)
        return list(out) if isinstance(out, (list, tuple)) else [out]


def _coerce(op: str, name: str, spec: Attr, v: Any) -> Any:
    from ..dtypes import dtype as to_dtype
    k = spec.kind
    try:
        if k == "int":
            if isinstance(v, bool) or int(v) != v:
                raise TypeError
            v = int(v)
        elif k == "float":
            v = float(v)
        elif k == "bool":
            if not isinstance(v, (bool, np.bool_, int)):
                raise TypeError
            v = bool(v)
        elif k == "str":
            if not isinstance(v, str):
                raise TypeError
        elif k in ("ints", "floats", "dims") and isinstance(v, (str, bytes)):
            raise TypeError  # a string is iterable, but never a list attribute
        elif k == "ints":
            if any(isinstance(x, float) and int(x) != x for x in v):
                raise TypeError
            v = tuple(int(x) for x in v)
        elif k == "floats":
            v = tuple(float(x) for x in v)
        elif k == "dims":
            from ..types import canonical_dim
            v = tuple(canonical_dim(x) for x in v)
        elif k == "dtype":
            v = to_dtype(v).name
    except (TypeError, ValueError):
        raise OpError(f"op '{op}': attribute '{name}' must be {k}, got {v!r}") from None
    if spec.choices is not None and v not in spec.choices:
        raise OpError(f"op '{op}': attribute '{name}' must be one of {list(spec.choices)}, got {v!r}")
    return v


OPS: dict[str, OpDef] = {}


def register(name: str, kind: str, infer: Callable, ref: Callable, attrs: Optional[dict] = None,
             arity: tuple[int, int] = (1, 1), doc: str = "", **extra) -> OpDef:
    if name in OPS:
        raise RuntimeError(f"op '{name}' defined twice")
    od = OpDef(name, kind, dict(attrs or {}), infer, ref, arity, doc, extra)
    OPS[name] = od
    return od


def get_op(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise OpError(f"unknown op '{name}'") from None


def norm_axis(axis: int, rank: int, op: str = "") -> int:
    """Map a possibly negative axis into [0, rank)."""
    if not -rank <= axis < max(rank, 1):
        raise OpError(f"{op + ': ' if op else ''}axis {axis} out of range for rank {rank}")
    return axis % max(rank, 1)
