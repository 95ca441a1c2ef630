"""Per-op MLIR emission for `mlir_export`: EMIT[op](emitter, node, *operand names, **attrs) -> result name(s)."""
from __future__ import annotations

import numpy as np

from ..ir import NnfuseError, TensorType
from ..ir.ops import norm_axis
from ..ir.ops.shape import slice_bounds
from .mlir_export import Emitter, _amap, elem, flit, ttype

EMIT: dict = {}


def on(*names):
    def deco(fn):
        for n in names:
            EMIT[n] = fn
        return fn
    return deco


def _isf(et: str) -> bool:
    return et.startswith("f") or et == "bf16"


# ---------------------------------------------------------------- scalar bodies
def _binary(em: Emitter, op: str, a: str, b: str, et: str) -> str:
    f = _isf(et)
    simple = {"add": ("arith.addf", "arith.addi"), "sub": ("arith.subf", "arith.subi"), "mul": ("arith.mulf", "arith.muli"),
              "div": ("arith.divf", "arith.divsi"), "max": ("arith.maximumf", "arith.maxsi"),
              "min": ("arith.minimumf", "arith.minsi"), "and": (None, "arith.andi"), "or": (None, "arith.ori"),
              "xor": (None, "arith.xori")}
    if op in simple:
        ins = simple[op][0 if f else 1]
        if ins is None:
            raise NnfuseError(f"{op} on {et}")
        return em.op(f"{ins} {a}, {b}", et)
    if op == "pow":
        if not f:
            raise NnfuseError(f"pow on {et} has no MLIR lowering")
        return em.op(f"math.powf {a}, {b}", et)
    if op == "fmod":  # C fmod: the result takes the dividend's sign
        return em.op(f"{'arith.remf' if f else 'arith.remsi'} {a}, {b}", et)
    if op == "mod":  # numpy mod: the result takes the divisor's sign
        r = em.op(f"{'arith.remf' if f else 'arith.remsi'} {a}, {b}", et)
        z = em.cst(0, et)
        cmp = "arith.cmpf" if f else "arith.cmpi"
        lt, ne = ("olt", "one") if f else ("slt", "ne")
        rneg, bneg = em.op(f"{cmp} {lt}, {r}, {z}", et), em.op(f"{cmp} {lt}, {b}, {z}", et)
        nz = em.op(f"{cmp} {ne}, {r}, {z}", et)
        sign_differs = em.op(f"arith.xori {rneg}, {bneg}", "i1")
        fix = em.op(f"arith.andi {nz}, {sign_differs}", "i1")
        add = "arith.addf" if f else "arith.addi"
        shifted = em.op(f"{add} {r}, {b}", et)
        return em.op(f"arith.select {fix}, {shifted}, {r}", et)
    raise NnfuseError(f"binary op {op}")


CMP = {"eq": ("oeq", "eq"), "ne": ("une", "ne"), "lt": ("olt", "slt"), "le": ("ole", "sle"), "gt": ("ogt", "sgt"),
       "ge": ("oge", "sge")}


def _cmp(em: Emitter, op: str, a: str, b: str, et: str) -> str:
    if _isf(et):
        return em.op(f"arith.cmpf {CMP[op][0]}, {a}, {b}", et)
    return em.op(f"arith.cmpi {CMP[op][1]}, {a}, {b}", et)


def _sigmoid(em, x, et):
    one = em.cst(1.0, et)
    e = em.op(f"math.exp {em.op(f'arith.negf {x}', et)}", et)
    return em.op(f"arith.divf {one}, {em.op(f'arith.addf {one}, {e}', et)}", et)


