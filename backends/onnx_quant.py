"""Quantized IR ops (QDQ form) -> standard ONNX ops for the exporter; registered into `onnx_ops.EMITTERS`."""
from __future__ import annotations

from .onnx import IR_DTYPE_TO_ONNX, OnnxExportError
from .onnx_ops import emitter


def _grouped(ex, name, t, axis, group):
    """A scale/zero [.., d/g, ..] repeated `group` times along `axis` at runtime (the model stays compressed)."""
    if group <= 0 or t.rank == 0:
        return name
    from ..ir.types import dim_mul
    ax = axis % t.rank
    shp = list(t.shape)
    x = ex.node("Unsqueeze", [name, ex.ints([ax + 1], "axes")])
    x = ex.node("Expand", [x, ex.dims(shp[:ax + 1] + [group] + shp[ax + 1:])])
    return ex.node("Reshape", [x, ex.dims(shp[:ax] + [dim_mul(shp[ax], group)] + shp[ax + 1:])])


def _f32(ex, name, t):
    return name if t.dtype.name == "f32" else ex.node("Cast", [name], to=1)


def _scale(ex, n, ins, ax_rank_t):
    a = n.attrs
    s = _grouped(ex, _f32(ex, ins[1], n.inputs[1].type), n.inputs[1].type, a["axis"], a["group"])
    if a["global_scale"] != 1.0:
        s = ex.node("Mul", [s, ex.scalar(a["global_scale"], "f32")])
    return s


_QSCALE_OK = {"f32", "f16", "bf16", "f8e4m3", "f8e5m2"}


def _check_scale_dtype(n):
    dt = n.inputs[1].type.dtype.name
    if dt not in _QSCALE_OK:
        raise OnnxExportError(f"onnx export: {n.op} with {dt} scales has no ONNX form at opset <= 21")


@emitter("dequantize")
def _dequantize(ex, n, ins):
    _check_scale_dtype(n)
    a = n.attrs
    v = _f32(ex, ins[0], n.inputs[0].type)
    if len(ins) > 2:
        v = ex.node("Sub", [v, _grouped(ex, _f32(ex, ins[2], n.inputs[2].type), n.inputs[2].type, a["axis"], a["group"])])
    return ex.node("Mul", [v, _scale(ex, n, ins, None)])


@emitter("quantize")
def _quantize(ex, n, ins):
    _check_scale_dtype(n)
    a = n.attrs
    dt = a["dtype"]
    y = ex.node("Div", [_f32(ex, ins[0], n.inputs[0].type), _scale(ex, n, ins, None)])
    from ..ir import dtype as to_dtype
    d = to_dtype(dt)
    if d.is_float:
        if len(ins) > 2:
            raise OnnxExportError("onnx export: float quantize with a zero point")
        return ex.node("Cast", [y], to=IR_DTYPE_TO_ONNX[dt], saturate=1)
    import ml_dtypes
    info = ml_dtypes.iinfo(d.np)
    y = ex.node("Round", [y])   # half to even, as the IR's rne rounding
    if len(ins) > 2:
        y = ex.node("Add", [y, _grouped(ex, _f32(ex, ins[2], n.inputs[2].type), n.inputs[2].type, a["axis"], a["group"])])
    y = ex.node("Clip", [y, ex.scalar(info.min, "f32"), ex.scalar(info.max, "f32")])
    return ex.node("Cast", [y], to=IR_DTYPE_TO_ONNX[dt])


@emitter("matmul_integer")
def _matmul_integer(ex, n, ins):
    ins = list(ins)
    for i, v in enumerate(n.inputs):   # MatMulInteger takes 8-bit operands: widen 4-bit codes
        if v.type.dtype.bits < 8:
            ins[i] = ex.node("Cast", [ins[i]], to=IR_DTYPE_TO_ONNX["i8" if v.type.dtype.kind == "int" else "u8"])
    return ex.node("MatMulInteger", ins)


@emitter("hadamard")
def _hadamard(ex, n, ins):
    from ..ir.ops.quant import hadamard_matrix
    t = n.inputs[0].type
    return ex.node("MatMul", [ins[0], ex.init(hadamard_matrix(t.shape[-1]).astype(t.dtype.np), "hadamard")])


@emitter("quantize_dynamic")
def _quantize_dynamic(ex, n, ins):
    """Symmetric per-token (group 0) or per-tensor (group -1) integer codes: scale = clip*absmax/qmax (1 where 0)."""
    a = n.attrs
    from ..ir import dtype as to_dtype
    d = to_dtype(a["dtype"])
    if not a["symmetric"] or a["group"] > 0 or not d.is_int or a["scale_dtype"] != "f32":
        raise OnnxExportError(f"onnx export: quantize_dynamic {dict(a)} has no ONNX form (symmetric integer per-token "
                              "or per-tensor with f32 scales only)")
    import ml_dtypes
    qmax, qmin = float(ml_dtypes.iinfo(d.np).max), float(ml_dtypes.iinfo(d.np).min)
    x = _f32(ex, ins[0], n.inputs[0].type)
    r = n.inputs[0].type.rank
    axes = list(range(r)) if a["group"] == -1 else [a["axis"] % r]
    amax = ex.node("Mul", [ex.node("ReduceMax", [ex.node("Abs", [x]), ex.ints(axes, "axes")], keepdims=1), ex.scalar(a["clip"], "f32")])
    scale = ex.node("Where", [ex.node("Greater", [amax, ex.scalar(0.0, "f32")]), ex.node("Div", [amax, ex.scalar(qmax, "f32")]),
                              ex.scalar(1.0, "f32")])
    y = ex.node("Clip", [ex.node("Round", [ex.node("Div", [x, scale])]), ex.scalar(qmin, "f32"), ex.scalar(qmax, "f32")])
    # [qmin, qmax] as the reference: with clip < 1 a value can round to qmin (-8 for int4)
    return [ex.node("Cast", [y], to=IR_DTYPE_TO_ONNX[a["dtype"]]), scale]
