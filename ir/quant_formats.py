"""Quantization formats as data, with the exact numpy reference quantize/dequantize.

A `Scheme` says how one tensor is quantized:
  elem         element format: int8, uint8, int4, uint4, fp8_e4m3, fp8_e5m2, fp4_e2m1
  group        granularity along `axis`: -1 per-tensor, 0 per-channel (whole axis shares a scale), g > 0 blocks of g
  scale_dtype  f32 (default), f8e8m0 (MX: power-of-two scale, OCP MX v1.0), f8e4m3 (NV: fp8 block scale
               times one f32 per-tensor scale)
  symmetric    zero point 0 (else an integer zero point; int elements only)
  rounding     "rne" (round half to even; the only one ONNX and the kernels implement) or "rna" (half away)

Scale layout (what the `dequantize` op and the kernels read): `scale` has the rank of `q`; at `axis` its size is
q.shape[axis] // group (group > 0) or 1; at every other dim it is 1 or q's size (numpy broadcasting).
    value = (q - zero[expanded]) * scale[expanded] * global_scale
where `expanded` repeats each scale `group` times along `axis`. A matmul weight is [K, N] with axis 0 (K, the
reduction dim): per-channel scale [1, N], group g scale [K/g, N]. A per-token activation [..., K] uses axis -1.

Packed storage (`pack_nibbles`): two 4-bit codes per byte along the last axis, element 2i in the LOW nibble and
2i+1 in the HIGH nibble (the ONNX int4 / com.microsoft MatMulNBits order); an odd length is padded with code 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import ml_dtypes
import numpy as np

from .errors import NnfuseError


class QuantError(NnfuseError, ValueError):
    """A scheme that cannot apply to a tensor (bad group size, unknown format, ...)."""


@dataclass(frozen=True)
class Element:
    name: str
    dtype: str            # IR dtype name of the stored codes
    kind: str             # "int" | "float"
    qmin: float
    qmax: float
    emax: int = 0         # exponent of the largest normal (float) / implicit scale exponent (MXINT8: 2^-6 -> 0)

    @property
    def np(self) -> np.dtype:
        from .dtypes import dtype
        return dtype(self.dtype).np

    @property
    def bits(self) -> int:
        from .dtypes import dtype
        return dtype(self.dtype).bits


ELEMENTS: dict[str, Element] = {e.name: e for e in [
    Element("int8", "i8", "int", -128, 127),
    Element("uint8", "u8", "int", 0, 255),
    Element("int4", "i4", "int", -8, 7),
    Element("uint4", "u4", "int", 0, 15),
    Element("fp8_e4m3", "f8e4m3", "float", -448.0, 448.0, 8),
    Element("fp8_e5m2", "f8e5m2", "float", -57344.0, 57344.0, 15),
    Element("fp4_e2m1", "f4e2m1", "float", -6.0, 6.0, 2),
]}
SCALE_DTYPES = ("f32", "f16", "bf16", "f8e8m0", "f8e4m3")
ROUNDINGS = ("rne", "rna")


@dataclass(frozen=True)
class Scheme:
    elem: str = "int8"
    group: int = 0
    scale_dtype: str = "f32"
    symmetric: bool = True
    rounding: str = "rne"
    clip: float = 1.0        # scale from clip * absmax (activation clipping, as QuaRot's 0.9)

    def __post_init__(self):
        if self.elem not in ELEMENTS:
            raise QuantError(f"unknown element format '{self.elem}'; valid: {', '.join(ELEMENTS)}")
        if self.scale_dtype not in SCALE_DTYPES:
            raise QuantError(f"unknown scale dtype '{self.scale_dtype}'; valid: {', '.join(SCALE_DTYPES)}")
        if self.rounding not in ROUNDINGS:
            raise QuantError(f"unknown rounding '{self.rounding}'; valid: {', '.join(ROUNDINGS)}")
        if self.group < -1:
            raise QuantError(f"group must be -1 (per-tensor), 0 (per-channel) or a block size, got {self.group}")
        if not self.symmetric and ELEMENTS[self.elem].kind != "int":
            raise QuantError(f"asymmetric quantization needs an integer element format, not {self.elem}")
        if self.scale_dtype == "f8e8m0" and self.group <= 0:
            raise QuantError("an E8M0 (MX) scale needs a block size (group > 0)")

    @property
    def element(self) -> Element:
        return ELEMENTS[self.elem]

    @property
    def is_mx(self) -> bool:
        return self.scale_dtype == "f8e8m0"

    @property
    def is_nv(self) -> bool:
        return self.scale_dtype == "f8e4m3"

    def describe(self) -> str:
        gran = {-1: "per-tensor", 0: "per-channel"}.get(self.group, f"g{self.group}")
        extra = "" if self.symmetric else " asym"
        return f"{self.elem} {gran} scale:{self.scale_dtype}{extra}"


# Named formats of the papers: MX (OCP v1.0) = 32 elements + E8M0; NV = 16 elements + E4M3 (+ f32 per tensor).
FORMATS: dict[str, Scheme] = {
    "int8": Scheme("int8"), "int4": Scheme("int4"),
    "int4_g32": Scheme("int4", 32), "int4_g64": Scheme("int4", 64), "int4_g128": Scheme("int4", 128),
    "fp8_e4m3": Scheme("fp8_e4m3"), "fp8_e5m2": Scheme("fp8_e5m2"),
    "mxfp4": Scheme("fp4_e2m1", 32, "f8e8m0"), "mxfp8": Scheme("fp8_e4m3", 32, "f8e8m0"),
    "mxfp8_e5m2": Scheme("fp8_e5m2", 32, "f8e8m0"), "mxint8": Scheme("int8", 32, "f8e8m0"),
    "mxint4": Scheme("int4", 32, "f8e8m0"),
    "nvfp4": Scheme("fp4_e2m1", 16, "f8e4m3"), "nvint4": Scheme("int4", 16, "f8e4m3"),
}


def scheme(x: "str | Scheme") -> Scheme:
    if isinstance(x, Scheme):
        return x
    if x in FORMATS:
        return FORMATS[x]
    raise QuantError(f"unknown quantization format '{x}'; valid: {', '.join(FORMATS)}")


# ---------------------------------------------------------------- rounding and element casts
def round_int(x: np.ndarray, rounding: str = "rne") -> np.ndarray:
    if rounding == "rna":
        return np.sign(x) * np.floor(np.abs(x) + np.float32(0.5))
    return np.rint(x)   # IEEE round half to even


def to_element(x: np.ndarray, elem: Element, rounding: str = "rne") -> np.ndarray:
    """Scaled float32 values -> stored codes (saturating: out-of-range values clamp to the largest finite)."""
    x = np.asarray(x, np.float32)
    if elem.kind == "int":
        return np.clip(round_int(x, rounding), elem.qmin, elem.qmax).astype(elem.np)
    # ml_dtypes casts round to nearest even but overflow to NaN for e4m3fn: clamp first (saturating, as the MX spec)
    x = np.where(np.isnan(x), np.float32(0), x)
    return np.clip(x, np.float32(elem.qmin), np.float32(elem.qmax)).astype(elem.np)


def expand(s: np.ndarray, axis: int, group: int, size: int) -> np.ndarray:
    """Repeat each scale `group` times along `axis` (group <= 0: unchanged; numpy broadcasting does the rest)."""
    if group <= 0 or s.shape[axis] == size:
        return s
    return np.repeat(s, group, axis=axis)


def quantize_with(x: np.ndarray, scale: np.ndarray, zero: Optional[np.ndarray], elem: Element, axis: int = 0,
                  group: int = 0, global_scale: float = 1.0, rounding: str = "rne") -> np.ndarray:
    """The `quantize` op: codes = to_element(x / (scale * global_scale)) + zero."""
    x = np.asarray(x, np.float32)
    axis = axis % max(x.ndim, 1)
    s = expand(np.asarray(scale).astype(np.float32), axis, group, x.shape[axis] if x.ndim else 1)
    if global_scale != 1.0:
        s = s * np.float32(global_scale)
    y = x / s
    if zero is None:
        return to_element(y, elem, rounding)
    z = expand(np.asarray(zero).astype(np.float32), axis, group, x.shape[axis] if x.ndim else 1)
    return np.clip(round_int(y, rounding) + z, elem.qmin, elem.qmax).astype(elem.np)


def dequantize_with(q: np.ndarray, scale: np.ndarray, zero: Optional[np.ndarray] = None, axis: int = 0, group: int = 0,
                    global_scale: float = 1.0) -> np.ndarray:
    """The `dequantize` op: (q - zero) * scale * global_scale in float32 (in that order: the kernels match it)."""
    q = np.asarray(q)
    axis = axis % max(q.ndim, 1)
    n = q.shape[axis] if q.ndim else 1
    v = q.astype(np.float32)
    if zero is not None:
        v = v - expand(np.asarray(zero).astype(np.float32), axis, group, n)
    v = v * expand(np.asarray(scale).astype(np.float32), axis, group, n)
    if global_scale != 1.0:
        v = v * np.float32(global_scale)
    return v.astype(np.float32)


# ---------------------------------------------------------------- scale computation
def block_stat(x: np.ndarray, fn, axis: int, group: int) -> np.ndarray:
    """fn (np.max / np.min over absmax...) over each scale's elements, keepdims, in the scale layout."""
    if group == -1:
        return fn(x, axis=None, keepdims=True) if x.ndim else fn(x)
    if group == 0:
        return fn(x, axis=axis, keepdims=True)
    n = x.shape[axis]
    if n % group:
        raise QuantError(f"block size {group} does not divide the dimension {n}")
    shp = x.shape[:axis] + (n // group, group) + x.shape[axis + 1:]
    return fn(x.reshape(shp), axis=axis + 1)


@dataclass
class QTensor:
    """A quantized tensor: codes, scale (and zero) in the layout described in the module doc."""
    q: np.ndarray
    scale: np.ndarray
    zero: Optional[np.ndarray]
    axis: int
    group: int
    global_scale: float
    scheme: Scheme

    def dequantize(self) -> np.ndarray:
        return dequantize_with(self.q, self.scale, self.zero, self.axis, self.group, self.global_scale)

    @property
    def nbytes(self) -> int:
        from .dtypes import dtype
        total = math.ceil(self.q.size * self.scheme.element.bits / 8)
        total += self.scale.size * dtype(self.scheme.scale_dtype).bits // 8
        if self.zero is not None:
            total += math.ceil(self.zero.size * self.scheme.element.bits / 8)
        return total + (4 if self.global_scale != 1.0 else 0)


def compute_scale(amax: np.ndarray, s: Scheme, amin: Optional[np.ndarray] = None, tensor_amax: Optional[float] = None):
    """(scale, zero, global_scale) from block statistics. amax >= 0 (absmax for symmetric; max for asymmetric)."""
    e = s.element
    amax = np.asarray(amax, np.float32) * np.float32(s.clip)
    if s.is_mx:
        # OCP MX v1.0 §6.3: shared exponent = floor(log2(amax)) - emax_elem; MXINT8 codes carry 2^-6
        with np.errstate(divide="ignore"):
            ex = np.floor(np.log2(np.where(amax > 0, amax, 1.0)))
        ex = ex - (e.emax if e.kind == "float" else 0)
        if e.kind == "int":
            ex = ex - (e.bits - 2)            # int8 codes are 1.6 fixed point: value = code * 2^(X - 6)
        ex = np.clip(ex, -127, 127)
        return np.exp2(ex).astype(np.float32).astype(ml_dtypes.float8_e8m0fnu), None, 1.0
    qmax = np.float32(e.qmax)
    if s.is_nv:
        # two-level: per-tensor f32 so the block scales fit E4M3, then E4M3 block scales (NVFP4)
        t = np.float32(tensor_amax if tensor_amax is not None else float(amax.max(initial=0.0)))
        gs = float(t / (qmax * np.float32(448.0))) if t > 0 else 1.0
        bs = (amax / qmax / np.float32(gs)).astype(np.float32)
        bs = np.clip(bs, 0, 448.0).astype(ml_dtypes.float8_e4m3fn)
        bs = np.where(bs.astype(np.float32) > 0, bs, np.ones_like(bs))   # an all-zero block still needs a scale
        return bs.astype(ml_dtypes.float8_e4m3fn), None, gs
    if s.symmetric:
        scale = np.where(amax > 0, amax / qmax, np.float32(1.0)).astype(np.float32)
        return scale, None, 1.0
    lo = np.minimum(np.asarray(amin, np.float32) * np.float32(s.clip), 0)
    hi = np.maximum(amax, 0)
    rng = hi - lo
    scale = np.where(rng > 0, rng / np.float32(e.qmax - e.qmin), np.float32(1.0)).astype(np.float32)
    zero = np.clip(round_int(np.float32(e.qmin) - lo / scale, s.rounding), e.qmin, e.qmax).astype(e.np)
    return scale, zero, 1.0


def quantize(x: np.ndarray, s: "Scheme | str", axis: int = 0) -> QTensor:
    """Quantize `x` with scheme `s`; blocks/channels run along `axis` (the reduction dim of a weight)."""
    s = scheme(s)
    x = np.asarray(x, np.float32)
    axis = axis % max(x.ndim, 1)
    if s.group > 0 and x.shape[axis] % s.group:
        raise QuantError(f"group size {s.group} does not divide the dimension {x.shape[axis]} (axis {axis})")
    if s.symmetric:
        amax, amin = block_stat(np.abs(x), np.max, axis, s.group), None
    else:
        amax, amin = block_stat(x, np.max, axis, s.group), block_stat(x, np.min, axis, s.group)
    tensor_amax = float(np.abs(x).max(initial=0.0)) if s.is_nv else None
    scale, zero, gs = compute_scale(amax, s, amin, tensor_amax)
    q = quantize_with(x, scale, zero, s.element, axis, s.group, gs, s.rounding)
    return QTensor(q, scale, zero, axis, s.group, gs, s)


def fake_quant(x: np.ndarray, s: "Scheme | str", axis: int = 0) -> np.ndarray:
    return quantize(x, s, axis).dequantize()


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when exact)."""
    ref = np.asarray(ref, np.float64)
    err = float(((np.asarray(got, np.float64) - ref) ** 2).sum())
    sig = float((ref ** 2).sum())
    if err == 0:
        return float("inf")
    return 10 * math.log10(sig / err) if sig > 0 else float("-inf")


# ---------------------------------------------------------------- packing: two 4-bit codes per byte
def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """4-bit codes (i4/u4/f4e2m1 arrays) -> uint8 [..., ceil(n/2)]: element 2i low nibble, 2i+1 high nibble."""
    q = np.asarray(q)
    if q.dtype.itemsize != 1:
        raise QuantError(f"pack_nibbles needs a 4-bit code array, got {q.dtype}")
    codes = q.view(np.uint8) & 0x0F
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros(codes.shape[:-1] + (1,), np.uint8)], axis=-1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def unpack_nibbles(p: np.ndarray, n: int, dtype: str = "i4") -> np.ndarray:
    """Inverse of pack_nibbles: uint8 [..., ceil(n/2)] -> codes [..., n] of dtype i4 / u4 / f4e2m1."""
    from .dtypes import dtype as to_dtype
    p = np.asarray(p, np.uint8)
    lo, hi = p & 0x0F, p >> 4
    codes = np.stack([lo, hi], axis=-1).reshape(p.shape[:-1] + (-1,))[..., :n]
    dt = to_dtype(dtype)
    if dt.name == "i4":
        return np.where(codes >= 8, codes.astype(np.int16) - 16, codes).astype(np.int8).astype(ml_dtypes.int4)
    if dt.name == "u4":
        return codes.astype(ml_dtypes.uint4)
    if dt.name == "f4e2m1":
        return codes.astype(np.uint8).view(ml_dtypes.float4_e2m1fn)
    raise QuantError(f"unpack_nibbles: {dtype} is not a 4-bit dtype")


def with_elem(s: Scheme, elem: str) -> Scheme:
    return replace(s, elem=elem)
