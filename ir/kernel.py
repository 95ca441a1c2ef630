"""Kernel IR (level 2): buffers, strided accesses, scalar expressions, structured kernels, a Program.

One design serves a C loop nest and a Triton block program:
- Every tensor access is an affine `Access` (buffer, element offset, one stride per domain axis), so a
  C backend writes `p[off + i0*s0 + i1*s1]` and a Triton backend builds `ptr + off + idx0*s0 + ...` blocks.
  Broadcasting is stride 0; transpose/slice/expand/squeeze are other strides — views cost nothing.
- A kernel body is a tree of scalar `Expr`s over the loop variables of the kernel's domain (`Var(k)` is
  the index along domain axis k). Op names are the graph IR's elementwise op names, so each backend
  maps one op name to one scalar template.
- Structured kernels (`Gemm`, `Reduce`, `RowNorm`, `Conv`, `Attention`) carry what loops alone cannot
  schedule well; their fused prologue/epilogue bodies are again `Expr`s (`Arg("acc")` is the value
  computed by the structured part).
- A `Schedule` sits beside each kernel: tile sizes, vector width, parallel axis, unroll, and the
  Triton block sizes / warps. A `Program` is the kernels in call order plus the buffer plan (one arena).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Iterator, NamedTuple, Optional, Union

import numpy as np

from .dtypes import DType, dtype as to_dtype
from .errors import NnfuseError


class KernelIRError(NnfuseError):
    """A malformed kernel program (a bug in lowering, reported with the kernel and the rule)."""


# ---------------------------------------------------------------- buffers and accesses
@dataclass(eq=False)
class Buffer:
    """A flat array of `numel` elements. kind: input | output | const | temp. Temps live in the arena at `offset` (bytes)."""
    name: str            # generated identifier (in0, w3, out0, t7): the only name a backend may emit
    dtype: DType
    numel: int
    kind: str
    index: int = 0       # position among the buffers of its kind (argument slot)
    offset: int = -1     # byte offset in the arena (temps only)
    label: str = ""      # the model's name for it: for comments only, always through `safe_comment`

    @property
    def nbytes(self) -> int:
        return self.numel * max(self.dtype.bits, 8) // 8   # numpy stores 4-bit types one per byte

    def __repr__(self) -> str:
        return f"{self.name}:{self.dtype.name}[{self.numel}]"


@dataclass(frozen=True, eq=False)
class Access:
    """Element `offset + sum(var_k * strides[k])` of `buf`, one stride per axis of the enclosing domain."""
    buf: Buffer
    offset: int
    strides: tuple[int, ...]

    def span(self, dims: tuple[int, ...]) -> tuple[int, int]:
        """Lowest and highest element index touched over a domain of extent `dims`."""
        lo = hi = self.offset
        for d, s in zip(dims, self.strides):
            if d > 0:
                (lo, hi) = (lo + s * (d - 1), hi) if s < 0 else (lo, hi + s * (d - 1))
        return lo, hi

    def key(self) -> tuple:
        return (id(self.buf), self.offset, self.strides)

    def __str__(self) -> str:
        terms = [f"{s}*i{k}" if s != 1 else f"i{k}" for k, s in enumerate(self.strides) if s]
        if self.offset or not terms:
            terms.insert(0, str(self.offset))
        return f"{self.buf.name}[{' + '.join(terms)}]"


# ---------------------------------------------------------------- scalar expressions
@dataclass(frozen=True, eq=False)
class Expr:
    dtype: DType


@dataclass(frozen=True, eq=False)
class Load(Expr):
    """Read `access`; `indirect` adds data-dependent terms (index expression, stride) — gather."""
    access: Access = None  # type: ignore[assignment]
    indirect: tuple = ()   # tuple[(Expr, int)]


@dataclass(frozen=True, eq=False)
class Const(Expr):
    value: Union[float, int, bool] = 0


@dataclass(frozen=True, eq=False)
class Var(Expr):
    axis: int = 0


@dataclass(frozen=True, eq=False)
class Arg(Expr):
    """A value the structured part of a kernel provides to its body: 'acc' (gemm/conv result), 'red' (reduction)."""
    name: str = "acc"


@dataclass(frozen=True, eq=False)
class Op(Expr):
    """A scalar op named as in the graph IR (add, exp, gelu, where, cast, clip, ...); attrs as sorted pairs."""
    op: str = ""
    args: tuple = ()
    attrs: tuple = ()

    def attr(self, name: str, default=None):
        return dict(self.attrs).get(name, default)


def op(name: str, dtype: DType, *args: Expr, **attrs) -> Op:
    return Op(to_dtype(dtype), name, tuple(args), tuple(sorted(attrs.items())))


def walk(e: Expr) -> Iterator[Expr]:
    yield e
    if isinstance(e, Op):
        for a in e.args:
            yield from walk(a)
    elif isinstance(e, Load):
        for ie, _ in e.indirect:
            yield from walk(ie)


def loads(e: Optional[Expr]) -> list[Load]:
    return [x for x in walk(e) if isinstance(x, Load)] if e is not None else []


def fmt_expr(e: Expr) -> str:
    if isinstance(e, Load):
        s = str(e.access)
        if e.indirect:
            s = s[:-1] + "".join(f" + {st}*({fmt_expr(ie)})" for ie, st in e.indirect) + "]"
        return s
    if isinstance(e, Const):
        return repr(e.value)
    if isinstance(e, Var):
        return f"i{e.axis}"
    if isinstance(e, Arg):
        return e.name
    a = "".join(f", {k}={v!r}" for k, v in e.attrs)
    return f"{e.op}({', '.join(fmt_expr(x) for x in e.args)}{a})"


# ---------------------------------------------------------------- quantized operands
@dataclass(frozen=True, eq=False)
class QuantOperand:
    """A gemm weight stored in a low-precision dtype, dequantized inside the kernel.

    value = (data[k, n] - zero[g(k), n]) * scale[g(k), n], g(k) = k // group (group == K: per-channel).
    data.buf.dtype: i8 | i4 | u4 | f8e4m3 | f8e5m2; scale: f32/f16/bf16; zero optional (asymmetric int)."""
    data: Access
    scale: Access
    group: int
    zero: Optional[Access] = None

    @property
    def dtype(self) -> DType:
        return self.data.buf.dtype


# ---------------------------------------------------------------- schedules
@dataclass
class Schedule:
    """How to run a kernel. C uses parallel_axis/vector/unroll/tile; Triton uses block/num_warps/num_stages."""
    parallel_axis: Optional[int] = 0
    vector: int = 16
    unroll: int = 1
    tile: tuple = ()
    block: dict = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 2

    def __str__(self) -> str:
        parts = [f"parallel={self.parallel_axis}", f"vec={self.vector}"]
        if self.unroll > 1:
            parts.append(f"unroll={self.unroll}")
        if self.tile:
            parts.append(f"tile={list(self.tile)}")
        if self.block:
            parts.append("block=" + ",".join(f"{k}:{v}" for k, v in self.block.items()))
        return " ".join(parts)


# ---------------------------------------------------------------- kernels
@dataclass(eq=False)
class Kernel:
    name: str = ""
    schedule: Schedule = field(default_factory=Schedule)
    meta: dict = field(default_factory=dict)   # {"region": kind, "ops": [...]} for reports (never emitted as code)

    kind = "kernel"

    def exprs(self) -> list[Expr]:
        return []

    def writes(self) -> list[Access]:
        return []

    def reads(self) -> list[Access]:
        acc = [ld.access for e in self.exprs() for ld in loads(e)]
        return acc + self.extra_reads()

    def extra_reads(self) -> list[Access]:
        return []

    def buffers(self) -> list[Buffer]:
        seen, out = set(), []
        for a in self.writes() + self.reads():
            if id(a.buf) not in seen:
                seen.add(id(a.buf))
                out.append(a.buf)
        return out


@dataclass(eq=False)
class Pointwise(Kernel):
    """for i in domain: out_j[i] = expr_j(i). Also copies, concat pieces and gathers (indirect loads)."""
    domain: tuple = ()
    stores: list = field(default_factory=list)   # list[(Access, Expr)]
    kind = "pointwise"

    def exprs(self):
        return [e for _, e in self.stores]

    def writes(self):
        return [a for a, _ in self.stores]


@dataclass(eq=False)
class Reduce(Kernel):
    """out[o] = post(red) where red = combine over r of body(o, r). Body vars: outer axes, then reduce axes."""
    domain: tuple = ()       # outer extents
    rdomain: tuple = ()      # reduced extents
    combine: str = "sum"     # sum | prod | max | min | argmax | argmin
    body: Expr = None        # type: ignore[assignment]
    out: Access = None       # type: ignore[assignment]  strides over the outer axes
    post: Optional[Expr] = None   # in terms of Arg("red") and outer Vars
    select_last: bool = False
    kind = "reduce"

    def exprs(self):
        return [self.body] + ([self.post] if self.post is not None else [])

    def writes(self):
        return [self.out]


@dataclass(eq=False)
class RowNorm(Kernel):
    """Row-wise softmax | log_softmax | layer_norm | rms_norm over the last var (extent `row`).
    x, weight, bias are Exprs over (outer vars..., r); out has strides over (outer..., r)."""
    norm: str = "softmax"
    domain: tuple = ()
    row: int = 1
    x: Expr = None           # type: ignore[assignment]
    out: Access = None       # type: ignore[assignment]
    weight: Optional[Expr] = None
    bias: Optional[Expr] = None
    eps: float = 1e-5
    kind = "rownorm"

    def exprs(self):
        return [e for e in (self.x, self.weight, self.bias) if e is not None]

    def writes(self):
        return [self.out]


@dataclass(eq=False)
class Gemm(Kernel):
    """out[b, m, n] = epilogue(acc = alpha * sum_k a[b, m, k] * b[b, k, n]).
    Accesses have strides over (batch..., row, col); the epilogue is an Expr over vars (batch..., m, n)."""
    batch: tuple = ()
    m: int = 1
    n: int = 1
    k: int = 1
    a: Access = None         # type: ignore[assignment]
    b: Union[Access, QuantOperand] = None   # type: ignore[assignment]
    out: Access = None       # type: ignore[assignment]
    alpha: float = 1.0
    epilogue: Optional[Expr] = None
    kind = "gemm"

    def exprs(self):
        return [self.epilogue] if self.epilogue is not None else []

    def writes(self):
        return [self.out]

    def extra_reads(self):
        b = self.b
        if isinstance(b, QuantOperand):
            return [self.a, b.data, b.scale] + ([b.zero] if b.zero is not None else [])
        return [self.a, b]


class ConvGeometry(NamedTuple):
    """What every backend's conv writer derives from a Conv kernel."""
    n: int
    c: int                 # input channels
    m: int                 # output channels
    in_spatial: tuple
    out_spatial: tuple
    kernel: tuple
    groups: int
    cg: int                # input channels per group
    mg: int                # output channels per group
    taps: int              # kernel elements per channel (prod(kernel), at least 1)
    transpose: bool


