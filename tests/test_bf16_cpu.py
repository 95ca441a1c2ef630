"""bf16 kernels of the cpu backend (backends/cpu/bf16.py) against the reference backend, and path agreement."""
import shutil
import subprocess
import warnings

import numpy as np
import pytest

import nnfuse
from nnfuse.backends.cpu import CpuExecutable, bf16 as cbf16, build
from nnfuse.ir import Builder, evaluate
from nnfuse.ir.kernel import verify_program

rng = np.random.default_rng(1)


def linear_graph(m, k, n, batch=(), act="gelu"):
    b = Builder("lin")
    x = b.input("x", list(batch) + [m, k])
    w = b.const((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32), "w")
    bias = b.const(rng.standard_normal(n).astype(np.float32), "bias")
    h = b.op(act, b.op("add", b.op("matmul", x, w), bias))
    w2 = b.const((rng.standard_normal((n, k)) / np.sqrt(n)).astype(np.float32), "w2")
    return b.output(b.op("add", b.op("matmul", h, w2), x))   # residual epilogue, f32


def relerr(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize("m,k,n,batch", [(1, 64, 64, ()), (7, 33, 100, ()), (13, 130, 200, ()), (5, 256, 384, (2,)),
                                         (32, 300, 129, (1,)), (200, 97, 200, ())])   # the last: 3 x 4 pool tiles, ragged
def test_bf16_gemm_matches_reference(m, k, n, batch):
    g = linear_graph(m, k, n, batch)
    x = rng.standard_normal(tuple(batch) + (m, k)).astype(np.float32)
    f32 = evaluate(g, [x])[0]
    ref16 = nnfuse.compile(g, [x], backend="reference", precision="bf16")
    cpu16 = nnfuse.compile(g, [x], backend="cpu", precision="bf16")
    assert sum(bool(kk.meta.get("bf16_packed")) for kk in cpu16.program.kernels) == 2   # both gemms on the bf16 kernel
    verify_program(cpu16.program)   # the folded epilogues and the arena placed again still obey the kernel IR rules
    got = cpu16(x)
    # same policy, same rounding points: only the f32 summation order differs from the reference backend
    np.testing.assert_allclose(got, ref16(x), rtol=2e-3, atol=2e-3 * np.abs(f32).max())
    assert relerr(got, f32) < 2e-2
    st = cpu16.stats()
    assert st["bf16_path"] in ("amx-bf16", "avx512bf16", "widening")
    assert st["accuracy"]["max_rel_err"] < 2e-2 and st["accuracy"]["cosine"] > 0.999


def test_conv_and_attention_take_the_policy():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(s):
            super().__init__()
            s.c = torch.nn.Conv2d(3, 16, 3, padding=1)                           # RGB stem: W @ im2col
            s.c2 = torch.nn.Conv2d(16, 64, 3, stride=2, padding=1, bias=False)  # strided, padded: NHWC im2col rows
            s.c3 = torch.nn.Conv2d(64, 16, 1)                                    # 1x1: W @ x
            s.att = torch.nn.MultiheadAttention(16, 2, batch_first=True)
            s.fc = torch.nn.Linear(16, 10)

        def forward(s, x):
            h = torch.relu(s.c(x))
            h = (h[:, :, ::2, ::2] + s.c3(torch.relu(s.c2(h)))).flatten(2)   # [1, 16, 16]
            a, _ = s.att(h, h, h, need_weights=False)
            return s.fc(a + h)
    m = Net().eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        want = m(x).numpy()
    cm = nnfuse.compile(m, (x,), backend="cpu", precision="bf16")
    got = np.asarray(cm(x))
    convs = [k for k in cm.program.kernels if k.kind == "conv"]
    assert len(convs) == 3 and all(k.meta.get("bf16_packed") for k in convs)   # all on the bf16 conv path
    assert sorted(k.meta["bf16_rows_are_positions"] for k in convs) == [False, False, True]   # both orientations
    assert 0 < relerr(got, want) < 2e-2
    ref = nnfuse.compile(m, (x,), backend="reference", precision="bf16")
    np.testing.assert_allclose(got, np.asarray(ref(x)), rtol=2e-3, atol=2e-3 * np.abs(want).max())


def _variant(exe, define: str) -> CpuExecutable:
    src = f"#define {define} 1\n" + exe.source()
    path, hit, secs = build(src)
    return CpuExecutable(exe.program, src, path, hit, secs, exe.threads)


def _lin_exe():
    g = linear_graph(11, 70, 150)
    x = rng.standard_normal((11, 70)).astype(np.float32)
    return nnfuse.compile(g, [x], backend="cpu", precision="bf16", threads=2), x


def test_avx512bf16_and_widening_paths_agree():
    cm, x = _lin_exe()
    if not cbf16.cpu_bf16_features().get("avx512_bf16"):
        pytest.skip("this CPU has no AVX512_BF16: only the widening path can run here")
    assert cm.stats()["bf16_path"] in ("avx512bf16", "amx-bf16")
    wide = _variant(cm.executable, "NNF_NO_AVX512BF16")
    assert _path(wide) == "widening"
    a, b = cm.executable([x])[0], wide([x])[0]
    # both compute exact bf16 products summed in f32: only the order of the f32 sums differs
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(a).max())


