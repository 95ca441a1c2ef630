"""Lowerings of ATen view/shape/indexing ops and tensor factories onto IR ops.

Target shapes come from torch's recorded result (`im.out_type()`), so -1 and symbolic sizes never
need re-deriving here; aliasing ops (clone, contiguous, _to_copy, ...) return their operand, and the
importer inserts a cast when torch's result dtype differs.
"""
from __future__ import annotations

import operator

from ..ir import Value
from .torch_aten import INT_MAX, out_dtype
from .torch_fx import Importer, SymExpr, Unsupported, lower


def _norm(d: int, r: int) -> int:
    return d % max(r, 1)


# ---------------------------------------------------------------- no-ops and bookkeeping
@lower("aten.clone.default", "aten.contiguous.default", "aten.alias.default", "aten.detach.default", "aten.lift_fresh_copy.default",
       "aten._to_copy.default", "aten.to.dtype", "aten.to.dtype_layout", "aten.to.device", "aten.to.other",
       "aten._to_dim_order_copy.default", "aten.type_as.default", "aten.dropout.default", "aten.feature_dropout.default",
       "aten.lift_fresh.default", "aten.view_as.default", "aten.expand_as.default", "aten.reshape_as.default")
def _same(im, x, *args, **kwargs):
    name = im.target_name()
    if name.startswith(("aten.dropout", "aten.feature_dropout")) and len(args) > 1 and args[1]:
        raise Unsupported("dropout in training mode (call model.eval() first)")
    if name.startswith(("aten.view_as", "aten.expand_as", "aten.reshape_as")):
        return _to_out_shape(im, x, "expand" if "expand" in name else "reshape")
    return x


@lower("_assert_tensor_metadata", "aten._assert_tensor_metadata.default", "aten._assert_scalar.default",
       "aten.sym_constrain_range_for_size.default", "aten.sym_constrain_range.default", "aten._assert_async.msg",
       "aten._assert_async.default", "_assert_async", "aten._functional_sym_constrain_range_for_size.default",
       "aten._functional_assert_async.msg")
def _drop(im, *args, **kwargs):
    return None


@lower("getitem")
def _getitem(im, seq, i):
    if not isinstance(seq, (list, tuple)):
        raise Unsupported(f"getitem on a {type(seq).__name__}")
    r = seq[i]
    if r is None:
        raise Unsupported(f"result {i} of {im.node.args[0].target} is not supported (only its main result)")
    return r


@lower("aten.copy.default")
def _copy(im, dst, src, non_blocking=False):
    return _to_out_shape(im, src, "expand")


# ---------------------------------------------------------------- views
def _to_out_shape(im, x: Value, op: str) -> Value:
    shape = im.out_type().shape
    return x if x.type.shape == shape else im.op(op, x, shape=list(shape))


@lower("aten.view.default", "aten._unsafe_view.default", "aten.reshape.default", "aten.flatten.using_ints",
       "aten.unflatten.int", "aten.view_copy.default")
def _view(im, x, *args):
    return _to_out_shape(im, x, "reshape")


@lower("aten.expand.default", "aten.expand_copy.default")
def _expand(im, x, *args, **kw):
    return _to_out_shape(im, x, "expand")


@lower("aten.permute.default", "aten.permute_copy.default")
def _permute(im, x, dims):
    r = x.type.rank
    perm = [_norm(d, r) for d in dims]
    return x if perm == list(range(r)) else im.op("transpose", x, perm=perm)


@lower("aten.transpose.int")
def _transpose(im, x, a, b):
    r = x.type.rank
    perm = list(range(r))
    a, b = _norm(a, r), _norm(b, r)
    perm[a], perm[b] = perm[b], perm[a]
    return x if a == b else im.op("transpose", x, perm=perm)


@lower("aten.unsqueeze.default", "aten.unsqueeze_copy.default")
def _unsqueeze(im, x, dim):
    return im.op("unsqueeze", x, axes=[_norm(dim, x.type.rank + 1)])


@lower("aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default", "aten.squeeze_copy.dims")
def _squeeze(im, x, dims=None):
    r = x.type.rank
    want = range(r) if dims is None else ([dims] if isinstance(dims, int) else dims)
    axes = sorted({_norm(d, r) for d in want if x.type.shape[_norm(d, r)] == 1})
    return im.op("squeeze", x, axes=axes) if axes else x


def _bound(v, d, what: str):
    if isinstance(v, SymExpr):
        im_err = v.err
        raise Unsupported(f"slice {what} {v.expr}: {im_err}")
    return v


