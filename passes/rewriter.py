"""Declarative pattern rewriting: match a small DAG of ops, bind captures, build a replacement.

A pattern is a tree of `Op` / `Var` / `Const` that matches the value a node defines:

    x, c = Var("x"), Const("one", value=1.0)
    Rule("mul-one", Op("mul", x, c), lambda m, rw: m["x"] if m["x"].type == m.root.type else None)

- `Op(op, *inputs, name=, attrs=, where=, one_use=)`: a node of that op (or one of a tuple of ops)
  whose operands match `inputs`; `attrs` values must be equal (or satisfy a callable); `where(node)`
  is any further test; `one_use=True` requires the value to have exactly one reader. add/mul/max/min
  and the logical/equality ops are matched in both operand orders.
- `Var(name, where=)`: any value; `Const(name, value=, where=, rtol=)`: a constant (with `value`, a
  splat of that value, within `rtol` for literals such as sqrt(2/pi) that exporters round). A name bound twice must bind the same value, so a pattern can describe a DAG
  (`x - mean(x)` reads one `x`).
- The build function gets the `Match` (captures by name; `m.root` is the matched value) and a
  `Rewrite` that creates nodes (`rw.op("add", a, b)`) and constants (`rw.const(arr)`) in place;
  it returns the replacement value, or None to decline. A replacement whose type differs from
  the root's is refused, so a rule cannot silently change a result type.

`apply_rules(graph, rules)` runs a rule set to a fixpoint and returns how often each rule fired.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np

from ..ir import Graph, Node, Value, make_node
from ..ir.ops import OPS, OpError
from .graphutil import const_data, remove_dead, splat_value

COMMUTATIVE = {"add", "mul", "max", "min", "and", "or", "xor", "eq", "ne"}


class Pat:
    name: Optional[str] = None

    def match(self, v: Value, m: "Match") -> Iterator["Match"]:
        raise NotImplementedError

    def _bind(self, v: Value, m: "Match") -> Optional["Match"]:
        if self.name is None:
            return m
        have = m.vals.get(self.name)
        if have is not None:
            return m if have is v else None
        return m.bind(self.name, v)


class Var(Pat):
    def __init__(self, name: Optional[str] = None, where: Optional[Callable[[Value], bool]] = None):
        self.name, self.where = name, where

    def match(self, v, m):
        if self.where is not None and not self.where(v):
            return
        m2 = self._bind(v, m)
        if m2 is not None:
            yield m2


class Const(Pat):
    """A constant with data; with `value`, every element must equal it."""

    def __init__(self, name: Optional[str] = None, value: Optional[float] = None, where: Optional[Callable[[Value], bool]] = None,
                 rtol: float = 0.0):
        self.name, self.value, self.where, self.rtol = name, value, where, rtol

    def match(self, v, m):
        if const_data(v) is None:
            return
        if self.value is not None:
            s = splat_value(v)
            if s is None or abs(s - self.value) > self.rtol * abs(self.value):
                return
        if self.where is not None and not self.where(v):
            return
        m2 = self._bind(v, m)
        if m2 is not None:
            yield m2


class Op(Pat):
    def __init__(self, op: Union[str, Sequence[str]], *inputs: Pat, name: Optional[str] = None, attrs: Optional[dict] = None,
                 where: Optional[Callable[[Node], bool]] = None, one_use: bool = False, commute: Optional[bool] = None):
        self.ops = (op,) if isinstance(op, str) else tuple(op)
        self.inputs, self.name, self.attrs, self.where, self.one_use = inputs, name, dict(attrs or {}), where, one_use
        self.commute = commute if commute is not None else all(o in COMMUTATIVE for o in self.ops) and len(inputs) == 2

    def match(self, v, m):
        n = v.producer
        if n is None or n.op not in self.ops or n.body is not None or len(n.inputs) != len(self.inputs):
            return
        if self.name is not None and self.name in m.vals:  # the same sub-pattern seen again: same value or nothing
            if m.vals[self.name] is v:
                yield m
            return
        if self.one_use and m.uses.get(v.id, 0) != 1:
            return
        for k, want in self.attrs.items():
            got = n.attrs.get(k)
            if callable(want):
                if not want(got):
                    return
            elif _norm(got) != _norm(want):
                return
        if self.where is not None and not self.where(n):
            return
        m1 = self._bind(v, m)
        if m1 is None:
            return
        if self.name is not None:
            m1 = m1.bind_node(self.name, n)
        orders = [n.inputs]
        if self.commute and n.inputs[0] is not n.inputs[1]:
            orders.append(n.inputs[::-1])
        for operands in orders:
            yield from _match_all(self.inputs, operands, m1)


def _norm(x: Any) -> Any:
    return tuple(x) if isinstance(x, list) else x


def _match_all(pats: Sequence[Pat], vals: Sequence[Value], m: "Match") -> Iterator["Match"]:
    if not pats:
        yield m
        return
    for m1 in pats[0].match(vals[0], m):
        yield from _match_all(pats[1:], vals[1:], m1)


@dataclass
class Match:
    root: Value
    uses: dict
    vals: dict = field(default_factory=dict)
    nodes: dict = field(default_factory=dict)

    def bind(self, name: str, v: Value) -> "Match":
        return Match(self.root, self.uses, {**self.vals, name: v}, self.nodes)

    def bind_node(self, name: str, n: Node) -> "Match":
        return Match(self.root, self.uses, self.vals, {**self.nodes, name: n})

    def __getitem__(self, name: str) -> Value:
        return self.vals[name]

    def node(self, name: str) -> Node:
        return self.nodes[name]

    def scalar(self, name: str) -> Optional[float]:
        return splat_value(self.vals[name])

    def data(self, name: str) -> Optional[np.ndarray]:
        return const_data(self.vals[name])


class Rewrite:
    """Creates the replacement's nodes just before the matched root node (so SSA order holds)."""

    def __init__(self, graph: Graph, root: Node):
        self.graph, self.root = graph, root
        self.new: list[Node] = []

    def op(self, op: str, *inputs: Value, **attrs: Any) -> Value:
        n = make_node(op, inputs, attrs, dict(self.root.meta))
        self.new.append(n)
        return n.outputs[0]

    def const(self, data: Any, name: str = "c") -> Value:
        return self.graph.add_const(name, np.asarray(data))


