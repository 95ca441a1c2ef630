"""FFN fusion and layer skipping on a LLaMA-style model: latency of the original, FFN-fused and layer-skipped
models on an nnfuse backend (cpu by default) and in onnxruntime (on nnfuse's ONNX export of each graph, and the
torch-exported original), with the measured speedup next to the requested one and the output deviation.

    .venv/bin/python benchmarks/ffn_skip.py [--layers 12 --hidden 512 --seq 128 --target 1.3 --backend cpu]

Random weights: the deviations say how far the rewritten graph is from the original, not what it does to
accuracy (see compiler/evaluation.py for a trained model). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings

import numpy as np


def median_ms(fn, repeat: int) -> float:
    from nnfuse.timing import median_latency
    return median_latency(fn, n=repeat) * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--inter", type=int, default=1408)
    ap.add_argument("--vocab", type=int, default=4000)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--target", type=float, default=1.3)
    ap.add_argument("--backend", default="cpu", help="nnfuse backend to time (cpu; reference when cpu is unavailable)")
    ap.add_argument("--repeat", type=int, default=5, help="runs per measurement (median)")
    ap.add_argument("--rounds", type=int, default=3, help="round-robin rounds over the variants (median)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    import onnxruntime as ort
    import torch
    import transformers as T

    import nnfuse
    from nnfuse.backends.onnx import export
    from nnfuse.frontends import onnx as onnx_frontend
    from nnfuse.passes import optimize, pipeline

    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    cfg = T.LlamaConfig(hidden_size=a.hidden, intermediate_size=a.inter, num_hidden_layers=a.layers, num_attention_heads=8,
                        num_key_value_heads=8, vocab_size=a.vocab, use_cache=False)
    model = T.LlamaForCausalLM(cfg).eval()
    x = torch.randint(0, a.vocab, (1, a.seq))
    tmp = tempfile.mkdtemp()
    src = os.path.join(tmp, "llama.onnx")
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(model, (x,), src, input_names=["input_ids"], output_names=["logits"], dynamo=True)
    g = onnx_frontend.load(src)
    ids = x.numpy()
    cal = {"calibration": [[ids]]}
    k_drop = max(1, min(a.layers // 3, a.layers - 2))
    variants = [("original", [], {}),
                ("ffn-fusion (auto: 1 attention dropped)", ["ffn-fusion"], {}),
                (f"drop-attention {k_drop} + ffn-fusion", ["ffn-fusion"], {"drop_attention": k_drop, "ffn_threshold": 1.0}),
                (f"skip-layers {a.target} (layer)", ["skip-layers"], {"target_speedup": a.target}),
                (f"skip-layers {a.target} (ffn)", ["skip-layers"], {"target_speedup": a.target, "skip_granularity": "ffn"})]
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.log_severity_level = 3
    base_sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    t_src = []
    built = []
    for name, passes, opts in variants:
        h, rep = optimize(g, passes=passes, emit=lambda s: None, **cal, **opts)
        st = rep.results[0].stats if rep.results else {}
        h, _ = optimize(h, opt_level=2)
        path = os.path.join(tmp, f"v{len(built)}.onnx")
        export(h, path)
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        backend = a.backend
        try:
            cm = nnfuse.compile(h, backend=backend, opt_level=0)
        except Exception as e:  # noqa: BLE001 - report and fall back to the oracle
            print(f"# {backend} backend failed on {name}: {str(e)[:200]}; timing the reference backend", file=sys.stderr)
            backend = "reference"
            cm = nnfuse.compile(h, backend=backend, opt_level=0)
        mm = sum(n.op == "matmul" or (n.body is not None and any(m.op == "matmul" for m in n.body.nodes)) for n in h.nodes)
        built.append((name, st, sess, cm, backend, mm))
    # round-robin over the variants so load drift on a shared machine hits them alike; median per variant
    t_nn = {i: [] for i in range(len(built))}
    t_ort = {i: [] for i in range(len(built))}
    for _ in range(a.rounds):
        t_src.append(median_ms(lambda: base_sess.run(None, {"input_ids": ids}), a.repeat))
        for i, (_, _, sess, cm, _, _) in enumerate(built):
            t_ort[i].append(median_ms(lambda: sess.run(None, {"input_ids": ids}), a.repeat))
            t_nn[i].append(median_ms(lambda: cm(ids), a.repeat))
    rows = []
    for i, (name, st, _, _, backend, mm) in enumerate(built):
        tn, to = float(np.median(t_nn[i])), float(np.median(t_ort[i]))
        base = (float(np.median(t_nn[0])), float(np.median(t_ort[0])))
        extra = ""
        if "skipped_layers" in st:
            extra = f"skipped {st['skipped_layers']}, predicted {st['predicted_speedup']:.2f}x"
        elif "fused" in st:
            extra = "; ".join([f"attention dropped {st['attention_dropped']}"] * bool(st.get("attention_dropped")) +
                              [f"fused {f['layers']} GEMMs {f['gemms'][0]}->{f['gemms'][1]}" for f in st["fused"]])
        rows.append((name, mm, tn, base[0] / tn, to, base[1] / to, st.get("target_speedup"), st.get("max_abs_err", 0.0),
                     st.get("rel_err", 0.0), extra, backend))
    print(f"LLaMA-style {a.layers} layers, hidden {a.hidden}, inter {a.inter}, vocab {a.vocab}, seq {a.seq}, "
          f"{a.threads} threads; torch-exported original in onnxruntime: {np.median(t_src):.2f} ms\n")
    print("| model | GEMM nodes | nnfuse ms | speedup | onnxruntime ms | speedup | requested | max abs err | rel err | what |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, mm, tn, sn, to, so_, req, err, rel, extra, backend in rows:
        print(f"| {name} | {mm} | {tn:.2f} ({backend}) | {sn:.2f}x | {to:.2f} | {so_:.2f}x | "
              f"{'' if req is None else f'{req:.2f}x'} | {err:.3g} | {rel:.3g} | {extra} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