@lower("aten.slice.Tensor", "aten.slice_copy.Tensor")
def _slice(im, x, dim=0, start=None, end=None, step=1):
    r = x.type.rank
    dim = _norm(dim, r)
    d = x.type.shape[dim]
    start = 0 if start is None else _bound(start, d, "start")
    end = INT_MAX if end is None else "?" if isinstance(end, SymExpr) else end  # the gather path needs no end
    if isinstance(end, str) and end == d:
        end = INT_MAX
    if start in (0, -INT_MAX) and step == 1 and isinstance(end, int) and (end >= INT_MAX or (isinstance(d, int) and end >= d)):
        return x
    if isinstance(start, str) or isinstance(end, str) or isinstance(d, str):
        # symbolic bounds or dim: read the rows start, start+step, ... (as many as torch says) with a gather
        if step < 1:
            raise Unsupported(f"slice with step {step} of symbolic dim {d}")
        if isinstance(start, int) and start < 0:
            start = im.op("add", im.value(d, "i64"), im.scalar(start, "i64"))
        return im.op("gather", x, index_range(im, im.out_type().shape[dim], start, step), axis=dim)
    return im.op("slice", x, starts=[start], ends=[min(end, 2**63 - 1)], axes=[dim], steps=[step])


def index_range(im: Importer, n, start, step: int) -> Value:
    """i64 [n] = start + step*i; n may be symbolic, start a size or a 0-d tensor."""
    if isinstance(n, int) and isinstance(start, int):
        return im.op("arange", start=start, end=start + step * n, step=step, dtype="i64")
    steps = im.op("cumsum", im.op("constant_of_shape", shape=[n], value=float(step), dtype="i64"), axis=0)
    return im.op("add", steps, im.op("sub", im.value(start, "i64"), im.scalar(step, "i64")))


@lower("aten.select.int", "aten.select_copy.int")
def _select(im, x, dim, index):
    r = x.type.rank
    dim = _norm(dim, r)
    d = x.type.shape[dim]
    if isinstance(index, (str, SymExpr)):
        raise Unsupported("select with a symbolic index")
    if isinstance(d, int):
        index %= d
        y = im.op("slice", x, starts=[index], ends=[index + 1], axes=[dim])
        return im.op("squeeze", y, axes=[dim])
    return im.op("gather", x, im.scalar(index, "i64"), axis=dim)


@lower("aten.cat.default", "aten.concat.default")
def _cat(im, tensors, dim=0):
    dt = out_dtype(im)
    xs = [im.value(t, dt) for t in tensors if not (t.type.rank == 1 and t.type.shape[0] == 0)]  # torch skips legacy empties
    if len(xs) == 1:
        return xs[0]
    return im.op("concat", *xs, axis=_norm(dim, xs[0].type.rank))