def test_amx_path_agrees_or_is_skipped():
    cm, x = _lin_exe()
    if not cbf16.cpu_bf16_features().get("amx_bf16"):
        pytest.skip("this CPU has no AMX-BF16 (the AMX path is compile-tested in test_amx_path_compiles)")
    assert cm.stats()["bf16_path"] == "amx-bf16"
    other = _variant(cm.executable, "NNF_NO_AMX")
    a, b = cm.executable([x])[0], other([x])[0]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(a).max())


def test_amx_path_compiles(tmp_path):
    cc = shutil.which("gcc")
    cm, _ = _lin_exe()
    if cc is None or subprocess.run([cc, "-mamx-bf16", "-E", "-x", "c", "/dev/null"], capture_output=True).returncode:
        pytest.skip("no gcc with AMX support to compile-test the AMX path")
    src = tmp_path / "k.c"
    src.write_text(cm.source())
    r = subprocess.run([cc, "-march=sapphirerapids", "-dM", "-E", "-x", "c", "/dev/null"], capture_output=True, text=True)
    assert "__AMX_BF16__" in r.stdout   # so the source below really compiles the AMX path
    r = subprocess.run([cc, "-O1", "-march=sapphirerapids", "-fopenmp", "-fPIC", "-c", str(src), "-o", str(tmp_path / "k.o")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert b"amx-bf16" in (tmp_path / "k.o").read_bytes()   # nnf_bf16_path() reports the AMX path was compiled in


def _path(exe) -> str:
    import ctypes
    f = exe.lib.nnf_bf16_path
    f.restype = ctypes.c_char_p
    return f().decode()


def test_emulated_path_warns_once_naming_the_instruction_set(monkeypatch):
    cm, x = _lin_exe()
    wide = _variant(cm.executable, "NNF_NO_AVX512BF16")
    monkeypatch.setattr(cbf16, "_warned", False)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert cbf16.report_path(wide.lib, cm.program) == "widening"
        assert cbf16.report_path(wide.lib, cm.program) == "widening"
    msgs = [str(m.message) for m in w if issubclass(m.category, RuntimeWarning)]
    assert len(msgs) == 1 and "AVX512_BF16" in msgs[0] and "emulated" in msgs[0]


def test_packed_layout_roundtrip():
    import ml_dtypes
    w = rng.standard_normal((5, 70)).astype(ml_dtypes.bfloat16)
    p = cbf16.pack_b(w).reshape(2, 3, 64, 2)   # panels, k pairs, columns, (even k, odd k)
    assert p[0, 1, 3, 0] == w[2, 3] and p[0, 1, 3, 1] == w[3, 3] and p[1, 2, 5, 0] == w[4, 69]
    assert float(p[1, 2, 5, 1]) == 0.0 and float(p[1, 0, 10, 0]) == 0.0   # zero padding (odd K, N to 64)


def test_conv_paths_agree():
    torch = pytest.importorskip("torch")
    if not cbf16.cpu_bf16_features().get("avx512_bf16"):
        pytest.skip("this CPU has no AVX512_BF16: only the widening path can run here")
    torch.manual_seed(1)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                            torch.nn.Conv2d(16, 64, 3, stride=2, padding=1)).eval()
    x = torch.randn(1, 3, 12, 12)
    cm = nnfuse.compile(m, (x,), backend="cpu", precision="bf16", threads=2, accuracy_report=False)
    wide = _variant(cm.executable, "NNF_NO_AVX512BF16")
    xn = x.numpy()
    a, b = cm.executable([xn])[0], wide([xn])[0]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(a).max())


