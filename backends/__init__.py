"""Backends consume graph IR. Each module exposes `compile_graph(graph, **options) -> Executable`."""
import os


def cache_dir(sub: str) -> str:
    """$NNFUSE_CACHE_DIR/<sub> (default ~/.cache/nnfuse/<sub>), created: where a backend keeps its build artifacts."""
    base = os.environ.get("NNFUSE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "nnfuse")
    d = os.path.join(base, sub)
    os.makedirs(d, exist_ok=True)
    return d
