"""Differential tests of the cpu backend's f32 gemm (weights packed in 64-column panels, ragged last panels through
the vector kernel) and conv (im2col in the panel layout, epilogue fused per task) against the reference evaluator.

Several cases share one graph (one C build) to keep the file fast."""
from __future__ import annotations

import numpy as np
import pytest

from cpu_util import check, graph

F = "f32"
NS = (1, 15, 17, 49, 63, 65, 196)
MS = (1, 5, 32)


def W(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32) * 0.3


@pytest.mark.parametrize("psw", ["16", "64"])
@pytest.mark.parametrize("m", MS)
def test_packed_weight_ragged_n(m, psw, monkeypatch):
    """x[m, K] @ W[K, N] for every ragged N in one graph; K not a multiple of the 256 K-block for some; weights
    packed in 16-column sub-panels per K block (what 16-register targets get) and in plain 64-wide rows (AVX-512),
    whichever this machine's kernel reads them with."""
    monkeypatch.setenv("NNFUSE_F32_SUBPANEL", psw)
    rng = np.random.default_rng(m)
    ks = {1: 7, 15: 300, 17: 64, 49: 513, 63: 33, 65: 257, 196: 130}

    def fn(b, *xs):
        return [b.matmul(x, b.const(W(rng, ks[n], n), f"w{n}")) for x, n in zip(xs, NS)]
    g = graph(fn, *[((m, ks[n]), F) for n in NS])
    exe = check(g, [rng.standard_normal((m, ks[n])).astype(np.float32) for n in NS], rtol=1e-4, atol=1e-4)
    src = exe.source()
    assert src.count("nnf_gemm_pk(_m1 - _m0") >= 1   # really the packed path
    assert all(k.meta.get("f32_packed") == int(psw) for k in exe.program.kernels if k.kind == "gemm")


def test_packed_weight_transposed_shared_batched_alpha_epilogue():
    """Transposed weight view (x @ W^T), one weight read by two gemms (packed once), batched A with a shared
    weight, gemm alpha, and a fused bias + gelu + residual epilogue."""
    rng = np.random.default_rng(1)
    wt = W(rng, 49, 40)                 # [N, K]: matmul with its transpose
    w2 = W(rng, 40, 65)
    bias = W(rng, 65)

    def fn(b, x, y, z):
        t = b.transpose(b.const(wt, "wt"), perm=[1, 0])
        o1 = b.matmul(x, t)                                           # [5, 49]
        h = b.gemm(y, b.const(w2, "w2"), alpha=0.5)                   # alpha
        o2 = b.add(b.gelu(b.add(h, b.const(bias, "bias"))), b.matmul(y, b.const(w2, "w2")))   # residual
        o3 = b.matmul(z, b.const(w2, "w2"))                           # batched [3, 17, 40] @ [40, 65]
        return [o1, o2, o3]
    g = graph(fn, ((5, 40), F), ((17, 40), F), ((3, 17, 40), F))
    xs = [rng.standard_normal(s).astype(np.float32) for s in [(5, 40), (17, 40), (3, 17, 40)]]
    exe = check(g, xs, rtol=1e-4, atol=1e-4)
    assert sum(1 for k in exe.program.kernels if k.meta.get("f32_packed")) >= 3


def test_runtime_b_ragged_and_transposed_a():
    """Both operands computed at run time (no packing at compile time): the ragged last panel is copied into a
    zero-padded block per K step; A transposed."""
    rng = np.random.default_rng(2)

    def fn(b, a, bb, at):
        return [b.matmul(a, bb), b.matmul(b.transpose(at, perm=[1, 0]), bb)]
    shapes = [((32, 300), F), ((300, 49), F), ((300, 32), F)]
    g = graph(fn, *shapes)
    check(g, [rng.standard_normal(s).astype(np.float32) for s, _ in shapes], rtol=1e-4, atol=1e-4)


def _conv_graph(rng, cases, shape):
    """cases: (weight shape, kwargs, bias?, relu?, residual?) convs of one input, each output checked."""
    def fn(b, x):
        outs = []
        for ws, kw, bias, relu, res in cases:
            args = [x, b.const(W(rng, *ws), "w")] + ([b.const(W(rng, ws[0]), "b")] if bias else [])
            y = b.conv(*args, **kw)
            if res:
                y = b.add(y, b.conv(x, b.const(W(rng, *ws), "w2"), **kw))   # residual: another conv's output
            outs.append(b.relu(y) if relu else y)
        return outs
    return graph(fn, (shape, F))


