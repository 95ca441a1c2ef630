"""networkx DAG view of a graph (for legality checks such as cycles) and DOT output."""
from __future__ import annotations

import networkx as nx

from .graph import Graph


def to_networkx(g: Graph) -> nx.DiGraph:
    """Nodes are indices into g.nodes plus ('in', i) / ('const', name) / ('out', i); edges carry the Value."""
    d = nx.DiGraph()
    src: dict[int, object] = {}
    for i, v in enumerate(g.inputs):
        d.add_node(("in", i), label=f"%{v.name}", type=str(v.type))
        src[v.id] = ("in", i)
    for name, v in g.constants.items():
        d.add_node(("const", name), label=f"@{name}", type=str(v.type))
        src[v.id] = ("const", name)
    for i, n in enumerate(g.nodes):
        d.add_node(i, label=n.op if n.body is None else f"fused:{n.attrs.get('kind')}", op=n.op, node=n,
                   type=", ".join(str(o.type) for o in n.outputs))
        for v in n.inputs:
            if v.id in src:
                d.add_edge(src[v.id], i, value=v)
        for o in n.outputs:
            src[o.id] = i
    for i, v in enumerate(g.outputs):
        d.add_node(("out", i), label="return", type=str(v.type))
        if v.id in src:
            d.add_edge(src[v.id], ("out", i), value=v)
    return d


def to_dot(g: Graph, with_constants: bool = False) -> str:
    """Graphviz DOT text: one box per op with its result types."""
    d = to_networkx(g)
    ids = {n: f"n{k}" for k, n in enumerate(d.nodes)}
    lines = [f'digraph "{g.name}" {{', "  node [shape=box, fontname=monospace];"]
    for n, a in d.nodes(data=True):
        if isinstance(n, tuple) and n[0] == "const" and not with_constants:
            continue
        label = (a["label"] + "\\n" + a.get("type", "")).replace('"', '\\"')
        lines.append(f'  {ids[n]} [label="{label}"];')
    for u, v in d.edges:
        if isinstance(u, tuple) and u[0] == "const" and not with_constants:
            continue
        lines.append(f"  {ids[u]} -> {ids[v]};")
    lines.append("}")
    return "\n".join(lines) + "\n"
