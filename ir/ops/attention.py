"""scaled_dot_product_attention (torch semantics): softmax(q kᵀ · scale + mask) v.

q [..., Hq, Lq, E], k [..., Hk, Lk, E], v [..., Hk, Lk, Ev] -> [..., Hq, Lq, Ev]. When Hk divides Hq the kv heads
are repeated (grouped-query attention). The mask is bool (True = attend) or float (added to the scores),
broadcastable to [..., Hq, Lq, Lk]; `causal` keeps the top-left aligned lower triangle.
"""
from __future__ import annotations

import numpy as np
from scipy import special

from ..types import TensorType, broadcast_shapes
from .reduce import _acc
from .registry import Attr, OpError, register


def _heads(q: TensorType, k: TensorType, gqa: bool) -> None:
    hq, hk = q.shape[-3], k.shape[-3]
    if hq == hk or hk == 1:
        return
    if gqa and isinstance(hq, int) and isinstance(hk, int) and hq % hk == 0:
        return
    raise OpError(f"op 'scaled_dot_product_attention': q has {hq} heads, k/v have {hk}; "
                  f"grouped-query attention needs Hk to divide Hq{'' if gqa else ' and enable_gqa=true'}")


def _sdpa_infer(ts, a):
    q, k, v = ts[:3]
    for t in (k, v):
        if t.dtype != q.dtype or not q.dtype.is_float:
            raise OpError(f"op 'scaled_dot_product_attention': q, k, v must share one float dtype, got {q}, {k}, {v}")
    if not q.rank == k.rank == v.rank >= 2:
        raise OpError("op 'scaled_dot_product_attention': q, k, v must have the same rank >= 2")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise OpError("op 'scaled_dot_product_attention': needs q [..., Lq, E], k [..., Lk, E], v [..., Lk, Ev] "
                      f"(E {q.shape[-1]} vs {k.shape[-1]}, Lk {k.shape[-2]} vs {v.shape[-2]})")
    lead = 2
    if q.rank >= 3:
        if k.shape[-3] != v.shape[-3]:
            raise OpError(f"op 'scaled_dot_product_attention': k and v head counts differ ({k.shape[-3]} vs {v.shape[-3]})")
        _heads(q, k, a["enable_gqa"])
        lead = 3
    batch = broadcast_shapes(q.shape[:-lead], k.shape[:-lead], v.shape[:-lead])
    heads = (q.shape[-3],) if lead == 3 else ()
    scores = batch + heads + (q.shape[-2], k.shape[-2])
    if len(ts) == 4:
        m = ts[3]
        if m.dtype.name != "bool" and m.dtype != q.dtype:
            raise OpError(f"op 'scaled_dot_product_attention': mask must be bool or {q.dtype}, got {m}")
        try:
            ok = broadcast_shapes(scores, m.shape) == scores
        except ValueError:
            ok = False
        if not ok:
            raise OpError(f"op 'scaled_dot_product_attention': mask {m} does not broadcast to the scores [{','.join(map(str, scores))}]")
    return TensorType(batch + heads + (q.shape[-2], v.shape[-1]), q.dtype)


def _sdpa(q, k, v, mask=None, causal=False, scale=None, enable_gqa=True):
    qf, kf, vf = _acc(q), _acc(k), _acc(v)
    if q.ndim >= 3 and k.shape[-3] not in (q.shape[-3], 1):
        rep = q.shape[-3] // k.shape[-3]
        kf, vf = np.repeat(kf, rep, axis=-3), np.repeat(vf, rep, axis=-3)
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    s = np.matmul(qf, np.swapaxes(kf, -1, -2)) * qf.dtype.type(scale)
    if causal:
        s = np.where(np.tril(np.ones(s.shape[-2:], dtype=bool)), s, -np.inf)
    if mask is not None:
        s = np.where(mask, s, -np.inf) if mask.dtype == np.bool_ else s + _acc(mask)
    return np.matmul(special.softmax(s, axis=-1), vf).astype(q.dtype)


register("scaled_dot_product_attention", "attention", _sdpa_infer, _sdpa,
         {"causal": Attr("bool", False), "scale": Attr("float", None), "enable_gqa": Attr("bool", True)}, arity=(3, 4))