def test_convs_resnet_like():
    """1x1 s1 / s2, 3x3 s1 / s2 pad 1, 7x7 s2 pad 3 with bias + relu + residual on ragged spatial sizes
    (7x7 = 49, 14x14 = 196 output positions; 5x5 = 25)."""
    rng = np.random.default_rng(3)
    cases = [((24, 16, 1, 1), {}, True, True, True),
             ((20, 16, 1, 1), {"strides": [2, 2]}, True, False, False),
             ((13, 16, 3, 3), {"pads": [1, 1, 1, 1]}, True, True, True),
             ((70, 16, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}, False, True, False),
             ((8, 16, 7, 7), {"pads": [3, 3, 3, 3], "strides": [2, 2]}, True, True, False),
             # 64 / 128 output channels fill the panels better than the positions: rows = positions (transposed)
             ((64, 16, 3, 3), {"pads": [1, 1, 1, 1]}, True, True, True),
             ((128, 16, 1, 1), {}, True, True, True),
             ((64, 16, 1, 1), {"strides": [2, 2]}, False, False, False),
             # rows = positions with a dilated tap, and asymmetric pads at stride 2 (the im2col by output rows)
             ((64, 16, 3, 3), {"pads": [2, 2, 2, 2], "dilations": [2, 2]}, True, False, False),
             ((64, 16, 3, 3), {"pads": [0, 1, 2, 0], "strides": [2, 2]}, False, True, False)]
    for hw in (7, 14, 9):
        g = _conv_graph(rng, cases, (1, 16, hw, hw))
        exe = check(g, [rng.standard_normal((1, 16, hw, hw)).astype(np.float32)], rtol=1e-4, atol=1e-4)
        kinds = [k.meta.get("f32_rows_are_positions", False) for k in exe.program.kernels if k.kind == "conv"]
        assert any(kinds) and not all(kinds)   # both orientations ran


def test_direct_convs():
    """Stride-1 2-D convs on wide images run directly from a zero-padded input copy (no im2col): pad 1, dilation 2,
    asymmetric pads and a 5x3 kernel, no padding at all (the input read in place), groups, two images, output
    channels over several 64-channel panels with a ragged last one; bias + relu + residual epilogues."""
    rng = np.random.default_rng(8)
    cases = [((16, 6, 3, 3), {"pads": [1, 1, 1, 1]}, True, True, True),
             ((70, 6, 3, 3), {"pads": [2, 2, 2, 2], "dilations": [2, 2]}, True, True, False),
             ((9, 6, 5, 3), {"pads": [0, 1, 2, 0]}, True, False, False),
             ((12, 6, 3, 3), {}, False, True, False),
             ((12, 3, 3, 3), {"groups": 2, "pads": [1, 1, 1, 1]}, True, True, True)]
    g = _conv_graph(rng, cases, (2, 6, 19, 40))
    exe = check(g, [rng.standard_normal((2, 6, 19, 40)).astype(np.float32)], rtol=1e-4, atol=1e-4)
    assert sum(1 for k in exe.program.kernels if k.meta.get("f32_direct")) >= 5   # every case took the direct form


def test_panel_im2col_convs(monkeypatch):
    """Large-image 2-D convs take the per-panel im2col (each task packs its own 64 positions): padded, strided,
    dilated, asymmetric pads, grouped, two images; output rows split across panels (23 wide) and a ragged last
    panel; bias + relu + residual epilogues. (Stride-1 convs on wide images run direct by default: off here.)"""
    monkeypatch.setenv("NNFUSE_CONV_DIRECT", "0")
    rng = np.random.default_rng(6)
    cases = [((16, 8, 3, 3), {"pads": [1, 1, 1, 1]}, True, True, True),
             ((12, 8, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}, True, True, False),
             ((10, 8, 3, 3), {"dilations": [2, 2], "pads": [2, 2, 2, 2]}, False, True, False),
             ((9, 8, 5, 3), {"pads": [0, 1, 2, 0]}, True, False, False),
             ((12, 4, 3, 3), {"groups": 2, "pads": [1, 1, 1, 1]}, True, True, False),
             ((8, 8, 7, 7), {"pads": [3, 3, 3, 3], "strides": [2, 2]}, True, True, False)]
    g = _conv_graph(rng, cases, (2, 8, 21, 23))
    exe = check(g, [rng.standard_normal((2, 8, 21, 23)).astype(np.float32)], rtol=1e-4, atol=1e-4)
    assert exe.source().count("runs of one output row") >= 4   # really the per-panel path
    # output rows that start in the last columns of a panel while the left padding zone is wider than that run
    # (pad >= 2 at stride 1, pad 3 at stride 2): the zero fill must stop at the run's end (it once spilled into
    # the next im2col row, and past the scratch on the last one)
    for shape, cases in [((1, 3, 33, 33), [((8, 3, 7, 7), {"pads": [3, 3, 3, 3], "strides": [2, 2]}, True, True, False)]),
                         ((1, 4, 67, 67), [((8, 4, 5, 5), {"pads": [2, 2, 2, 2]}, True, False, False),
                                           ((8, 4, 3, 3), {"pads": [2, 2, 2, 2], "dilations": [2, 2]}, False, True, False)]),
                         ((1, 4, 17, 17), [((8, 4, 1, 1), {"pads": [2, 2, 2, 2]}, True, False, False)])]:
        g = _conv_graph(rng, cases, shape)
        exe = check(g, [rng.standard_normal(shape).astype(np.float32)], rtol=1e-4, atol=1e-4)
        assert "runs of one output row" in exe.source()


