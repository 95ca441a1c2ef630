"""OpenVINO as a benchmark peer (issue 12), and nnfuse's bf16 column beside it.

OpenVINO compiles the same ONNX file on CPU with N threads and the LATENCY hint, twice: once with
INFERENCE_PRECISION_HINT=f32 and once at its default precision (bf16 on CPUs with AVX512_BF16 or AMX, f32
elsewhere — the column says which). `Peers.time()` adds the columns openvino_f32, openvino and nnfuse_bf16
to a benchmark row; run.py interleaves it with the other runtimes.

usage alone: python benchmarks/openvino_peer.py [WORKLOAD ...]   (mlp llama gpt2 bert; default all)
"""
from __future__ import annotations

import os
import sys
import tempfile
from typing import Optional

import numpy as np


from nnfuse.timing import median_latency as _median


def openvino_compile(path: str, threads: int, precision: Optional[str] = None):
    """An OpenVINO CompiledModel for the ONNX file at `path` (None when openvino is not installed)."""
    try:
        import openvino as ov
    except ImportError:
        return None
    cfg = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision:
        cfg["INFERENCE_PRECISION_HINT"] = precision
    return ov.Core().compile_model(path, "CPU", cfg)


def inference_precision(compiled) -> str:
    return str(compiled.get_property("INFERENCE_PRECISION_HINT")).replace("<Type: ", "").strip("'>")


class Peers:
    """OpenVINO f32 + default precision on `path`, and nnfuse precision='bf16' on `model` (any compile() input)."""

    def __init__(self, path: str, threads: int, model=None, example=None, reference=None):
        self.ov_f32 = openvino_compile(path, threads, "f32")
        self.ov_def = openvino_compile(path, threads)
        self.req_f32 = self.ov_f32.create_infer_request() if self.ov_f32 is not None else None
        self.req_def = self.ov_def.create_infer_request() if self.ov_def is not None else None
        self.info: dict = {}
        if self.ov_def is not None:
            self.info["openvino_precision"] = inference_precision(self.ov_def)
        self.bf16 = None
        if model is not None:
            import nnfuse
            self.bf16 = nnfuse.compile(model, example, backend="cpu", precision="bf16")
            self.example = example
            acc = self.bf16.stats().get("accuracy", {})
            self.info.update({"bf16_rel_err": acc.get("max_rel_err"), "bf16_cosine": acc.get("cosine"),
                              "bf16_path": self.bf16.stats().get("bf16_path")})

    def time(self, feeds: dict) -> dict:
        r = {}
        vals = list(feeds.values())
        if self.req_f32 is not None:
            r["openvino_f32"] = _median(lambda: self.req_f32.infer(vals))
            r["openvino"] = _median(lambda: self.req_def.infer(vals))
        if self.bf16 is not None:
            ex = self.example

            def run():
                try:
                    import torch
                    with torch.inference_mode():
                        return self.bf16(*ex)
                except ImportError:
                    return self.bf16(*ex)
            r["nnfuse_bf16"] = _median(run)
        return r


def _ms(v) -> str:
    return f"{v * 1e3:.2f}" if v is not None else "—"


def format_cols(r: dict) -> str:
    """The peer columns of one benchmark row, for run.py's one-line summary."""
    if "openvino" not in r and "nnfuse_bf16" not in r:
        return ""
    s = f"openvino f32 {_ms(r.get('openvino_f32'))} ms  openvino {r.get('openvino_precision', '?')} {_ms(r.get('openvino'))} ms"
    if "nnfuse_bf16" in r:
        err = r.get("bf16_rel_err")
        s += f"  nnfuse bf16 {_ms(r['nnfuse_bf16'])} ms" + (f" (rel err {err:.1e})" if err is not None else "")
    return s


def table(rows: list) -> str:
    """A markdown table of the bf16 comparison (nnfuse bf16 vs OpenVINO default; fp32 vs the best fp32 peer)."""
    rows = [r for r in rows if "openvino" in r or "nnfuse_bf16" in r]
    if not rows:
        return ""
    out = ["", "| workload | nnfuse fp32 ms | onnxruntime ms | openvino f32 ms | nnfuse bf16 ms | openvino default ms | "
           "nnfuse bf16 / openvino default | nnfuse fp32 / best fp32 peer | bf16 rel err |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        best = min(v for v in (r.get("ort"), r.get("openvino_f32")) if v is not None)
        ratio16 = f"{r['nnfuse_bf16'] / r['openvino']:.2f}" if r.get("nnfuse_bf16") and r.get("openvino") else "—"
        err = r.get("bf16_rel_err")
        out.append(f"| {r['name']} | {_ms(r.get('nnfuse'))} | {_ms(r.get('ort'))} | {_ms(r.get('openvino_f32'))} | "
                   f"{_ms(r.get('nnfuse_bf16'))} | {_ms(r.get('openvino'))} ({r.get('openvino_precision', '?')}) | {ratio16} | "
                   f"{r['nnfuse'] / best:.2f} | {f'{err:.1e}' if err is not None else '—'} |")
    return "\n".join(out)


def main(argv=None) -> int:
    """OpenVINO f32/default and nnfuse fp32/bf16 on the torch workloads (2 threads, medians)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch
    from run import export_onnx, ort_session
    from workloads import TORCH, torch_workload
    import nnfuse
    names = (argv if argv is not None else sys.argv[1:]) or list(TORCH)
    os.environ.setdefault("NNFUSE_NUM_THREADS", "2")
    torch.set_num_threads(2)
    tmp = tempfile.mkdtemp()
    rows = []
    for name in names:
        model, x = torch_workload(name)
        path = export_onnx(model, x, os.path.join(tmp, name + ".onnx"))
        cm = nnfuse.compile(model, (x,), backend="cpu")
        peers = Peers(path, 2, model, (x,))
        sess = ort_session(path, 2)
        row = {"name": name, **peers.info}
        xn = x.numpy()
        reps = []
        for _ in range(3):
            with torch.inference_mode():
                r = {"nnfuse": _median(lambda: cm(x))}
            r["ort"] = _median(lambda: sess.run(None, {"x": xn}))
            r.update(peers.time({"x": xn}))
            reps.append(r)
        for k in reps[0]:
            row[k] = float(np.median([r[k] for r in reps]))
        rows.append(row)
        print(f"{name:9s} nnfuse fp32 {_ms(row['nnfuse'])} ms  ort {_ms(row['ort'])} ms  {format_cols(row)}", flush=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
