"""One @triton.jit function per kernel IR kernel, plus its launch (grid, block sizes, warps, stages).

Kinds: pointwise (flattened, blocked, masked; gathers are indirect loads), reduce (one program per output,
single pass when the reduced extent fits a block, looped otherwise), row norms (softmax / log_softmax /
layer_norm / rms_norm; single pass or looped with an online max), gemm (tl.dot, K loop, grouped tile ordering,
fused epilogue), conv (implicit GEMM: the im2col tile is gathered on the fly) and attention (flash-attention:
online softmax over key blocks, causal and additive/boolean masks). All index arithmetic is int64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ...ir.kernel import (Access, Attention, Conv, Gemm, Kernel, Pointwise, QuantOperand, Reduce, RowNorm)
from .expr import Emitter, TritonCodegenError, comp_type, store_value, tl_type


def pow2(n: int, lo: int = 1, hi: int = 1 << 30) -> int:
    return max(lo, min(hi, 1 << max(0, (max(int(n), 1) - 1).bit_length())))


def cstrides(dims) -> list:
    out, s = [], 1
    for d in reversed(dims):
        out.append(s)
        s *= d
    return list(reversed(out))


@dataclass
class Launch:
    name: str
    grid: tuple
    consts: dict = field(default_factory=dict)   # constexpr block sizes
    num_warps: int = 4
    num_stages: int = 2


def unflatten(lines: list, flat: str, dims, names, indent: str = "    ") -> None:
    """names[k] = the index along dims[k] of the row-major flat index `flat`."""
    st = cstrides(dims)
    for k, (d, s) in enumerate(zip(dims, st)):
        if d == 1:
            lines.append(f"{indent}{names[k]} = {flat} * 0")
        elif k == 0:
            lines.append(f"{indent}{names[k]} = {flat} // {s}" if s != 1 else f"{indent}{names[k]} = {flat}")
        else:
            lines.append(f"{indent}{names[k]} = ({flat} // {s}) % {d}" if s != 1 else f"{indent}{names[k]} = {flat} % {d}")


class Writer:
    def __init__(self, k: Kernel, options: dict):
        self.k = k
        self.opt = options
        self.bufs = k.buffers()
        self.pname = {id(b): f"p{j}" for j, b in enumerate(self.bufs)}
        self.counter = [0]

    def bn(self, b) -> str:
        return self.pname[id(b)]

    def head(self, consts: list) -> list:
        params = [self.pname[id(b)] for b in self.bufs] + [f"{c}: tl.constexpr" for c in consts]
        return ["@triton.jit", f"def {self.k.name}({', '.join(params)}):"]

    def emitter(self, var, mask, zero, lines, indent="    ", args=None) -> Emitter:
        return Emitter(self.bn, var, mask, zero, args, lines, indent, self.counter)

    def write(self) -> tuple[list, Launch]:
        fn = getattr(self, self.k.kind, None)
        if fn is None:
            raise TritonCodegenError(f"kernel kind {self.k.kind} is not supported on the triton backend")
        return fn()

    # ------------------------------------------------------------ pointwise
    def pointwise(self):
        k: Pointwise = self.k
        dims = tuple(k.domain)
        total = max(math.prod(dims), 1)
        blk = int(k.schedule.block.get("BLOCK", pow2(total, 16, 1024)))
        blk = pow2(min(blk, pow2(total, 16)), 16)
        lines = self.head(["BLOCK"])
        lines += ["    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)",
                  f"    mask = offs < {total}", "    z = tl.zeros([BLOCK], tl.int64)"]
        names = [f"i{j}" for j in range(len(dims))]
        unflatten(lines, "offs", dims, names)
        em = self.emitter(lambda a: names[a], "mask", "z", lines)
        for acc, e in k.stores:
            v = em.value(e)
            lines.append(f"    tl.store({em.pointer(acc)}, {store_value(v, acc.buf)}, mask=mask)")
        return lines, Launch(k.name, (-(-total // blk),), {"BLOCK": blk}, k.schedule.num_warps if blk >= 512 else 4)

    # ------------------------------------------------------------ reductions
    def reduce(self):
        k: Reduce = self.k
        no = len(k.domain)
        R = max(math.prod(k.rdomain), 1)
        blk = pow2(min(int(k.schedule.block.get("BLOCK_R", 1024)), pow2(R, 16)), 16)
        bdt = k.body.dtype
        isf = bdt.is_float
        comb = k.combine
        acc_t = comp_type(bdt) if isf or comb in ("max", "min", "argmax", "argmin") else "tl.int64"
        if acc_t == "tl.int1":
            acc_t = "tl.int64"
        ii = np.iinfo(np.int64 if acc_t == "tl.int64" else bdt.np) if not isf else None
        lo = 'float("-inf")' if isf else str(ii.min + 1)
        hi = 'float("inf")' if isf else str(ii.max)
        if not isf and bdt.name in ("u8", "bool"):
            lo = "0"
        neutral = {"sum": "0", "prod": "1", "max": lo, "min": hi, "argmax": lo, "argmin": hi}[comb]
        lines = self.head(["BLOCK_R"])
        lines.append("    pid = tl.program_id(0).to(tl.int64)")
        onames = [f"o{j}" for j in range(no)]
        unflatten(lines, "pid", k.domain, onames)
        rnames = [f"r{j}" for j in range(len(k.rdomain))]
        lines += ["    rr = tl.arange(0, BLOCK_R).to(tl.int64)", "    z = tl.zeros([BLOCK_R], tl.int64)"]
        arg = comb in ("argmax", "argmin")
        if arg:
            lines += [f"    bv = tl.full([BLOCK_R], {neutral}, {acc_t})", f"    bi = tl.full([BLOCK_R], {R}, tl.int64)"]
        else:
            lines.append(f"    acc = tl.full([BLOCK_R], {neutral}, {acc_t})")
        looped = R > blk
        ind = "        " if looped else "    "
        if looped:
            lines.append(f"    for r_start in range(0, {R}, BLOCK_R):")
            lines.append(f"{ind}r = r_start + rr")
        else:
            lines.append(f"{ind}r = rr")
        lines.append(f"{ind}rmask = r < {R}")
        unflatten(lines, "r", k.rdomain, rnames, ind)
        allv = onames + rnames
        em = self.emitter(lambda a: allv[a], "rmask", "z", lines, ind)
        v = em.value(k.body)
        lines.append(f"{ind}val = tl.where(rmask, ({v}).to({acc_t}), {neutral})")
        if arg:
            better = {"argmax": ">=" if k.select_last else ">", "argmin": "<=" if k.select_last else "<"}[comb]
            nan = " | ((val != val) & (bv == bv))" if isf else ""
            lines.append(f"{ind}upd = rmask & ((val {better} bv) | (bi == {R}){nan})")
            lines.append(f"{ind}bv = tl.where(upd, val, bv)")
            lines.append(f"{ind}bi = tl.where(upd, r, bi)")
            red = "tl.max" if comb == "argmax" else "tl.min"
            if isf:
                # broadcast the scalar back to a block: the interpreter cannot mix 0-d bools with blocks
                lines.append(f"    best = tl.reduce(bv, 0, {'nnf_nanmax' if comb == 'argmax' else 'nnf_nanmin'}) + tl.zeros_like(bv)")
                lines.append("    cand = (bi < %d) & ((bv == best) | ((best != best) & (bv != bv)))" % R)
            else:
                lines.append(f"    best = {red}(bv, 0)")
                lines.append(f"    cand = (bi < {R}) & (bv == best)")
            if k.select_last:
                lines.append("    red = tl.max(tl.where(cand, bi, -1), 0)")
            else:
                lines.append(f"    red = tl.min(tl.where(cand, bi, {R}), 0)")
        else:
            step = {"sum": "acc + val", "prod": "acc * val",
                    "max": "nnf_nanmax(acc, val)" if isf else "tl.maximum(acc, val)",
                    "min": "nnf_nanmin(acc, val)" if isf else "tl.minimum(acc, val)"}[comb]
            lines.append(f"{ind}acc = {step}")
            fin = {"sum": "tl.sum(acc, 0)", "prod": "tl.reduce(acc, 0, nnf_mul)",
                   "max": "tl.reduce(acc, 0, nnf_nanmax)" if isf else "tl.max(acc, 0)",
                   "min": "tl.reduce(acc, 0, nnf_nanmin)" if isf else "tl.min(acc, 0)"}[comb]
            lines.append(f"    red = {fin}")
        pe = self.emitter(lambda a: allv[a], None, "0", lines, "    ", {"red": "red"})
        val = pe.value(k.post) if k.post is not None else "red"
        lines.append(f"    tl.store({pe.pointer(k.out)}, {store_value(val, k.out.buf)})")
        return lines, Launch(k.name, (max(math.prod(k.domain), 1),), {"BLOCK_R": blk}, 4 if blk <= 1024 else 8)

    def rownorm(self):
        k: RowNorm = self.k
        if not k.x.dtype.is_float:
            raise TritonCodegenError(f"{k.norm} on {k.x.dtype.name} is not supported on the triton backend")
        no = len(k.domain)
        R = k.row
        blk = pow2(min(int(k.schedule.block.get("BLOCK_R", 4096)), pow2(R, 16)), 16)
        lines = self.head(["BLOCK_R"])
        lines.append("    pid = tl.program_id(0).to(tl.int64)")
        onames = [f"o{j}" for j in range(no)]
        unflatten(lines, "pid", k.domain, onames)
        names = onames + ["r"]
        lines += ["    rr = tl.arange(0, BLOCK_R).to(tl.int64)", "    z = tl.zeros([BLOCK_R], tl.int64)"]
        var = lambda a: names[a]  # noqa: E731
        looped = R > blk
        eps = repr(float(k.eps))

        def row_pass(ind: str, body) -> None:
            """Emit a (looped or not) pass over the row; body(emitter, x_name, ind) adds the per-block work."""
            if looped:
                lines.append(f"    for r_start in range(0, {R}, BLOCK_R):")
                lines.append(f"{ind}r = r_start + rr")
            else:
                lines.append(f"{ind}r = rr")
            lines.append(f"{ind}rmask = r < {R}")
            em = self.emitter(var, "rmask", "z", lines, ind)
            body(em, em.value(k.x), ind)

        def finish(em, y: str, ind: str) -> None:
            if k.weight is not None:
                y = f"({y}) * {em.value(k.weight)}"
            if k.bias is not None:
                y = f"({y}) + {em.value(k.bias)}"
            lines.append(f"{ind}tl.store({em.pointer(k.out)}, {store_value(y, k.out.buf)}, mask=rmask)")

        ind = "        " if looped else "    "
        if k.norm in ("softmax", "log_softmax"):
            if not looped:
                def one(em, x, ind):
                    lines.append(f"{ind}xm = tl.where(rmask, {x}, float('-inf'))")
                    lines.append(f"{ind}mx = tl.max(xm, 0)")
                    lines.append(f"{ind}mx = tl.where(mx == float('-inf'), 0.0, mx)")
                    lines.append(f"{ind}ex = tl.exp(xm - mx)")
                    lines.append(f"{ind}sm = tl.sum(ex, 0)")
                    y = "ex / sm" if k.norm == "softmax" else "xm - mx - tl.log(sm)"
                    finish(em, y, ind)
                row_pass(ind, one)
            else:
                lines += ["    mv = tl.full([BLOCK_R], float('-inf'), tl.float32)", "    sv = tl.zeros([BLOCK_R], tl.float32)"]

                def stats(em, x, ind):   # per-lane online max and rescaled sum
                    lines.append(f"{ind}xm = tl.where(rmask, {x}, float('-inf'))")
                    lines.append(f"{ind}mn = tl.maximum(mv, xm)")
                    lines.append(f"{ind}ms = tl.where(mn == float('-inf'), 0.0, mn)")
                    lines.append(f"{ind}sv = sv * tl.exp(mv - ms) + tl.exp(xm - ms)")
                    lines.append(f"{ind}mv = mn")
                row_pass(ind, stats)
                lines += ["    mx = tl.max(mv, 0)", "    mx = tl.where(mx == float('-inf'), 0.0, mx)",
                          "    sm = tl.sum(sv * tl.exp(mv - mx), 0)"]

                def write(em, x, ind):
                    y = f"tl.exp({x} - mx) / sm" if k.norm == "softmax" else f"{x} - mx - tl.log(sm)"
                    finish(em, y, ind)
                row_pass(ind, write)
        elif k.norm in ("layer_norm", "rms_norm"):
            if not looped:
                def one(em, x, ind):
                    lines.append(f"{ind}xz = tl.where(rmask, {x}, 0.0)")
                    if k.norm == "layer_norm":
                        lines.append(f"{ind}mean = tl.sum(xz, 0) / {R}")
                        lines.append(f"{ind}d = tl.where(rmask, xz - mean, 0.0)")
                        lines.append(f"{ind}rs = 1.0 / tl.sqrt(tl.sum(d * d, 0) / {R} + {eps})")
                        finish(em, "d * rs", ind)
                    else:
                        lines.append(f"{ind}rs = 1.0 / tl.sqrt(tl.sum(xz * xz, 0) / {R} + {eps})")
                        finish(em, "xz * rs", ind)
                row_pass(ind, one)
            else:
                lines.append("    s1 = tl.zeros([BLOCK_R], tl.float32)")
                if k.norm == "layer_norm":
                    row_pass(ind, lambda em, x, ind: lines.append(f"{ind}s1 += tl.where(rmask, {x}, 0.0)"))
                    lines += [f"    mean = tl.sum(s1, 0) / {R}", "    s2 = tl.zeros([BLOCK_R], tl.float32)"]

                    def var_pass(em, x, ind):
                        lines.append(f"{ind}d = tl.where(rmask, {x} - mean, 0.0)")
                        lines.append(f"{ind}s2 += d * d")
                    row_pass(ind, var_pass)
                    lines.append(f"    rs = 1.0 / tl.sqrt(tl.sum(s2, 0) / {R} + {eps})")
                    row_pass(ind, lambda em, x, ind: finish(em, f"({x} - mean) * rs", ind))
                else:
                    def sq(em, x, ind):
                        lines.append(f"{ind}xz = tl.where(rmask, {x}, 0.0)")
                        lines.append(f"{ind}s1 += xz * xz")
                    row_pass(ind, sq)
                    lines.append(f"    rs = 1.0 / tl.sqrt(tl.sum(s1, 0) / {R} + {eps})")
                    row_pass(ind, lambda em, x, ind: finish(em, f"{x} * rs", ind))
        else:
            raise TritonCodegenError(f"row norm '{k.norm}' is not supported on the triton backend")
        return lines, Launch(k.name, (max(math.prod(k.domain), 1),), {"BLOCK_R": blk}, 4 if blk <= 2048 else 8)

    # ------------------------------------------------------------ gemm family
    def dot_types(self, a_dt, b_dt) -> tuple[str, str, str]:
        """(operand conversion suffix, accumulator type, dot call template) for tl.dot on these dtypes."""
        # (Triton 3.9's interpreter multiplies bf16 blocks wrongly in tl.dot: there bf16 goes through f32, exactly)
        if a_dt.name == b_dt.name and a_dt.name in ("f16", "bf16") and not (a_dt.name == "bf16" and self.opt.get("interpret")):
            return "", "tl.float32", "tl.dot({a}, {b}, acc={acc})"
        if a_dt.name == "f64" or b_dt.name == "f64":
            return ".to(tl.float64)", "tl.float64", "tl.dot({a}, {b}, acc={acc}, input_precision=\"ieee\")"
        if a_dt.is_float and b_dt.is_float:
            prec = "tf32" if self.opt.get("allow_tf32") else "ieee"
            return ".to(tl.float32)", "tl.float32", "tl.dot({a}, {b}, acc={acc}, input_precision=\"%s\")" % prec
        # integer / bool matmul: exact broadcast-and-sum in int64 (no integer tensor-core path needed here)
        return ".to(tl.int64)", "tl.int64", "{acc} + tl.sum({a}[:, :, None] * {b}[None, :, :], axis=1)"

    def grouped_pids(self, lines: list, M: int, N: int) -> None:
        """Grouped tile ordering: GROUP_M row-tiles share the columns they read, for L2 reuse."""
        lines += ["    pid = tl.program_id(0)",
                  f"    npm = tl.cdiv({M}, BLOCK_M)", f"    npn = tl.cdiv({N}, BLOCK_N)",
                  "    width = GROUP_M * npn", "    gid = pid // width", "    first = gid * GROUP_M",
                  "    gsz = tl.minimum(npm - first, GROUP_M)",
                  "    pid_m = first + ((pid % width) % gsz)", "    pid_n = (pid % width) // gsz",
                  "    rm = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)",
                  "    rn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)",
                  "    rk = tl.arange(0, BLOCK_K).to(tl.int64)"]

    def gemm_blocks(self, M: int, N: int, K: int, int_dot: bool) -> dict:
        b = self.k.schedule.block
        bm = pow2(min(int(b.get("BLOCK_M", 64)), pow2(M, 16)), 16)
        bn = pow2(min(int(b.get("BLOCK_N", 64)), pow2(N, 16)), 16)
        bk = pow2(min(int(b.get("BLOCK_K", 32)), pow2(K, 16)), 16)
        if int_dot:
            bm, bn, bk = min(bm, 32), min(bn, 32), min(bk, 16)
        return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}

    def batch_vars(self, lines: list, batch) -> list:
        names = [f"b{j}" for j in range(len(batch))]
        if batch:
            lines.append("    bid = tl.program_id(1).to(tl.int64)")
            unflatten(lines, "bid", batch, names)
        return names

    @staticmethod
    def base(acc: Access, bnames: list) -> str:
        terms = [str(acc.offset)] + [f"{bn} * {s}" for bn, s in zip(bnames, acc.strides[:len(bnames)]) if s]
        return " + ".join(terms)

    def epilogue_store(self, lines: list, vars_: list, out: Access, acc_name: str) -> None:
        k = self.k
        lines.append("    z2 = tl.zeros([BLOCK_M, BLOCK_N], tl.int64)")
        em = self.emitter(lambda a: vars_[a], "cmask", "z2", lines, "    ", {"acc": acc_name})
        val = em.value(k.epilogue) if k.epilogue is not None else acc_name
        lines.append(f"    tl.store({em.pointer(out)}, {store_value(val, out.buf)}, mask=cmask)")

    def gemm(self):
        k: Gemm = self.k
        if isinstance(k.b, QuantOperand):
            raise TritonCodegenError("quantized gemm operands are not supported on the triton backend yet "
                                     "(dequantize the weights first, or use backend='reference')")
        M, N, K = k.m, k.n, k.k
        A, B, O = k.a, k.b, k.out
        conv, acc_t, dot = self.dot_types(A.buf.dtype, B.buf.dtype)
        blocks = self.gemm_blocks(M, N, K, acc_t == "tl.int64")
        lines = self.head(list(blocks))
        self.grouped_pids(lines, M, N)
        bnames = self.batch_vars(lines, k.batch)
        sam, sak = A.strides[-2], A.strides[-1]
        sbk, sbn = B.strides[-2], B.strides[-1]
        pa, pb = self.bn(A.buf), self.bn(B.buf)
        lines += [f"    pa = {pa} + ({self.base(A, bnames)}) + rm[:, None] * {sam}",
                  f"    pb = {pb} + ({self.base(B, bnames)}) + rn[None, :] * {sbn}",
                  f"    acc = tl.zeros([BLOCK_M, BLOCK_N], {acc_t})",
                  f"    for k_start in range(0, {K}, BLOCK_K):",
                  "        kk = k_start + rk",
                  f"        a = tl.load(pa + kk[None, :] * {sak}, mask=(rm[:, None] < {M}) & (kk[None, :] < {K}), other=0){conv}",
                  f"        b = tl.load(pb + kk[:, None] * {sbk}, mask=(kk[:, None] < {K}) & (rn[None, :] < {N}), other=0){conv}",
                  "        acc = " + dot.format(a="a", b="b", acc="acc")]
        if k.alpha != 1.0:
            lines.append(f"    acc = acc * {float(k.alpha)!r}")
        lines.append(f"    cmask = (rm[:, None] < {M}) & (rn[None, :] < {N})")
        self.epilogue_store(lines, bnames + ["rm[:, None]", "rn[None, :]"], O, "acc")
        grid = (-(-M // blocks["BLOCK_M"]) * -(-N // blocks["BLOCK_N"]), max(math.prod(k.batch), 1))
        big = blocks["BLOCK_M"] * blocks["BLOCK_N"] >= 128 * 128
        return lines, Launch(k.name, grid, blocks, 8 if big else k.schedule.num_warps, k.schedule.num_stages)

    def conv(self):
        """Implicit GEMM per (image, group): [Mg out channels] x [output pixels], K = Cg * prod(kernel) gathered
        from x on the fly (1-3 spatial dims; transposed convs gather the inputs that land on each output pixel)."""
        k: Conv = self.k
        geo = k.geometry()
        tr, N_, C, M, G, Cg, Mg, KK = geo.transpose, geo.n, geo.c, geo.m, geo.groups, geo.cg, geo.mg, geo.taps
        IS, OS, KS = list(geo.in_spatial), list(geo.out_spatial), list(geo.kernel)
        nd = len(OS)
        Kd, P = Cg * KK, max(math.prod(OS), 1)
        X, Wt, O = k.x, k.w, k.out
        conv, acc_t, dot = self.dot_types(Wt.buf.dtype, X.buf.dtype)
        blocks = self.gemm_blocks(Mg, P, Kd, acc_t == "tl.int64")
        lines = self.head(list(blocks))
        self.grouped_pids(lines, Mg, P)
        sx, swt = X.strides, Wt.strides
        lines += ["    ng = tl.program_id(1).to(tl.int64)", f"    n = ng // {G}", f"    g = ng % {G}", "    ol = rm",
                  f"    oc = g * {Mg} + rm"]
        onames = [f"y{j}" for j in range(nd)]
        unflatten(lines, "rn", OS, onames)
        # weight: [M, Cg, k...] (conv) or [C, Mg, k...] (transposed); rows = out channel in group, cols = (c, k...)
        wrow = f"oc[:, None] * {swt[0]}" if not tr else f"ol[:, None] * {swt[1]}"
        lines += [f"    px = {self.bn(X.buf)} + {X.offset} + n * {sx[0]} + (g * {Cg}) * {sx[1]}",
                  f"    pw = {self.bn(Wt.buf)} + {Wt.offset} + {wrow}" + (f" + (g * {Cg}) * {swt[0]}" if tr else ""),
                  f"    acc = tl.zeros([BLOCK_M, BLOCK_N], {acc_t})",
                  f"    for k_start in range(0, {Kd}, BLOCK_K):",
                  "        kk = k_start + rk",
                  f"        c = kk // {KK}", f"        kr = kk % {KK}",
                  f"        kmask = kk < {Kd}"]
        knames = [f"q{j}" for j in range(nd)]
        unflatten(lines, "kr", KS, knames, "        ")
        wc = swt[1] if not tr else swt[0]
        wterms = " + ".join([f"c[None, :] * {wc}"] + [f"{q}[None, :] * {swt[2 + j]}" for j, q in enumerate(knames)])
        lines.append(f"        a = tl.load(pw + {wterms}, mask=(rm[:, None] < {Mg}) & kmask[None, :], other=0){conv}")
        bmask = [f"kmask[:, None] & (rn[None, :] < {P})"]
        xterms = [f"c[:, None] * {sx[1]}"]
        for j in range(nd):
            s_, p_, d_ = k.strides[j], k.pads[j], k.dilations[j]
            if not tr:
                lines.append(f"        i{j} = {onames[j]}[None, :] * {s_} - {p_} + {knames[j]}[:, None] * {d_}")
            else:   # out y = i*s - p + k*d  =>  i = (y + p - k*d) / s when that divides exactly
                lines.append(f"        t{j} = {onames[j]}[None, :] + {p_} - {knames[j]}[:, None] * {d_}")
                lines.append(f"        i{j} = tl.where(t{j} >= 0, t{j}, 0) // {s_}")
                bmask.append(f"(t{j} >= 0) & ((tl.where(t{j} >= 0, t{j}, 0) % {s_}) == 0)")
            bmask.append(f"(i{j} >= 0) & (i{j} < {IS[j]})")
            xterms.append(f"i{j} * {sx[2 + j]}")
        lines += [f"        bmask = {' & '.join(bmask)}",
                  f"        b = tl.load(px + {' + '.join(xterms)}, mask=bmask, other=0){conv}",
                  "        acc = " + dot.format(a="a", b="b", acc="acc"),
                  f"    cmask = (rm[:, None] < {Mg}) & (rn[None, :] < {P})"]
        self.epilogue_store(lines, ["n", "oc[:, None]"] + [f"{y}[None, :]" for y in onames], O, "acc")
        grid = (-(-Mg // blocks["BLOCK_M"]) * -(-P // blocks["BLOCK_N"]), N_ * G)
        return lines, Launch(k.name, grid, blocks, k.schedule.num_warps, k.schedule.num_stages)

    def attention(self):
        """Flash attention: one program per (query block, batch); keys/values streamed in BLOCK_N blocks."""
        k: Attention = self.k
        SQ, SKV, D, DV = k.sq, k.skv, k.d, k.dv
        b = k.schedule.block
        bm = pow2(min(int(b.get("BLOCK_M", 64)), pow2(SQ, 16)), 16)
        bn = pow2(min(int(b.get("BLOCK_N", 64)), pow2(SKV, 16)), 16)
        blocks = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_D": pow2(D, 16), "BLOCK_DV": pow2(DV, 16)}
        Q, Kk, V, O = k.q, k.k, k.v, k.out
        conv, acc_t, dot = self.dot_types(Q.buf.dtype, Kk.buf.dtype)
        vconv, _, vdot = self.dot_types(V.buf.dtype, V.buf.dtype)
        pconv = ".to(tl.float32)" if not vconv else vconv
        if vconv == "":   # f16/bf16 values: feed p in the value dtype to the tensor cores
            pconv = f".to({tl_type(V.buf.dtype)})"
        lines = self.head(list(blocks))
        lines += ["    pid_m = tl.program_id(0)",
                  "    rm = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)",
                  "    rd = tl.arange(0, BLOCK_D).to(tl.int64)", "    rdv = tl.arange(0, BLOCK_DV).to(tl.int64)"]
        bnames = self.batch_vars(lines, k.batch)
        lines += [f"    q = tl.load({self.bn(Q.buf)} + ({self.base(Q, bnames)}) + rm[:, None] * {Q.strides[-2]} + rd[None, :] * {Q.strides[-1]}, "
                  f"mask=(rm[:, None] < {SQ}) & (rd[None, :] < {D}), other=0){conv}",
                  f"    pk = {self.bn(Kk.buf)} + ({self.base(Kk, bnames)}) + rd[:, None] * {Kk.strides[-1]}",
                  f"    pv = {self.bn(V.buf)} + ({self.base(V, bnames)}) + rdv[None, :] * {V.strides[-1]}",
                  "    m_i = tl.full([BLOCK_M], float('-inf'), tl.float32)",
                  "    l_i = tl.zeros([BLOCK_M], tl.float32)",
                  "    o = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)",
                  "    z2 = tl.zeros([BLOCK_M, BLOCK_N], tl.int64)"]
        hi = f"tl.minimum({SKV}, (pid_m + 1) * BLOCK_M)" if k.causal else str(SKV)
        lines += [f"    for n_start in range(0, {hi}, BLOCK_N):",
                  "        rn = n_start + tl.arange(0, BLOCK_N).to(tl.int64)",
                  f"        kt = tl.load(pk + rn[None, :] * {Kk.strides[-2]}, mask=(rd[:, None] < {D}) & (rn[None, :] < {SKV}), other=0){conv}",
                  "        s = " + dot.format(a="q", b="kt", acc=f"tl.zeros([BLOCK_M, BLOCK_N], {acc_t})"),
                  f"        s = s.to(tl.float32) * {float(k.scale)!r}",
                  f"        valid = (rm[:, None] < {SQ}) & (rn[None, :] < {SKV})"]
        if k.mask is not None:
            em = self.emitter(lambda a: (bnames + ["rm[:, None]", "rn[None, :]"])[a], "valid", "z2", lines, "        ")
            mv = em.value(k.mask)
            lines.append(f"        s = tl.where({mv} != 0, s, float('-inf'))" if k.mask.dtype.name == "bool" else f"        s = s + {mv}")
        if k.causal:
            lines.append("        valid = valid & (rn[None, :] <= rm[:, None])")
        lines += ["        s = tl.where(valid, s, float('-inf'))",
                  "        m_new = tl.maximum(m_i, tl.max(s, 1))",
                  "        m_safe = tl.where(m_new == float('-inf'), 0.0, m_new)",
                  "        p = tl.exp(s - m_safe[:, None])",
                  "        scale_old = tl.exp(m_i - m_safe)",
                  "        l_i = l_i * scale_old + tl.sum(p, 1)",
                  f"        v = tl.load(pv + rn[:, None] * {V.strides[-2]}, mask=(rn[:, None] < {SKV}) & (rdv[None, :] < {DV}), other=0){vconv}",
                  "        o = o * scale_old[:, None]",
                  "        o = " + vdot.format(a=f"p{pconv}", b="v", acc="o").replace("acc=o", "acc=o"),
                  "        m_i = m_new",
                  "    o = o / l_i[:, None]"]
        lines.append(f"    tl.store({self.bn(O.buf)} + ({self.base(O, bnames)}) + rm[:, None] * {O.strides[-2]} + rdv[None, :] * {O.strides[-1]}, "
                     f"{store_value('o', O.buf)}, mask=(rm[:, None] < {SQ}) & (rdv[None, :] < {DV}))")
        grid = (-(-SQ // bm), max(math.prod(k.batch), 1))
        return lines, Launch(k.name, grid, blocks, k.schedule.num_warps, k.schedule.num_stages)


def write_kernel(k: Kernel, options: dict) -> tuple[list, Launch, list]:
    """(source lines, launch, buffers in parameter order) for one kernel."""
    w = Writer(k, options)
    lines, launch = w.write()
    return lines, launch, w.bufs


__all__ = ["Launch", "write_kernel", "pow2"]