def test_convs_grouped_depthwise_dilated_batched():
    rng = np.random.default_rng(4)
    cases = [((12, 4, 3, 3), {"groups": 3, "pads": [1, 1, 1, 1]}, True, True, False),       # grouped
             ((12, 1, 3, 3), {"groups": 12, "pads": [1, 1, 1, 1], "strides": [2, 2]}, True, True, True),   # depthwise
             ((6, 12, 3, 3), {"dilations": [2, 2], "pads": [2, 2, 2, 2]}, False, True, False),  # dilated
             ((6, 12, 3, 3), {"pads": [0, 1, 2, 0]}, True, False, False),                      # asymmetric pads
             ((200, 12, 1, 1), {}, True, True, True),                                           # many out channels
             ((128, 6, 3, 3), {"groups": 2, "pads": [1, 1, 1, 1]}, True, True, True)]           # grouped, rows = positions
    g = _conv_graph(rng, cases, (2, 12, 10, 13))
    check(g, [rng.standard_normal((2, 12, 10, 13)).astype(np.float32)], rtol=1e-4, atol=1e-4)


def test_conv_1d_3d_and_transpose():
    rng = np.random.default_rng(5)

    def fn(b, x1, x3):
        return [b.relu(b.conv(x1, b.const(W(rng, 5, 3, 3), "w1"), b.const(W(rng, 5), "b1"), pads=[1, 1], dilations=[2])),
                b.conv(x3, b.const(W(rng, 4, 1, 2, 3, 3), "w3"), groups=2, strides=[1, 2, 2], pads=[0, 1, 1, 1, 0, 1]),
                b.conv_transpose(x1, b.const(W(rng, 3, 2, 3), "wt"), strides=[2]),
                # 64 channels over 70 / 3*3*4 positions: the rows-are-positions form in 1-D and 3-D
                b.relu(b.add(b.conv(x1, b.const(W(rng, 64, 3, 3), "w1t"), b.const(W(rng, 64), "b1t"), pads=[1, 1]),
                             b.conv(x1, b.const(W(rng, 64, 3, 1), "w1r")))),
                b.conv(x3, b.const(W(rng, 64, 2, 2, 3, 3), "w3t"), b.const(W(rng, 64), "b3t"), strides=[1, 2, 2], pads=[0, 1, 1, 1, 0, 1])]
    g = graph(fn, ((2, 3, 70), F), ((1, 2, 3, 6, 7), F))
    exe = check(g, [rng.standard_normal((2, 3, 70)).astype(np.float32), rng.standard_normal((1, 2, 3, 6, 7)).astype(np.float32)],
          rtol=1e-4, atol=1e-4)
    assert sum(1 for k in exe.program.kernels if k.meta.get("f32_rows_are_positions")) >= 3


def test_conv_against_torch_resnet_block():
    """A bottleneck block (BN folded, residual, relu) from torch, compared with torch eager."""
    torch = pytest.importorskip("torch")
    import nnfuse

    class Block(torch.nn.Module):
        def __init__(s):
            super().__init__()
            nn = torch.nn
            s.a = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                nn.Conv2d(16, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                                nn.Conv2d(16, 64, 1, bias=False), nn.BatchNorm2d(64))
            s.down = nn.Sequential(nn.Conv2d(32, 64, 1, 2, bias=False), nn.BatchNorm2d(64))

        def forward(s, x):
            return torch.relu(s.a(x) + s.down(x))
    torch.manual_seed(0)
    m = Block().eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
    x = torch.randn(1, 32, 14, 14)
    cm = nnfuse.compile(m, [x], backend="cpu")
    got = cm(x.numpy())
    got = got[0] if isinstance(got, (list, tuple)) else got
    np.testing.assert_allclose(np.asarray(got), m(x).detach().numpy(), rtol=1e-4, atol=1e-4)