def _unary(em: Emitter, op: str, x: str, et: str, attrs: dict) -> str:
    f = _isf(et)
    if not f:
        if op == "neg":
            return em.op(f"arith.subi {em.cst(0, et)}, {x}", et)
        if op == "abs":
            return em.op(f"math.absi {x}", et)
        if op == "relu":
            return em.op(f"arith.maxsi {x}, {em.cst(0, et)}", et)
        if op == "identity":
            return x
        if op == "not":
            return em.op(f"arith.xori {x}, {em.cst(1, 'i1')}", "i1")
        if op == "sign":
            z = em.cst(0, et)
            gt, lt = em.op(f"arith.cmpi sgt, {x}, {z}", et), em.op(f"arith.cmpi slt, {x}, {z}", et)
            pos, neg = em.op(f"arith.extui {gt} : i1 to", et), em.op(f"arith.extui {lt} : i1 to", et)
            return em.op(f"arith.subi {pos}, {neg}", et)
        raise NnfuseError(f"op '{op}' on {et} has no MLIR lowering")
    direct = {"neg": "arith.negf", "abs": "math.absf", "exp": "math.exp", "log": "math.log", "sqrt": "math.sqrt",
              "rsqrt": "math.rsqrt", "tanh": "math.tanh", "erf": "math.erf", "sin": "math.sin", "cos": "math.cos",
              "floor": "math.floor", "ceil": "math.ceil", "round": "math.roundeven"}
    if op in direct:
        return em.op(f"{direct[op]} {x}", et)
    if op == "identity":
        return x
    if op == "reciprocal":
        return em.op(f"arith.divf {em.cst(1.0, et)}, {x}", et)
    if op == "sigmoid":
        return _sigmoid(em, x, et)
    if op == "silu":
        return em.op(f"arith.mulf {x}, {_sigmoid(em, x, et)}", et)
    if op == "relu":
        return em.op(f"arith.maximumf {x}, {em.cst(0.0, et)}", et)
    if op in ("leaky_relu", "elu"):
        alpha = em.cst(attrs["alpha"], et)
        neg = em.op(f"arith.mulf {x}, {alpha}", et) if op == "leaky_relu" else \
            em.op(f"arith.mulf {alpha}, {em.op(f'math.expm1 {x}', et)}", et)
        pos = em.op(f"arith.cmpf {'oge' if op == 'leaky_relu' else 'ogt'}, {x}, {em.cst(0.0, et)}", et)
        return em.op(f"arith.select {pos}, {x}, {neg}", et)
    if op == "gelu":
        half, one = em.cst(0.5, et), em.cst(1.0, et)
        if attrs.get("approximate") == "tanh":
            c0, c1 = em.cst(0.044715, et), em.cst(float(np.sqrt(2 / np.pi)), et)
            x3 = em.op(f"arith.mulf {x}, {em.op(f'arith.mulf {x}, {x}', et)}", et)
            inner = em.op(f"arith.addf {x}, {em.op(f'arith.mulf {x3}, {c0}', et)}", et)
            t = em.op(f"math.tanh {em.op(f'arith.mulf {inner}, {c1}', et)}", et)
        else:
            c = em.cst(float(1 / np.sqrt(2)), et)
            t = em.op(f"math.erf {em.op(f'arith.mulf {x}, {c}', et)}", et)
        xh, t1 = em.op(f"arith.mulf {x}, {half}", et), em.op(f"arith.addf {t}, {one}", et)
        return em.op(f"arith.mulf {xh}, {t1}", et)
    if op == "softplus":
        return em.op(f"math.log1p {em.op(f'math.exp {x}', et)}", et)
    if op in ("hard_sigmoid", "hard_swish"):
        a, b = (attrs["alpha"], attrs["beta"]) if op == "hard_sigmoid" else (1 / 6, 0.5)
        ca, cb, c0, c1 = em.cst(a, et), em.cst(b, et), em.cst(0.0, et), em.cst(1.0, et)
        y = em.op(f"arith.addf {em.op(f'arith.mulf {x}, {ca}', et)}, {cb}", et)
        y = em.op(f"arith.minimumf {em.op(f'arith.maximumf {y}, {c0}', et)}, {c1}", et)
        return y if op == "hard_sigmoid" else em.op(f"arith.mulf {x}, {y}", et)
    if op == "sign":
        z = em.cst(0.0, et)
        gt, lt = em.op(f"arith.cmpf ogt, {x}, {z}", et), em.op(f"arith.cmpf olt, {x}, {z}", et)
        pos, neg = em.op(f"arith.uitofp {gt} : i1 to", et), em.op(f"arith.uitofp {lt} : i1 to", et)
        return em.op(f"arith.subf {pos}, {neg}", et)
    if op == "clip":
        if attrs.get("min") is not None:
            lo = em.cst(attrs["min"], et)
            x = em.op(f"arith.maximumf {x}, {lo}", et)
        if attrs.get("max") is not None:
            hi = em.cst(attrs["max"], et)
            x = em.op(f"arith.minimumf {x}, {hi}", et)
        return x
    raise NnfuseError(f"op '{op}' has no MLIR lowering")


