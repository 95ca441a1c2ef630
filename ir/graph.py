"""Graph IR: SSA values, nodes (ops, attributes, optional region body) and graphs.

Constants are `Value`s that carry a numpy array in `.data`; passes share the arrays
by reference and never copy them. A fused group is a `Node` whose `body` is a `Graph`
(isolated from above: the body sees only its own inputs and constants).
"""
from __future__ import annotations

import itertools
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from .dtypes import dtype as to_dtype
from .types import TensorType

_ids = itertools.count()


class Value:
    """One SSA value. `producer` is the node that defines it (None for inputs and constants)."""

    __slots__ = ("type", "name", "producer", "data", "id")

    def __init__(self, type: TensorType, name: str = "", producer: "Optional[Node]" = None, data: Optional[np.ndarray] = None):
        self.type = type
        self.name = name
        self.producer = producer
        self.data = data
        self.id = next(_ids)

    @property
    def is_const(self) -> bool:
        return self.producer is None and (self.data is not None or self.name.startswith("@"))

    @property
    def shape(self) -> tuple:
        return self.type.shape

    @property
    def dtype(self):
        return self.type.dtype

    def __repr__(self) -> str:
        return f"Value({self.name or '#' + str(self.id)}: {self.type})"


class Node:
    __slots__ = ("op", "inputs", "attrs", "outputs", "meta", "body")

    def __init__(self, op: str, inputs: Iterable[Value], attrs: Optional[dict] = None,
                 output_types: Iterable[TensorType] = (), meta: Optional[dict] = None, body: "Optional[Graph]" = None):
        self.op = op
        self.inputs = list(inputs)
        self.attrs = dict(attrs or {})
        self.outputs = [Value(t, producer=self) for t in output_types]
        self.meta = dict(meta or {})
        self.body = body

    @property
    def output(self) -> Value:
        assert len(self.outputs) == 1, f"{self.op} has {len(self.outputs)} results"
        return self.outputs[0]

    @property
    def loc(self) -> str:
        return self.meta.get("loc", "")

    def __repr__(self) -> str:
        return f"Node({self.op}, {len(self.inputs)} in, {len(self.outputs)} out{', ' + self.loc if self.loc else ''})"


class Graph:
    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.output_names: list[str] = []
        self.nodes: list[Node] = []
        self.constants: dict[str, Value] = {}
        self.meta: dict[str, Any] = {}

    # ---- construction
    def add_input(self, name: str, type: TensorType) -> Value:
        v = Value(type, name)
        self.inputs.append(v)
        return v

    def add_const(self, name: str, data: Any, dtype=None) -> Value:
        """Register a constant; the numpy array is held by reference. Names are made unique."""
        arr = data if isinstance(data, np.ndarray) and dtype is None else np.asarray(data, dtype=None if dtype is None else to_dtype(dtype).np)
        base, k = name or "c", 0
        while name in self.constants or not name:
            k += 1
            name = f"{base}_{k}"
        v = Value(TensorType(arr.shape, to_dtype(arr.dtype)), name, data=arr)
        self.constants[name] = v
        return v

    def add_const_decl(self, name: str, type: TensorType, data: Optional[np.ndarray] = None) -> Value:
        """A constant whose data may arrive later (parsed text without its weights file)."""
        v = Value(type, name, data=data)
        self.constants[name] = v
        return v

    def add_node(self, node: Node, index: Optional[int] = None) -> Node:
        if index is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(index, node)
        return node

    def set_outputs(self, outputs: Iterable[Value], names: Optional[Iterable[str]] = None) -> None:
        self.outputs = list(outputs)
        self.output_names = list(names) if names is not None else []

    # ---- queries
    def walk(self) -> Iterator[Node]:
        """Every node, regions included (pre-order)."""
        for n in self.nodes:
            yield n
            if n.body is not None:
                yield from n.body.walk()

    def users(self) -> dict[int, list[Node]]:
        """Map value id -> nodes that read it (top level only)."""
        u: dict[int, list[Node]] = {}
        for n in self.nodes:
            for v in n.inputs:
                u.setdefault(v.id, []).append(n)
        return u

    def use_counts(self) -> dict[int, int]:
        c: dict[int, int] = {}
        for n in self.nodes:
            for v in n.inputs:
                c[v.id] = c.get(v.id, 0) + 1
        for v in self.outputs:
            c[v.id] = c.get(v.id, 0) + 1
        return c

    def op_histogram(self) -> dict[str, int]:
        h: dict[str, int] = {}
        for n in self.nodes:
            key = f"fused:{n.attrs.get('kind', '?')}" if n.body is not None else n.op
            h[key] = h.get(key, 0) + 1
        return dict(sorted(h.items(), key=lambda kv: (-kv[1], kv[0])))

    def param_bytes(self) -> int:
        return sum(v.type.nbytes for v in self.constants.values())

    # ---- rewriting
    def replace_uses(self, old: Value, new: Value, after: Optional[Node] = None) -> None:
        """Point every reader of `old` (and the graph outputs) at `new`."""
        for n in self.nodes:
            if n is after:
                continue
            n.inputs = [new if v is old else v for v in n.inputs]
        self.outputs = [new if v is old else v for v in self.outputs]

    def remove_unused_constants(self) -> int:
        used = {v.id for n in self.nodes for v in n.inputs} | {v.id for v in self.outputs}
        dead = [k for k, v in self.constants.items() if v.id not in used]
        for k in dead:
            del self.constants[k]
        return len(dead)

    def clone(self) -> "Graph":
        """A structural copy: new Values and Nodes, the same constant arrays (by reference)."""
        g, vmap = Graph(self.name), {}
        g.meta = dict(self.meta)
        g.output_names = list(self.output_names)
        for v in self.inputs:
            vmap[v.id] = g.add_input(v.name, v.type)
        for k, v in self.constants.items():
            vmap[v.id] = g.add_const_decl(k, v.type, v.data)
        for n in self.nodes:
            m = Node(n.op, [vmap[v.id] for v in n.inputs], n.attrs, [o.type for o in n.outputs], n.meta,
                     n.body.clone() if n.body is not None else None)
            for a, b in zip(n.outputs, m.outputs):
                vmap[a.id] = b
            g.nodes.append(m)
        g.outputs = [vmap[v.id] for v in self.outputs]
        return g

    def to_networkx(self):
        from .nxview import to_networkx
        return to_networkx(self)

    def __str__(self) -> str:
        from .printer import print_graph
        return print_graph(self)

    def __repr__(self) -> str:
        return f"Graph(@{self.name}: {len(self.inputs)} inputs, {len(self.nodes)} nodes, {len(self.constants)} constants)"
