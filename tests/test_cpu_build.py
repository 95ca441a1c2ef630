"""Build cache (atomic, corruption-proof, concurrent), hostile model names, and the missing-compiler error."""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from cpu_util import check, graph
from nnfuse.ir import Builder, NnfuseError


def _model(scale=2.0):
    return graph(lambda b, x: b.mul(b.relu(x), b.const(np.full((3,), scale, np.float32), "s")), ((2, 3), "f32"))


def test_second_compile_hits_cache_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("NNFUSE_CACHE_DIR", str(tmp_path))
    from nnfuse.backends import cpu
    e1 = cpu.compile_graph(_model(1.5))
    assert not e1.stats()["cache_hit"]
    t0 = time.perf_counter()
    e2 = cpu.compile_graph(_model(1.5))
    assert e2.stats()["cache_hit"] and time.perf_counter() - t0 < 1.0
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(e2([x])[0], np.maximum(x, 0) * 1.5, rtol=1e-6)
    assert not glob.glob(str(tmp_path / ".tmp-*")) and not glob.glob(str(tmp_path / ".build-*"))


def test_corrupted_cache_entry_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("NNFUSE_CACHE_DIR", str(tmp_path))
    from nnfuse.backends import cpu
    e1 = cpu.compile_graph(_model(2.5))
    so = e1.lib_path
    with open(so, "rb") as f:           # a truncated library on disk (replaced, not rewritten: it is mapped here)
        head = f.read(100)
    with open(so + ".bad", "wb") as f:
        f.write(head)
    os.replace(so + ".bad", so)
    e2 = cpu.compile_graph(_model(2.5))
    assert not e2.stats()["cache_hit"]
    x = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(e2([x])[0], np.full((2, 3), 2.5, np.float32))
    with open(so + ".sha256", "w") as f:  # a bad checksum file also forces a rebuild
        f.write("0" * 64)
    e3 = cpu.compile_graph(_model(2.5))
    assert not e3.stats()["cache_hit"]
    np.testing.assert_allclose(e3([x])[0], np.full((2, 3), 2.5, np.float32))


_CHILD = r"""
import sys, numpy as np
sys.path.insert(0, sys.argv[2])
from cpu_util import graph
from nnfuse.backends import cpu
g = graph(lambda b, x: b.add(b.tanh(x), b.const(np.full((4,), float(sys.argv[1]), np.float32), "c")), ((4, 4), "f32"))
exe = cpu.compile_graph(g)
x = np.zeros((4, 4), np.float32)
assert np.allclose(exe([x])[0], float(sys.argv[1])), exe([x])[0]
print("ok", exe.stats()["cache_hit"])
"""


def test_two_processes_compile_same_model_concurrently(tmp_path):
    env = dict(os.environ, NNFUSE_CACHE_DIR=str(tmp_path))
    here = os.path.dirname(__file__)
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, "0.25", here], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0 and o.startswith("ok"), e[-2000:]
    assert len(glob.glob(str(tmp_path / "nnf-*.so"))) == 1
    r = subprocess.run([sys.executable, "-c", _CHILD, "0.25", here], env=env, capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "ok True", r.stderr[-2000:]


def test_hostile_names_never_reach_the_c_source(tmp_path, monkeypatch):
    monkeypatch.setenv("NNFUSE_CACHE_DIR", str(tmp_path))
    from nnfuse.backends import cpu
    evil = 'x"); system("touch PWNED"); /*\n*/ int main'
    b = Builder('g"; int main(){}//')
    x = b.input(evil, [2, 3])
    w = b.const(np.ones((2, 3), np.float32), "w\\n*/ #include </etc/passwd>")
    y = b.add(b.relu(x), w)
    g = b.output(y, names=["return", "*/"])
    exe = check(g, [np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)])
    src = exe.source()
    for bad in ("system", "PWNED", "passwd", "int main", "return\"", evil):
        assert bad not in src
    text = str(exe.program)        # the printed kernel IR keeps names only as sanitized comments
    assert "\n*/" not in text and "system(" not in text


def test_missing_compiler_suggests_reference(monkeypatch, tmp_path):
    monkeypatch.setenv("NNFUSE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-compiler-xyz")
    monkeypatch.setenv("PATH", str(tmp_path))
    from nnfuse.backends import cpu
    with pytest.raises(NnfuseError, match="reference"):
        cpu.compile_graph(_model(3.5))


def test_unsupported_ops_are_listed(tmp_path, monkeypatch):
    from nnfuse.passes.lower import LOWERINGS, lower
    monkeypatch.setitem(LOWERINGS, "cumsum", None)
    monkeypatch.delitem(LOWERINGS, "cumsum")
    g = graph(lambda b, x: [b.cumsum(x, axis=0), b.relu(x)], ((3,), "f32"))
    with pytest.raises(NnfuseError, match="not supported on cpu backend: ops cumsum"):
        lower(g)


