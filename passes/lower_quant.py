"""Quantized gemms on the cpu backend (issue 10): a graph pass that keeps the quant ops the cpu kernels run and
decomposes the rest, and the lowerings of the kept forms to Gemm kernels whose meta["quant"] picks the C kernel
(backends/cpu/quant_kernels.py).

  y = matmul(x, dequantize(Wq, s) {axis 0, group g})   Wq const i8|i4 [K, N], s const f32 [K/g | 1, N], no zero
      -> Gemm(b = QuantOperand(packed codes, packed scales, group)), meta quant = "w4" | "w8"   (f32 accumulation)
  acc = matmul_integer(qa, Wq)                         qa i8, Wq const i8|i4 [K, N], no zero points
      -> Gemm(a = qa, b = VNNI-packed Wq + colsums), meta quant = "w8a8"   (exact int32 accumulation); when the
         only user is cast(acc, f32) the gemm writes f32 = (float)acc and the cast, the two scale multiplies and
         any bias/activation/residual fold into its epilogue (lower.fuse_epilogues).
Everything else (quantize_dynamic, static quantize, hadamard, fp8/MX/NV weights, zero points) goes through
decompose-quant's primitive ops: quantize_dynamic then runs as a generated Reduce (absmax) + Pointwise (divide,
round half-even, clip, cast) pair, bit-exact with the reference.
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph, Node, Value
from ..ir.dtypes import dtype as to_dtype
from ..ir.kernel import Access, Arg, Buffer, Gemm, Load, QuantOperand, op as mkop
from .lower import LOWERINGS, Lowering, Tensor, _operand, _reshape, broadcast, cstrides, numel
from .manager import PassContext, register_pass
from .quant.common import tidy
from .quant.decompose import QUANT_OPS, decompose_node

_WQ_DTYPES = ("i8", "i4")


def _const(v: Value) -> bool:
    return v.producer is None and v.data is not None


def weight_only_ok(n: Node, ins: "list[Value] | None" = None) -> bool:
    """dequantize of a constant [K, N] int8/int4 weight with per-channel or group-along-K f32 scales."""
    ins = ins if ins is not None else list(n.inputs)
    if n.op != "dequantize" or n.body is not None or len(ins) != 2 or not all(_const(v) for v in ins):
        return False
    q, s = ins
    a = n.attrs
    if q.dtype.name not in _WQ_DTYPES or s.dtype.name != "f32" or q.type.rank != 2 or s.type.rank != 2:
        return False
    if a.get("axis", 0) % 2 != 0 or float(a.get("global_scale", 1.0)) != 1.0:
        return False
    K, N = q.shape
    g = a.get("group", 0)
    if g > 0:
        return K % g == 0 and tuple(s.shape) == (K // g, N)
    return tuple(s.shape) == (1, N)


def int_gemm_ok(n: Node, ins: "list[Value] | None" = None) -> bool:
    """matmul_integer(s8 activations, constant s8/s4 [K, N] weight), no zero points."""
    ins = ins if ins is not None else list(n.inputs)
    if n.op != "matmul_integer" or len(ins) != 2:
        return False
    a, b = ins
    return a.dtype.name == "i8" and _const(b) and b.dtype.name in _WQ_DTYPES and b.type.rank == 2 and a.type.rank >= 1


@register_pass("prepare-quant-cpu", exact=True)
def prepare_quant_cpu(g: Graph, ctx: PassContext) -> dict:
    """Keep the quant ops the cpu kernels run (weight-only int8/int4 gemms, s8 x s8 integer gemms); decompose the rest."""
    users = g.users()
    outs = {v.id for v in g.outputs}
    kept, dec = {"weight_only": 0, "int8_gemm": 0}, {}
    for n in list(g.nodes):
        if n.body is not None or n.op not in QUANT_OPS:
            continue
        o = n.outputs[0]
        us = users.get(o.id, [])
        if (n.op == "dequantize" and weight_only_ok(n) and o.id not in outs and us
                and all(u.op == "matmul" and len(u.inputs) == 2 and u.inputs[1] is o and u.inputs[0] is not o for u in us)):
            n.meta["cpu_qweight"] = True    # every user is a matmul that the weight-only kernel runs
            kept["weight_only"] += 1
            continue
        if n.op == "matmul_integer" and int_gemm_ok(n):
            # the gemm can hand its consumer f32 directly when that consumer is the only one and casts to f32
            n.meta["cpu_f32_acc"] = (o.id not in outs and len(us) == 1 and us[0].op == "cast"
                                     and us[0].attrs.get("to") == "f32")
            kept["int8_gemm"] += 1
            continue
        decompose_node(g, n)
        dec[n.op] = dec.get(n.op, 0) + 1
    tidy(g)
    return {**kept, "decomposed": sum(dec.values()), **{f"op:{k}": v for k, v in dec.items()}}


# ---------------------------------------------------------------- lowerings
def _packed(L: Lowering, key: tuple, make) -> list[Buffer]:
    """Compile-time packed copies of a weight, one per (weight, layout): new const buffers of the program."""
    cache = L.__dict__.setdefault("_qpacked", {})
    if key not in cache:
        bufs = []
        for arr, label in make():
            b = Buffer(f"w{len(L.consts)}", to_dtype(arr.dtype), int(arr.size), "const", len(L.consts), label=label)
            L.consts.append(b)
            L.const_data.append(arr)
            bufs.append(b)
        cache[key] = bufs
    return cache[key]


def _rows(L: Lowering, a: Tensor, batch: tuple, m: int, k: int) -> Access:
    """The activation as rows with unit k stride (what the kernels read)."""
    acc = _operand(L, broadcast(a, batch + (m, k)), m, k)
    if acc.strides[-1] != 1 or (m > 1 and acc.strides[-2] < k):
        acc = L.contiguous(Tensor(batch + (m, k), Load(a.dtype, acc))).expr.access
    return acc


def _gemm(L: Lowering, n, a: Tensor, K: int, N: int, out_dtype, make_b, meta: str, epi=None) -> Tensor:
    a2 = a if len(a.shape) > 1 else _reshape(L, a, (1,) + tuple(a.shape))
    out_shape = tuple(n.outputs[0].type.shape)
    shape = tuple(a2.shape[:-1]) + (N,)
    batch, m = shape[:-2], shape[-2]
    aa = _rows(L, a2, batch, m, K)
    buf = L.temp(out_dtype, numel(shape))
    oacc = Access(buf, 0, cstrides(shape))
    k = Gemm(batch=batch, m=m, n=N, k=K, a=aa, b=make_b(len(batch)), out=oacc, epilogue=epi)
    k.meta["quant"] = meta
    L.emit(k)
    return _reshape(L, Tensor(shape, Load(out_dtype, oacc)), out_shape)


def _weight_only(L: Lowering, n, ins, dq: Node, q: Value, s: Value) -> Tensor:
    from ..backends.cpu.quant_kernels import pack_wq
    K, N = q.shape
    group = dq.attrs.get("group", 0)
    group = group if group > 0 else K
    bits = 4 if q.dtype.name == "i4" else 8

    def make():
        data, sc = pack_wq(q.data.astype(np.int8), s.data.astype(np.float32).reshape(-1, N), bits)
        return [(data, f"{q.name} [int{bits} packed]"), (sc, f"{s.name} [packed]")]
    db, sb = _packed(L, ("wq", q.id, s.id), make)

    def make_b(nb):
        z = (0,) * nb
        return QuantOperand(Access(db, 0, z + (0, 0)), Access(sb, 0, z + (0, 0)), group)
    return _gemm(L, n, ins[0], K, N, to_dtype("f32"), make_b, f"w{bits}")


_MATMUL = LOWERINGS["matmul"]


def _matmul_q(L: Lowering, n, ins):
    w = L.resolve(n.inputs[1])
    dq = w.producer
    if dq is not None and dq.op == "dequantize" and len(ins[0].shape) >= 1:
        qins = [L.resolve(v) for v in dq.inputs]
        if weight_only_ok(dq, qins):
            return [_weight_only(L, n, ins, dq, qins[0], qins[1])]
    return _MATMUL(L, n, ins)


def _dequantize(L: Lowering, n, ins):
    """A weight kept by prepare-quant-cpu is read by its matmuls' kernels (as codes): a placeholder no kernel loads.
    Any other dequantize (an explicit pass list without prepare-quant-cpu) is folded to f32 here, at compile time."""
    from ..ir.kernel import Const
    qins = [L.resolve(v) for v in n.inputs]
    if n.meta.get("cpu_qweight") and weight_only_ok(n, qins):
        return [Tensor(tuple(n.outputs[0].shape), Const(to_dtype("f32"), 0.0))]
    if not all(_const(v) for v in qins):
        from .lower import LowerError
        raise LowerError(f"dequantize ({n.loc or 'unnamed'}) of a computed tensor has no cpu lowering; "
                         "run prepare-quant-cpu or decompose-quant first")
    from ..ir.evaluate import run_node
    arr = np.ascontiguousarray(run_node(n, [v.data for v in qins])[0], np.float32)
    b = Buffer(f"w{len(L.consts)}", to_dtype("f32"), int(arr.size), "const", len(L.consts), label=f"{qins[0].name} (dequantized)")
    L.consts.append(b)
    L.const_data.append(arr)
    return [Tensor(tuple(arr.shape), Load(b.dtype, Access(b, 0, cstrides(arr.shape))))]


def _matmul_integer(L: Lowering, n, ins):
    from ..backends.cpu.quant_kernels import pack_q8
    qins = [L.resolve(v) for v in n.inputs]
    if not int_gemm_ok(n, qins):
        from .lower import LowerError
        raise LowerError(f"matmul_integer ({n.loc or 'unnamed'}): the cpu kernel needs s8 activations, a constant "
                         "s8/s4 [K, N] weight and no zero points; run prepare-quant-cpu (or decompose-quant) first")
    b = qins[1]
    K, N = b.shape
    db, = _packed(L, ("q8", b.id), lambda: [(pack_q8(b.data.astype(np.int8)), f"{b.name} [vnni packed]")])

    def make_b(nb):
        return Access(db, 0, (0,) * nb + (N, 1))
    i32, f32 = to_dtype("i32"), to_dtype("f32")
    if n.meta.get("cpu_f32_acc"):
        # exact int32 sums, converted once: the same f32 values as cast(acc, f32) in the graph
        epi = mkop("cast", f32, Arg(i32, "acc"))
        return [_gemm(L, n, ins[0], K, N, f32, make_b, "w8a8", epi)]
    return [_gemm(L, n, ins[0], K, N, i32, make_b, "w8a8")]


LOWERINGS["matmul"] = _matmul_q
LOWERINGS["dequantize"] = _dequantize
LOWERINGS["matmul_integer"] = _matmul_integer
