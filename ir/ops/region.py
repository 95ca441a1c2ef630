"""`fused`: a node whose body is a sub-graph (a fused group). Its types come from the body."""
from __future__ import annotations

from .registry import Attr, OpError, register


def _no_body(ts, attrs):
    raise OpError("op 'fused' needs a body graph; build it with ir.make_fused")


def _run_body(*args, **kw):
    raise OpError("op 'fused' is evaluated by ir.evaluate, which interprets its body")


register("fused", "region", _no_body, _run_body, {"kind": Attr("str", "generic")}, arity=(0, -1))