@pytest.mark.parametrize("bias", [True, False])   # bias: the pointwise is 2-D [m, n]; none: flattened to 1-D [m*n]
def test_pointwise_after_gemm_becomes_a_bf16_store(bias):
    b = Builder("ffn")
    x = b.input("x", [24, 64])
    h = b.op("matmul", x, b.const((rng.standard_normal((64, 256)) / 8).astype(np.float32), "w1"))
    if bias:
        h = b.op("add", h, b.const(rng.standard_normal(256).astype(np.float32), "b1"))
    h = b.op("gelu", h)
    g = b.output(b.op("matmul", h, b.const((rng.standard_normal((256, 64)) / 16).astype(np.float32), "w2")))
    xv = rng.standard_normal((24, 64)).astype(np.float32)
    cm = nnfuse.compile(g, [xv], backend="cpu", precision="bf16", accuracy_report=False)
    first = [k for k in cm.program.kernels if k.kind == "gemm"][0]
    # GELU and the rounding the second gemm reads run in the first gemm's epilogue, which stores bf16 directly
    assert first.meta.get("bf16_folded") and first.out.buf.dtype.name == "bf16"
    assert not any(k.kind == "pointwise" and any(a.buf is first.out.buf for a in k.writes()) for k in cm.program.kernels)
    verify_program(cm.program)
    ref = nnfuse.compile(g, [xv], backend="reference", precision="bf16")(xv)
    f32 = evaluate(g, [xv])[0]
    np.testing.assert_allclose(cm(xv), ref, rtol=2e-3, atol=2e-3 * np.abs(f32).max())


@pytest.mark.parametrize("m,n,k", [(1, 64, 64), (32, 4096, 1024), (32, 1024, 4096), (128, 1408, 512), (1024, 256, 256),
                                   (200, 200, 97), (3136, 64, 576)])