def _convert(em: Emitter, x: str, src: str, dst: str) -> str:
    if src == dst:
        return x
    fs, fd = _isf(src), _isf(dst)
    bits = {"f64": 64, "f32": 32, "f16": 16, "bf16": 16, "i64": 64, "i32": 32, "i16": 16, "i8": 8, "i1": 1}
    if dst == "i1":
        z = em.cst(0, src) if not fs else em.cst(0.0, src)
        return em.op(f"arith.cmpf une, {x}, {z}", src) if fs else em.op(f"arith.cmpi ne, {x}, {z}", src)
    if src == "i1":
        return em.op(f"arith.uitofp {x} : i1 to", dst) if fd else em.op(f"arith.extui {x} : i1 to", dst)
    if fs and fd:
        ins = "arith.extf" if bits[dst] > bits[src] else "arith.truncf"
    elif fs:
        ins = "arith.fptosi"
    elif fd:
        ins = "arith.sitofp"
    else:
        ins = "arith.extsi" if bits[dst] > bits[src] else "arith.trunci"
    return em.op(f"{ins} {x} : {src} to", dst)


# ---------------------------------------------------------------- elementwise ops
ELEMENTWISE_UNARY = {"neg", "abs", "exp", "log", "sqrt", "rsqrt", "reciprocal", "tanh", "sigmoid", "relu", "leaky_relu", "elu",
                     "gelu", "silu", "softplus", "hard_sigmoid", "hard_swish", "erf", "sin", "cos", "floor", "ceil", "round",
                     "sign", "identity", "not", "clip"}


def _unary_emit(em: Emitter, n, x, **attrs):
    t, out = n.inputs[0].type, n.output.type
    return em.generic(out, [(x, t, em.bmap(t, out))], lambda a: _unary(em, n.op, a[0], elem(t), attrs))


for _o in ELEMENTWISE_UNARY:
    EMIT[_o] = _unary_emit


@on("cast")
def _cast(em, n, x, to):
    t, out = n.inputs[0].type, n.output.type
    return em.generic(out, [(x, t, em.bmap(t, out))], lambda a: _convert(em, a[0], elem(t), elem(out)))


def _bin_emit(em: Emitter, n, a, b, fmod=False):
    ta, tb, out = n.inputs[0].type, n.inputs[1].type, n.output.type
    et = elem(ta)
    op = "fmod" if n.op == "mod" and fmod else n.op
    fn = (lambda s: _cmp(em, op, s[0], s[1], et)) if op in CMP else (lambda s: _binary(em, op, s[0], s[1], et))
    return em.generic(out, [(a, ta, em.bmap(ta, out)), (b, tb, em.bmap(tb, out))], fn)


for _o in ("add", "sub", "mul", "div", "pow", "max", "min", "mod", "and", "or", "xor", *CMP):
    EMIT[_o] = _bin_emit


@on("where")
def _where(em, n, c, a, b):
    out = n.output.type
    ins = [(nm, v.type, em.bmap(v.type, out)) for nm, v in zip((c, a, b), n.inputs)]
    return em.generic(out, ins, lambda s: em.op(f"arith.select {s[0]}, {s[1]}, {s[2]}", elem(out)))