@dataclass(eq=False)
class Conv(Kernel):
    """2-D convolution, NCHW input, OIHW weight (grouped), fused epilogue over vars (n, o, y, x)."""
    x: Access = None         # type: ignore[assignment]
    w: Access = None         # type: ignore[assignment]
    out: Access = None       # type: ignore[assignment]
    in_shape: tuple = ()     # N, C, H, W
    out_shape: tuple = ()    # N, O, OH, OW
    kernel: tuple = ()       # KH, KW
    strides: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)   # top, left, bottom, right
    dilations: tuple = (1, 1)
    group: int = 1
    epilogue: Optional[Expr] = None
    col: Optional[Access] = None   # im2col scratch (arena temp) when the conv is not a plain 1x1
    kind = "conv"

    def exprs(self):
        return [self.epilogue] if self.epilogue is not None else []

    def writes(self):
        return [self.out] + ([self.col] if self.col is not None else [])

    def extra_reads(self):
        return [self.x, self.w]

    def geometry(self) -> ConvGeometry:
        n, c = self.in_shape[:2]
        m, g = self.out_shape[1], self.group
        taps = 1
        for d in self.kernel:
            taps *= d
        return ConvGeometry(n, c, m, tuple(self.in_shape[2:]), tuple(self.out_shape[2:]), tuple(self.kernel), g,
                            c // g, m // g, max(taps, 1), bool(self.meta.get("transpose")))


@dataclass(eq=False)
class Attention(Kernel):
    """out[b, i, :] = softmax(scale * q[b, i, :] . k[b, j, :] + mask[b, i, j], causal) @ v[b, j, :].
    q/k/v/out strides over (batch..., row, col); mask an Expr over (batch..., i, j) or None."""
    batch: tuple = ()
    sq: int = 1
    skv: int = 1
    d: int = 1
    dv: int = 1
    q: Access = None         # type: ignore[assignment]
    k: Access = None         # type: ignore[assignment]
    v: Access = None         # type: ignore[assignment]
    out: Access = None       # type: ignore[assignment]
    scale: float = 1.0
    causal: bool = False
    mask: Optional[Expr] = None
    kind = "attention"

    def exprs(self):
        return [self.mask] if self.mask is not None else []

    def writes(self):
        return [self.out]

    def extra_reads(self):
        return [self.q, self.k, self.v]


KERNEL_KINDS = (Pointwise, Reduce, RowNorm, Gemm, Conv, Attention)


# ---------------------------------------------------------------- program
@dataclass(eq=False)
class Program:
    """Kernels in call order + the buffer plan. Graph inputs/outputs/constants map to buffers by position."""
    name: str
    kernels: list
    inputs: list            # list[Buffer] (kind input), graph input order
    outputs: list           # list[Buffer] (kind output), graph output order
    consts: list            # list[Buffer] (kind const)
    temps: list             # list[Buffer] (kind temp, arena-placed)
    const_data: list        # numpy arrays, parallel to consts (held by reference)
    arena_bytes: int = 0
    naive_bytes: int = 0
    output_shapes: list = field(default_factory=list)
    output_aliases: dict = field(default_factory=dict)   # output index -> ("input"|"const"|"output", index): copy, no kernel
    # runtime checks: (output index, message). Each is an extra i32 output (after the graph's outputs) that a kernel
    # sets nonzero when the check fails (e.g. a gather index out of range); `finish` turns it into an error.
    checks: list = field(default_factory=list)

    def finish(self, outs: list) -> list:
        """The graph's outputs of one run, after raising the first failed runtime check."""
        n = len(outs) - len(self.checks)
        for i, msg in self.checks:
            if np.asarray(outs[i]).any():
                raise NnfuseError(msg)
        return outs[:n]

    def __str__(self) -> str:
        return print_program(self)

    def stats(self) -> dict:
        kinds: dict[str, int] = {}
        for k in self.kernels:
            kinds[k.kind] = kinds.get(k.kind, 0) + 1
        return {"kernels": len(self.kernels), "kernel_kinds": kinds, "arena_bytes": self.arena_bytes,
                "naive_bytes": self.naive_bytes, "temps": len(self.temps)}


_UNSAFE = re.compile(r"[^A-Za-z0-9_.:/\[\]@ -]")


def safe_comment(text: str, limit: int = 60) -> str:
    """A model-provided name made safe for a comment in any generated language (no newline, no */ or quotes)."""
    return _UNSAFE.sub("?", str(text))[:limit]


def _domain_str(dims) -> str:
    return "[" + ", ".join(f"i{k}<{d}" for k, d in enumerate(dims)) + "]"


def print_kernel(k: Kernel) -> str:
    head = f"kernel {k.name} {k.kind}"
    tail = f"  schedule: {k.schedule}"
    if k.meta.get("region"):
        head += f" (region {safe_comment(k.meta['region'])})"
    lines = [head]
    if isinstance(k, Pointwise):
        lines.append(f"  domain {_domain_str(k.domain)}")
        lines += [f"  {a} = {fmt_expr(e)}" for a, e in k.stores]
    elif isinstance(k, Reduce):
        nd = len(k.domain)
        red = ", ".join(f"i{nd + j}<{d}" for j, d in enumerate(k.rdomain))
        lines.append(f"  domain {_domain_str(k.domain)} reduce [{red}]")
        arg = " last" if k.select_last else ""
        lines.append(f"  red = {k.combine}{arg}(r: {fmt_expr(k.body)})")
        lines.append(f"  {k.out} = {fmt_expr(k.post) if k.post is not None else 'red'}")
    elif isinstance(k, RowNorm):
        lines.append(f"  domain {_domain_str(tuple(k.domain) + (k.row,))} row-axis i{len(k.domain)}")
        w = f", weight={fmt_expr(k.weight)}" if k.weight is not None else ""
        b = f", bias={fmt_expr(k.bias)}" if k.bias is not None else ""
        eps = f", eps={k.eps}" if k.norm in ("layer_norm", "rms_norm") else ""
        lines.append(f"  {k.out} = {k.norm}({fmt_expr(k.x)}{w}{b}{eps})")
    elif isinstance(k, Gemm):
        bdesc = str(k.b) if isinstance(k.b, Access) else (f"dequant({k.b.data}, scale={k.b.scale}, group={k.b.group}"
                                                           + (f", zero={k.b.zero})" if k.b.zero is not None else ")"))
        lines.append(f"  batch {list(k.batch)} m={k.m} n={k.n} k={k.k} alpha={k.alpha}")
        lines.append(f"  acc = {k.a} @ {bdesc}")
        lines.append(f"  {k.out} = {fmt_expr(k.epilogue) if k.epilogue is not None else 'acc'}")
    elif isinstance(k, Conv):
        lines.append(f"  in {list(k.in_shape)} out {list(k.out_shape)} kernel {list(k.kernel)} strides {list(k.strides)} "
                     f"pads {list(k.pads)} dilations {list(k.dilations)} group {k.group}")
        lines.append(f"  acc = conv({k.x}, {k.w})")
        lines.append(f"  {k.out} = {fmt_expr(k.epilogue) if k.epilogue is not None else 'acc'}")
    elif isinstance(k, Attention):
        lines.append(f"  batch {list(k.batch)} sq={k.sq} skv={k.skv} d={k.d} dv={k.dv} scale={k.scale} causal={k.causal}")
        m = f" + mask({fmt_expr(k.mask)})" if k.mask is not None else ""
        lines.append(f"  {k.out} = softmax({k.q} . {k.k}{m}) @ {k.v}")
    lines.append(tail)
    return "\n".join(lines)


def print_program(p: Program) -> str:
    out = [f"program @{safe_comment(p.name)} {{"]
    for kind, bufs in (("input", p.inputs), ("output", p.outputs), ("const", p.consts)):
        for b in bufs:
            lbl = f"  # {safe_comment(b.label)}" if b.label else ""
            out.append(f"  {kind} {b.name}: {b.dtype.name}[{b.numel}]{lbl}")
    for b in p.temps:
        out.append(f"  temp {b.name}: {b.dtype.name}[{b.numel}] @arena+{b.offset}")
    out.append(f"  arena {p.arena_bytes} bytes (naive sum {p.naive_bytes})")
    for i, (kind, j) in sorted(p.output_aliases.items()):
        out.append(f"  out{i} = copy of {kind} #{j}")
    for k in p.kernels:
        out.append("  " + print_kernel(k).replace("\n", "\n  "))
    out.append("}")
    return "\n".join(out)


# ---------------------------------------------------------------- verifier
def _domain_of(k: Kernel, acc: Access, where: str) -> tuple:
    if isinstance(k, Pointwise):
        return tuple(k.domain)
    if isinstance(k, Reduce):
        return tuple(k.domain) + (tuple(k.rdomain) if where == "body" else ())
    if isinstance(k, RowNorm):
        return tuple(k.domain) + (k.row,)
    if isinstance(k, Gemm):
        return tuple(k.batch) + (k.m, k.n)
    if isinstance(k, Conv):
        return tuple(k.out_shape)
    if isinstance(k, Attention):
        return tuple(k.batch) + (k.sq, k.skv)
    return ()


def verify_program(p: Program) -> None:
    """Rules: accesses stay in bounds with one stride per domain axis; temps are placed and never overlap while live;
    each buffer has a unique identifier; every read temp was written earlier."""
    names = set()
    for b in p.inputs + p.outputs + p.consts + p.temps:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", b.name) or b.name in names:
            raise KernelIRError(f"buffer-names: bad or duplicate identifier {b.name!r}")
        names.add(b.name)
    written: set[int] = set()
    for k in p.kernels:
        for a in k.reads():
            if a.buf.kind == "temp" and id(a.buf) not in written:
                raise KernelIRError(f"read-before-write: kernel {k.name} reads {a.buf.name} before any kernel writes it")
        for a in k.writes():
            if a.buf.kind in ("input", "const"):
                raise KernelIRError(f"write-readonly: kernel {k.name} writes {a.buf.kind} {a.buf.name}")
        _check_bounds(k)
        written.update(id(a.buf) for a in k.writes())
    _check_arena(p)


def _check_bounds(k: Kernel) -> None:
    def chk(acc: Access, dims: tuple, what: str):
        if len(acc.strides) != len(dims):
            raise KernelIRError(f"access-rank: kernel {k.name} {what} {acc} has {len(acc.strides)} strides for a {len(dims)}-axis domain")
        lo, hi = acc.span(dims)
        if any(d == 0 for d in dims):
            return
        if lo < 0 or hi >= acc.buf.numel:
            raise KernelIRError(f"access-bounds: kernel {k.name} {what} {acc} touches [{lo}, {hi}] of {acc.buf.numel} elements")
    if isinstance(k, Reduce):
        for ld in loads(k.body):
            if not ld.indirect:
                chk(ld.access, tuple(k.domain) + tuple(k.rdomain), "load")
        chk(k.out, tuple(k.domain), "store")
        return
    if isinstance(k, (Gemm, Conv, Attention)):
        return _check_structured(k, chk)
    for e in k.exprs():
        for ld in loads(e):
            if not ld.indirect:
                chk(ld.access, _domain_of(k, ld.access, "body"), "load")
    for a in k.writes():
        chk(a, _domain_of(k, a, "body"), "store")


def _check_structured(k: Kernel, chk) -> None:
    if isinstance(k, Gemm):
        bt = tuple(k.batch)
        chk(k.a, bt + (k.m, k.k), "a")
        if isinstance(k.b, Access):
            chk(k.b, bt + (k.k, k.n), "b")
        chk(k.out, bt + (k.m, k.n), "out")
        for e in k.exprs():
            for ld in loads(e):
                chk(ld.access, bt + (k.m, k.n), "epilogue load")
    elif isinstance(k, Attention):
        bt = tuple(k.batch)
        chk(k.q, bt + (k.sq, k.d), "q")
        chk(k.k, bt + (k.skv, k.d), "k")
        chk(k.v, bt + (k.skv, k.dv), "v")
        chk(k.out, bt + (k.sq, k.dv), "out")
    elif isinstance(k, Conv):
        chk(k.out, tuple(k.out_shape), "out")
        for e in k.exprs():
            for ld in loads(e):
                chk(ld.access, tuple(k.out_shape), "epilogue load")


def _check_arena(p: Program) -> None:
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for i, k in enumerate(p.kernels):
        for a in k.writes() + k.reads():
            if a.buf.kind == "temp":
                first.setdefault(id(a.buf), i)
                last[id(a.buf)] = i
    placed = [b for b in p.temps if id(b) in first]
    for b in placed:
        if b.offset < 0 or b.offset % 64 or b.offset + b.nbytes > p.arena_bytes:
            raise KernelIRError(f"arena-place: {b.name} at {b.offset} (+{b.nbytes}) outside a {p.arena_bytes}-byte arena or unaligned")
    for i, b in enumerate(placed):
        for c in placed[i + 1:]:
            live = not (last[id(b)] < first[id(c)] or last[id(c)] < first[id(b)])
            mem = not (b.offset + b.nbytes <= c.offset or c.offset + c.nbytes <= b.offset)
            if live and mem:
                raise KernelIRError(f"arena-overlap: {b.name} and {c.name} share arena bytes while both live")


def with_schedule(k: Kernel, **changes) -> Kernel:
    k.schedule = replace(k.schedule, **changes)
    return k
