"""Backends consume graph IR. Each module exposes `compile_graph(graph, **options) -> Executable`."""
