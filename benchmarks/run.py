"""nnfuse-cpu vs PyTorch eager vs torch.compile (inductor) vs onnxruntime, 2 threads, medians with warm-up.
OpenVINO (f32 and default precision) and nnfuse precision="bf16" columns come from openvino_peer.py.

usage: python benchmarks/run.py [WORKLOAD ...] [--no-inductor] [--threads N] [--markdown]
WORKLOAD: mlp llama gpt2 bert resnet50 gemm (default: all), or a path to an .onnx file.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
warnings.filterwarnings("ignore")


from nnfuse.timing import median_latency  # noqa: E402


def ort_session(path: str, threads: int):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def export_onnx(model, x, path: str) -> str:
    import torch
    errors = []
    for kw in (dict(dynamo=True), dict(dynamo=False, opset_version=17)):
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                torch.onnx.export(model, (x,), path, input_names=["x"], output_names=["y"], **kw)
            return path
        except Exception as e:  # noqa: BLE001
            errors.append(f"{type(e).__name__}: {str(e)[:120]}")
    raise RuntimeError("ONNX export failed: " + " | ".join(errors))


def cold_compile(model, args, **kw):
    """nnfuse.compile with an empty cache (what a first compile costs), then the warm-cache time."""
    import nnfuse
    old = os.environ.get("NNFUSE_CACHE_DIR")
    with tempfile.TemporaryDirectory() as d:
        os.environ["NNFUSE_CACHE_DIR"] = d
        try:
            t0 = time.perf_counter()
            cm = nnfuse.compile(model, args, backend="cpu", **kw)
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            nnfuse.compile(model, args, backend="cpu", **kw)
            warm = time.perf_counter() - t0
        finally:
            if old is None:
                os.environ.pop("NNFUSE_CACHE_DIR", None)
            else:
                os.environ["NNFUSE_CACHE_DIR"] = old
    return cm, cold, warm


def bench_torch(name: str, threads: int, inductor: bool, tmp: str) -> dict:
    import torch
    from workloads import torch_workload
    model, x = torch_workload(name)
    with torch.inference_mode():
        ref = model(x)
    path = export_onnx(model, x, os.path.join(tmp, name + ".onnx"))
    sess = ort_session(path, threads)
    xn = x.numpy()
    cm, cold, warm = cold_compile(model, (x,))
    with torch.inference_mode():
        got = cm(x)
    err = float((torch.as_tensor(got).float() - ref.float()).abs().max())
    row = {"name": name, "compile_s": cold, "recompile_s": warm, "err": err, "stats": cm.stats()}
    from openvino_peer import Peers   # OpenVINO f32 / default precision and nnfuse bf16 columns (issue 12)
    peers = Peers(path, threads, model, (x,))
    row.update(peers.info)
    if inductor:   # cold, like nnfuse's: a fresh inductor cache dir (FX graph, kernel and C++ build caches)
        torch._dynamo.reset()
        old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-", dir=tmp)
        try:
            t0 = time.perf_counter()
            comp = torch.compile(model)
            with torch.inference_mode():
                comp(x)
            row["inductor_compile_s"] = time.perf_counter() - t0
        finally:
            if old is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = old
    rows = []
    for _ in range(3):   # interleave so drift hits every runtime alike
        r = {}
        with torch.inference_mode():
            r["eager"] = median_latency(lambda: model(x))
            r["nnfuse"] = median_latency(lambda: cm(x))
            if inductor:
                r["inductor"] = median_latency(lambda: comp(x))
        r["ort"] = median_latency(lambda: sess.run(None, {"x": xn}))
        r.update(peers.time({"x": xn}))
        rows.append(r)
    for k in rows[0]:
        row[k] = float(np.median([r[k] for r in rows]))
    return row


def bench_onnx(path: str, threads: int, name: str) -> dict:
    import onnx
    m = onnx.load(path)
    inits = {i.name for i in m.graph.initializer}
    rng = np.random.default_rng(0)
    feeds = {}
    for i in m.graph.input:
        if i.name not in inits:
            feeds[i.name] = rng.random([d.dim_value or 1 for d in i.type.tensor_type.shape.dim], dtype=np.float32)
    sess = ort_session(path, threads)
    ref = sess.run(None, feeds)[0]
    cm, cold, warm = cold_compile(path, None)
    got = cm(*feeds.values())
    got = got[0] if isinstance(got, tuple) else got
    row = {"name": name, "compile_s": cold, "recompile_s": warm, "err": float(np.abs(got - ref).max()), "stats": cm.stats()}
    from openvino_peer import Peers
    peers = Peers(path, threads, path, list(feeds.values()))
    row.update(peers.info)
    rows = []
    for _ in range(3):
        rows.append({"nnfuse": median_latency(lambda: cm(*feeds.values())), "ort": median_latency(lambda: sess.run(None, feeds)),
                     **peers.time(feeds)})
    for k in rows[0]:
        row[k] = float(np.median([r[k] for r in rows]))
    return row


def fma_peak(threads: int) -> float:
    """Measured fp32 FMA throughput (GFLOP/s) of this machine: independent vector FMA chains, all threads."""
    import ctypes
    from nnfuse.backends.cpu.build import build
    src = r"""
