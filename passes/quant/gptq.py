"""GPTQ (Frantar et al. 2023, the weight quantizer QuaRot uses): error-compensating rounding of a [K, N] weight.

Rows of W (input channels k) are rounded one at a time; each row's rounding error, scaled by the inverse
Hessian H^-1 = (X^T X + damp)^-1 of the layer's calibration inputs X, is pushed onto the rows not yet rounded,
so the layer output X W (not W itself) stays close. Per-channel schemes also take the rows in order of
decreasing H diagonal ("act order": the largest-input channels first, while the others can still absorb their
error); group schemes keep the natural order so each group's scale is set from its own, already updated, rows.
Integer elements only (fp8 / MX / NV weights keep round-to-nearest).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ...ir.quant_formats import QTensor, Scheme, quantize, quantize_with


def supports(s: Scheme) -> bool:
    return s.element.kind == "int" and not s.is_mx and not s.is_nv and s.group >= 0


def accumulate(h: "np.ndarray | None", x: np.ndarray) -> np.ndarray:
    """h + x^T x over the tokens of activation x [..., K] (float64 [K, K]): GPTQ's Hessian, up to a factor 2."""
    x = np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1])
    return x.T @ x if h is None else h + x.T @ x


CLIP_RATIOS = np.linspace(0.6, 1.0, 9)


def _rows_scale(w: np.ndarray, s: Scheme, search: bool = True) -> tuple[np.ndarray, "np.ndarray | None"]:
    """The scale (and zero) of rows `w` [k, N] per column: quantize()'s, from absmax, or (search, symmetric) the
    absmax x ratio with the least |error|^2.4 over the column (GPTQ's and QuaRot's weight clipping search)."""
    w32 = w.astype(np.float32)
    qt = quantize(w32, replace(s, group=0), axis=0)
    if not search or not s.symmetric:
        return qt.scale, qt.zero
    best, scale = None, qt.scale
    for r in CLIP_RATIOS:
        sc = (qt.scale * np.float32(r)).astype(np.float32)
        err = (np.abs(quantize_with(w32, sc, None, s.element).astype(np.float32) * sc - w32) ** 2.4).sum(axis=0)
        if best is None:
            best, scale = err, sc
        else:
            better = err < best
            best = np.where(better, err, best)
            scale = np.where(better[None, :], sc, scale)
    return scale.astype(np.float32), None


def gptq(w: np.ndarray, h: np.ndarray, s: Scheme, damp: float = 0.01, block: int = 128, clip_search: bool = True) -> QTensor:
    """Quantize weight w [K, N] (axis 0 = K) with scheme `s`, compensating errors through Hessian h [K, K];
    clip_search: per-column scales searched as in _rows_scale."""
    K, N = w.shape
    W = np.asarray(w, np.float64).copy()
    H = np.asarray(h, np.float64).copy()
    dead = np.diag(H) == 0                       # inputs that were always zero: their weights never matter
    H[dead, dead] = 1.0
    W[dead] = 0.0
    group = s.group if s.group > 0 else 0
    perm = np.argsort(-np.diag(H), kind="stable") if group == 0 else np.arange(K)
    W, H = W[perm], H[perm][:, perm]
    H[np.diag_indices(K)] += damp * float(np.mean(np.diag(H)))
    # upper Cholesky factor U of H^-1 (H^-1 = U^T U): row i of U carries the update coefficients of row i
    U = np.linalg.cholesky(np.linalg.inv(H)).T
    if group:
        block = group * max(1, block // group)   # groups never straddle a block
    elem = s.element
    scales, zeros = [], []
    if not group:
        sc, zr = _rows_scale(W, s, clip_search)
        scales.append(sc)
        zeros.append(zr)
    codes = []
    for i1 in range(0, K, block):
        i2 = min(i1 + block, K)
        W1, U1 = W[i1:i2].copy(), U[i1:i2, i1:i2]
        E1 = np.zeros_like(W1)
        for i in range(i2 - i1):
            if group and (i1 + i) % group == 0:
                sc, zr = _rows_scale(W1[i:i + group], s, clip_search)
                scales.append(sc)
                zeros.append(zr)
            sc, zr = scales[-1], zeros[-1]
            c = quantize_with(W1[i:i + 1].astype(np.float32), sc, zr, elem, 0, 0, 1.0, s.rounding)
            codes.append(c)
            deq = (c.astype(np.float64) - (0 if zr is None else zr.astype(np.float64))) * sc.astype(np.float64)
            err = (W1[i] - deq[0]) / U1[i, i]
            W1[i:] -= np.outer(U1[i, i:], err)
            E1[i] = err
        W[i2:] -= U[i1:i2, i2:].T @ E1
    inv = np.argsort(perm)
    q = np.concatenate(codes, axis=0)[inv]
    scale = np.concatenate(scales, axis=0)
    zero = None if zeros[0] is None else np.concatenate(zeros, axis=0)
    return QTensor(q, scale.astype(np.float32), zero, 0, group, 1.0, s)
