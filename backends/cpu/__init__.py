"""The cpu backend: kernel IR -> C (+ OpenMP) -> system C compiler -> shared library loaded with ctypes.

The whole model is one exported call, `nnf_run(inputs, outputs, weights, arena)`: weights are passed by
pointer (the graph's numpy arrays, never copied), temporaries live in one preallocated aligned arena.
"""
from __future__ import annotations

import ctypes
import os
import threading
import time
from typing import Sequence

import numpy as np

from ...ir import Graph, NnfuseError
from ...ir.kernel import Program
from .build import BuildError, build, find_compiler, load  # noqa: F401
from .codegen import ABI_VERSION, generate


def default_threads() -> int:
    n = os.environ.get("NNFUSE_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    return int(n) if n and n.isdigit() and int(n) > 0 else (os.cpu_count() or 1)


class _Library:
    """What the executables loaded from one shared library share. dlopen maps a path once per process, so two
    executables of the same model (same source, same cached .so) share its statics: the thread pool and its
    thread count, the scratch buffers. They take turns on one lock, and each call sets the thread count it wants."""

    def __init__(self):
        self.lock = threading.Lock()
        self.threads = 0
        self.gemm_mode = -1


_LIBRARIES: dict[str, _Library] = {}
_LIBRARIES_LOCK = threading.Lock()


def _library(path: str) -> _Library:
    with _LIBRARIES_LOCK:
        return _LIBRARIES.setdefault(os.path.realpath(path), _Library())


class CpuExecutable:
    name = "cpu"

    def __init__(self, program: Program, src: str, lib_path: str, cache_hit: bool, compile_s: float, threads: int,
                 auto_threads: bool = False):
        self.program = program
        self._src = src
        self.lib_path = lib_path
        self.cache_hit = cache_hit
        self.compile_s = compile_s
        self.threads = threads
        self.lib = load(lib_path)
        if self.lib.nnf_abi() != ABI_VERSION:
            raise BuildError(f"{lib_path}: stale cpu backend library (ABI {self.lib.nnf_abi()} != {ABI_VERSION})")
        from .blas import load_blas
        blas = load_blas(threads)
        self.blas = blas is not None
        self.lib.nnf_set_blas(ctypes.c_void_p(blas[1] if blas else None), ctypes.c_void_p(blas[2] if blas else None))
        self._shared = _library(lib_path)
        self._auto = threads > 1 and auto_threads
        self._calls, self._cur, self._times = 0, threads, {}
        self.gemm = os.environ.get("NNFUSE_GEMM", "generated")   # "blas": OpenBLAS for every f32 gemm (for comparisons)
        self._gemm_mode = 1 if self.gemm == "blas" and self.blas else 0
        self._run = self.lib.nnf_run
        self._run.argtypes = [ctypes.c_void_p] * 4
        self._run.restype = ctypes.c_int
        # weights by pointer: the arrays stay owned by the graph; we keep references so they outlive the library calls
        self._weights = [np.ascontiguousarray(a) for a in program.const_data]
        self._wptrs = (ctypes.c_void_p * max(len(self._weights), 1))(*[a.ctypes.data for a in self._weights])
        self._arena_raw = np.empty(program.arena_bytes + 64, np.uint8)
        off = (-self._arena_raw.ctypes.data) % 64
        self._arena = self._arena_raw[off:off + program.arena_bytes]
        self._arena_ptr = self._arena_raw.ctypes.data + off
        self._in_dtypes = [b.dtype.np for b in program.inputs]
        self._out_specs = [(shape, b.dtype.np) for shape, b in zip(program.output_shapes, program.outputs)]

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        p = self.program
        if len(inputs) != len(p.inputs):
            raise NnfuseError(f"model takes {len(p.inputs)} inputs, got {len(inputs)}")
        ins = []
        for x, b, dt in zip(inputs, p.inputs, self._in_dtypes):
            a = np.ascontiguousarray(x, dtype=dt)
            if a.size != b.numel and not (a.size == 0 and b.numel == 1):
                raise NnfuseError(f"input {b.index}: expected {b.numel} elements of {b.dtype.name}, got shape {list(a.shape)}")
            ins.append(a)
        outs = [np.empty(shape, dt) for shape, dt in self._out_specs]
        ip = (ctypes.c_void_p * max(len(ins), 1))(*[a.ctypes.data for a in ins])
        op = (ctypes.c_void_p * max(len(outs), 1))(*[o.ctypes.data if o.size else None for o in outs])
        with self._shared.lock:   # one pool per library, one arena per executable: calls take turns
            n = self._pick_threads()
            if self._shared.threads != n:
                self.lib.nnf_set_threads(ctypes.c_int(n))
                self._shared.threads = n
            if self._shared.gemm_mode != self._gemm_mode:
                self.lib.nnf_set_gemm_mode(ctypes.c_int(self._gemm_mode))
                self._shared.gemm_mode = self._gemm_mode
            t0 = time.perf_counter()
            rc = self._run(ip, op, self._wptrs, ctypes.c_void_p(self._arena_ptr))
            self._record(n, time.perf_counter() - t0)
        if rc != 0:
            raise NnfuseError(f"cpu backend: model run failed (code {rc})")
        return p.finish(outs)

    # ---- thread count: on a shared machine an OpenMP team waits at every barrier for its slowest (descheduled)
    # thread; measured 2.5x slower than one thread under load. So when threads were not fixed by the user, the
    # executable times both settings on its first calls, keeps the faster, and re-probes the other now and then.
    # It compares the best recent time of each setting, not the median: a burst of interference (another runtime's
    # worker threads still spinning after its own call, as onnxruntime's do) must not lock in one thread, while a
    # core that stays busy slows every 2-thread call and still shows.
    def _pick_threads(self) -> int:
        if not self._auto:
            return self.threads
        c = self._calls
        self._calls += 1
        if c < 6:
            n = self.threads if c % 2 == 0 else 1
        else:
            fastest = {k: min(v) for k, v in self._times.items() if v}
            best = min(fastest, key=fastest.get) if len(fastest) == 2 else self.threads
            n = (1 if best != 1 else self.threads) if c % 10 == 0 else best
        self._cur = n
        return n

    def _record(self, n: int, secs: float) -> None:
        if self._auto:
            v = self._times.setdefault(n, [])
            v.append(secs)
            del v[:-5]

    def source(self) -> str:
        return self._src

    def profile(self) -> list:
        """(kernel, kind, region, total seconds) per kernel call, when compiled with profile=True."""
        if not hasattr(self.lib, "nnf_profile"):
            raise NnfuseError("compile with backend option profile=True to collect per-kernel times")
        f = self.lib.nnf_profile
        f.restype = ctypes.POINTER(ctypes.c_double)
        t = f()
        return [(k.name, k.kind, k.meta.get("region", ""), t[i]) for i, k in enumerate(self.program.kernels)]

    def stats(self) -> dict:
        s = self.program.stats()
        s.update({"cache_hit": self.cache_hit, "c_compile_seconds": round(self.compile_s, 3), "threads": self.threads,
                  "threads_now": self._cur, "auto_threads": self._auto,
                  "blas": "openblas" if self.blas else "generated-c", "gemm": self.gemm, "library": self.lib_path})
        if getattr(self, "bf16_path", None):
            s["bf16_path"] = self.bf16_path
        s["kernel_paths"] = self.kernel_paths()
        return s

    def kernel_paths(self) -> dict:
        """Which code path each kernel family of the built library takes on this CPU (chosen by the compiler's
        target macros under -march=native): the f32 tile, and bf16 / int8 / weight-only where the model has them."""
        out = {}
        for key, fn in (("f32", "nnf_vector_path"), ("bf16", "nnf_bf16_path"), ("int8", "nnf_q8_path"),
                        ("weight_only", "nnf_wq_path")):
            f = getattr(self.lib, fn, None)
            if f is not None:
                f.restype = ctypes.c_char_p
                out[key] = f().decode()
        return out


class SpecializingExecutable:
    """For graphs with symbolic dims: compile one specialization per distinct set of input shapes, on first use."""
    name = "cpu"

    def __init__(self, graph: Graph, threads: int):
        self.graph = graph
        self.threads = threads
        self.variants: dict[tuple, CpuExecutable] = {}
        self.last: "CpuExecutable | None" = None

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        from ...passes.lower import specialize
        key = tuple(tuple(np.shape(x)) for x in inputs)
        exe = self.variants.get(key)
        if exe is None:
            exe = self.variants[key] = _compile_static(specialize(self.graph, list(key)), self.threads, auto_threads=self.auto)
        self.last = exe
        return exe(inputs)

    @property
    def program(self):
        return self.last.program if self.last else None

    def source(self) -> str:
        return self.last.source() if self.last else "// symbolic shapes: C is generated per input shape on the first call"

    def stats(self) -> dict:
        s = self.last.stats() if self.last else {}
        s["specializations"] = len(self.variants)
        return s


def _compile_static(graph: Graph, threads: int, profile: bool = False, auto_threads: bool = False,
                    fuse_attn: bool = True) -> CpuExecutable:
    from ...passes.lower import lower
    find_compiler()
    program = lower(graph)
    if fuse_attn:   # gemm -> softmax -> gemm chains become one Attention kernel (backends/cpu/attention.py)
        from .attention import fuse
        from .copies import fold_copies
        if fuse(program):
            fold_copies(program)   # head split / merge copies around the attention kernels folded away
    from .bf16 import pack_program, report_path
    pack_program(program)   # bf16 weights packed for the micro-kernel, once (issue 12)
    from .quant_kernels import pack_program as pack_quant
    pack_quant(program)     # int8 / int4 weights packed for the quantized kernels, once (issue 10)
    from .pack import pack_program as pack_f32
    pack_f32(program)       # f32 weights in 64-column panels for the gemm micro-kernel, once
    src = generate(program, profile)
    path, hit, secs = build(src)
    exe = CpuExecutable(program, src, path, hit, secs, threads, auto_threads)
    exe.bf16_path = report_path(exe.lib, program)
    return exe


def compile_graph(graph: Graph, threads: int = 0, profile: bool = False, **options):
    """Lower a graph to kernel IR, generate C, build (cached) and load it. Symbolic input dims: specialize per call shape."""
    auto = not threads and not (os.environ.get("NNFUSE_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS"))
    threads = threads or default_threads()
    if any(not isinstance(d, int) for v in graph.inputs for d in v.shape):
        from ...passes.lower import Lowering
        probe = Lowering(graph)
        unsupported = sorted({n.op for n, _ in probe.flatten(graph, "") if not probe.supported(n)})
        if unsupported:
            from ...passes.lower import LowerError
            raise LowerError(f"not supported on cpu backend: ops {', '.join(unsupported)} (use backend='reference' for these models)")
        exe = SpecializingExecutable(graph, threads)
        exe.auto = auto
        return exe
    return _compile_static(graph, threads, profile, auto, options.get("fuse_attention", True) is not False)
