"""nnfuse: a compiler and IR toolkit for neural-network graphs."""
from __future__ import annotations

__version__ = "0.1.0"

from .api import CompiledModel, compile, load  # noqa: E402,F401
from .errors import NnfuseError  # noqa: E402,F401
