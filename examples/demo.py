"""The main job: take real models, optimize them, compile them on the best backend here, run them,
and show the IR, pass statistics, numerics and latency against PyTorch and onnxruntime.

  1. a small LLaMA (transformers LlamaConfig, random weights) through the PyTorch frontend
  2. an ONNX light model shipped in the onnx wheel through the ONNX frontend
"""
from __future__ import annotations

import glob
import os
import sys
import tempfile
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")
import nnfuse  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
from workloads import randomize_light_weights  # noqa: E402
from nnfuse.ir import NnfuseError  # noqa: E402
from nnfuse.timing import median_latency  # noqa: E402


def banner(s: str) -> None:
    print(f"\n{'=' * 100}\n{s}\n{'=' * 100}")


def median_ms(fn, n: int = 10, warm: int = 2) -> float:
    return median_latency(fn, n, warm) * 1e3


def best_backend(model, args) -> tuple[str, "nnfuse.CompiledModel"]:
    """The fastest backend that compiles this model here: cpu (C + OpenMP), else the reference interpreter."""
    for backend in ("cpu", "reference"):
        try:
            # 2 threads, as every peer here: left to itself the executable would pick its thread count by timing
            # both on its first calls, and right after another runtime's calls that runtime's spinning workers
            # can make it settle on one thread for a while
            opts = {"threads": 2} if backend == "cpu" else {}
            return backend, nnfuse.compile(model, args, backend=backend, opt_level=2, **opts)
        except NnfuseError as e:
            print(f"  backend '{backend}' unavailable for this model: {str(e).splitlines()[0]}")
    raise SystemExit("no backend could compile the model")


def head(text: str, n: int) -> str:
    lines = text.splitlines()
    return "\n".join(lines[:n] + ([f"  ... ({len(lines) - n} more lines)"] if len(lines) > n else []))


def llama_demo() -> None:
    import torch
    import transformers as T
    torch.manual_seed(0)
    torch.set_num_threads(2)
    banner("1. LLaMA-style decoder (transformers LlamaConfig, random weights) via torch.export")
    cfg = T.LlamaConfig(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=8,
                        num_key_value_heads=4, vocab_size=2000, use_cache=False)
    model = T.LlamaForCausalLM(cfg).eval()

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids):
            return self.m(ids).logits

    model = Logits(model).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, 64))
    t0 = time.perf_counter()
    backend, cm = best_backend(model, (ids,))
    print(f"  compiled on backend '{backend}' in {time.perf_counter() - t0:.2f} s")
    print("\n-- graph IR after optimization (head) --")
    print(head(str(cm.graph), 25))
    if cm.report is not None:
        print("\n-- pass statistics --")
        print(cm.report.table())
    s = cm.stats()
    print("\n-- op histogram --\n  " + ", ".join(f"{k}: {v}" for k, v in list(s["ops"].items())[:12]))
    if s.get("kernel_paths"):   # machines differ (AVX-512, AVX2, AMX, VNNI): what the generated code runs here
        print("-- kernel paths on this CPU: " + ", ".join(f"{k} {v}" for k, v in s["kernel_paths"].items()))
    with torch.inference_mode():
        ref = model(ids)
        got = cm(ids)
    got = got[0] if isinstance(got, tuple) else got
    err = float((got.float() - ref).abs().max())
    print(f"\n-- numerics vs PyTorch eager: max abs err {err:.2e} (logits range {float(ref.abs().max()):.2f})")
    with torch.inference_mode():
        t_eager = median_ms(lambda: model(ids))
        t_nn = median_ms(lambda: cm(ids))
    rows = [("PyTorch eager", t_eager), (f"nnfuse-{backend}", t_nn)]
    try:
        import onnxruntime as ort
        path = os.path.join(tempfile.mkdtemp(), "llama.onnx")
        import contextlib, io  # noqa: E401
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            torch.onnx.export(model, (ids,), path, input_names=["ids"], output_names=["logits"], dynamo=True)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        so.log_severity_level = 3
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        feed = {"ids": ids.numpy()}
        o = sess.run(None, feed)[0]
        print(f"-- numerics vs onnxruntime: max abs err {float(np.abs(got.numpy() - o).max()):.2e}")
        rows.append(("onnxruntime", median_ms(lambda: sess.run(None, feed))))
    except Exception as e:  # noqa: BLE001  (onnxruntime is a peer, not a requirement)
        print(f"  (onnxruntime comparison skipped: {type(e).__name__}: {str(e)[:100]})")
    if cm.program is not None:
        print("\n-- kernel IR (head; `nnfuse dump --level kernel`) --")
        print(head(cm.dump("kernel"), 12))
    print("\n-- reduced precision and quantization on the same model (rel err of logits vs eager fp32) --")
    for label, opts in (("bf16 compute", {"precision": "bf16", "accuracy_report": False}), ("W8A8 int8", {"quantize": "w8a8"}),
                        ("int4 weights g64", {"quantize": "w4g64"})):
        try:
            cv = nnfuse.compile(model, (ids,), backend=backend, **opts, **({"threads": 2} if backend == "cpu" else {}))
            with torch.inference_mode():
                o = cv(ids)
                o = (o[0] if isinstance(o, tuple) else o).float()
                rel = float((o - ref).norm() / ref.norm())
                rows.append((f"nnfuse {label}", median_ms(lambda: cv(ids))))
            print(f"  {label:18s} rel err {rel:.2e}")
        except NnfuseError as e:
            print(f"  {label:18s} skipped: {str(e).splitlines()[0][:100]}")
    print("  (random weights make int4 look bad; on the trained model in nnfuse.evaluation int4 g128 costs +0.5% perplexity,"
          " W8A8 +0.04%, bf16 +0.01%: docs/quantization.md, docs/bf16.md)")
    print("\n-- latency, median of 10 (2 threads) --")
    for name, t in rows:
        print(f"  {name:24s} {t:9.2f} ms   {t / t_eager:5.2f}x eager")
    if err > 1e-3:
        raise SystemExit(f"numerics check failed: max err {err:.2e}")


