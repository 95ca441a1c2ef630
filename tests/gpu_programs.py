"""Kernel IR programs built by hand for the GPU backends' tests (kinds the graph lowering does not emit yet,
such as fused attention, or dtypes/strides worth pinning), each with inputs and a numpy expected result."""
from __future__ import annotations

import numpy as np

from nnfuse.ir.dtypes import dtype
from nnfuse.ir.kernel import Access, Arg, Attention, Buffer, Gemm, Load, Program, op, verify_program

F32 = dtype("f32")


def cstrides(shape) -> tuple:
    out, s = [], 1
    for d in reversed(shape):
        out.append(s)
        s *= d
    return tuple(reversed(out))


def _program(name, kernels, inputs, outputs, out_shapes, consts=(), const_data=()) -> Program:
    for i, k in enumerate(kernels):
        k.name = f"k{i}"
    p = Program(name, list(kernels), list(inputs), list(outputs), list(consts), [], list(const_data), 0, 0,
                [tuple(s) for s in out_shapes])
    verify_program(p)
    return p


def attention_program(B=2, H=2, SQ=5, SKV=7, D=12, DV=6, causal=False, mask=None, seed=0):
    """mask: None | "add" (float [SQ, SKV] added to the scores) | "bool" (keep where true)."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, H, SQ, D)).astype(np.float32)
    k = rng.standard_normal((B, H, SKV, D)).astype(np.float32)
    v = rng.standard_normal((B, H, SKV, DV)).astype(np.float32)
    ins = [q, k, v]
    bufs = [Buffer(f"in{i}", F32, a.size, "input", i) for i, a in enumerate(ins)]
    out = Buffer("out0", F32, B * H * SQ * DV, "output", 0)
    scale = 1.0 / np.sqrt(D)
    s = np.einsum("bhid,bhjd->bhij", q, k) * scale
    mexpr = None
    if mask == "add":
        m = rng.standard_normal((SQ, SKV)).astype(np.float32)
        mb = Buffer("in3", F32, m.size, "input", 3)
        mexpr = Load(F32, Access(mb, 0, (0, 0, SKV, 1)))
        s = s + m
    elif mask == "bool":
        m = rng.random((SQ, SKV)) > 0.3
        m[:, 0] = True   # no fully masked row
        mb = Buffer("in3", dtype("bool"), m.size, "input", 3)
        mexpr = Load(dtype("bool"), Access(mb, 0, (0, 0, SKV, 1)))
        s = np.where(m, s, -np.inf)
    if mask:
        ins.append(m)
        bufs.append(mb)
    if causal:
        s = np.where(np.arange(SKV)[None, :] <= np.arange(SQ)[:, None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = np.einsum("bhij,bhjd->bhid", p, v).astype(np.float32)
    kern = Attention(batch=(B, H), sq=SQ, skv=SKV, d=D, dv=DV,
                     q=Access(bufs[0], 0, cstrides((B, H, SQ, D))), k=Access(bufs[1], 0, cstrides((B, H, SKV, D))),
                     v=Access(bufs[2], 0, cstrides((B, H, SKV, DV))), out=Access(out, 0, cstrides((B, H, SQ, DV))),
                     scale=float(scale), causal=causal, mask=mexpr)
    return _program("attention", [kern], bufs, [out], [(B, H, SQ, DV)]), ins, [want]


def gemm_program(dt="f32", M=40, N=24, K=20, batch=(), trans_b=True, alpha=1.0, bias=True, seed=0):
    """out = relu(alpha * a @ b + bias) with b read transposed (strides) when trans_b."""
    rng = np.random.default_rng(seed)
    d = dtype(dt)
    a = rng.standard_normal(tuple(batch) + (M, K)).astype(d.np)
    bmat = rng.standard_normal((N, K) if trans_b else (K, N)).astype(d.np)
    c = rng.standard_normal((N,)).astype(np.float32)
    ab = Buffer("in0", d, a.size, "input", 0)
    bb = Buffer("w0", d, bmat.size, "const", 0)
    cb = Buffer("w1", F32, c.size, "const", 1)
    out = Buffer("out0", F32, int(np.prod(batch, dtype=np.int64)) * M * N, "output", 0)
    nb = len(batch)
    bacc = Access(bb, 0, (0,) * nb + ((1, K) if trans_b else (N, 1)))
    epi = None
    if bias:
        epi = op("relu", F32, op("add", F32, Arg(F32, "acc"), Load(F32, Access(cb, 0, (0,) * nb + (0, 1)))))
    g = Gemm(batch=tuple(batch), m=M, n=N, k=K, a=Access(ab, 0, cstrides(tuple(batch) + (M, K))), b=bacc,
             out=Access(out, 0, cstrides(tuple(batch) + (M, N))), alpha=alpha, epilogue=epi)
    bm = bmat.T if trans_b else bmat
    want = alpha * (a.astype(np.float32) @ bm.astype(np.float32))
    if bias:
        want = np.maximum(want + c, 0)
    return (_program("gemm", [g], [ab], [out], [tuple(batch) + (M, N)], [bb, cb], [bmat, c]), [a],
            [want.astype(np.float32)])
