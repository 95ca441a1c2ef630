"""The reference backend: interprets graph IR with numpy (slow, obviously right)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..ir import Graph, evaluate


class ReferenceExecutable:
    name = "reference"

    def __init__(self, graph: Graph):
        self.graph = graph

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return evaluate(self.graph, inputs)

    def source(self) -> str:
        return str(self.graph)


def compile_graph(graph: Graph, **options) -> ReferenceExecutable:
    return ReferenceExecutable(graph)