# ---------------------------------------------------------------- reductions
IDENT = {"reduce_sum": 0.0, "reduce_mean": 0.0, "reduce_max": -np.inf, "reduce_min": np.inf, "reduce_prod": 1.0}
RED = {"reduce_sum": "add", "reduce_mean": "add", "reduce_max": "max", "reduce_min": "min", "reduce_prod": "mul"}


@on(*RED)
def _reduce(em: Emitter, n, x, axes=None, keepdims=False):
    t, out = n.inputs[0].type, n.output.type
    et = elem(t)
    axes = sorted({norm_axis(a, t.rank) for a in axes}) if axes else list(range(t.rank))
    kept = [i for i in range(t.rank) if i not in axes]
    red = TensorType([t.shape[i] for i in kept], t.dtype)
    ident = IDENT[n.op]
    if not _isf(et):
        info = np.iinfo(t.dtype.np)
        ident = {0.0: 0, 1.0: 1, -np.inf: info.min, np.inf: info.max}[ident]
    init = em.filled(red, flit(ident, et) if _isf(et) else str(int(ident)))
    r = em.generic(red, [(x, t, _amap(t.rank, [f"d{i}" for i in range(t.rank)]))],
                   lambda a: _binary(em, RED[n.op], a[1], a[0], et),
                   iters=["reduction" if i in axes else "parallel" for i in range(t.rank)],
                   out_map=_amap(t.rank, [f"d{i}" for i in kept]), init=init)
    if n.op == "reduce_mean":
        count = int(np.prod([t.shape[i] for i in axes]))
        r = em.generic(red, [(r, red, _amap(red.rank, [f"d{i}" for i in range(red.rank)]))],
                       lambda a: em.op(f"arith.divf {a[0]}, {em.cst(float(count), et)}", et))
    return em.reshape(r, red, out)


# ---------------------------------------------------------------- matmul
@on("matmul")
def _matmul(em: Emitter, n, a, b):
    ta, tb, out = n.inputs[0].type, n.inputs[1].type, n.output.type
    et = elem(out)
    if ta.rank == 1:
        a, ta = em.reshape(a, ta, TensorType([1] + list(ta.shape), ta.dtype)), TensorType([1] + list(ta.shape), ta.dtype)
    if tb.rank == 1:
        b, tb = em.reshape(b, tb, TensorType(list(tb.shape) + [1], tb.dtype)), TensorType(list(tb.shape) + [1], tb.dtype)
    nb = max(ta.rank, tb.rank) - 2
    batch = [max(x, y) for x, y in zip([1] * (nb - ta.rank + 2) + list(ta.shape[:-2]), [1] * (nb - tb.rank + 2) + list(tb.shape[:-2]))]
    full = TensorType(batch + [ta.shape[-2], tb.shape[-1]], out.dtype)
    # loop order (batch, m, k, n): the innermost loop walks rows of b and of the output contiguously,
    # which LLVM vectorizes; k-innermost would stride through b
    m, k, nn = f"d{nb}", f"d{nb + 1}", f"d{nb + 2}"

    def bdims(t):
        off = nb - (t.rank - 2)
        return ["0" if d == 1 and batch[off + i] != 1 else f"d{off + i}" for i, d in enumerate(t.shape[:-2])]
    rank = nb + 3
    ins = [(a, ta, _amap(rank, bdims(ta) + [m, k])), (b, tb, _amap(rank, bdims(tb) + [k, nn]))]
    add = "arith.addf" if _isf(et) else "arith.addi"
    mul = "arith.mulf" if _isf(et) else "arith.muli"
    init = em.filled(full, "0.0" if _isf(et) else "0")
    r = em.generic(full, ins, lambda s: em.op(f"{add} {s[2]}, " + em.op(f"{mul} {s[0]}, {s[1]}", et), et),
                   iters=["parallel"] * (nb + 1) + ["reduction", "parallel"],
                   out_map=_amap(rank, [f"d{i}" for i in range(nb)] + [m, nn]),
                   init=init)
    return em.reshape(r, full, out)