def test_pool_tiles(m, n, k):
    mb, nb = cbf16.tiles(m, n, k)
    assert nb % 64 == 0 and (mb == m or mb % 6 == 0) and mb >= 1
    tasks = -(-m // mb) * -(-n // nb)
    assert tasks == 1 if m * n * k < (1 << 17) else tasks >= min(16, -(-m // mb) * -(-n // 64))


def test_conv_weight_widened_at_run_time_reads_the_bf16_constant():
    """A conv whose weight a kernel of its own widens from a bf16 constant (the cast left outside the conv, here at
    O0) and whose input is bf16-rounded takes the bf16 kernel on the constant itself; the numbers do not change."""
    import ml_dtypes
    b = Builder("cw")
    x = b.input("x", [1, 16, 10, 10])
    wf = b.op("cast", b.const((rng.standard_normal((16, 16, 3, 3)) / 12).astype(ml_dtypes.bfloat16), "wq"), to="f32")
    rnd = lambda v: b.op("cast", b.op("cast", v, to="bf16"), to="f32")  # noqa: E731  (the policy's activation rounding)
    y = b.op("conv", rnd(x), wf, pads=[1, 1, 1, 1])
    g = b.output(b.op("conv", rnd(b.op("relu", y)), wf, pads=[1, 1, 1, 1]))
    xv = rng.standard_normal((1, 16, 10, 10)).astype(np.float32)
    cm = nnfuse.compile(g, [xv], backend="cpu", opt_level=0, accuracy_report=False)
    convs = [k for k in cm.program.kernels if k.kind == "conv"]
    assert len(convs) == 2 and all(k.meta.get("bf16_packed") for k in convs)
    verify_program(cm.program)
    ref = np.asarray(nnfuse.compile(g, [xv], backend="reference", opt_level=0)(xv))
    np.testing.assert_allclose(np.asarray(cm(xv)), ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())
    # without the rounding of its input the conv stays f32: the bf16 kernel would round x where the graph does not
    g2 = Builder("cw2")
    x2 = g2.input("x", [1, 16, 10, 10])
    w2 = g2.op("cast", g2.const((rng.standard_normal((16, 16, 3, 3)) / 12).astype(ml_dtypes.bfloat16), "wq"), to="f32")
    g2 = g2.output(g2.op("conv", x2, w2, pads=[1, 1, 1, 1]))
    cm2 = nnfuse.compile(g2, [xv], backend="cpu", opt_level=0, accuracy_report=False)
    assert not any(k.meta.get("bf16_packed") for k in cm2.program.kernels)


@pytest.mark.parametrize("cin,hw,pads,batch", [(16, 20, (1, 1, 1, 1), 2), (34, 24, (2, 1, 0, 2), 1)])
def test_direct_conv_matches_reference_and_paths_agree(cin, hw, pads, batch):
    """A stride-1 3x3 conv on a wide image reads the zero-padded NHWC copy in place (no im2col): against the
    reference with the same rounding, against the im2col form of the same conv, and widening vs dpbf16. Two images
    check that the border stays zero across images; the second case has uneven pads and k blocks that end inside
    a ky run (34 channels: 51 pairs per run)."""
    cout = 40
    b = Builder("direct")
    x = b.input("x", [batch, cin, hw, hw])
    w = b.const((rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(9 * cin)).astype(np.float32), "w")
    bias = b.const(rng.standard_normal((1, cout, 1, 1)).astype(np.float32), "bias")
    y = b.op("relu", b.op("add", b.op("conv", x, w, pads=list(pads)), bias))
    g = b.output(y)
    xs = rng.standard_normal((batch, cin, hw, hw)).astype(np.float32)
    cm = nnfuse.compile(g, [xs], backend="cpu", precision="bf16", threads=2, accuracy_report=False)
    conv = next(k for k in cm.program.kernels if k.kind == "conv")
    assert conv.meta.get("bf16_direct"), "expected the direct form for a stride-1 conv on a wide image"
    got = np.asarray(cm(xs))
    ref = np.asarray(nnfuse.compile(g, [xs], backend="reference", precision="bf16")(xs))
    np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())
    wide = _variant(cm.executable, "NNF_NO_AVX512BF16")
    np.testing.assert_allclose(wide([xs])[0], got, rtol=1e-4, atol=1e-4 * np.abs(got).max())
    kcp, offs = cbf16.direct_blocks(cin, 3, hw + pads[1] + pads[3], 9 * cin)
    assert all(kcp * i * 2 // (3 * cin) == (kcp * (i + 1) * 2 - 1) // (3 * cin) for i in range(len(offs)))  # inside one ky


def test_direct_conv_is_not_taken_where_it_does_not_apply():
    b = Builder("nodirect")
    x = b.input("x", [1, 16, 8, 8])
    w = b.const(rng.standard_normal((16, 16, 3, 3)).astype(np.float32), "w")
    g = b.output(b.op("conv", b.op("conv", x, w, pads=[1, 1, 1, 1], strides=[2, 2]), w, pads=[1, 1, 1, 1]))
    cm = nnfuse.compile(g, [np.zeros((1, 16, 8, 8), np.float32)], backend="cpu", precision="bf16", accuracy_report=False)
    convs = [k for k in cm.program.kernels if k.kind == "conv"]
    # strided; then 4x4 output with pad 1 on each side: 6 - 4 wastes 50 % of the virtual grid
    assert [bool(k.meta.get("bf16_direct")) for k in convs] == [False, False]


@pytest.mark.parametrize("half", ["bf16", "f16"])
def test_cast_to_half_inside_an_expression_rounds(half):
    """cast(cast(x, bf16/f16), f32) inside one pointwise kernel (no half-precision buffer in between) rounds as the
    reference does: the C computes half values in float, so the cast itself must round (it once was a no-op)."""
    b = Builder("rnd")
    x = b.input("x", [4, 1000])
    y = b.op("add", b.op("mul", b.op("cast", b.op("cast", x, to=half), to="f32"), b.const(np.float32(3.0), "three")),
             b.const(np.float32(1.0), "one"))
    g = b.output(y)
    xs = (rng.standard_normal((4, 1000)) * 10).astype(np.float32)
    got = np.asarray(nnfuse.compile(g, [xs], backend="cpu")(xs))
    want = np.asarray(nnfuse.compile(g, [xs], backend="reference")(xs))
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, xs * 3 + 1)   # the rounding is visible at these magnitudes


def test_bf16_conv_reads_the_unrounded_input_it_rounds_itself():
    """The policy rounds a conv's input (a kernel of its own when it cannot join the producer); the bf16 conv rounds
    while it builds its NHWC copy anyway, so that kernel is dropped and the conv reads the producer's buffer."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(2)
    m = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                            torch.nn.Conv2d(32, 32, 3, padding=1)).eval()
    x = torch.randn(1, 16, 24, 24)
    cm = nnfuse.compile(m, (x,), backend="cpu", precision="bf16", accuracy_report=False)
    p = cm.executable.program
    convs = [k for k in p.kernels if k.kind == "conv"]
    assert all(k.meta.get("bf16_packed") for k in convs)
    from nnfuse.backends.cpu.bf16_fold import rounding_source
    roundings = [k for k in p.kernels if k.kind == "pointwise" and any(rounding_source(k, a.buf) is not None for a, _ in k.stores)]
    assert not roundings
    ref = nnfuse.compile(m, (x,), backend="reference", precision="bf16")
    want = np.asarray(ref(x))
    np.testing.assert_allclose(np.asarray(cm(x)), want, rtol=2e-3, atol=2e-3 * np.abs(want).max())


def test_cast_to_fp8_inside_a_kernel_is_refused_not_skipped():
    """The cpu backend reads fp8 tensors but has no fp8 rounding in C: a fake-quant cast must fail clearly."""
    b = Builder("fq")
    x = b.input("x", [8, 8])
    g = b.output(b.op("mul", b.op("cast", b.op("cast", x, to="f8e4m3"), to="f32"), b.const(np.float32(2.0), "two")))
    with pytest.raises(Exception, match="f8e4m3.*not supported on the cpu backend"):
        nnfuse.compile(g, [np.ones((8, 8), np.float32)], backend="cpu")


@pytest.mark.parametrize("shape,kernel,stride,pad", [((2, 3, 75, 61), 7, 2, 3), ((1, 3, 70, 66), 5, 1, 2)])
def test_rgb_conv_panel_tasks_match_reference(shape, kernel, stride, pad):
    """The W @ im2col form (few input channels: an RGB stem) builds each task's im2col in its own scratch and
    writes the output in place: tasks of one and of four panels, runs of positions that cross output rows, a
    ragged last panel, two images; against the reference with the same rounding, and widening vs dpbf16."""
    cout = 20
    b = Builder("stem")
    x = b.input("x", list(shape))
    w = b.const((rng.standard_normal((cout, 3, kernel, kernel)) / kernel / 2).astype(np.float32), "w")
    bias = b.const(rng.standard_normal((1, cout, 1, 1)).astype(np.float32), "bias")
    g = b.output(b.op("relu", b.op("add", b.op("conv", x, w, pads=[pad] * 4, strides=[stride] * 2), bias)))
    xs = rng.standard_normal(shape).astype(np.float32)
    cm = nnfuse.compile(g, [xs], backend="cpu", precision="bf16", threads=2, accuracy_report=False)
    conv = next(k for k in cm.program.kernels if k.kind == "conv")
    assert conv.meta.get("bf16_packed") and not conv.meta.get("bf16_rows_are_positions")
    got = np.asarray(cm(xs))
    ref = np.asarray(nnfuse.compile(g, [xs], backend="reference", precision="bf16")(xs))
    np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())
    wide = _variant(cm.executable, "NNF_NO_AVX512BF16")
    np.testing.assert_allclose(wide([xs])[0], got, rtol=1e-4, atol=1e-4 * np.abs(got).max())


def test_conv_scratch_grows_only_outside_the_pool():
    """The bf16 convs' shared scratch (nnf_bf16_scratch: not per thread) may only grow in the kernel itself, before
    its tasks run: grown inside a task, two threads could both free and reallocate it (a double free on ResNet-50).
    Every size a task asks for must have been asked for by its kernel before the first hand-off to the pool."""
    import re
    torch = pytest.importorskip("torch")
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 7, stride=2, padding=3), torch.nn.ReLU(),
                            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.Conv2d(32, 64, 1, stride=2),
                            torch.nn.Conv2d(64, 64, 3, stride=2, padding=1)).eval()
    x = torch.randn(1, 3, 64, 64)
    cm = nnfuse.compile(m, (x,), backend="cpu", precision="bf16", threads=2, accuracy_report=False)
    src = cm.source()
    call = re.compile(r"nnf_bf16_scratch\((\d), (\d+)\)")
    checked = 0
    for fn in re.finditer(r"^static void (k\d+)\((.*?)^}", src, re.M | re.S):
        body = fn.group(0)
        head = body.split("nnf_parallel(", 1)[0]
        grown = {}
        for slot, size in call.findall(head):
            grown[slot] = max(grown.get(slot, 0), int(size))
        for h in re.finditer(rf"^static void {fn.group(1)}__b\d+\(.*?^}}", src, re.M | re.S):
            for slot, size in call.findall(h.group(0)):
                assert int(size) <= grown.get(slot, -1), (fn.group(1), slot, size, grown)
                checked += 1
    assert checked > 0
    ref = np.asarray(nnfuse.compile(m, (x,), backend="reference", precision="bf16")(x))
    np.testing.assert_allclose(np.asarray(cm(x)), ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())
