"""Build graphs in code: `b = Builder("mlp"); x = b.input("x", ["B", 784]); y = b.relu(b.matmul(x, w))`."""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

import numpy as np

from .graph import Graph, Node, Value
from .ops import OPS, OpError, get_op
from .types import TensorType


def make_node(op: str, inputs: Sequence[Value], attrs: Optional[dict] = None, meta: Optional[dict] = None) -> Node:
    """A node with normalized attributes and inferred result types; OpError names op, operands and rule."""
    od = get_op(op)
    attrs = od.normalize_attrs(dict(attrs or {}))
    types = od.infer_types([v.type for v in inputs], attrs)
    return Node(op, inputs, attrs, types, meta)


def make_fused(kind: str, inputs: Sequence[Value], body: Graph, meta: Optional[dict] = None, **attrs: Any) -> Node:
    """A fused node: operands bind to body inputs one to one."""
    if len(inputs) != len(body.inputs):
        raise OpError(f"fused '{kind}': {len(inputs)} operands for a body with {len(body.inputs)} inputs")
    for v, b in zip(inputs, body.inputs):
        if v.type != b.type:
            raise OpError(f"fused '{kind}': operand {v.type} does not match body input {b.type}")
    return Node("fused", inputs, {"kind": kind, **attrs}, [v.type for v in body.outputs], meta, body)


class Builder:
    def __init__(self, name: str = "main", graph: Optional[Graph] = None):
        self.graph = graph if graph is not None else Graph(name)
        self.meta: dict = {}

    def input(self, name: str, shape: Iterable, dtype: str = "f32") -> Value:
        return self.graph.add_input(name, TensorType(shape, dtype))

    def const(self, data: Any, name: str = "c", dtype: Optional[str] = None) -> Value:
        return self.graph.add_const(name, data if isinstance(data, np.ndarray) or dtype else np.asarray(data, np.float32), dtype)

    def op(self, op: str, *inputs: Value, meta: Optional[dict] = None, **attrs: Any):
        n = make_node(op, inputs, attrs, {**self.meta, **(meta or {})})
        self.graph.add_node(n)
        return n.outputs[0] if len(n.outputs) == 1 else n.outputs

    def fused(self, kind: str, inputs: Sequence[Value], body: Graph, **attrs: Any):
        n = make_fused(kind, inputs, body, dict(self.meta), **attrs)
        self.graph.add_node(n)
        return n.outputs[0] if len(n.outputs) == 1 else n.outputs

    def output(self, *values: Value, names: Optional[Sequence[str]] = None) -> Graph:
        self.graph.set_outputs(values, names)
        return self.graph

    def __getattr__(self, name: str):
        if name in OPS:
            return lambda *inputs, **attrs: self.op(name, *inputs, **attrs)
        raise AttributeError(name)
