"""Quantized gemms on the cpu backend (issue 10): a graph pass that keeps the quant ops the cpu kernels run and
decomposes the rest, and the lowerings of the kept forms to Gemm kernels whose meta["quant"] picks the C kernel
(backends/cpu/quant_kernels.py, which packs the weights into its layouts when the backend compiles).

  y = matmul(x, dequantize(Wq, s) {axis 0, group g})   Wq const i8|i4 [K, N], s const f32 [K/g | 1, N], no zero
      -> Gemm(b = QuantOperand(codes, scales, group)), meta quant = "w4" | "w8"   (f32 accumulation)
  acc = matmul_integer(qa, Wq)                         qa i8, Wq const i8|i4 [K, N], no zero points
      -> Gemm(a = qa, b = Wq), meta quant = "w8a8"   (exact int32 accumulation); when the
         only user is cast(acc, f32) the gemm writes f32 = (float)acc and the cast, the two scale multiplies and
         any bias/activation/residual fold into its epilogue (lower.fuse_epilogues).
  qx, sx = quantize_dynamic(x) {i8, axis -1, group 0, symmetric}
      -> QuantRows kernel (absmax, scale = absmax / 127, codes = clip(rne(x / scale))), bit-exact with the reference
Everything else (static quantize, hadamard, fp8/MX/NV weights or activations, zero points, blocked activation
scales) goes through decompose-quant's primitive ops.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import Node, Value
from ..ir.dtypes import dtype as to_dtype
from ..ir.kernel import Access, Arg, Buffer, Gemm, Kernel, Load, QuantOperand, op as mkop
from .lower import LOWERINGS, Lowering, Tensor, _operand, _reshape, broadcast, cstrides, numel
from .quant.cpu_prepare import _const, int_gemm_ok, row_quant_ok, weight_only_ok

# ---------------------------------------------------------------- lowerings
def _const_access(L: Lowering, v: Value) -> Access:
    """A row-major buffer for a constant (L.const turns one-element arrays into literals; the kernels need memory)."""
    e = L.const(v).expr
    if isinstance(e, Load):
        return e.access
    arr = np.ascontiguousarray(v.data)
    b = Buffer(f"w{len(L.consts)}", to_dtype(arr.dtype), int(arr.size), "const", len(L.consts), label=v.name)
    L.consts.append(b)
    L.const_data.append(arr)
    return Access(b, 0, cstrides(arr.shape))


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
    K, N = q.shape
    group = dq.attrs.get("group", 0)
    group = group if group > 0 else K
    qa, sa = _const_access(L, q), _const_access(L, s)      # [K, N] codes, [K/g | 1, N] scales (row-major)

    def make_b(nb):
        z = (0,) * nb
        return QuantOperand(Access(qa.buf, qa.offset, z + (N, 1)), Access(sa.buf, sa.offset, z + (N if group < K else 0, 1)),
                            group)
    return _gemm(L, n, ins[0], K, N, to_dtype("f32"), make_b, "w4" if q.dtype.name == "i4" else "w8")


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
    qins = [L.resolve(v) for v in n.inputs]
    if not int_gemm_ok(n, qins):
        from .lower import LowerError
        raise LowerError(f"matmul_integer ({n.loc or 'unnamed'}): the cpu kernel needs s8 activations, a constant "
                         "s8/s4 [K, N] weight and no zero points; run prepare-quant-cpu (or decompose-quant) first")
    b = qins[1]
    K, N = b.shape
    ba = _const_access(L, b)

    def make_b(nb):
        return Access(ba.buf, ba.offset, (0,) * nb + (N, 1))
    i32, f32 = to_dtype("i32"), to_dtype("f32")
    if n.meta.get("cpu_f32_acc"):
        # exact int32 sums, converted once: the same f32 values as cast(acc, f32) in the graph
        epi = mkop("cast", f32, Arg(i32, "acc"))
        return [_gemm(L, n, ins[0], K, N, f32, make_b, "w8a8", epi)]
    return [_gemm(L, n, ins[0], K, N, i32, make_b, "w8a8")]


@dataclass(eq=False)
class QuantRows(Kernel):
    """Per-row dynamic quantization: out[r] = absmax(x[r, :]) / 127 (1 when 0); q[r, k] = clip(rne(x[r, k] / out[r])).
    One pass for the absmax and one for the codes, vectorized (the generic Reduce + Pointwise pair was 10x slower).
    Accesses carry no strides (a row-major [rows, k] layout is the contract; lda is the x row stride)."""
    rows: int = 1
    k: int = 1
    lda: int = 1
    x: Access = None       # type: ignore[assignment]
    q: Access = None       # type: ignore[assignment]
    out: Access = None     # type: ignore[assignment]
    kind = "quant_rows"

    def writes(self):
        return [self.q, self.out]

    def extra_reads(self):
        return [self.x]


def _quantize_dynamic(L: Lowering, n, ins):
    if not row_quant_ok(n):
        from .lower import LowerError
        raise LowerError(f"quantize_dynamic ({n.loc or 'unnamed'}): this form has no cpu kernel; run prepare-quant-cpu "
                         "(compile(..., backend='cpu', quantize=...) does) or decompose-quant first")
    x = ins[0]
    shape = tuple(x.shape)
    K = shape[-1]
    R = numel(shape[:-1])
    xa = L.contiguous(x).expr.access
    qb = L.temp(to_dtype("i8"), numel(shape))
    sb = L.temp(to_dtype("f32"), R)
    L.emit(QuantRows(rows=R, k=K, lda=K, x=Access(xa.buf, xa.offset, ()), q=Access(qb, 0, ()), out=Access(sb, 0, ())))
    sshape = shape[:-1] + (1,)
    return [Tensor(shape, Load(qb.dtype, Access(qb, 0, cstrides(shape)))),
            Tensor(sshape, Load(sb.dtype, Access(sb, 0, cstrides(sshape))))]


LOWERINGS["quantize_dynamic"] = _quantize_dynamic
LOWERINGS["matmul"] = _matmul_q
LOWERINGS["dequantize"] = _dequantize
LOWERINGS["matmul_integer"] = _matmul_integer
