"""`nnfuse quantize`: quantize an ONNX (or .nnir) model and write it back, with the accuracy report.

    nnfuse quantize model.onnx -o out.onnx --scheme w8a8 [--rotate] [--reorder] [--calib inputs.npz]
                   [--exclude 'lm_head|layers.0.*'] [--sensitivity]

Also adds --quant-scheme / --quant-exclude to `nnfuse optimize`, so `--passes ...,quantize-weights` works too.
"""
from __future__ import annotations

import argparse

from .cli import _load_for_cli, command, err, out, parse_input_shapes
from .cli_onnx import add_pass_option, make_inputs, model_inputs
from .ir import NnfuseError

add_pass_option("--quant-scheme", "quantize", metavar="SCHEME", help="quantize: w8a8, w4g128, fp8, mxfp4, nvfp4, w4a4, ...")
add_pass_option("--quant-exclude", "exclude", metavar="REGEX", help="layers (module path regex) kept in fp32 when quantizing")


def _fmt_row(r: dict) -> str:
    return (f"  {r['layer'][:48]:48s} {r['format'][:30]:30s} {r.get('act_format', '-')[:26]:26s} "
            f"{r['weight_sqnr_db']:7.2f} dB {r['bytes_before'] / 1024:9.1f} -> {r['bytes_after'] / 1024:8.1f} KiB")


@command("quantize", "quantize a model (weights, activations, rotation, reordering) and report what it cost")
def cmd_quantize(args: argparse.Namespace) -> int:
    from .ir import evaluate, save
    from .passes import optimize
    from .passes.quant.report import model_metrics, sensitivity
    g = _load_for_cli(args.model, args)
    options = {"quantize": args.scheme, "rotate": args.rotate, "reorder": args.reorder, "progress": True,
               "fallback_group": args.fallback_group}
    if args.exclude:
        options["exclude"] = args.exclude
    if args.calib_method:
        options["calib_method"] = args.calib_method
    specs = model_inputs(g, parse_input_shapes(args.input_shape))
    samples = [[make_inputs(specs, args.calib, args.seed)[name] for name, _, _ in specs]]
    if args.calib:
        options["calibration"] = samples
    q, report = optimize(g, opt_level=args.opt_level, **options)
    rows = [r for res in report.results for r in res.stats.get("layers", []) if "weight_sqnr_db" in r]
    out(f"{'layer':50s} {'weights':30s} {'activations':26s} {'w SQNR':>10s} {'size':>24s}")
    for r in rows:
        out(_fmt_row(r))
    for res in report.results:
        for e in res.stats.get("excluded_layers", []):
            out(f"  {e[:48]:48s} kept fp32 (--exclude)")
        for e in res.stats.get("fp32_layers", []):
            out(f"  {e['layer'][:48]:48s} kept fp32: {e['reason']}")
    ref = evaluate(g, samples[0])
    got = evaluate(q, samples[0])
    mm = model_metrics([ref[0]], [got[0]])
    out("")
    out(f"model size {g.param_bytes() / 1e6:.3f} MB -> {q.param_bytes() / 1e6:.3f} MB; output on "
        f"{'--calib inputs' if args.calib else 'random inputs'}: rel err {mm['rel_err']:.4g}, logit cosine "
        f"{mm['logit_cosine']:.5f}, top-1 agreement {mm['top1_agree']:.3f}")
    out("")
    out(report.table())
    if args.sensitivity:
        out("\nper-layer sensitivity (only that layer quantized; worst first):")
        for r in sensitivity(g, samples, quantize=args.scheme, fallback_group=args.fallback_group):
            out(f"  {r['layer'][:60]:60s} rel err {r['rel_err']:.4g}  cosine {r['logit_cosine']:.5f}")
    if args.output.endswith(".nnir"):
        save(q, args.output)
    elif args.output.endswith(".onnx"):
        from .backends.onnx import export
        export(q, args.output)
    else:
        raise NnfuseError(f"{args.output}: output must be .onnx or .nnir")
    err(f"wrote {args.output}")
    return 0


@cmd_quantize.args
def _quantize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="input .onnx or .nnir")
    p.add_argument("-o", "--output", required=True, help="output .onnx or .nnir")
    p.add_argument("--scheme", default="w8a8", help="preset (w8a8, w8a8s, w4g128, w4a4, fp8, mxfp4, nvfp4, ...), a format "
                   "name (int4_g64, mxint8, ...) or WEIGHTS:ACTS (default w8a8)")
    p.add_argument("--rotate", action="store_true", help="QuaRot Hadamard rotation first (LLaMA-style stacks)")
    p.add_argument("--reorder", action="store_true", help="reorder FFN channels by calibration range first")
    p.add_argument("--calib", metavar="INPUTS.npz", help="calibration inputs (npz keyed by input name)")
    p.add_argument("--calib-method", choices=["minmax", "percentile", "mse"], help="static scales (w8a8s): range method")
    p.add_argument("--exclude", metavar="REGEX", help="keep matching layers (module path) in fp32, e.g. 'lm_head|layers.0.*'")
    p.add_argument("--fallback-group", action="store_true",
                   help="a group size that does not divide K falls back to one that does")
    p.add_argument("--sensitivity", action="store_true", help="also rank layers by their effect on the output")
    p.add_argument("-O", dest="opt_level", type=int, default=1, choices=[0, 1, 2, 3], help="optimization level (default 1)")
    p.add_argument("--input-shape", action="append", metavar="NAME:D1,D2", help="fix an input's shape (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed for random inputs")
