"""Shape ops. Shapes and indices are attributes (frontends fold shape computations into them),
so every result type is known at construction, symbolic dims included."""
from __future__ import annotations

import numpy as np

from ..types import dim_div, dim_mul, numel
from .registry import Attr, OpError, norm_axis, register


def reshape_shape(src: tuple, target: tuple, allowzero: bool = False) -> tuple:
    """Resolve 0 (copy) and -1 (infer) in a reshape target against the source shape."""
    out = [src[i] if (d == 0 and not allowzero and i < len(src)) else d for i, d in enumerate(target)]
    if out.count(-1) > 1:
        raise OpError(f"op 'reshape': more than one -1 in target {list(target)}")
    if -1 in out:
        known = dim_mul(*[d for d in out if d != -1])
        rest = dim_div(numel(src), known)
        if rest is None:
            raise OpError(f"op 'reshape': cannot reshape {list(src)} to {list(target)}")
        out[out.index(-1)] = rest
    elif isinstance(numel(src), int) and isinstance(numel(out), int) and numel(src) != numel(out):
        raise OpError(f"op 'reshape': {list(src)} has {numel(src)} elements, target {list(out)} has {numel(out)}")
    return tuple(out)


def _reshape_ref(x, shape, allowzero=False):
    return x.reshape(reshape_shape(x.shape, shape, allowzero))


register("reshape", "shape", lambda ts, a: ts[0].with_shape(reshape_shape(ts[0].shape, a["shape"], a["allowzero"])),
         _reshape_ref, {"shape": Attr("dims"), "allowzero": Attr("bool", False)})


def _perm(perm, rank):
    perm = tuple(range(rank))[::-1] if perm is None else perm
    if sorted(norm_axis(p, rank, "transpose") for p in perm) != list(range(rank)):
        raise OpError(f"op 'transpose': perm {list(perm)} is not a permutation of rank {rank}")
    return tuple(p % rank for p in perm)


register("transpose", "shape", lambda ts, a: ts[0].with_shape([ts[0].shape[p] for p in _perm(a["perm"], ts[0].rank)]),
         lambda x, perm: np.transpose(x, _perm(perm, x.ndim)), {"perm": Attr("ints", None)})


def _concat_infer(ts, attrs):
    r = ts[0].rank
    ax = norm_axis(attrs["axis"], r, "concat")
    for t in ts[1:]:
        if t.rank != r or t.dtype != ts[0].dtype or any(t.shape[i] != ts[0].shape[i] for i in range(r) if i != ax):
            raise OpError(f"op 'concat' axis {ax}: operands disagree: {', '.join(map(str, ts))}")
    d = ts[0].shape[ax]
    for t in ts[1:]:
        d = d + t.shape[ax] if isinstance(d, int) and isinstance(t.shape[ax], int) else f"{d}+{t.shape[ax]}"
    if isinstance(d, str):
        raise OpError(f"op 'concat': symbolic sizes along the concat axis are not supported ({', '.join(map(str, ts))})")
    return ts[0].with_shape([d if i == ax else s for i, s in enumerate(ts[0].shape)])


register("concat", "shape", _concat_infer, lambda *xs, axis: np.concatenate(xs, axis=axis), {"axis": Attr("int")}, arity=(1, -1))


def _split_infer(ts, attrs):
    t = ts[0]
    ax = norm_axis(attrs["axis"], t.rank, "split")
    if sum(attrs["sizes"]) != t.shape[ax]:
        raise OpError(f"op 'split': sizes {list(attrs['sizes'])} do not add up to dim {ax} of {t}")
    return [t.with_shape([s if i == ax else d for i, d in enumerate(t.shape)]) for s in attrs["sizes"]]


def _split(x, axis, sizes):
    return np.split(x, np.cumsum(sizes)[:-1], axis=axis)


register("split", "shape", _split_infer, _split, {"axis": Attr("int"), "sizes": Attr("ints")})


def slice_bounds(dim: int, start: int, end: int, step: int) -> tuple[int, int, int]:
    """Clamp slice bounds like ONNX Slice / Python slicing; returns (start, end, count)."""
    if step == 0:
        raise OpError("op 'slice': step cannot be 0")
    s, e, st = slice(start, end, step).indices(dim)
    return s, e, len(range(s, e, st))


