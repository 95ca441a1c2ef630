"""`nnfuse bench`: latency of nnfuse-cpu against onnxruntime, PyTorch eager and torch.compile (benchmarks/run.py)."""
from __future__ import annotations

import argparse
import os
import sys

from .cli import command
from .ir import NnfuseError


def _runner():
    here = os.path.dirname(os.path.abspath(__file__))
    for root in (os.path.join(here, "..", "benchmarks"), os.path.join(os.getcwd(), "benchmarks")):
        if os.path.exists(os.path.join(root, "run.py")):
            sys.path.insert(0, os.path.abspath(root))
            import run  # noqa: PLC0415
            return run
    raise NnfuseError("nnfuse bench needs the benchmarks/ folder of the nnfuse source tree")


@command("bench", "benchmark a model or workload on a backend against onnxruntime / PyTorch")
def cmd_bench(args: argparse.Namespace) -> int:
    if args.backend != "cpu":
        raise NnfuseError(f"nnfuse bench supports --backend cpu (got '{args.backend}')")
    for m in args.model:
        if m.endswith(".onnx") and not os.path.exists(m):
            raise NnfuseError(f"{m}: no such file")
    argv = list(args.model) + ["--threads", str(args.threads)] + (["--no-inductor"] if args.no_inductor else [])
    return _runner().main(argv)


@cmd_bench.args
def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="*", help="an .onnx file or workloads: mlp llama gpt2 bert resnet50 gemm (default: all)")
    p.add_argument("--backend", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-inductor", action="store_true", help="skip torch.compile")