def onnx_demo() -> None:
    import onnx
    import onnxruntime as ort
    root = os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light")
    path = os.path.join(root, "light_squeezenet.onnx")
    if not os.path.exists(path):
        path = sorted(glob.glob(os.path.join(root, "*.onnx")))[0]
    banner(f"2. ONNX light model {os.path.basename(path)} (shipped in the onnx wheel) via the ONNX frontend")
    m = onnx.load(path)
    randomize_light_weights(m)   # the shipped weights are all 0.02: the output would not depend on the input
    path = os.path.join(tempfile.mkdtemp(), "random_" + os.path.basename(path))
    onnx.save(m, path)
    print("  (conv/fc weights replaced by random He-scaled values: the shipped ones are all 0.02)")
    inits = {i.name for i in m.graph.initializer}
    feeds = {i.name: np.random.default_rng(0).random([d.dim_value or 1 for d in i.type.tensor_type.shape.dim], dtype=np.float32)
             for i in m.graph.input if i.name not in inits}
    t0 = time.perf_counter()
    backend, cm = best_backend(path, None)
    print(f"  compiled on backend '{backend}' in {time.perf_counter() - t0:.2f} s; nodes {len(m.graph.node)} ONNX -> {len(cm.graph.nodes)} IR")
    if cm.report is not None:
        print(cm.report.table())
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    ref = sess.run(None, feeds)[0]
    got = cm(*feeds.values())
    got = got[0] if isinstance(got, tuple) else got
    err = float(np.abs(np.asarray(got) - ref).max() / np.abs(ref).max())
    print(f"-- numerics vs onnxruntime: max rel err {err:.2e} (output std {float(ref.std()):.2e})")
    t_ort = median_ms(lambda: sess.run(None, feeds))
    t_nn = median_ms(lambda: cm(*feeds.values()))
    print(f"-- latency: onnxruntime {t_ort:.2f} ms, nnfuse-{backend} {t_nn:.2f} ms ({t_nn / t_ort:.2f}x)")
    if err > 1e-4:
        raise SystemExit(f"numerics check failed: max err {err:.2e}")


if __name__ == "__main__":
    which = sys.argv[1:] or ["llama", "onnx"]
    if "llama" in which:
        llama_demo()
    if "onnx" in which:
        onnx_demo()
    print("\ndemo ok")