def _slice_infer(ts, attrs):
    t = ts[0]
    shape = list(t.shape)
    steps = attrs["steps"] or (1,) * len(attrs["starts"])
    axes = attrs["axes"] or tuple(range(len(attrs["starts"])))
    if not len(axes) == len(attrs["starts"]) == len(attrs["ends"]) == len(steps):
        raise OpError("op 'slice': starts, ends, axes and steps must have the same length")
    for ax, s, e, st in zip(axes, attrs["starts"], attrs["ends"], steps):
        ax = norm_axis(ax, t.rank, "slice")
        d = t.shape[ax]
        if not isinstance(d, int):
            if s == 0 and e >= 2**62 and st == 1:
                continue
            raise OpError(f"op 'slice': cannot slice symbolic dim {d} of {t}")
        shape[ax] = slice_bounds(d, s, e, st)[2]
    return t.with_shape(shape)


def _slice(x, starts, ends, axes=None, steps=None):
    idx = [slice(None)] * x.ndim
    axes = axes or range(len(starts))
    steps = steps or (1,) * len(starts)
    for ax, s, e, st in zip(axes, starts, ends, steps):
        idx[ax % x.ndim] = slice(*slice_bounds(x.shape[ax % x.ndim], s, e, st)[:2], st)
        if st < 0 and idx[ax % x.ndim].stop == -1:
            idx[ax % x.ndim] = slice(idx[ax % x.ndim].start, None, st)
    return x[tuple(idx)]


register("slice", "shape", _slice_infer, _slice,
         {"starts": Attr("ints"), "ends": Attr("ints"), "axes": Attr("ints", None), "steps": Attr("ints", None)})


def _gather_infer(ts, attrs):
    x, idx = ts
    if not idx.dtype.is_int:
        raise OpError(f"op 'gather': indices must be integer, got {idx}")
    ax = norm_axis(attrs["axis"], x.rank, "gather")
    return x.with_shape(list(x.shape[:ax]) + list(idx.shape) + list(x.shape[ax + 1:]))


def _wrap_index(idx, n: int, axis: int):
    """Indices in [-n, n) made non-negative; anything outside is an error (as in onnxruntime), never a wrap-around."""
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"index {idx.min() if idx.min() < -n else idx.max()} is out of range [-{n}, {n}) for axis {axis}")
    return np.where(idx < 0, idx + n, idx)


def _gather(x, idx, axis):
    idx = _wrap_index(idx, x.shape[axis], axis)
    return np.take(x, idx, axis=axis)


register("gather", "shape", _gather_infer, _gather, {"axis": Attr("int", 0)}, arity=(2, 2))


def _expand_infer(ts, attrs):
    from ..types import broadcast_shapes
    return ts[0].with_shape(broadcast_shapes(ts[0].shape, tuple(attrs["shape"])))


register("expand", "shape", _expand_infer,
         lambda x, shape: np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(shape))).copy(), {"shape": Attr("dims")})


def _squeeze_axes(t, axes):
    if axes is None:
        if not t.static:  # which dims are 1 is only known at run time: the result type would be a guess
            raise OpError(f"op 'squeeze' without axes needs a static shape, got {t}; give axes")
        return tuple(i for i, d in enumerate(t.shape) if d == 1)
    axes = tuple(norm_axis(a, t.rank, "squeeze") for a in axes)
    for a in axes:
        if t.shape[a] != 1:
            raise OpError(f"op 'squeeze': dim {a} of {t} is not 1")
    return axes


register("squeeze", "shape",
         lambda ts, a: ts[0].with_shape([d for i, d in enumerate(ts[0].shape) if i not in _squeeze_axes(ts[0], a["axes"])]),
         lambda x, axes: np.squeeze(x, axis=tuple(a % x.ndim for a in axes) if axes is not None else None),
         {"axes": Attr("ints", None)})


def _unsqueeze_shape(shape, axes):
    r = len(shape) + len(axes)
    axes = sorted(norm_axis(a, r, "unsqueeze") for a in axes)
    out, it = [], iter(shape)
    for i in range(r):
        out.append(1 if i in axes else next(it))
    return out


register("unsqueeze", "shape", lambda ts, a: ts[0].with_shape(_unsqueeze_shape(ts[0].shape, a["axes"])),
         lambda x, axes: x.reshape(_unsqueeze_shape(x.shape, axes)), {"axes": Attr("ints")})


def _flatten_shape(shape, axis):
    axis = norm_axis(axis, len(shape) + 1, "flatten")
    return (numel(shape[:axis]), numel(shape[axis:]))


register("flatten", "shape", lambda ts, a: ts[0].with_shape(_flatten_shape(ts[0].shape, a["axis"])),
         lambda x, axis: x.reshape(_flatten_shape(x.shape, axis)), {"axis": Attr("int", 1)})