def test_concurrent_calls_from_threads_are_correct():
    """ctypes drops the GIL during a run; one executable shared by threads must not mix their arenas."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    import nnfuse
    # without the executable's lock, overlapping runs on this model deadlocked the shared thread pool
    m = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256), torch.nn.GELU(),
                            torch.nn.Linear(256, 256)).eval()
    xs = [torch.randn(64, 256) for _ in range(8)]
    cm = nnfuse.compile(m, (xs[0],), backend="cpu")
    with torch.inference_mode():
        want = [m(x).numpy() for x in xs]
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda x: np.asarray(cm(x)), xs * 8))
    for i, g in enumerate(got):
        np.testing.assert_allclose(g, want[i % len(xs)], rtol=1e-4, atol=1e-5)


def test_two_executables_of_one_library_keep_their_own_thread_counts():
    """Two compiles of the same model load the same cached library (dlopen maps a path once), so they share its
    thread pool and scratch: each call sets its own thread count, and calls from two threads take turns."""
    from concurrent.futures import ThreadPoolExecutor
    from nnfuse.backends import cpu
    rng = np.random.default_rng(7)
    w = rng.standard_normal((128, 384)).astype(np.float32)
    g = graph(lambda b, x: b.relu(b.matmul(x, b.const(w, "w"))), ((96, 128), "f32"))
    one, two = cpu.compile_graph(g, threads=1), cpu.compile_graph(g, threads=2)
    assert one.lib_path == two.lib_path
    xs = [rng.standard_normal((96, 128)).astype(np.float32) for _ in range(6)]
    want = [np.maximum(x @ w, 0) for x in xs]
    for exe, n in ((one, 1), (two, 2), (one, 1)):
        exe([xs[0]])
        assert exe.lib.nnf_get_threads() == n
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda i: (one if i % 2 else two)([xs[i % 6]])[0], range(48)))
    for i, y in enumerate(got):
        np.testing.assert_allclose(y, want[i % 6], rtol=1e-4, atol=1e-4)


def _kernel_sources() -> dict:
    """Generated C for each kernel family: f32 gemm + attention + conv + row norms, bf16 gemm and conv, W8A8 and
    int4 weight-only gemms."""
    import torch
    import nnfuse

    class Net(torch.nn.Module):
        def __init__(s):
            super().__init__()
            s.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            s.att = torch.nn.MultiheadAttention(64, 4, batch_first=True)
            s.fc = torch.nn.Linear(64, 96)
            s.norm = torch.nn.LayerNorm(96)

        def forward(s, img, x):
            y = s.att(x, x, x, need_weights=False)[0]
            return s.conv(img).sum(), s.norm(torch.nn.functional.gelu(s.fc(y)))
    torch.manual_seed(0)
    args = (torch.randn(1, 3, 16, 16), torch.randn(2, 24, 64))
    lin = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.GELU(), torch.nn.Linear(256, 64)).eval()
    xl = (torch.randn(8, 128),)
    return {"f32": nnfuse.compile(Net().eval(), args, backend="cpu").source(),
            "bf16": nnfuse.compile(Net().eval(), args, backend="cpu", precision="bf16").source(),
            "w8a8": nnfuse.compile(lin, xl, backend="cpu", quantize="w8a8").source(),
            "int4": nnfuse.compile(lin, xl, backend="cpu", quantize="int4_g32").source()}


@pytest.mark.parametrize("march", ["haswell", "skylake-avx512"])
def test_kernels_use_vectors_the_target_has(tmp_path, march):
    """No kernel uses a vector wider than the target's registers: gcc lowers such a vector piecewise (through the
    stack), which made the whole cpu backend ~20x slower on an AVX2-only machine. -Wvector-operation-performance
    names every such operation; AVX2 (16 ymm registers) and AVX-512 must both compile without one."""
    import shutil
    cc = shutil.which("gcc")
    if cc is None:
        pytest.skip("no gcc to compile-test other targets")
    for name, src in _kernel_sources().items():
        path = tmp_path / f"{name}.c"
        path.write_text(src)
        r = subprocess.run([cc, "-O2", f"-march={march}", "-fopenmp", "-fPIC", "-std=gnu11", "-fno-math-errno",
                            "-Wvector-operation-performance", "-c", str(path), "-o", str(tmp_path / f"{name}.o")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        piecewise = [ln for ln in r.stderr.splitlines() if "Wvector-operation-performance" in ln]
        assert not piecewise, f"{name} on {march}:\n" + "\n".join(piecewise[:10])


def test_kernel_paths_report_what_the_target_has():
    """stats()["kernel_paths"] names the path each kernel family compiled to, consistent with the compiler's macros."""
    from nnfuse.backends import cpu
    from nnfuse.backends.cpu.build import find_compiler, target_macros
    exe = cpu.compile_graph(_model(3.5))
    paths = exe.stats()["kernel_paths"]
    macros = target_macros(find_compiler())
    want = "avx512" if "__AVX512F__" in macros else "avx2" if "__AVX2__" in macros else ""
    assert paths["f32"].startswith(want) and "int8" not in paths   # no quantized kernels in this model