# ---------------------------------------------------------------- data movement
@on("reshape")
def _reshape(em, n, x, shape=None, allowzero=False):
    return em.reshape(x, n.inputs[0].type, n.output.type)


@on("transpose")
def _transpose(em, n, x, perm=None):
    t, out = n.inputs[0].type, n.output.type
    perm = list(perm) if perm is not None else list(range(t.rank))[::-1]
    inv = [0] * t.rank
    for j, p in enumerate(perm):
        inv[p % t.rank] = j
    return em.generic(out, [(x, t, _amap(out.rank, [f"d{inv[k]}" for k in range(t.rank)]))], lambda a: a[0])


@on("expand")
def _expand(em, n, x, shape):
    t, out = n.inputs[0].type, n.output.type
    return em.generic(out, [(x, t, em.bmap(t, out))], lambda a: a[0])


@on("tile")
def _tile(em, n, x, repeats):
    t, out = n.inputs[0].type, n.output.type
    exprs = [f"d{i} mod {d}" if r != 1 else f"d{i}" for i, (d, r) in enumerate(zip(t.shape, repeats))]
    return em.generic(out, [(x, t, _amap(out.rank, exprs))], lambda a: a[0])


def _extract(em, x: str, t: TensorType, out: TensorType, offs, strides) -> str:
    r = em.fresh()
    em.emit(f"{r} = tensor.extract_slice {x}[{', '.join(map(str, offs))}] [{', '.join(map(str, out.shape))}] "
            f"[{', '.join(map(str, strides))}] : {ttype(t)} to {ttype(out)}")
    return r


@on("slice")
def _slice(em, n, x, starts, ends, axes=None, steps=None):
    t, out = n.inputs[0].type, n.output.type
    axes = list(axes) if axes else list(range(len(starts)))
    steps = list(steps) if steps else [1] * len(starts)
    offs, strides = [0] * t.rank, [1] * t.rank
    for ax, s, e, st in zip(axes, starts, ends, steps):
        ax = norm_axis(ax, t.rank)
        offs[ax], strides[ax] = slice_bounds(t.shape[ax], s, e, st)[0], st
    if all(st > 0 for st in strides):
        return _extract(em, x, t, out, offs, strides)

    def body(a):  # negative steps: read x at offset + step * index
        subs = []
        for k in range(t.rank):
            i = em.op(f"linalg.index {k}", "index")
            if strides[k] != 1 or offs[k]:
                m = em.op(f"arith.muli {i}, {em.op(f'arith.constant {strides[k]}', 'index')}", "index")
                i = em.op(f"arith.addi {m}, {em.op(f'arith.constant {offs[k]}', 'index')}", "index")
            subs.append(i)
        return em.op(f"tensor.extract {x}[{', '.join(subs)}]", ttype(t))
    return em.generic(out, [], body)


@on("split")
def _split(em, n, x, axis, sizes):
    t = n.inputs[0].type
    ax, off, res = norm_axis(axis, t.rank), 0, []
    for o, s in zip(n.outputs, sizes):
        offs = [0] * t.rank
        offs[ax] = off
        res.append(_extract(em, x, t, o.type, offs, [1] * t.rank))
        off += s
    return res


@on("concat")
def _concat(em, n, *xs, axis):
    out = n.output.type
    ax, off = norm_axis(axis, out.rank), 0
    r = em.empty(out)
    for x, v in zip(xs, n.inputs):
        offs = ["0"] * out.rank
        offs[ax] = str(off)
        nr = em.fresh()
        em.emit(f"{nr} = tensor.insert_slice {x} into {r}[{', '.join(offs)}] [{', '.join(map(str, v.type.shape))}] "
                f"[{', '.join(['1'] * out.rank)}] : {ttype(v.type)} into {ttype(out)}")
        r, off = nr, off + v.type.shape[ax]
    return r