# ---- pad (pads = [begin per axis..., end per axis...]; negative pads crop, as ONNX)
def _pad_axes(t_rank, pads, axes):
    axes = tuple(range(t_rank)) if axes is None else tuple(norm_axis(a, t_rank, "pad") for a in axes)
    if len(pads) != 2 * len(axes):
        raise OpError(f"op 'pad': pads {list(pads)} must have 2 entries per padded axis ({len(axes)} axes)")
    return {ax: (pads[i], pads[len(axes) + i]) for i, ax in enumerate(axes)}


def _pad_infer(ts, a):
    t = ts[0]
    per = _pad_axes(t.rank, a["pads"], a["axes"])
    shape = list(t.shape)
    for ax, (b, e) in per.items():
        if b == e == 0:
            continue
        if not isinstance(shape[ax], int):
            raise OpError(f"op 'pad': cannot pad symbolic dim {shape[ax]} of {t}")
        shape[ax] += b + e
        if shape[ax] < 0 or (a["mode"] != "constant" and shape[ax] > 0 and t.shape[ax] == 0):
            raise OpError(f"op 'pad': pads {list(a['pads'])} do not fit {t}")
        if a["mode"] == "reflect" and max(b, e) >= t.shape[ax]:
            raise OpError(f"op 'pad': reflect pads {list(a['pads'])} must be smaller than the dims of {t}")
    return t.with_shape(shape)


def _pad(x, pads, mode="constant", value=0.0, axes=None):
    per = _pad_axes(x.ndim, pads, axes)
    crop = tuple(slice(max(0, -per.get(i, (0, 0))[0]), x.shape[i] - max(0, -per.get(i, (0, 0))[1])) for i in range(x.ndim))
    x = x[crop]
    width = [(max(0, per.get(i, (0, 0))[0]), max(0, per.get(i, (0, 0))[1])) for i in range(x.ndim)]
    if mode == "constant":
        return np.pad(x, width, mode="constant", constant_values=np.asarray(value).astype(x.dtype))
    return np.pad(x, width, mode=mode)


register("pad", "shape", _pad_infer, _pad, {"pads": Attr("ints"), "mode": Attr("str", "constant", ("constant", "reflect", "edge")),
                                            "value": Attr("float", 0.0), "axes": Attr("ints", None)})


def _tile_infer(ts, a):
    t, r = ts[0], a["repeats"]
    if len(r) != t.rank or min(r, default=1) < 0:
        raise OpError(f"op 'tile': repeats {list(r)} must have one entry >= 0 per dim of {t}")
    return t.with_shape([dim_mul(d, k) for d, k in zip(t.shape, r)])


register("tile", "shape", _tile_infer, lambda x, repeats: np.tile(x, repeats), {"repeats": Attr("ints")})


def _gather_elements_infer(ts, a):
    x, idx = ts
    if not idx.dtype.is_int or idx.rank != x.rank:
        raise OpError(f"op 'gather_elements': indices must be integer with the rank of x, got {x} and {idx}")
    ax = norm_axis(a["axis"], x.rank, "gather_elements")
    if any(isinstance(i, int) and isinstance(d, int) and i > d for k, (i, d) in enumerate(zip(idx.shape, x.shape)) if k != ax):
        raise OpError(f"op 'gather_elements': indices {idx} exceed x {x} outside axis {ax}")
    return x.with_shape(idx.shape)


def _gather_elements(x, idx, axis):
    axis %= x.ndim
    idx = _wrap_index(idx, x.shape[axis], axis)
    # out[i][j] = x[i][idx[i][j]]: the other dims of idx index x directly (no broadcasting)
    x = x[tuple(slice(None) if d == axis else slice(0, idx.shape[d]) for d in range(x.ndim))]
    return np.take_along_axis(x, idx.astype(np.int64), axis=axis)


register("gather_elements", "shape", _gather_elements_infer, _gather_elements, {"axis": Attr("int", 0)}, arity=(2, 2))


def _embedding_infer(ts, a):
    w, ids = ts
    if w.rank != 2 or not ids.dtype.is_int:
        raise OpError(f"op 'embedding' needs a weight [V,D] and integer ids, got {w} and {ids}")
    return w.with_shape(list(ids.shape) + [w.shape[1]])


register("embedding", "shape", _embedding_infer, lambda w, ids: np.take(w, ids, axis=0), arity=(2, 2))
