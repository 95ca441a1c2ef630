"""Graph IR -> MLIR text in the linalg-on-tensors form (linalg.generic + tensor + arith + math).

Every primitive op becomes one `linalg.generic` (elementwise ops with broadcasting in the indexing maps,
reductions with reduction iterators, matmul as a contraction, gathers with `tensor.extract` in the body)
or a tensor op (reshape, slices, concat, pad). `mlir_prep.prepare` first inlines fused regions, folds
constant subgraphs and decomposes composite ops (softmax, norms, attention, ...) into these primitives.

Two wrappers around the same body:
- `export(graph)`: `func.func @main(tensors) -> tensors`, weights embedded as `dense_resource` blobs:
  a self-contained module for MLIR toolchains (IREE, mlir-opt).
- `export(graph, for_execution=True)`: every input, weight and result is a memref argument
  (`llvm.emit_c_interface`), so the ExecutionEngine takes weights by pointer and writes results in place.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np

from ..ir import Graph, NnfuseError, TensorType, Value
from .mlir_prep import check_static, prepare

ELEM = {"f32": "f32", "f64": "f64", "f16": "f16", "bf16": "bf16", "i64": "i64", "i32": "i32", "i16": "i16", "i8": "i8",
        "u8": "i8", "bool": "i1"}
INLINE_LIMIT = 64  # constants up to this many elements are printed inline; larger ones become blobs / arguments


class ExportError(NnfuseError):
    pass


def elem(t: TensorType) -> str:
    try:
        return ELEM[t.dtype.name]
    except KeyError:
        raise ExportError(f"dtype {t.dtype} has no MLIR export") from None


def ttype(t: TensorType) -> str:
    return "tensor<" + "".join(f"{d}x" for d in t.shape) + elem(t) + ">"


def mtype(t: TensorType) -> str:
    return "memref<" + "".join(f"{d}x" for d in t.shape) + elem(t) + ">"


def flit(v: float, et: str) -> str:
    """A float literal MLIR parses exactly (hex bit patterns for inf/nan)."""
    if math.isnan(v) or math.isinf(v):
        bits = {"f32": np.float32, "f64": np.float64, "f16": np.float16}.get(et, np.float32)
        iv = np.array(v, dtype=bits).view({np.float32: np.uint32, np.float64: np.uint64, np.float16: np.uint16}[bits])
        return f"0x{int(iv):X}"
    return repr(float(v)) if "e" in repr(float(v)) or "." in repr(float(v)) else repr(float(v)) + ".0"


def dense_literal(a: np.ndarray, t: TensorType) -> str:
    et = elem(t)
    if a.size and (a == a.flat[0]).all() and not (a.dtype.kind == "f" and np.isnan(a.flat[0])):
        v = a.flat[0]
        s = ("true" if v else "false") if et == "i1" else (flit(float(v), et) if a.dtype.kind in "fV" else str(int(v)))
        return f"dense<{s}> : {ttype(t)}"
    if et == "i1":
        return f"dense<{_nested(a.astype(bool))}> : {ttype(t)}"
    raw = np.ascontiguousarray(a.astype(t.dtype.np)).tobytes()
    return f'dense<"0x{raw.hex().upper()}"> : {ttype(t)}'


def _nested(a: np.ndarray) -> str:
    if a.ndim == 0:
        return "true" if a else "false"
    return "[" + ", ".join(_nested(x) for x in a) + "]"


def _amap(rank: int, exprs: list[str]) -> str:
    return f"affine_map<({', '.join(f'd{i}' for i in range(rank))}) -> ({', '.join(exprs)})>"


class Emitter:
    def __init__(self, graph: Graph):
        self.g = graph
        self.lines: list[str] = []
        self.names: dict[int, str] = {}
        self.k = 0

    def fresh(self, hint: str = "v") -> str:
        self.k += 1
        return f"%{hint}{self.k}"

    def emit(self, line: str) -> None:
        self.lines.append("    " + line)

    def name(self, v: Value) -> str:
        return self.names[v.id]

    # ---- building blocks
    def empty(self, t: TensorType) -> str:
        r = self.fresh("e")
        self.emit(f"{r} = tensor.empty() : {ttype(t)}")
        return r

    def filled(self, t: TensorType, value: str) -> str:
        e, c, r = self.empty(t), self.fresh("c"), self.fresh("f")
        self.emit(f"{c} = arith.constant {value} : {elem(t)}")
        self.emit(f"{r} = linalg.fill ins({c} : {elem(t)}) outs({e} : {ttype(t)}) -> {ttype(t)}")
        return r

    def generic(self, out: TensorType, ins: list[tuple[str, TensorType, str]], body: Callable[[list[str]], str],
                iters: Optional[list[str]] = None, out_map: Optional[str] = None, init: Optional[str] = None) -> str:
        """One linalg.generic: `ins` are (ssa name, type, indexing map); `body(block args) -> yielded value`
        (the last block arg is the output element). Lines emitted by `body` go inside the region."""
        rank = len(iters) if iters else out.rank
        iters = iters or ["parallel"] * out.rank
        omap = out_map or _amap(rank, [f"d{i}" for i in range(out.rank)])
        init = init or self.empty(out)
        r = self.fresh()
        maps = ", ".join([m for _, _, m in ins] + [omap])
        its = ", ".join(f'"{i}"' for i in iters)
        ins_s = f"ins({', '.join(n for n, _, _ in ins)} : {', '.join(ttype(t) for _, t, _ in ins)}) " if ins else ""
        self.emit(f"{r} = linalg.generic {{indexing_maps = [{maps}], iterator_types = [{its}]}} {ins_s}"
                  f"outs({init} : {ttype(out)}) {{")
        args = [self.fresh("a") for _ in range(len(ins) + 1)]
        self.emit(f"^bb0({', '.join(f'{a}: {elem(t)}' for a, (_, t, _) in zip(args, ins))}"
                  f"{', ' if ins else ''}{args[-1]}: {elem(out)}):")
        y = body(args)
        self.emit(f"  linalg.yield {y} : {elem(out)}")
        self.emit(f"}} -> {ttype(out)}")
        return r

    def bmap(self, t: TensorType, out: TensorType) -> str:
        """Broadcasting map from the output's loops to an operand (numpy rules: align right, size-1 dims read 0)."""
        off = out.rank - t.rank
        exprs = ["0" if d == 1 and out.shape[off + i] != 1 else f"d{off + i}" for i, d in enumerate(t.shape)]
        return _amap(out.rank, exprs)

    def op(self, text: str, ty: str) -> str:
        """A scalar op inside a region: `text` without the result; returns its SSA name."""
        r = self.fresh("s")
        sep = " " if text.endswith(" to") else " : "  # casts read `op %x : src to dst`
        self.emit(f"  {r} = {text}{sep}{ty}" if ty else f"  {r} = {text}")
        return r

    def cst(self, v, et: str) -> str:
        if et == "i1":
            s = "true" if v else "false"
        elif et.startswith("i"):
            s = str(int(v))
        else:
            s = flit(float(v), et)
        return self.op(f"arith.constant {s}", et)

    # ---- reshape through a 1-D (or constant-map) view
    def reshape(self, x: str, src: TensorType, dst: TensorType) -> str:
        if tuple(src.shape) == tuple(dst.shape):
            return x
        if src.rank == 0 or dst.rank == 0:
            return self.generic(dst, [(x, src, _amap(dst.rank, ["0"] * src.rank))], lambda a: a[0])
        flat = TensorType([int(np.prod(src.shape))], src.dtype)
        if src.rank > 1:
            r = self.fresh()
            self.emit(f"{r} = tensor.collapse_shape {x} [[{', '.join(map(str, range(src.rank)))}]] : {ttype(src)} into {ttype(flat)}")
            x = r
        if dst.rank > 1:
            r = self.fresh()
            self.emit(f"{r} = tensor.expand_shape {x} [[{', '.join(map(str, range(dst.rank)))}]] "
                      f"output_shape [{', '.join(map(str, dst.shape))}] : {ttype(flat)} into {ttype(dst)}")
            x = r
        return x


