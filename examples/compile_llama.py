"""Compile a small LLaMA (random weights, from a transformers LlamaConfig) with nnfuse; print the IR,
the pass statistics, and the latency against PyTorch eager.

    python examples/compile_llama.py                  # reference backend (numpy interpreter)
    python examples/compile_llama.py --backend cpu    # generated C, where that backend is built
"""
from __future__ import annotations

import argparse
import warnings

import torch
import transformers

import nnfuse
from nnfuse.timing import median_latency


def median_ms(fn, x, repeat: int) -> float:
    return median_latency(lambda: fn(x), n=repeat, warm=1) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="reference")
    ap.add_argument("--opt-level", type=int, default=2)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--head-lines", type=int, default=40, help="how many lines of the IR to print")
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    torch.set_num_threads(2)
    config = transformers.LlamaConfig(hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                                      num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=4,
                                      vocab_size=2000, max_position_embeddings=256)
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq))

    cm = nnfuse.compile(model, (ids,), backend=args.backend, opt_level=args.opt_level)
    text = str(cm.graph).splitlines()
    print(f"== IR (first {args.head_lines} of {len(text)} lines)")
    print("\n".join(text[:args.head_lines]))

    stats = cm.stats()
    print(f"\n== compile: {stats['compile_seconds']} s, backend {stats['backend']}, {stats['nodes']} nodes, "
          f"{stats['param_bytes'] / 2**20:.1f} MiB of weights")
    print("ops:", ", ".join(f"{k} {v}" for k, v in stats["ops"].items()))
    if cm.report is not None and cm.report.results:
        print("\n== passes")
        print(cm.report.table())

    with torch.no_grad():
        ref = model(ids).logits
        got = cm(ids)
        got = got[0] if isinstance(got, tuple) else got
        err = (got - ref).abs().max().item()
        t_eager = median_ms(lambda x: model(x).logits, ids, args.repeat)
        t_nnfuse = median_ms(cm, ids, args.repeat)
    print(f"\n== latency (batch {args.batch}, seq {args.seq}, median of {args.repeat})")
    print(f"eager  {t_eager:8.2f} ms")
    print(f"nnfuse {t_nnfuse:8.2f} ms  ({args.backend}; {t_eager / t_nnfuse:.2f}x eager)   max |error| {err:.2e}")


if __name__ == "__main__":
    main()
