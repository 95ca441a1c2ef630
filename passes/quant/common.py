"""Shared by the quantization passes: finding weight layers, inserting QDQ nodes, the per-layer report rows."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from ...ir import Graph, NnfuseError, Node, Value, make_node
from ...ir.quant_formats import QTensor, Scheme, quantize, sqnr_db
from ..blocks import const_value, gemm_weight
from ..graphutil import remove_dead


class QuantPassError(NnfuseError):
    """A scheme a layer cannot take; the message names the layer and the constraint."""


@dataclass(eq=False)
class Layer:
    node: Node
    x: Value                      # the activation operand
    w: np.ndarray                 # matmul/gemm: [K, N]; conv: [O, C/groups, kh, kw]
    bias: Optional[np.ndarray]
    kind: str                     # "matmul" | "conv"

    @property
    def name(self) -> str:
        return self.node.loc or self.weight_name or self.node.op

    @property
    def weight_name(self) -> str:
        """The weight constant's name without the suffixes passes add (ONNX exports name layers only here)."""
        v = self.node.inputs[1]
        while v.producer is not None and v.producer.inputs:
            v = v.producer.inputs[0]
        return v.name

    @property
    def k(self) -> int:
        return self.w.shape[0] if self.kind == "matmul" else int(np.prod(self.w.shape[1:]))


def weight_layers(g: Graph) -> list[Layer]:
    """Top-level matmul/gemm/conv nodes against constant float weights (fused regions are not entered)."""
    out = []
    for n in g.nodes:
        if n.body is not None:
            continue
        if n.op in ("matmul", "gemm"):
            gw = gemm_weight(n)
            if gw is not None and gw[1].dtype.kind == "f" and n.outputs[0].dtype.is_float:
                out.append(Layer(n, gw[0], np.asarray(gw[1], np.float32), gw[2], "matmul"))
        elif n.op == "conv" and len(n.inputs) >= 2:
            w = const_value(n.inputs[1])
            if w is not None and w.dtype.kind == "f":
                b = const_value(n.inputs[2]) if len(n.inputs) == 3 else None
                out.append(Layer(n, n.inputs[0], np.asarray(w, np.float32), b, "conv"))
    return out


def check_scheme(layer: Layer, s: Scheme, what: str = "weights") -> None:
    if layer.kind == "conv" and s.group > 0:
        raise QuantPassError(f"layer {layer.name} (conv): {what} scheme {s.describe()} needs blocks along the reduction "
                             "dim; conv weights take per-channel or per-tensor schemes (exclude the layer or pick one)")
    if s.group > 0 and layer.k % s.group:
        raise QuantPassError(f"layer {layer.name}: group size {s.group} does not divide the reduction dim K={layer.k} "
                             f"({what} {s.describe()}); use a group that divides {layer.k}, fallback_group=True, "
                             "or exclude the layer")


def fit_group(layer: Layer, s: Scheme, fallback: bool) -> tuple[Scheme, str]:
    """The scheme itself, or (fallback) the largest power-of-two group <= s.group that divides K."""
    if s.group <= 0 or layer.kind != "matmul" or layer.k % s.group == 0 or not fallback or s.is_mx or s.is_nv:
        return s, ""
    g = s.group
    while g > 1 and layer.k % g:
        g //= 2
    return replace(s, group=g), f"group {s.group} -> {g} (K={layer.k})"


def quantize_weight(layer: Layer, s: Scheme) -> QTensor:
    if layer.kind == "matmul":
        return quantize(layer.w, s, axis=0)
    o = layer.w.shape[0]
    flat = quantize(layer.w.reshape(o, -1).T, s, axis=0)          # [C*kh*kw, O], per output channel
    shape = (o,) + (1,) * (layer.w.ndim - 1)
    return QTensor(flat.q.T.reshape(layer.w.shape), flat.scale.reshape(shape),
                   None if flat.zero is None else flat.zero.reshape(shape), 0, 0, flat.global_scale, s)


def check_calibration(g: Graph, samples) -> None:
    """Calibration arrays must have the graph's static input dims (calibration.py checks dtype and rank)."""
    for i, smp in enumerate(samples):
        for v, a in zip(g.inputs, smp):
            for d, n in zip(v.type.shape, np.shape(a)):
                if isinstance(d, int) and d != n:
                    raise QuantPassError(f"calibration sample {i}: input '{v.name}' expects {v.type}, got "
                                         f"{np.asarray(a).dtype}{list(np.shape(a))}")


def add_node(g: Graph, anchor: Node, op: str, inputs: list, meta: dict, **attrs) -> Node:
    """A new node placed right before `anchor` (operands are defined earlier)."""
    n = make_node(op, inputs, attrs, dict(meta))
    g.add_node(n, g.nodes.index(anchor))
    return n


def dequant_weight(g: Graph, layer: Layer, qt: QTensor, base: str) -> Value:
    """Constants for the codes/scale/zero and a dequantize node before the layer; returns the f32 weight."""
    meta = dict(layer.node.meta)
    q = g.add_const(base + ".q", qt.q)
    s = g.add_const(base + ".scale", qt.scale)
    ins = [q, s] + ([g.add_const(base + ".zero", qt.zero)] if qt.zero is not None else [])
    return add_node(g, layer.node, "dequantize", ins, meta, axis=qt.axis, group=qt.group,
                    global_scale=qt.global_scale).outputs[0]


def replace_weight(g: Graph, layer: Layer, w: Value) -> None:
    """Make the layer read `w` (f32 [K, N], or the conv's own layout) as its weight; gemm becomes matmul + add."""
    n = layer.node
    if w.dtype != n.outputs[0].dtype:
        w = add_node(g, n, "cast", [w], n.meta, to=n.outputs[0].dtype.name).outputs[0]
    if n.op in ("matmul", "conv"):
        n.inputs = [n.inputs[0], w] + list(n.inputs[2:])
        return
    y = add_node(g, n, "matmul", [layer.x, w], n.meta).outputs[0]
    if layer.bias is not None:
        b = g.add_const(w.name + ".bias" if w.name else "bias", np.asarray(layer.bias, n.outputs[0].dtype.np))
        y = add_node(g, n, "add", [y, b], n.meta).outputs[0]
    g.replace_uses(n.outputs[0], y)
    g.nodes.remove(n)


def tidy(g: Graph) -> None:
    remove_dead(g)
    g.remove_unused_constants()


def weight_row(layer: Layer, qt: QTensor, note: str = "") -> dict:
    return {"layer": layer.name, "op": layer.node.op, "shape": list(layer.w.shape), "format": qt.scheme.describe(),
            "weight_sqnr_db": round(sqnr_db(layer.w, qt.dequantize()), 2),
            "bytes_before": int(layer.w.size * 4), "bytes_after": int(qt.nbytes), **({"note": note} if note else {})}


def summarize(rows: list[dict], excluded: list[str], skipped: list[dict]) -> dict:
    before = sum(r["bytes_before"] for r in rows)
    after = sum(r["bytes_after"] for r in rows)
    sq = [r["weight_sqnr_db"] for r in rows if np.isfinite(r["weight_sqnr_db"])]
    return {"quantized": len(rows), "excluded": len(excluded), "left_fp32": len(skipped),
            "weight_bytes_before": before, "weight_bytes_after": after,
            "min_weight_sqnr_db": round(min(sq), 2) if sq else None,
            "layers": rows, "excluded_layers": excluded, "fp32_layers": skipped}