def export(graph: Graph, for_execution: bool = False, fold: bool = True) -> tuple[str, list[Value]]:
    """MLIR text for `graph`; also the constants passed as arguments (for_execution) in argument order."""
    from . import mlir_ops
    g = prepare(graph, fold=fold)
    check_static(g)
    em = Emitter(g)
    args, weights, blobs, header = [], [], {}, []
    for i, v in enumerate(g.inputs):
        em.names[v.id] = f"%arg{i}"
        args.append((f"%arg{i}", v.type))
    for k, (name, c) in enumerate(g.constants.items()):
        if c.data is None:
            raise ExportError(f"constant @{name} has no data")
        if c.type.rank and c.type.numel > INLINE_LIMIT and c.type.dtype.name != "bool":
            if for_execution:
                n = f"%w{k}"
                args.append((n, c.type))
                weights.append(c)
                em.names[c.id] = n
                continue
            key = f"w{k}_" + "".join(ch if ch.isalnum() else "_" for ch in name)[:40]
            blobs[key] = c
            r = em.fresh("w")
            em.emit(f"{r} = arith.constant dense_resource<{key}> : {ttype(c.type)}")
        else:
            r = em.fresh("k")
            em.emit(f"{r} = arith.constant {dense_literal(np.asarray(c.data), c.type)}")
        em.names[c.id] = r
    for n in g.nodes:
        fn = mlir_ops.EMIT.get(n.op)
        if fn is None:
            raise ExportError(f"op '{n.op}'{' (' + n.loc + ')' if n.loc else ''} has no MLIR lowering yet")
        res = fn(em, n, *[em.name(v) for v in n.inputs], **n.attrs)
        for o, r in zip(n.outputs, res if isinstance(res, list) else [res]):
            em.names[o.id] = r
    outs = [em.name(v) for v in g.outputs]
    lines = ["module {"]
    if for_execution:
        margs = [(f"{n}_m", t) for n, t in args] + [(f"%out{i}", v.type) for i, v in enumerate(g.outputs)]
        lines.append(f"  func.func @main({', '.join(f'{n}: {mtype(t)}' for n, t in margs)}) attributes {{llvm.emit_c_interface}} {{")
        for n, t in args:
            lines.append(f"    {n} = bufferization.to_tensor {n}_m restrict : {mtype(t)} to {ttype(t)}")
        lines += em.lines
        for i, (o, v) in enumerate(zip(outs, g.outputs)):
            lines.append(f"    bufferization.materialize_in_destination {o} in restrict writable %out{i} : "
                         f"({ttype(v.type)}, {mtype(v.type)}) -> ()")
        lines.append("    return")
    else:
        lines.append(f"  func.func @main({', '.join(f'{n}: {ttype(t)}' for n, t in args)}) -> "
                     f"({', '.join(ttype(v.type) for v in g.outputs)}) {{")
        lines += em.lines
        lines.append(f"    return {', '.join(outs)} : {', '.join(ttype(v.type) for v in g.outputs)}")
    lines += ["  }", "}"]
    if blobs:
        lines.append("{-#\n  dialect_resources: {\n    builtin: {")
        items = []
        for key, c in blobs.items():
            align = max(4, c.type.dtype.np.itemsize)
            items.append(f'      {key}: "0x{align.to_bytes(4, "little").hex()}{np.ascontiguousarray(c.data).tobytes().hex()}"')
        lines.append(",\n".join(items))
        lines.append("    }\n  }\n#-}")
    return "\n".join(lines) + "\n", weights