def _split_sizes(x: Value, dim: int, size: int) -> list[int]:
    d = x.type.shape[dim]
    if not isinstance(d, int):
        raise Unsupported(f"splitting symbolic dim {d}")
    return [size] * (d // size) + ([d % size] if d % size else [])


@lower("aten.split_with_sizes.default", "aten.split.Tensor", "aten.split_with_sizes_copy.default", "aten.split.sizes")
def _split(im, x, sizes, dim=0):
    dim = _norm(dim, x.type.rank)
    sizes = _split_sizes(x, dim, sizes) if isinstance(sizes, int) else list(sizes)
    if any(not isinstance(s, int) for s in sizes):
        raise Unsupported(f"split with symbolic sizes {sizes}")
    if len(sizes) == 1:
        return [x]
    outs = im.op("split", x, axis=dim, sizes=sizes)
    return list(outs) if isinstance(outs, (list, tuple)) else [outs]


@lower("aten.unbind.int", "aten.unbind_copy.int")
def _unbind(im, x, dim=0):
    dim = _norm(dim, x.type.rank)
    parts = _split(im, x, 1, dim)
    return [im.op("squeeze", p, axes=[dim]) for p in parts]


@lower("aten.repeat.default")
def _repeat(im, x, repeats):
    repeats = list(repeats)
    extra = len(repeats) - x.type.rank
    if extra:
        x = im.op("reshape", x, shape=[1] * extra + list(x.type.shape))
    if any(not isinstance(r, int) for r in repeats):
        raise Unsupported("repeat with symbolic counts")
    return x if all(r == 1 for r in repeats) else im.op("tile", x, repeats=repeats)


@lower("aten.flip.default")
def _flip(im, x, dims):
    r = x.type.rank
    axes = [_norm(d, r) for d in dims]
    if any(not isinstance(x.type.shape[a], int) for a in axes):
        raise Unsupported("flip of a symbolic dim")
    return im.op("slice", x, starts=[-1] * len(axes), ends=[-(2**63)] * len(axes), axes=axes, steps=[-1] * len(axes))


@lower("aten.constant_pad_nd.default", "aten.reflection_pad1d.default", "aten.reflection_pad2d.default",
       "aten.reflection_pad3d.default", "aten.replication_pad1d.default", "aten.replication_pad2d.default",
       "aten.replication_pad3d.default")
def _pad(im, x, pad, value=0.0):
    name = im.target_name()
    mode = "reflect" if "reflection" in name else "edge" if "replication" in name else "constant"
    r = x.type.rank
    begins, ends = [0] * r, [0] * r
    for i in range(len(pad) // 2):  # torch lists (begin, end) pairs from the last dim backwards
        begins[r - 1 - i], ends[r - 1 - i] = pad[2 * i], pad[2 * i + 1]
    return im.op("pad", x, pads=begins + ends, mode=mode, value=float(value))


@lower("aten.tril.default", "aten.triu.default")
def _tri(im, x, diagonal=0):
    import numpy as np
    rows, cols = x.type.shape[-2:]
    if not (isinstance(rows, int) and isinstance(cols, int)):
        raise Unsupported("tril/triu of symbolic dims")
    keep = (np.tril if im.target_name().startswith("aten.tril") else np.triu)(np.ones((rows, cols), bool), diagonal)
    return im.op("where", im.const(keep, "tri_mask"), x, im.scalar(0, x.type.dtype.name))


# ---------------------------------------------------------------- indexing
@lower("aten.embedding.default")
def _embedding(im, w, ids, *rest):
    return im.op("embedding", w, im.value(ids, "i64") if not ids.type.dtype.is_int else ids)


@lower("aten.index_select.default")
def _index_select(im, x, dim, idx):
    return im.op("gather", x, idx, axis=_norm(dim, x.type.rank))


@lower("aten.gather.default")
def _gather(im, x, dim, idx, sparse_grad=False):
    return im.op("gather_elements", x, idx, axis=_norm(dim, x.type.rank))


@lower("aten.index.Tensor")
def _index(im, x, indices):
    """Advanced indexing with integer tensors: the indexed dims are merged and read with one gather."""
    pos = [i for i, t in enumerate(indices) if t is not None]
    for i in pos:
        if indices[i].type.dtype.name == "bool":
            raise Unsupported("boolean mask indexing (its result size depends on the data)")
    if len(pos) == 1:
        return im.op("gather", x, indices[pos[0]], axis=pos[0])
    r = x.type.rank
    tensors = [indices[i] for i in pos]
    if pos != list(range(pos[0], pos[0] + len(pos))):  # non-adjacent: torch puts the result dims first
        rest = [i for i in range(r) if i not in pos]
        x = im.op("transpose", x, perm=pos + rest)
        pos = list(range(len(pos)))
    p0, dims = pos[0], [x.type.shape[i] for i in pos]
    flat = None
    for j, t in enumerate(tensors):
        idx = im.op("mod", im.value(t, "i64"), im.value(dims[j], "i64"))  # negative -> from the end
        flat = idx if flat is None else im.op("add", im.op("mul", flat, im.value(dims[j], "i64")), idx)
    from ..ir.types import dim_mul
    merged = im.op("reshape", x, shape=list(x.type.shape[:p0]) + [dim_mul(*dims)] + list(x.type.shape[p0 + len(pos):]))
    return im.op("gather", merged, flat, axis=p0)


# ---------------------------------------------------------------- factories
def _fill(im: Importer, value) -> Value:
    t = im.out_type()
    dt = t.dtype.name
    if isinstance(value, bool) or (isinstance(value, (int, float)) and abs(value) < 2**53):
        if not t.shape:
            return im.scalar(value, dt)
        return im.op("constant_of_shape", shape=list(t.shape), value=float(value), dtype=dt)
    v = im.value(value, dt)  # a tensor or a symbolic size as the fill value
    return v if not t.shape else im.op("expand", v, shape=list(t.shape))


@lower("aten.full.default", "aten.full_like.default", "aten.new_full.default")
def _full(im, a, b=None, *args, **kw):
    return _fill(im, b if b is not None else kw.get("fill_value"))


@lower("aten.zeros.default", "aten.zeros_like.default", "aten.new_zeros.default", "aten.empty.memory_format",
       "aten.empty_like.default", "aten.new_empty.default", "aten.empty.default", "aten.empty_strided.default",
       "aten.new_empty_strided.default")
def _zeros(im, *args, **kw):
    return _fill(im, 0)


@lower("aten.ones.default", "aten.ones_like.default", "aten.new_ones.default")
def _ones(im, *args, **kw):
    return _fill(im, 1)


@lower("aten.fill.Scalar", "aten.fill.Tensor")
def _fill_op(im, x, value):
    return _fill(im, value)


@lower("aten.scalar_tensor.default")
def _scalar_tensor(im, value, **kw):
    return im.value(value, out_dtype(im))


@lower("aten.arange.start_step", "aten.arange.start", "aten.arange.default")
def _arange(im, *args, **kw):
    nums = list(args[:3])
    start, end, step = (0, nums[0], 1) if len(nums) == 1 else (nums[0], nums[1], nums[2] if len(nums) > 2 else 1)
    t = im.out_type()
    dt = t.dtype.name
    if all(isinstance(v, (int, float)) for v in (start, end, step)):
        return im.op("arange", start=start, end=end, step=step, dtype=dt)
    if not all(isinstance(v, (int, float)) for v in (start, step)):
        raise Unsupported("arange with a symbolic start or step")
    # symbolic length n: start + step * (cumsum(ones) - 1), exact in integer dtypes
    steps = im.op("cumsum", im.op("constant_of_shape", shape=list(t.shape), value=float(step), dtype=dt), axis=0)
    return im.op("add", steps, im.scalar(start - step, dt)) if start - step else steps


# symbolic-int arithmetic nodes are evaluated from torch's sympy result (Importer._symbolic); python operators
# on plain ints can still appear in dynamo graphs:
for _name in ("add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pow"):
    lower(_name)(lambda im, *a, _f=getattr(operator, _name): _f(*a))
