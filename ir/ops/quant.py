"""Quantization ops (QDQ form): quantize, dequantize, quantize_dynamic, matmul_integer, hadamard.

Layouts and formats are described in `nnfuse.ir.quant_formats` (the numpy semantics live there, so the passes,
the reports and these ops share one definition). The forms the passes build and the lowering must match:

  weight-only   y = matmul(x, dequantize(Wq, s[, z]) {axis=0, group=g})         Wq: [K, N] const, s: [K/g or 1, N]
  dynamic W8A8  qx, sx = quantize_dynamic(x) {dtype=i8, axis=-1, group=0}       sx: [..., 1] per token
                acc = matmul_integer(qx, Wq) : i32;  y = mul(mul(cast(acc, f32), sx), sw)
  online FWHT   h' = hadamard(h) = h @ H_n / sqrt(n)  (H_n from `hadamard_matrix`, n = 2^k * m)
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from ..quant_formats import ELEMENTS, QuantError, Scheme, compute_scale, block_stat, dequantize_with, quantize_with
from ..types import TensorType
from .linalg import _matmul_infer
from .registry import Attr, OpError, norm_axis, register

_ELEM_BY_DTYPE = {e.dtype: e for e in ELEMENTS.values()}
QDTYPES = tuple(_ELEM_BY_DTYPE)


def _check_scale(op: str, t: TensorType, s: TensorType, axis: int, group: int, what: str = "scale") -> None:
    if s.rank == 0:
        if group > 0:
            raise OpError(f"op '{op}': a blocked {what} (group {group}) needs rank {t.rank}, got a scalar")
        return
    if s.rank != t.rank:
        raise OpError(f"op '{op}': {what} {s} must have the rank of {t} (or be a scalar)")
    ax = norm_axis(axis, t.rank, op)
    for i, (d, e) in enumerate(zip(t.shape, s.shape)):
        if i == ax and group > 0:
            if isinstance(d, int) and d % group:
                raise OpError(f"op '{op}': group {group} does not divide dim {i} of size {d}")
            if isinstance(d, int) and isinstance(e, int) and e != d // group:
                raise OpError(f"op '{op}': {what} dim {i} is {e}, expected {d}/{group} = {d // group}")
        elif e != 1 and e != d:
            raise OpError(f"op '{op}': {what} {s} does not broadcast onto {t} (dim {i})")


def _quantize_infer(ts, attrs):
    x, s = ts[0], ts[1]
    if not x.dtype.is_float:
        raise OpError(f"quantize needs a float operand, got {x}")
    if attrs["dtype"] not in QDTYPES:
        raise OpError(f"quantize: dtype must be one of {', '.join(QDTYPES)}, got {attrs['dtype']}")
    _check_scale("quantize", x, s, attrs["axis"], attrs["group"])
    if len(ts) == 3:
        _check_scale("quantize", x, ts[2], attrs["axis"], attrs["group"], "zero point")
    return TensorType(x.shape, attrs["dtype"])


def _quantize(x, scale, zero=None, dtype="i8", axis=0, group=0, global_scale=1.0):
    return quantize_with(x, scale, zero, _ELEM_BY_DTYPE[dtype], axis, group, global_scale)


_QATTRS = {"axis": Attr("int", 0), "group": Attr("int", 0), "global_scale": Attr("float", 1.0)}
register("quantize", "misc", _quantize_infer, _quantize, {"dtype": Attr("dtype"), **_QATTRS}, arity=(2, 3),
         doc="codes = saturate(round_half_even(x / (scale * global_scale)) + zero); scale repeated `group` times along `axis`")


def _dequantize_infer(ts, attrs):
    q, s = ts[0], ts[1]
    if q.dtype.name not in QDTYPES and q.dtype.name != "i32":
        raise OpError(f"dequantize needs quantized codes ({', '.join(QDTYPES)}), got {q}")
    _check_scale("dequantize", q, s, attrs["axis"], attrs["group"])
    if len(ts) == 3:
        _check_scale("dequantize", q, ts[2], attrs["axis"], attrs["group"], "zero point")
    return TensorType(q.shape, "f32")


def _dequantize(q, scale, zero=None, axis=0, group=0, global_scale=1.0):
    return dequantize_with(q, scale, zero, axis, group, global_scale)


register("dequantize", "misc", _dequantize_infer, _dequantize, dict(_QATTRS), arity=(2, 3), keep_const=True,
         doc="(q - zero) * scale * global_scale in f32; scale repeated `group` times along `axis`")


def _qdyn_infer(ts, attrs):
    x = ts[0]
    if not x.dtype.is_float:
        raise OpError(f"quantize_dynamic needs a float operand, got {x}")
    if attrs["dtype"] not in QDTYPES:
        raise OpError(f"quantize_dynamic: dtype must be one of {', '.join(QDTYPES)}, got {attrs['dtype']}")
    ax, g = norm_axis(attrs["axis"], x.rank, "quantize_dynamic"), attrs["group"]
    if g == -1:
        shape = [1] * x.rank
    elif g == 0:
        shape = [1 if i == ax else d for i, d in enumerate(x.shape)]
    else:
        d = x.shape[ax]
        if not isinstance(d, int) or d % g:
            raise OpError(f"quantize_dynamic: group {g} does not divide dim {ax} of size {d}")
        shape = [d // g if i == ax else e for i, e in enumerate(x.shape)]
    out = [TensorType(x.shape, attrs["dtype"]), TensorType(shape, attrs["scale_dtype"])]
    if not attrs["symmetric"]:
        out.append(TensorType(shape, attrs["dtype"]))
    return out


def dynamic_scheme(dtype: str, group: int, symmetric: bool, scale_dtype: str, clip: float) -> Scheme:
    try:
        return Scheme(_ELEM_BY_DTYPE[dtype].name, group, scale_dtype, symmetric, clip=clip)
    except QuantError as e:
        raise OpError(f"quantize_dynamic: {e}") from None


def _qdyn(x, dtype="i8", axis=-1, group=0, symmetric=True, scale_dtype="f32", clip=1.0):
    s = dynamic_scheme(dtype, group, symmetric, scale_dtype, clip)
    x = np.asarray(x, np.float32)
    axis = axis % max(x.ndim, 1)
    if symmetric:
        amax, amin = block_stat(np.abs(x), np.max, axis, group), None
    else:
        amax, amin = block_stat(x, np.max, axis, group), block_stat(x, np.min, axis, group)
    scale, zero, gs = compute_scale(amax, s, amin)
    if gs != 1.0:
        raise OpError("quantize_dynamic: two-level (NV) scales are weight-only")
    q = quantize_with(x, scale, zero, s.element, axis, group, 1.0, s.rounding)
    return (q, scale) if symmetric else (q, scale, zero)


register("quantize_dynamic", "misc", _qdyn_infer, _qdyn,
         {"dtype": Attr("dtype"), "axis": Attr("int", -1), "group": Attr("int", 0), "symmetric": Attr("bool", True),
          "scale_dtype": Attr("dtype", "f32"), "clip": Attr("float", 1.0)},
         doc="per-token (group 0 along axis), per-block or per-tensor (group -1) scales computed from the data: "
             "scale = clip*absmax/qmax (symmetric) or (max-min)/(qmax-qmin) with a zero point; results (q, scale[, zero])")


def _mmi_infer(ts, attrs):
    a, b = ts[0], ts[1]
    for t in (a, b):
        if not t.dtype.is_int or t.dtype.bits > 8:
            raise OpError(f"matmul_integer needs 8- or 4-bit integer operands, got {a} and {b}")
    out = _matmul_infer([TensorType(a.shape, "i32"), TensorType(b.shape, "i32")], attrs)
    for z, t in zip(ts[2:], (a, b)):
        if z.dtype != t.dtype:
            raise OpError(f"matmul_integer: zero point {z} must have the dtype of {t}")
    return TensorType(out.shape, "i32")


def _mmi(a, b, a_zero=None, b_zero=None):
    ai, bi = a.astype(np.int32), b.astype(np.int32)
    if a_zero is not None:
        ai = ai - a_zero.astype(np.int32)
    if b_zero is not None:
        bi = bi - b_zero.astype(np.int32)
    return np.matmul(ai, bi).astype(np.int32)   # exact: |a*b| <= 2^14, so K < 2^17 never overflows


register("matmul_integer", "matmul", _mmi_infer, _mmi, arity=(2, 4),
         doc="integer matmul with int32 accumulation (ONNX MatMulInteger): (a - a_zero) @ (b - b_zero)")


# ---------------------------------------------------------------- Hadamard transforms
def _is_prime(p: int) -> bool:
    return p >= 2 and all(p % d for d in range(2, int(math.isqrt(p)) + 1))


def hadamard_split(n: int) -> "tuple[int, int] | None":
    """(m, p): n = m * p with p a power of two and m = 1 or a Paley-I order (q + 1, q prime, q % 4 == 3),
    p as large as possible; None when no such split exists."""
    p = n & -n
    while p >= 1:
        m = n // p
        if m == 1 or (m % 4 == 0 and _is_prime(m - 1) and (m - 1) % 4 == 3) or m == 2:
            return m, p
        p //= 2
    return None


@lru_cache(maxsize=64)
def _paley(m: int) -> np.ndarray:
    if m == 1:
        return np.ones((1, 1), np.float64)
    if m == 2:
        return np.array([[1, 1], [1, -1]], np.float64)
    q = m - 1
    residues = {(i * i) % q for i in range(1, q)}
    chi = np.array([0] + [1 if k in residues else -1 for k in range(1, q)], np.float64)
    jac = np.array([[chi[(j - i) % q] for j in range(q)] for i in range(q)])
    s = np.zeros((m, m))
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = jac
    return s + np.eye(m)


def hadamard_matrix(n: int) -> np.ndarray:
    """The orthonormal matrix the `hadamard` op multiplies by: (H_m kron H_p) / sqrt(n), H_p Sylvester."""
    split = hadamard_split(n)
    if split is None:
        raise OpError(f"hadamard: no Hadamard matrix of size {n} (need n = 2^k * m with m = 1, 2 or q+1, q prime = 3 mod 4)")
    m, p = split
    hp = np.ones((1, 1))
    while hp.shape[0] < p:
        hp = np.block([[hp, hp], [hp, -hp]])
    return (np.kron(_paley(m), hp) / math.sqrt(n)).astype(np.float64)


def fwht(x: np.ndarray) -> np.ndarray:
    """Unnormalized fast Walsh-Hadamard transform along the last axis (size a power of two): O(n log n)."""
    x = np.array(x, dtype=np.float32, copy=True)
    n = x.shape[-1]
    h = 1
    while h < n:
        y = x.reshape(x.shape[:-1] + (n // (2 * h), 2, h))
        a, b = y[..., 0, :].copy(), y[..., 1, :].copy()
        y[..., 0, :], y[..., 1, :] = a + b, a - b
        x = y.reshape(x.shape)
        h *= 2
    return x


def _hadamard_infer(ts, attrs):
    x = ts[0]
    n = x.shape[-1] if x.rank else None
    if not x.dtype.is_float or not isinstance(n, int):
        raise OpError(f"hadamard needs a float operand with a static last dim, got {x}")
    if hadamard_split(n) is None:
        raise OpError(f"hadamard: no Hadamard matrix of size {n} (need n = 2^k * m with m = 1, 2 or q+1, q prime = 3 mod 4)")
    return x


def _hadamard(x):
    """y = x @ (H_m kron H_p) / sqrt(n): FWHT over the power-of-two factor, a dense m x m over the rest."""
    n = x.shape[-1]
    m, p = hadamard_split(n)
    y = fwht(np.asarray(x, np.float32).reshape(x.shape[:-1] + (m, p)))
    if m > 1:
        y = np.einsum("...ab,ac->...cb", y, _paley(m).astype(np.float32))
    return (y.reshape(x.shape) * np.float32(1 / math.sqrt(n))).astype(x.dtype)


register("hadamard", "misc", _hadamard_infer, _hadamard,
         doc="online Hadamard rotation of the last axis (QuaRot): x @ (H_m kron H_p) / sqrt(n), p a power of two")
