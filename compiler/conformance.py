"""Conformance runner over the ONNX test data shipped in the onnx wheel (shared by the tests and `nnfuse verify --conformance`).

Per-op cases (pytorch-converted, pytorch-operator, simple): import, compile on a backend, run, compare with the
stored outputs; then export the compiled graph back to ONNX, run it in onnxruntime and compare again.
Light models (light/*.onnx, no stored outputs): random inputs, onnxruntime on the original is the oracle.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

PER_OP = ("pytorch-converted", "pytorch-operator", "simple")
SUBSETS = ("light",) + PER_OP
RTOL, ATOL = 1e-3, 1e-4


@dataclass
class CaseResult:
    subset: str
    name: str
    ok: bool
    stage: str = ""      # where it failed: import, run, compare, export, export-compare
    message: str = ""

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.subset}/{self.name}" + ("" if self.ok else f" [{self.stage}] {self.message}")


def data_root() -> str:
    import onnx
    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")


def cases(subsets: Iterable[str] = SUBSETS) -> list[tuple[str, str, str]]:
    """(subset, name, path): a case folder for per-op subsets, a .onnx file for light."""
    out = []
    for sub in subsets:
        if sub not in SUBSETS:
            raise ValueError(f"unknown subset {sub!r}; valid: {', '.join(SUBSETS)}")
        if sub == "light":
            out += [(sub, os.path.basename(f)[:-5], f) for f in sorted(glob.glob(os.path.join(data_root(), sub, "*.onnx")))]
        else:
            out += [(sub, os.path.basename(d), d) for d in sorted(glob.glob(os.path.join(data_root(), sub, "*")))
                    if os.path.isdir(os.path.join(d, "test_data_set_0"))]
    return out


def close(got, want, rtol: float = RTOL, atol: float = ATOL) -> bool:
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return False
    if want.dtype.kind in "fc":
        return bool(np.allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True))
    return bool(np.array_equal(got, want))


def _outputs(res) -> list:
    return list(res) if isinstance(res, (list, tuple)) else [res]


def _stored(case_dir: str) -> tuple[list, list]:
    import onnx
    from onnx import numpy_helper
    d = os.path.join(case_dir, "test_data_set_0")
    load = lambda pat: [numpy_helper.to_array(onnx.load_tensor(f)) for f in sorted(glob.glob(os.path.join(d, pat)))]  # noqa: E731
    return load("input_*.pb"), load("output_*.pb")


def _light_inputs(path: str, seed: int = 0) -> tuple[list, list]:
    """Random inputs (uniform [0,1), as the acceptance runner) and onnxruntime's outputs on the original model."""
    import onnx
    from .cli_onnx import ort_session
    m = onnx.load(path, load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in m.graph.input:
        if i.name not in inits:
            feeds[i.name] = rng.random([d.dim_value or 1 for d in i.type.tensor_type.shape.dim], dtype=np.float32)
    return list(feeds.values()), ort_session(path).run(None, feeds)


def run_case(subset: str, name: str, path: str, backend: str = "reference", opt_level: int = 2, export: bool = True) -> CaseResult:
    from .api import compile as nn_compile
    from .ir import NnfuseError
    stage = "inputs"
    try:
        if subset == "light":
            ins, want = _light_inputs(path)
            model = path
        else:
            ins, want = _stored(path)
            model = os.path.join(path, "model.onnx")
        stage = "compile"
        cm = nn_compile(model, backend=backend, opt_level=opt_level)
        stage = "run"
        got = _outputs(cm(*ins))
        if len(got) != len(want) or not all(close(g, w) for g, w in zip(got, want)):
            return CaseResult(subset, name, False, "compare", _mismatch(got, want))
        if export:
            stage = "export"
            from .backends.onnx import compile_graph
            got = compile_graph(cm.graph)(ins)
            if len(got) != len(want) or not all(close(g, w) for g, w in zip(got, want)):
                return CaseResult(subset, name, False, "export-compare", _mismatch(got, want))
        return CaseResult(subset, name, True)
    except NnfuseError as e:
        return CaseResult(subset, name, False, stage, str(e).splitlines()[0][:300])
    except Exception as e:  # noqa: BLE001 - a crash is a failed case with its reason, not the end of the sweep
        return CaseResult(subset, name, False, stage, f"{type(e).__name__}: {str(e)[:300]}")


def _mismatch(got, want) -> str:
    if len(got) != len(want):
        return f"{len(got)} outputs, expected {len(want)}"
    for k, (g, w) in enumerate(zip(got, want)):
        g, w = np.asarray(g), np.asarray(w)
        if g.shape != w.shape:
            return f"output {k}: shape {list(g.shape)}, expected {list(w.shape)}"
        if not close(g, w):
            err = np.abs(g.astype(np.float64) - w.astype(np.float64)).max() if g.size else 0
            return f"output {k}: max abs error {err:.3g}"
    return "?"


def run_all(subsets: Sequence[str] = SUBSETS, backend: str = "reference", opt_level: int = 2, export: bool = True,
            progress: Optional[Callable[[CaseResult], None]] = None, names: Optional[set] = None) -> list[CaseResult]:
    results = []
    for sub, name, path in cases(subsets):
        if names is not None and name not in names:
            continue
        r = run_case(sub, name, path, backend, opt_level, export)
        results.append(r)
        if progress:
            progress(r)
    return results


def summarize(results: Sequence[CaseResult], backend: str = "reference") -> tuple[str, bool]:
    light = [r for r in results if r.subset == "light"]
    per_op = [r for r in results if r.subset != "light"]
    lo, po = sum(r.ok for r in light), sum(r.ok for r in per_op)
    rate = po / len(per_op) if per_op else 1.0
    ok = lo == len(light) and rate >= 0.95
    return f"{backend}: light {lo}/{len(light)}, per-op cases {po}/{len(per_op)} ({rate:.1%})", ok


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="nnfuse-conformance", description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="reference")
    p.add_argument("-O", dest="opt_level", type=int, default=2)
    p.add_argument("--subsets", default=",".join(SUBSETS))
    p.add_argument("--no-export", action="store_true", help="skip the export-to-onnxruntime stage")
    p.add_argument("-v", "--verbose", action="store_true", help="print passing cases too")
    a = p.parse_args(argv)
    show = lambda r: (print(r.line(), flush=True) if a.verbose or not r.ok else None)  # noqa: E731
    res = run_all(a.subsets.split(","), a.backend, a.opt_level, not a.no_export, show)
    line, ok = summarize(res, a.backend)
    print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
