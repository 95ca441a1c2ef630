"""`ai.onnx.preview.training::Gradient`, computed at import by reverse-mode differentiation over the IR nodes
already imported (add, sub, mul, div, neg, identity; broadcasts are summed back). Registered on import."""
from __future__ import annotations

import numpy as np

from .onnx_ops import handler


def _unbroadcast(im, g, shape):
    gs = im.value(g).type.shape
    if tuple(gs) == tuple(shape):
        return g
    lead = len(gs) - len(shape)
    axes = list(range(lead)) + [lead + i for i, d in enumerate(shape) if d == 1 and gs[lead + i] != 1]
    r = im.emit("reduce_sum", [g], axes=axes, keepdims=True) if axes else g
    return im.emit("reshape", [r], shape=list(shape))


_VJP = {
    "add": lambda im, n, g: [g, g],
    "sub": lambda im, n, g: [g, im.emit("neg", [g])],
    "mul": lambda im, n, g: [im.emit("mul", [g, n.inputs[1]]), im.emit("mul", [g, n.inputs[0]])],
    "div": lambda im, n, g: [im.emit("div", [g, n.inputs[1]]),
                             im.emit("neg", [im.emit("div", [im.emit("mul", [g, n.outputs[0]]), n.inputs[1]])])],
    "neg": lambda im, n, g: [im.emit("neg", [g])],
    "identity": lambda im, n, g: [g],
}


@handler("Gradient", domain="ai.onnx.preview.training")
def _gradient(im, n):
    y = im.value(im.env[im.attr("y")])
    if not y.type.static:
        raise im.error("Gradient needs a statically shaped y")
    grads = {y.id: im.g.add_const(f"{n.name or 'grad'}_seed", np.ones(y.type.shape, y.type.dtype.np))}
    for node in reversed(list(im.g.nodes)):
        g = grads.get(node.outputs[0].id) if len(node.outputs) == 1 else None
        if g is None:
            continue
        if node.op not in _VJP:
            raise im.error(f"Gradient through IR op '{node.op}' is not supported (supported: {', '.join(_VJP)})")
        for v, gi in zip(node.inputs, _VJP[node.op](im, node, g)):
            gi = _unbroadcast(im, gi, v.type.shape)
            grads[v.id] = gi if v.id not in grads else im.emit("add", [grads[v.id], gi])
    outs = []
    for name in im.attr("xs"):
        v = im.value(im.env[name])
        outs.append(grads.get(v.id) or im.g.add_const(f"{name}_grad", np.zeros(v.type.shape, v.type.dtype.np)))
    return outs
