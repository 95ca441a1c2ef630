"""decompose-quant: rewrite the quantization ops into primitive ops for backends without quantized kernels yet
(cpu, triton, cuda, mlir). Same numbers as the reference semantics:

  dequantize(const codes, const scale)  -> folded to an f32 constant (the weight as the kernels would see it)
  dequantize(q, s)                      -> mul(cast(q, f32) [- zero], expanded s)
  quantize_dynamic (int codes)          -> abs, reduce_max (per token / block / tensor), where(amax > 0, amax/qmax, 1),
                                           div, round (half to even), clip, cast
  quantize (int codes)                  -> div, round, clip [, add zero], cast
  matmul_integer                        -> matmul(cast(a, i32) [- a_zero], cast(b, i32) [- b_zero]) : exact int32
  hadamard                              -> matmul(x, H_n) with the constant orthonormal matrix
Float codes (fp8/fp4 activations) and MX/NV dynamic scales have no primitive form here: a clear error says so.
"""
from __future__ import annotations

import numpy as np

from ...ir import Graph, Node, Value, make_node
from ...ir.evaluate import run_node
from ...ir.ops.quant import hadamard_matrix
from ..manager import PassContext, register_pass
from .common import QuantPassError, tidy

QUANT_OPS = ("dequantize", "quantize", "quantize_dynamic", "matmul_integer", "hadamard")


class _Emit:
    def __init__(self, g: Graph, anchor: Node):
        self.g, self.anchor = g, anchor

    def __call__(self, op: str, *ins: Value, **attrs) -> "Value | list[Value]":
        n = make_node(op, list(ins), attrs, dict(self.anchor.meta))
        self.g.add_node(n, self.g.nodes.index(self.anchor))
        return n.outputs[0] if len(n.outputs) == 1 else n.outputs

    def const(self, arr, name: str = "q") -> Value:
        return self.g.add_const(name, np.asarray(arr))


def _expand(e: _Emit, s: Value, axis: int, group: int, like: Value) -> Value:
    """Repeat each scale `group` times along `axis` (as quant_formats.expand)."""
    if group <= 0 or s.type.rank == 0:
        return s
    ax = axis % like.type.rank
    shp = list(s.shape)
    u = e("unsqueeze", s, axes=[ax + 1])
    u = e("expand", u, shape=shp[:ax + 1] + [group] + shp[ax + 1:])
    return e("reshape", u, shape=list(like.shape))


def _f32(e: _Emit, v: Value) -> Value:
    if v.dtype.name == "f32":
        return v
    if v.dtype.name in ("f8e8m0", "f8e4m3", "f8e5m2", "f4e2m1") and v.producer is None and v.data is not None:
        return e.const(v.data.astype(np.float32), (v.name or "c") + ".f32")
    return e("cast", v, to="f32")


def _int_codes(n: Node, dt) -> None:
    if not dt.is_int:
        raise QuantPassError(f"{n.op} ({n.loc or 'unnamed'}): {dt} codes have no primitive-op form for this backend; "
                             "use backend='reference' (or 'onnx') for fp8/fp4 activation quantization")