#include <omp.h>
#if defined(__AVX512F__)
#define VW 16   /* the widest vector the target has: a wider one would live on the stack */
#else
#define VW 8
#endif
typedef float v16 __attribute__((vector_size(VW * 4)));
double nnf_peak(long iters, int threads) {
  double t0 = omp_get_wtime();
  float sink = 0;
  #pragma omp parallel num_threads(threads) reduction(+:sink)
  {
    v16 a = (v16){0} + 0.999999f, b = (v16){0} + 1e-7f;
    v16 c0 = a, c1 = a + b, c2 = a - b, c3 = a * a, c4 = b, c5 = b + b, c6 = a + a, c7 = a * b;
    v16 c8 = c0 + 1, c9 = c1 + 1, c10 = c2 + 1, c11 = c3 + 1;
    for (long i = 0; i < iters; i++) {   /* 12 independent register-resident FMA chains */
      c0 = c0 * a + b; c1 = c1 * a + b; c2 = c2 * a + b; c3 = c3 * a + b; c4 = c4 * a + b; c5 = c5 * a + b;
      c6 = c6 * a + b; c7 = c7 * a + b; c8 = c8 * a + b; c9 = c9 * a + b; c10 = c10 * a + b; c11 = c11 * a + b;
      /* every chain opaque to the compiler: with only six of them here, gcc merged two of the others
         (10 FMAs a step in the disassembly, counted as 12: the peak read 20 % high) */
      __asm__ volatile("" : "+v"(c0), "+v"(c1), "+v"(c2), "+v"(c3), "+v"(c4), "+v"(c5));
      __asm__ volatile("" : "+v"(c6), "+v"(c7), "+v"(c8), "+v"(c9), "+v"(c10), "+v"(c11));
    }
    v16 t = c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11;
    for (int j = 0; j < VW; j++) sink += t[j];
  }
  double t = omp_get_wtime() - t0;
  return sink == 12345.0f ? 0 : 2.0 * 12 * VW * iters * threads / t / 1e9;
}
"""
    path, _, _ = build(src)
    lib = ctypes.CDLL(path)
    lib.nnf_peak.restype = ctypes.c_double
    lib.nnf_peak.argtypes = [ctypes.c_long, ctypes.c_int]
    lib.nnf_peak(1000000, threads)
    return max(lib.nnf_peak(20000000, threads) for _ in range(3))


def core_round_trip_ns() -> float:
    """Median round trip (ns) of one cache line bounced between two threads. On these VMs the host sometimes runs
    the two vCPUs on distant cores (> ~200 ns here, ~50-120 ns otherwise); multi-threaded latencies then rise
    10-30 % for everyone who shares data between threads, so each row of the table says which it ran in."""
    import ctypes
    from nnfuse.backends.cpu.build import build
    src = r"""
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
static _Atomic long nnf_flag __attribute__((aligned(64)));
static long nnf_n;
static void* nnf_other(void* a) {
  (void)a;
  for (long i = 0; i < nnf_n; i++) { while (atomic_load(&nnf_flag) != 2 * i + 1); atomic_store(&nnf_flag, 2 * i + 2); }
  return 0;
}
double nnf_round_trip_ns(long n) {
  nnf_n = n; atomic_store(&nnf_flag, 0);
  pthread_t t; pthread_create(&t, 0, nnf_other, 0);
  struct timespec a, b; clock_gettime(CLOCK_MONOTONIC, &a);
  for (long i = 0; i < n; i++) { atomic_store(&nnf_flag, 2 * i + 1); while (atomic_load(&nnf_flag) != 2 * i + 2); }
  clock_gettime(CLOCK_MONOTONIC, &b); pthread_join(t, 0);
  return ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n;
}
"""
    lib = ctypes.CDLL(build(src)[0])
    lib.nnf_round_trip_ns.restype = ctypes.c_double
    lib.nnf_round_trip_ns.argtypes = [ctypes.c_long]
    return float(np.median([lib.nnf_round_trip_ns(100000) for _ in range(5)]))


def nominal_peak(threads: int) -> float:
    mhz = 0.0
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                mhz = max(mhz, float(line.split(":")[1]))
    return threads * mhz * 1e-3 * 32


def bench_gemm(threads: int) -> dict:
    import torch
    import nnfuse
    from nnfuse.ir import Builder
    n = 1024
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    w = rng.standard_normal((n, n)).astype(np.float32)
    b = Builder("gemm")
    x = b.input("x", [n, n])
    g = b.output(b.matmul(x, b.const(w, "w")))
    cm = nnfuse.compile(g, backend="cpu")
    ta, tw = torch.from_numpy(a), torch.from_numpy(w)
    err = float(np.abs(cm(a) - a @ w).max())
    sess = None
    try:
        import onnx
        from onnx import helper, numpy_helper, TensorProto
        mg = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                               [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])], [numpy_helper.from_array(w, "w")])
        p = os.path.join(tempfile.mkdtemp(), "mm.onnx")
        onnx.save(helper.make_model(mg, opset_imports=[helper.make_opsetid("", 17)]), p)
        sess = ort_session(p, threads)
    except ImportError:
        pass
    r = {"name": "gemm", "err": err}
    r["nnfuse"] = median_latency(lambda: cm(a))
    lib = getattr(cm.executable, "lib", None)
    if lib is not None and cm.executable.blas:   # the same program with every gemm sent to OpenBLAS instead
        lib.nnf_set_gemm_mode(1)
        r["nnfuse_blas"] = median_latency(lambda: cm(a))
        lib.nnf_set_gemm_mode(0)
    r["eager"] = median_latency(lambda: torch.mm(ta, tw))
    r["numpy"] = median_latency(lambda: a @ w)
    if sess is not None:
        r["ort"] = median_latency(lambda: sess.run(None, {"x": a}))
    r["gflops"] = 2 * n ** 3 / r["nnfuse"] / 1e9
    r["peak_measured"] = fma_peak(threads)
    r["peak_nominal"] = nominal_peak(threads)
    r["blas"] = cm.stats().get("blas")
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workloads", nargs="*")
    ap.add_argument("--no-inductor", action="store_true", help="skip torch.compile (it costs 10-20 s per model)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    from workloads import ALL, TORCH, resnet50_path
    names = args.workloads or list(ALL)
    threads = args.threads
    if threads != os.cpu_count():
        os.environ.setdefault("NNFUSE_NUM_THREADS", str(threads))
    import torch
    torch.set_num_threads(threads)
    tmp = tempfile.mkdtemp()
    rows = []
    for name in names:
        if name in TORCH:
            r = bench_torch(name, threads, not args.no_inductor, tmp)
        elif name == "resnet50":
            r = bench_onnx(resnet50_path(tmp), threads, "resnet50")
        elif name == "gemm":
            r = bench_gemm(threads)
        elif name.endswith(".onnx"):
            r = bench_onnx(name, threads, os.path.basename(name))
        else:
            print(f"unknown workload {name}; choose from {', '.join(ALL)} or an .onnx path", file=sys.stderr)
            return 2
        if threads > 1 and os.cpu_count() and os.cpu_count() > 1:
            r["round_trip_ns"] = core_round_trip_ns()
        rows.append(r)
        print(format_row(r) + (f"  [core round trip {r['round_trip_ns']:.0f} ns]" if "round_trip_ns" in r else ""), flush=True)
    print()
    print(table(rows))
    return 0


def _ms(v):
    return f"{v * 1e3:.2f}" if v is not None else "—"


def format_row(r: dict) -> str:
    if r["name"] == "gemm":
        return (f"gemm 1024^3: nnfuse {_ms(r['nnfuse'])} ms = {r['gflops']:.0f} GFLOP/s (generated micro-kernel); "
                f"{100 * r['gflops'] / r['peak_measured']:.0f}% of measured FMA peak {r['peak_measured']:.0f}, "
                f"{100 * r['gflops'] / r['peak_nominal']:.0f}% of nominal {r['peak_nominal']:.0f} GFLOP/s; "
                f"same program with OpenBLAS sgemm {_ms(r.get('nnfuse_blas'))} ms; "
                f"torch.mm {_ms(r['eager'])} ms, numpy {_ms(r['numpy'])} ms, ort {_ms(r.get('ort'))} ms")
    parts = [f"{r['name']:9s}", f"nnfuse {_ms(r['nnfuse'])} ms", f"ort {_ms(r['ort'])} ms"]
    if "eager" in r:
        parts.append(f"eager {_ms(r['eager'])} ms")
    if "inductor" in r:
        parts.append(f"inductor {_ms(r['inductor'])} ms")
    parts.append(f"nnfuse/ort {r['nnfuse'] / r['ort']:.2f}")
    if "eager" in r:
        parts.append(f"eager/nnfuse {r['eager'] / r['nnfuse']:.2f}")
    parts.append(f"compile {r['compile_s']:.1f} s (cached {r['recompile_s']:.2f} s)")
    if "inductor_compile_s" in r:
        parts.append(f"inductor compile {r['inductor_compile_s']:.1f} s")
    parts.append(f"max err {r['err']:.1e}")
    from openvino_peer import format_cols
    parts.append(format_cols(r))
    return "  ".join(parts)


def table(rows: list) -> str:
    out = ["| workload | nnfuse-cpu ms | onnxruntime ms | eager ms | inductor ms | nnfuse/ort | eager/nnfuse | "
           "nnfuse compile s (cold / cached) | inductor compile s (cold) | core round trip ns |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["name"] == "gemm":
            continue
        speedup = f"{r['eager'] / r['nnfuse']:.2f}" if "eager" in r else "—"
        ind = f"{r['inductor_compile_s']:.1f}" if "inductor_compile_s" in r else "—"
        rt = f"{r['round_trip_ns']:.0f}" if "round_trip_ns" in r else "—"
        out.append(f"| {r['name']} | {_ms(r['nnfuse'])} | {_ms(r['ort'])} | {_ms(r.get('eager'))} | {_ms(r.get('inductor'))} | "
                   f"{r['nnfuse'] / r['ort']:.2f} | {speedup} | {r['compile_s']:.1f} / {r['recompile_s']:.2f} | {ind} | {rt} |")
    for r in rows:
        if r["name"] == "gemm":
            out.append("")
            out.append(format_row(r))
    from openvino_peer import table as bf16_table
    out.append(bf16_table(rows))
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