POOL_CHECK = r"""
static _Atomic int nnf_hits[4096];
static void nnf_mark(void* ctx, int64_t lo, int64_t hi) {
  (void)ctx;
  for (int64_t i = lo; i < hi; i++) atomic_fetch_add(&nnf_hits[i], 1);
}
/* every index of [0, total) exactly once, for chunkings that divide and do not divide the total */
int pool_check(int threads) {
  nnf_set_threads(threads);
  int bad = 0;
  const int64_t totals[] = {1, 2, 3, 7, 64, 100, 1000, 4096};
  for (int t = 0; t < 8; t++) for (int64_t chunk = 1; chunk <= 17; chunk += 4) {
    for (int i = 0; i < 4096; i++) atomic_store(&nnf_hits[i], 0);
    nnf_parallel(nnf_mark, 0, totals[t], chunk);
    for (int64_t i = 0; i < 4096; i++) bad += atomic_load(&nnf_hits[i]) != (i < totals[t]);
  }
  return bad;
}
"""


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_pool_runs_every_chunk_once(threads):
    """The pool's shares (each thread its own contiguous range first, then the others'): every index of every job
    exactly once, for totals and chunk sizes that do and do not divide into the shares, with more threads than
    cores too (late workers find their share partly taken by the others)."""
    import ctypes
    from nnfuse.backends.cpu import build
    from nnfuse.backends.cpu.codegen import ABI_VERSION, PRELUDE
    path, _, _ = build(PRELUDE % {"abi": ABI_VERSION} + POOL_CHECK)
    lib = ctypes.CDLL(path)
    assert lib.pool_check(threads) == 0


TBLOCK_CHECK = r"""
void tblock(const float* s, int64_t lds, int ni, int nj, float* t, int64_t ldt) { nnf_tblock16(s, lds, ni, nj, t, ldt); }
void tblock_bf16(const float* s, int64_t lds, int ni, int nj, uint16_t* t, int64_t ldt) {
  nnf_tblock16_bf16(s, lds, ni, nj, t, ldt);
}
void to_bf16(const float* s, int64_t n, uint16_t* t) { for (int64_t i = 0; i < n; i++) t[i] = nnf_f_to_bf16(s[i]); }
"""


@pytest.mark.parametrize("isa", ["native", "no-avx512"])
def test_block_transpose_every_partial_block(isa):
    """nnf_tblock16 / nnf_tblock16_bf16 (a conv's NCHW <-> positions x channels changes, attention's k^T): every
    partial block (1..16 lanes x 1..16 rows) against numpy, the bf16 form rounding exactly as the scalar
    nnf_f_to_bf16 (ties, NaN, infinities, subnormals, -0), and nothing written outside the block; the AVX-512
    code and the fallback (8 x 8 vector shuffles for a full block)."""
    import ctypes
    from nnfuse.backends.cpu.build import FLAGS, build
    from nnfuse.backends.cpu.codegen import ABI_VERSION, PRELUDE
    flags = list(FLAGS) + (["-mno-avx512f"] if isa != "native" else [])
    lib = ctypes.CDLL(build(PRELUDE % {"abi": ABI_VERSION} + TBLOCK_CHECK, flags)[0])
    P = ctypes.c_void_p
    rng = np.random.default_rng(3)
    s = rng.standard_normal((20, 24)).astype(np.float32)
    bits = np.array([0x7fc00001, 0x7f800001, 0xff810000, 0x7f800000, 0xff800000, 0x3f808000, 0x3f818000, 0x00000001, 0x80000000, 0x7f7fffff],
                    np.uint32)
    s.reshape(-1)[::37][:len(bits)] = bits.view(np.float32)
    scal = np.empty(s.size, np.uint16)
    lib.to_bf16(P(s.ctypes.data), ctypes.c_int64(s.size), P(scal.ctypes.data))
    scal = scal.reshape(s.shape)
    for ni in range(1, 17):
        for nj in range(1, 17):
            t = np.full((16, 20), -7.0, np.float32)
            lib.tblock(P(s[1:].ctypes.data), ctypes.c_int64(24), ni, nj, P(t.ctypes.data), ctypes.c_int64(20))
            np.testing.assert_array_equal(t[:ni, :nj], s[1:1 + nj, :ni].T)
            assert (t[ni:] == -7).all() and (t[:, nj:] == -7).all()
            tb = np.full((16, 20), 0xAAAA, np.uint16)
            lib.tblock_bf16(P(s[1:].ctypes.data), ctypes.c_int64(24), ni, nj, P(tb.ctypes.data), ctypes.c_int64(20))
            np.testing.assert_array_equal(tb[:ni, :nj], scal[1:1 + nj, :ni].T)
            assert (tb[ni:] == 0xAAAA).all() and (tb[:, nj:] == 0xAAAA).all()
