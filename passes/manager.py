"""Pass manager: named passes, O0-O3 pipelines, per-pass timing and statistics, verification
between passes, and IR dumps after chosen passes.

A pass is a function `fn(graph, ctx) -> dict | None` that rewrites `graph` in place and
returns its statistics (e.g. {"folded": 3}). Register it with `@register_pass("name")`.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from ..ir import Graph, NnfuseError, print_graph, verify
from ..ir.verifier import VerifyError


@dataclass
class Pass:
    name: str
    fn: Callable[[Graph, "PassContext"], Optional[dict]]
    exact: bool = True          # False for approximate rewrites (FFN fusion, layer skipping, quantization)
    doc: str = ""


PASSES: dict[str, Pass] = {}

# Presets; names must be registered passes. Later levels add to earlier ones.
PIPELINES: dict[str, list[str]] = {"O0": [], "O1": [], "O2": [], "O3": []}

# fn(names, options) -> names: option-driven additions to a pipeline (quantize= / rotate= add their passes)
PIPELINE_HOOKS: list[Callable[[Sequence[str], dict], list[str]]] = []


def register_pass(name: str, exact: bool = True, levels: Sequence[str] = ()) -> Callable:
    """Decorator: register a pass and append it to the given pipeline presets (in registration order)."""
    def deco(fn):
        if name in PASSES:
            raise RuntimeError(f"pass '{name}' registered twice")
        PASSES[name] = Pass(name, fn, exact, (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "")
        for lvl in levels:
            PIPELINES[lvl].append(name)
        return fn
    return deco


class PassError(NnfuseError):
    pass


@dataclass
class PassContext:
    options: dict = field(default_factory=dict)
    emit: Callable[[str], None] = lambda s: print(s, file=sys.stderr)

    def get(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


@dataclass
class PassResult:
    name: str
    seconds: float
    nodes_before: int
    nodes_after: int
    stats: dict

    def summary(self) -> str:
        s = ", ".join(f"{k}={v}" for k, v in self.stats.items() if not isinstance(v, (list, dict)))
        return s


@dataclass
class Report:
    results: list[PassResult] = field(default_factory=list)

    def as_dict(self) -> list[dict]:
        return [{"pass": r.name, "ms": round(r.seconds * 1e3, 2), "nodes": [r.nodes_before, r.nodes_after], **r.stats} for r in self.results]

    def table(self) -> str:
        rows = [f"{'pass':24s} {'ms':>8s} {'nodes':>13s}  what it did"]
        for r in self.results:
            rows.append(f"{r.name:24s} {r.seconds*1e3:8.2f} {r.nodes_before:>6d}->{r.nodes_after:<6d}  {r.summary()}")
        return "\n".join(rows)

    def __getitem__(self, name: str) -> PassResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)


def _node_count(g: Graph) -> int:
    return len(g.nodes)


def pipeline(opt_level: int | str = 2) -> list[str]:
    key = opt_level if isinstance(opt_level, str) else f"O{opt_level}"
    if key not in PIPELINES:
        raise NnfuseError(f"unknown optimization level '{opt_level}'; valid: {', '.join(PIPELINES)}")
    order = ["O0", "O1", "O2", "O3"]
    names: list[str] = []
    for lvl in order[: order.index(key) + 1]:
        names += [p for p in PIPELINES[lvl] if p not in names]
    return names


def run_passes(graph: Graph, names: Sequence[str], ctx: Optional[PassContext] = None, verify_each: bool = False,
               print_after: Sequence[str] = (), print_after_all: bool = False) -> Report:
    ctx = ctx or PassContext()
    unknown = [n for n in names if n not in PASSES]
    if unknown:
        raise NnfuseError(f"unknown pass(es) {', '.join(unknown)}; available: {', '.join(sorted(PASSES))}")
    report = Report()
    for name in names:
        p = PASSES[name]
        before = _node_count(graph)
        t0 = time.perf_counter()
        stats = p.fn(graph, ctx) or {}
        dt = time.perf_counter() - t0
        report.results.append(PassResult(name, dt, before, _node_count(graph), stats))
        if verify_each:
            try:
                verify(graph, where=name)
            except VerifyError as e:
                raise PassError(f"pass '{name}' left an invalid graph: {e}") from None
        if print_after_all or name in print_after:
            ctx.emit(f"// ----- IR after {name}\n{print_graph(graph)}")
    return report


def optimize(graph: Graph, opt_level: int | str = 2, passes: Optional[Sequence[str]] = None, disable: Sequence[str] = (),
             verify_each: bool = False, print_after: Sequence[str] = (), print_after_all: bool = False,
             emit: Optional[Callable[[str], None]] = None, **options: Any) -> tuple[Graph, Report]:
    """Run a pipeline (a preset level or an explicit pass list) on a copy of `graph`."""
    names = list(passes) if passes is not None else pipeline(opt_level)
    bad = [d for d in disable if d not in PASSES]
    if bad:
        raise NnfuseError(f"--disable: unknown pass(es) {', '.join(bad)}; available: {', '.join(sorted(PASSES))}")
    for hook in PIPELINE_HOOKS:
        names = hook(names, options)
    names = [n for n in names if n not in set(disable)]
    g = graph.clone()
    ctx = PassContext(options)
    if emit is not None:
        ctx.emit = emit
    report = run_passes(g, names, ctx, verify_each, print_after, print_after_all)
    return g, report
