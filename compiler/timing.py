"""Latency measurement shared by `nnfuse bench`, benchmarks/ and examples/."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np


def median_latency(fn: Callable[[], object], n: int = 20, warm: int = 3) -> float:
    """Median wall time of `fn()` in seconds over `n` calls after `warm` warm-up calls."""
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))
