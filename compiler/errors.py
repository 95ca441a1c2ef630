"""User-facing errors (re-exported from the IR so every layer raises the same family)."""
from .ir.errors import NnfuseError  # noqa: F401