@dataclass
class Rule:
    name: str
    pattern: Op
    build: Callable[[Match, Rewrite], Optional[Value]]


def _insert(g: Graph, rw: Rewrite, at: int) -> None:
    g.nodes[at:at] = rw.new


def apply_rules(g: Graph, rules: Sequence[Rule], max_sweeps: int = 50) -> dict[str, int]:
    """Apply `rules` anywhere in `g` until none fires (or `max_sweeps`); dead nodes are removed."""
    by_op: dict[str, list[Rule]] = {}
    for r in rules:
        for o in r.pattern.ops:
            if o in OPS:  # rules for ops not registered (yet) simply never fire
                by_op.setdefault(o, []).append(r)
    fired: dict[str, int] = {}
    for _ in range(max_sweeps):
        changed = False
        uses = g.use_counts()
        i = 0
        while i < len(g.nodes):
            n = g.nodes[i]
            i += 1
            if len(n.outputs) != 1 or n.body is not None:
                continue
            root = n.outputs[0]
            if uses.get(root.id, 0) == 0:
                continue
            for rule in by_op.get(n.op, ()):
                new = None
                for m in rule.pattern.match(root, Match(root, uses)):
                    rw = Rewrite(g, n)
                    try:
                        new = rule.build(m, rw)
                    except OpError:  # the replacement does not type-check for these operands: decline
                        new = None
                    if new is not None and new is not root and new.type == root.type:
                        _insert(g, rw, i - 1)
                        i += len(rw.new)
                        g.replace_uses(root, new)
                        break
                    new = None
                if new is not None:
                    fired[rule.name] = fired.get(rule.name, 0) + 1
                    changed = True
                    uses = g.use_counts()
                    break
        remove_dead(g)
        if not changed:
            break
    return fired
