"""Kernel IR scalar `Expr`s -> Triton block code (one statement per node, shared subtrees computed once).

A kernel writer tells the emitter how each domain variable looks in its block program (`i0` a 1-D vector in a
pointwise kernel; `rm[:, None]` / `rn[None, :]` in a gemm epilogue; a scalar for an outer reduction axis), which
mask guards loads, and a zero int64 block that gives every pointer the block's shape. Arithmetic on f16/bf16
happens in f32 (as the reference evaluator does); stores round back to the buffer's dtype.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

from ...ir.dtypes import DType
from ...ir.errors import NnfuseError
from ...ir.kernel import Access, Arg, Buffer, Const, Expr, Load, Op, Var

TL = {"f64": "tl.float64", "f32": "tl.float32", "f16": "tl.float16", "bf16": "tl.bfloat16", "i64": "tl.int64",
      "i32": "tl.int32", "i16": "tl.int16", "i8": "tl.int8", "u8": "tl.uint8", "bool": "tl.int1"}


class TritonCodegenError(NnfuseError):
    pass


def tl_type(dt: DType) -> str:
    if dt.name not in TL:
        raise TritonCodegenError(f"dtype {dt.name} is not supported on the triton backend (supported: {', '.join(TL)})")
    return TL[dt.name]


def comp_type(dt: DType) -> str:
    """The Triton type arithmetic on `dt` happens in."""
    return "tl.float32" if dt.name in ("f16", "bf16") else tl_type(dt)


def literal(v, dt: DType) -> str:
    """A Python literal for a Const (inside @triton.jit code)."""
    if dt.is_float:
        v = float(v)
        if math.isnan(v):
            return 'float("nan")'
        if math.isinf(v):
            return 'float("inf")' if v > 0 else 'float("-inf")'
        return repr(v)
    if dt.name == "bool":
        return "1" if v else "0"
    return str(int(v))


# Helpers shared by every generated module (plain @triton.jit functions: they run in the interpreter and on a GPU).
PRELUDE = '''import triton
import triton.language as tl


@triton.jit
def nnf_sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def nnf_tanh(x):
    # 1 - 2/(e^2x + 1): saturates to +-1 without overflow trouble (e^2x = inf gives 1, 0 gives -1)
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def nnf_gelu(x):
    return 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))


@triton.jit
def nnf_gelu_tanh(x):
    return 0.5 * x * (1.0 + nnf_tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


@triton.jit
def nnf_round(x):
    # half to even, like numpy/torch round
    r = tl.floor(x + 0.5)
    tie = (r - x) == 0.5
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    return tl.where(tie & odd, r - 1.0, r)


@triton.jit
def nnf_mod(a, b):
    # the result takes the divisor's sign (Python / torch.remainder)
    r = a % b
    return tl.where((r != 0) & ((r < 0) != (b < 0)), r + b, r)


@triton.jit
def nnf_pow(a, b):
    mag = tl.exp2(b * tl.log2(tl.abs(a)))
    bint = tl.floor(b) == b
    odd = bint & ((b - 2.0 * tl.floor(b * 0.5)) != 0.0)
    r = tl.where((a < 0) & odd, -mag, mag)
    r = tl.where((a < 0) & (~bint), float("nan"), r)
    return tl.where(b == 0.0, 1.0, r)


@triton.jit
def nnf_mul(a, b):
    return a * b


@triton.jit
def nnf_nanmax(a, b):
    return tl.where((a > b) | (a != a), a, b)


@triton.jit
def nnf_nanmin(a, b):
    return tl.where((a < b) | (a != a), a, b)
'''


class Emitter:
    """Emits statements into `lines` (at `indent`); `value(e)` returns the name or literal holding e's value."""

    def __init__(self, bufname: Callable[[Buffer], str], var: Callable[[int], str], mask: Optional[str], zero: str,
                 args: Optional[dict] = None, lines: Optional[list] = None, indent: str = "    ", counter=None):
        self.bufname = bufname
        self.var = var
        self.mask = mask
        self.zero = zero
        self.args = args or {}
        self.lines = lines if lines is not None else []
        self.indent = indent
        self.memo: dict[int, str] = {}
        self.counter = counter if counter is not None else [0]   # shared by the emitters of one kernel: unique names

    def fresh(self, rhs: str) -> str:
        name = f"v{self.counter[0]}"
        self.counter[0] += 1
        self.lines.append(f"{self.indent}{name} = {rhs}")
        return name

    def offset(self, acc: Access, indirect=()) -> str:
        terms = [self.zero]
        if acc.offset:
            terms.append(str(acc.offset))
        for k, s in enumerate(acc.strides):
            if s:
                v = self.var(k)
                terms.append(v if s == 1 else f"{v} * {s}")
        for ie, st in indirect:
            iv = self.value(ie)
            terms.append(f"({iv}).to(tl.int64) * {st}" if st != 1 else f"({iv}).to(tl.int64)")
        return " + ".join(terms)

    def pointer(self, acc: Access, indirect=()) -> str:
        return f"{self.bufname(acc.buf)} + ({self.offset(acc, indirect)})"

    def value(self, e: Expr) -> str:
        key = id(e)
        if key in self.memo:
            return self.memo[key]
        if isinstance(e, Const):
            s = f"tl.full([], {literal(e.value, e.dtype)}, {comp_type(e.dtype)})"
        elif isinstance(e, Var):
            v = self.var(e.axis)
            s = v if e.dtype.name == "i64" else f"({v}).to({comp_type(e.dtype)})"
        elif isinstance(e, Arg):
            if e.name not in self.args:
                raise TritonCodegenError(f"expression uses '{e.name}', which this kernel does not provide")
            s = self.args[e.name]
        elif isinstance(e, Load):
            m = f", mask={self.mask}, other=0" if self.mask else ""
            ld = f"tl.load({self.pointer(e.access, e.indirect)}{m})"
            if e.dtype.name in ("f16", "bf16"):
                ld += ".to(tl.float32)"
            s = self.fresh(ld)
        elif isinstance(e, Op):
            s = self.fresh(self.op(e))
        else:
            raise TritonCodegenError(f"cannot emit {type(e).__name__} on the triton backend")
        self.memo[key] = s
        return s

    def op(self, e: Op) -> str:  # noqa: C901  (one table of scalar templates)
        a = [self.value(x) for x in e.args]
        name = e.op
        dt = e.dtype
        src = e.args[0].dtype if e.args else dt
        isf = src.is_float
        bins = {"add": "+", "sub": "-", "mul": "*"}
        if name in bins:
            return f"{a[0]} {bins[name]} {a[1]}"
        if name == "div":
            if isf or dt.is_float:
                return f"{a[0]} / {a[1]}"
            # C truncation (Triton's integer // truncates too); a zero divisor yields the dividend, as on the cpu backend
            return f"tl.where({a[1]} == 0, {a[0]}, {a[0]} // tl.where({a[1]} == 0, 1, {a[1]}))"
        cmps = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
        if name in cmps:
            return f"{a[0]} {cmps[name]} {a[1]}"
        if name in ("and", "or", "xor"):
            sym = {"and": "&", "or": "|", "xor": "^"}[name]
            return f"({a[0]} != 0) {sym} ({a[1]} != 0)"
        if name == "not":
            return f"{a[0]} == 0"
        if name in ("max", "min"):
            if isf:
                return f"nnf_nan{name}({a[0]}, {a[1]})"
            return f"tl.{'maximum' if name == 'max' else 'minimum'}({a[0]}, {a[1]})"
        if name == "mod":
            if e.attr("fmod", False):
                return f"{a[0]} % {a[1]}" if isf else f"{a[0]} % tl.where({a[1]} == 0, 1, {a[1]})"
            return f"nnf_mod({a[0]}, {a[1]})" if isf else f"nnf_mod({a[0]}, tl.where({a[1]} == 0, 1, {a[1]}))"
        if name == "pow":
            return self.pow(e, a)
        if name == "prelu":
            return f"tl.where({a[0]} >= 0, {a[0]}, {a[0]} * {a[1]})"
        if name == "where":
            return f"tl.where({a[0]} != 0, {a[1]}, {a[2]})"
        if name == "cast":
            if dt.name == "bool":
                return f"{a[0]} != 0"
            return f"({a[0]}).to({comp_type(dt)})" if not (dt.name in ("f16", "bf16")) else \
                f"({a[0]}).to({tl_type(dt)}).to(tl.float32)"
        if name == "identity":
            return a[0]
        if name == "clip":
            s = a[0]
            lo, hi = e.attr("min"), e.attr("max")
            if lo is not None:
                s = f"tl.where({s} < {literal(lo, dt)}, {literal(lo, dt)}, {s})"
            if hi is not None:
                s = f"tl.where({s} > {literal(hi, dt)}, {literal(hi, dt)}, {s})"
            return s
        if not isf:
            ints = {"neg": f"-{a[0]}", "abs": f"tl.where({a[0]} < 0, -{a[0]}, {a[0]})",
                    "relu": f"tl.where({a[0]} < 0, 0, {a[0]})",
                    "sign": f"(({a[0]} > 0).to(tl.int64) - ({a[0]} < 0).to(tl.int64)).to({comp_type(dt)})"}
            if name in ints:
                return ints[name]
            raise TritonCodegenError(f"op '{name}' on {src.name} is not supported on the triton backend")
        return self.float_unary(name, a[0], e)

    def pow(self, e: Op, a: list) -> str:
        ex = e.args[1]
        if isinstance(ex, Const) and float(ex.value) in (1.0, 2.0, 3.0, 4.0):   # x*x*x: exact, as GPT-2's gelu needs
            return " * ".join([a[0]] * int(ex.value))
        if isinstance(ex, Const) and float(ex.value) == 0.5:
            return f"tl.sqrt({a[0]})"
        if not e.args[0].dtype.is_float:
            raise TritonCodegenError("integer pow is not supported on the triton backend")
        return f"nnf_pow({a[0]}, {a[1]})"

    def float_unary(self, name: str, x: str, e: Op) -> str:
        lib = {"exp": f"tl.exp({x})", "log": f"tl.log({x})", "sqrt": f"tl.sqrt({x})", "rsqrt": f"1.0 / tl.sqrt({x})",
               "reciprocal": f"1.0 / {x}", "tanh": f"nnf_tanh({x})", "sigmoid": f"nnf_sigmoid({x})",
               "erf": f"tl.math.erf({x})", "sin": f"tl.sin({x})", "cos": f"tl.cos({x})", "floor": f"tl.floor({x})",
               "ceil": f"tl.ceil({x})", "round": f"nnf_round({x})", "neg": f"-{x}", "abs": f"tl.abs({x})",
               "relu": f"tl.where({x} < 0, 0.0, {x})",
               "sign": f"tl.where({x} != {x}, {x}, tl.where({x} > 0, 1.0, tl.where({x} < 0, -1.0, 0.0)))",
               "silu": f"{x} * nnf_sigmoid({x})",
               "softplus": f"tl.maximum({x}, 0.0) + tl.log(1.0 + tl.exp(-tl.abs({x})))",
               "hard_swish": f"{x} * tl.minimum(tl.maximum({x} / 6.0 + 0.5, 0.0), 1.0)"}
        if name in lib:
            return lib[name]
        if name == "leaky_relu":
            return f"tl.where({x} >= 0, {x}, {x} * {float(e.attr('alpha', 0.01))!r})"
        if name == "elu":
            return f"tl.where({x} > 0, {x}, {float(e.attr('alpha', 1.0))!r} * (tl.exp({x}) - 1.0))"
        if name == "gelu":
            return f"nnf_gelu_tanh({x})" if e.attr("approximate", "none") == "tanh" else f"nnf_gelu({x})"
        if name == "hard_sigmoid":
            al, be = float(e.attr("alpha", 0.2)), float(e.attr("beta", 0.5))
            return f"tl.minimum(tl.maximum({x} * {al!r} + {be!r}, 0.0), 1.0)"
        if name == "selu":
            al = float(e.attr("alpha", 1.67326319217681884765625))
            ga = float(e.attr("gamma", 1.05070102214813232421875))
            return f"{ga!r} * tl.where({x} > 0, {x}, {al!r} * (tl.exp({x}) - 1.0))"
        if name == "shrink":
            bi, la = float(e.attr("bias", 0.0)), float(e.attr("lambd", 0.5))
            return f"tl.where({x} < -{la!r}, {x} + {bi!r}, tl.where({x} > {la!r}, {x} - {bi!r}, 0.0))"
        raise TritonCodegenError(f"op '{name}' is not supported on the triton backend")


def store_value(value: str, buf: Buffer) -> str:
    """Convert a computed value to the buffer's element type for tl.store."""
    if buf.dtype.name == "bool":
        return f"({value}) != 0"
    return f"({value}).to({tl_type(buf.dtype)})"