@on("pad")
def _pad(em, n, x, pads, mode="constant", value=0.0, axes=None):
    t, out = n.inputs[0].type, n.output.type
    if mode != "constant" or axes is not None or any(p < 0 for p in pads):
        raise NnfuseError(f"pad mode={mode} (axes={axes}) has no MLIR lowering yet")
    r, et = em.fresh(), elem(t)
    lo, hi = pads[:t.rank], pads[t.rank:]
    em.emit(f"{r} = tensor.pad {x} low[{', '.join(map(str, lo))}] high[{', '.join(map(str, hi))}] {{")
    em.emit(f"^bb0({', '.join(f'%i{k}: index' for k in range(t.rank))}):")
    c = em.cst(value, et)
    em.emit(f"  tensor.yield {c} : {et}")
    em.emit(f"}} : {ttype(t)} to {ttype(out)}")
    return r


def _gather_body(em: Emitter, x: str, t: TensorType, idx_arg: str, idx_et: str, ax: int, out_rank: int, ri: int):
    """Inside a generic over the output: read x[o_0.., idx, o_{ax+ri}..] with a bounds-wrapped index."""
    i = em.op(f"arith.index_cast {idx_arg} : {idx_et} to", "index")
    n = em.op(f"arith.constant {t.shape[ax]}", "index")
    z = em.op("arith.constant 0", "index")
    neg = em.op(f"arith.cmpi slt, {i}, {z}", "index")
    wrapped = em.op(f"arith.addi {i}, {n}", "index")
    i = em.op(f"arith.select {neg}, {wrapped}, {i}", "index")
    subs = []
    for k in range(t.rank):
        if k == ax:
            subs.append(i)
        else:
            subs.append(em.op(f"linalg.index {k if k < ax else k + ri - 1}", "index"))
    return em.op(f"tensor.extract {x}[{', '.join(subs)}]", ttype(t))


@on("gather")
def _gather(em, n, x, idx, axis=0):
    t, ti, out = n.inputs[0].type, n.inputs[1].type, n.output.type
    ax = norm_axis(axis, t.rank)
    imap = _amap(out.rank, [f"d{ax + j}" for j in range(ti.rank)])
    return em.generic(out, [(idx, ti, imap)],
                      lambda a: _gather_body(em, x, t, a[0], elem(ti), ax, out.rank, ti.rank))


@on("gather_elements")
def _gather_elements(em, n, x, idx, axis=0):
    """out[i] = x[i with i[axis] replaced by idx[i]]."""
    t, ti, out = n.inputs[0].type, n.inputs[1].type, n.output.type
    ax = norm_axis(axis, t.rank)

    def body(a):
        i = em.op(f"arith.index_cast {a[0]} : {elem(ti)} to", "index")
        size, z = em.op(f"arith.constant {t.shape[ax]}", "index"), em.op("arith.constant 0", "index")
        neg = em.op(f"arith.cmpi slt, {i}, {z}", "index")
        wrapped = em.op(f"arith.addi {i}, {size}", "index")
        i = em.op(f"arith.select {neg}, {wrapped}, {i}", "index")
        subs = [i if k == ax else em.op(f"linalg.index {k}", "index") for k in range(t.rank)]
        return em.op(f"tensor.extract {x}[{', '.join(subs)}]", ttype(t))
    return em.generic(out, [(idx, ti, _amap(out.rank, [f"d{k}" for k in range(out.rank)]))], body)


