"""Fusion legality on the networkx view (the node-to-node edges of ir.to_networkx): a group may not create a cycle.

Contracting a group into one node creates a cycle exactly when some path leaves the group and comes
back: member -> non-member -> ... -> member. The view's node ids are positions in `graph.nodes`, which
is topologically ordered, so the search from a non-member never needs to look past the last member.
"""
from __future__ import annotations

import networkx as nx

from ..ir import Graph, Node


def dag(g: Graph) -> nx.DiGraph:
    """The node-to-node part of `graph.to_networkx()` (same node ids: positions in g.nodes), without the
    printed labels, inputs and constants, which legality does not need and which dominate its build time."""
    d = nx.DiGraph()
    d.add_nodes_from(range(len(g.nodes)))
    pos = {}
    for i, n in enumerate(g.nodes):
        for v in n.inputs:
            j = pos.get(v.id)
            if j is not None:
                d.add_edge(j, i)
        for o in n.outputs:
            pos[o.id] = i
    return d


class View:
    """The DAG of a graph as fusion sees it: networkx successors, positions, readers of each value."""

    def __init__(self, g: Graph):
        self.graph = g
        self.nx = dag(g)
        self.pos = {id(n): i for i, n in enumerate(g.nodes)}
        self.readers: dict[int, list[Node]] = {}
        for n in g.nodes:
            for v in n.inputs:
                lst = self.readers.setdefault(v.id, [])
                if n not in lst:
                    lst.append(n)
        self.returned = {v.id for v in g.outputs}

    def users(self, n: Node) -> list[Node]:
        seen, out = set(), []
        for o in n.outputs:
            for u in self.readers.get(o.id, ()):
                if id(u) not in seen:
                    seen.add(id(u))
                    out.append(u)
        return out

    def only_read_by(self, n: Node, group: set[int]) -> bool:
        """Every reader of n's results is in `group` (ids) and none is a graph output."""
        return all(o.id not in self.returned for o in n.outputs) and all(id(u) in group for u in self.users(n))

    def creates_cycle(self, members: list[Node]) -> bool:
        """True when a path member -> non-member -> ... -> member exists."""
        idx = {self.pos[id(n)] for n in members}
        hi = max(idx)
        succ = self.nx.successors
        stack = [s for i in idx for s in succ(i) if isinstance(s, int) and s not in idx]
        seen: set[int] = set()
        while stack:
            u = stack.pop()
            if u in seen or u > hi:  # positions are topological: a node after the last member reaches none
                continue
            seen.add(u)
            for w in succ(u):
                if not isinstance(w, int):
                    continue
                if w in idx:
                    return True
                stack.append(w)
        return False
