"""fuse-qdq: fold the QDQ form into gemm regions of kind "qgemm" (run before the generic fusion passes).

  weight-only:  [dequantize(Wq, s), matmul(x, ·), pointwise epilogue...]          -> fused qgemm
  integer:      [matmul_integer(qx, Wq), cast, mul sx, mul sw, pointwise epilogue] -> fused qgemm
The activation quantizer (quantize_dynamic / quantize) stays its own node: q, k and v (gate and up) share it.
"""
from __future__ import annotations

from ...ir import Graph, Node
from ..fusion import Grower, _fuse
from ..manager import PassContext, register_pass


def _const_dq(v) -> "Node | None":
    p = v.producer
    if p is not None and p.op == "dequantize" and p.body is None and all(i.producer is None for i in p.inputs):
        return p
    return None


@register_pass("fuse-qdq")
def fuse_qdq(g: Graph, ctx: PassContext) -> dict:
    """dequantize+matmul and matmul_integer+rescale (+ epilogue) -> "qgemm" regions."""
    def seed(n: Node):
        if n.op == "matmul_integer":
            return "qgemm"
        if n.op in ("matmul", "conv") and len(n.inputs) >= 2 and _const_dq(n.inputs[1]) is not None:
            return "qgemm"
        return None

    def grow(gr: Grower, n: Node):
        if n.op == "matmul_integer":
            return gr.epilogue([n]), []
        dq = _const_dq(n.inputs[1])
        if len(gr.view.users(dq)) == 1:
            return gr.epilogue([dq, n], start=n), []
        return gr.epilogue([n]), []

    return _fuse(g, ctx, seed, grow, wrap_single=True)