# ---------------------------------------------------------------- convolution and pooling (2-D, NCHW)
def _padded(em, x, t: TensorType, pads, value: float):
    k = (len(pads) // 2)
    if not any(pads):
        return x, t
    lo, hi = [0, 0] + list(pads[:k]), [0, 0] + list(pads[k:])
    pt = TensorType([d + a + b for d, a, b in zip(t.shape, lo, hi)], t.dtype)
    r = em.fresh()
    em.emit(f"{r} = tensor.pad {x} low[{', '.join(map(str, lo))}] high[{', '.join(map(str, hi))}] {{")
    em.emit(f"^bb0({', '.join(f'%i{j}: index' for j in range(t.rank))}):")
    em.emit(f"  tensor.yield {em.cst(value, elem(t))} : {elem(t)}")
    em.emit(f"}} : {ttype(t)} to {ttype(pt)}")
    return r, pt


@on("conv")
def _conv(em, n, x, w, b=None, strides=None, pads=None, dilations=None, groups=1):
    t, tw, out = n.inputs[0].type, n.inputs[1].type, n.output.type
    depthwise = groups > 1 and groups == t.shape[1] == tw.shape[0]
    if t.rank != 4 or (groups != 1 and not depthwise):
        raise NnfuseError(f"conv with rank {t.rank}, groups {groups} has no MLIR lowering (mlir_prep splits these)")
    s, d = list(strides or [1, 1]), list(dilations or [1, 1])
    xp, tp = _padded(em, x, t, list(pads or [0] * 4), 0.0)
    init = em.filled(out, "0.0")
    r = em.fresh()
    attrs = f"{{dilations = dense<{d}> : tensor<2xi64>, strides = dense<{s}> : tensor<2xi64>}}"
    if depthwise:  # weights [C,1,KH,KW] -> [C,KH,KW]
        tw3 = TensorType([tw.shape[0]] + list(tw.shape[2:]), tw.dtype)
        w3 = em.reshape(w, tw, tw3)
        em.emit(f"{r} = linalg.depthwise_conv_2d_nchw_chw {attrs} ins({xp}, {w3} : {ttype(tp)}, {ttype(tw3)}) "
                f"outs({init} : {ttype(out)}) -> {ttype(out)}")
    else:
        em.emit(f"{r} = linalg.conv_2d_nchw_fchw {attrs} ins({xp}, {w} : {ttype(tp)}, {ttype(tw)}) "
                f"outs({init} : {ttype(out)}) -> {ttype(out)}")
    if b is not None:
        tb = n.inputs[2].type
        r = em.generic(out, [(r, out, _amap(4, ["d0", "d1", "d2", "d3"])), (b, tb, _amap(4, ["d1"]))],
                       lambda a: em.op(f"arith.addf {a[0]}, {a[1]}", elem(out)))
    return r


@on("max_pool", "avg_pool")
def _pool(em, n, x, kernel, strides=None, pads=None, dilations=None, ceil_mode=False, count_include_pad=False):
    t, out = n.inputs[0].type, n.output.type
    if t.rank != 4:
        raise NnfuseError("only 2-D pooling has an MLIR lowering yet")
    is_max = n.op == "max_pool"
    pads = list(pads or [0] * 4)
    if not is_max and any(pads) and not count_include_pad:
        raise NnfuseError("avg_pool with padding excluded from the count has no MLIR lowering yet")
    s, d = list(strides or [1] * len(kernel)), list(dilations or [1] * len(kernel))
    for i in range(2):  # ceil_mode: the last window overhangs; for max, pad the end with -inf to cover it
        need = (out.shape[2 + i] - 1) * s[i] + d[i] * (kernel[i] - 1) + 1 - (t.shape[2 + i] + pads[i] + pads[2 + i])
        if need > 0:
            if not is_max:
                raise NnfuseError("avg_pool with ceil_mode overhang has no MLIR lowering yet")
            pads[2 + i] += need
    xp, tp = _padded(em, x, t, pads, -np.inf if is_max else 0.0)
    win = TensorType(kernel, t.dtype)
    we = em.empty(win)
    init = em.filled(out, flit(-np.inf, elem(out)) if is_max else "0.0")
    r = em.fresh()
    em.emit(f"{r} = linalg.pooling_nchw_{'max' if is_max else 'sum'} {{dilations = dense<{d}> : tensor<2xi64>, "
            f"strides = dense<{s}> : tensor<2xi64>}} ins({xp}, {we} : {ttype(tp)}, {ttype(win)}) "
            f"outs({init} : {ttype(out)}) -> {ttype(out)}")
    if not is_max:
        cnt = float(np.prod(kernel))
        r = em.generic(out, [(r, out, _amap(4, ["d0", "d1", "d2", "d3"]))],
                       lambda a: em.op(f"arith.divf {a[0]}, {em.cst(cnt, elem(out))}", elem(out)))
    return r