def decompose_node(g: Graph, n: Node) -> None:
    e = _Emit(g, n)
    a = n.attrs
    if n.op == "dequantize" and all(v.producer is None and v.data is not None for v in n.inputs):
        c = e.const(run_node(n, [v.data for v in n.inputs])[0], (n.inputs[0].name or "w") + ".dq")
        outs = [c]
    elif n.op == "dequantize":
        v = e("cast", n.inputs[0], to="f32")
        if len(n.inputs) > 2:
            v = e("sub", v, _expand(e, _f32(e, n.inputs[2]), a["axis"], a["group"], n.inputs[0]))
        v = e("mul", v, _expand(e, _f32(e, n.inputs[1]), a["axis"], a["group"], n.inputs[0]))
        if a["global_scale"] != 1.0:
            v = e("mul", v, e.const(np.float32(a["global_scale"]), "gs"))
        outs = [v]
    elif n.op == "quantize":
        from ...ir import dtype
        dt = dtype(a["dtype"])
        _int_codes(n, dt)
        x = n.inputs[0]
        s = _expand(e, _f32(e, n.inputs[1]), a["axis"], a["group"], x)
        if a["global_scale"] != 1.0:
            s = e("mul", s, e.const(np.float32(a["global_scale"]), "gs"))
        y = e("round", e("div", _f32(e, x), s))
        if len(n.inputs) > 2:
            y = e("add", y, _expand(e, _f32(e, n.inputs[2]), a["axis"], a["group"], x))
        lo, hi = _int_range(dt.name)
        outs = [e("cast", e("clip", y, min=float(lo), max=float(hi)), to=dt.name)]
    elif n.op == "quantize_dynamic":
        from ...ir import dtype
        dt = dtype(a["dtype"])
        _int_codes(n, dt)
        if not a["symmetric"] or a["scale_dtype"] != "f32":
            raise QuantPassError(f"quantize_dynamic ({n.loc or 'unnamed'}): {a['scale_dtype']} / asymmetric scales have no "
                                 "primitive-op form for this backend; use backend='reference'")
        x = _f32(e, n.inputs[0])
        ax, grp = a["axis"] % x.type.rank, a["group"]
        ab = e("abs", x)
        if grp > 0:
            shp = list(x.shape)
            blk = e("reshape", ab, shape=shp[:ax] + [shp[ax] // grp, grp] + shp[ax + 1:])
            amax = e("reduce_max", blk, axes=[ax + 1], keepdims=False)
        elif grp == -1:
            amax = e("reduce_max", ab, axes=list(range(x.type.rank)), keepdims=True)
        else:
            amax = e("reduce_max", ab, axes=[ax], keepdims=True)
        if a["clip"] != 1.0:
            amax = e("mul", amax, e.const(np.float32(a["clip"]), "clip"))
        lo, hi = _int_range(dt.name)
        scale = e("where", e("gt", amax, e.const(np.float32(0), "zero")), e("div", amax, e.const(np.float32(hi), "qmax")),
                  e.const(np.float32(1), "one"))
        y = e("round", e("div", x, _expand(e, scale, ax, grp, x)))
        outs = [e("cast", e("clip", y, min=float(lo), max=float(hi)), to=dt.name), scale]
    elif n.op == "matmul_integer":
        ops = []
        for i, v in enumerate(n.inputs[:2]):
            w = e("cast", v, to="i32")
            if len(n.inputs) > 2 + i:
                w = e("sub", w, e("cast", n.inputs[2 + i], to="i32"))
            ops.append(w)
        outs = [e("matmul", *ops)]
    elif n.op == "hadamard":
        x = n.inputs[0]
        h = e.const(hadamard_matrix(int(x.shape[-1])).astype(x.dtype.np), "hadamard")
        outs = [e("matmul", x, h)]
    else:
        return
    for o, v in zip(n.outputs, outs):
        g.replace_uses(o, v)
    g.nodes.remove(n)


def _int_range(name: str) -> tuple[int, int]:
    return {"i8": (-128, 127), "u8": (0, 255), "i4": (-8, 7), "u4": (0, 15)}[name]


@register_pass("decompose-quant", exact=True)
def decompose_quant(g: Graph, ctx: PassContext) -> dict:
    """Quantization ops -> primitive ops (backends without quantized kernels); dequantized weights fold to f32."""
    counts: dict = {}
    for n in list(g.nodes):
        if n.body is None and n.op in QUANT_OPS:
            decompose_node(g, n)
            counts[n.op] = counts.get(n.op, 0) + 1
    tidy(g)
    return {"decomposed": sum(counts.values()), **{f"op:{k}": v for k, v in counts.items()}}
