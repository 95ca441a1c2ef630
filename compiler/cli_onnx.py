"""ONNX-facing CLI commands: optimize, inspect, verify, run (registered on import by cli.py).

Pass flags are data (`PASS_OPTIONS`): a helper that adds a pass option calls `add_pass_option(...)`
and `optimize` forwards its value to `nnfuse.passes.optimize(**options)` when given.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from collections import Counter
from typing import Any, Optional, Sequence

import numpy as np

from .cli import _load_for_cli, command, err, out, parse_input_shapes
from .ir import NnfuseError

# (flag, argparse kwargs, options key) for pass options forwarded to optimize(); extend with add_pass_option
PASS_OPTIONS: list[tuple[str, dict, str]] = []


def add_pass_option(flag: str, dest: str, **argparse_kwargs: Any) -> None:
    """Register an extra `nnfuse optimize` flag whose value goes to the passes as option `dest`."""
    PASS_OPTIONS.append((flag, dict(argparse_kwargs, dest=dest), dest))


def _opt_level(args) -> int:
    return 2 if args.opt_level is None else args.opt_level


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", action="append", metavar="NAME:D1,D2", help="fix an input's shape (repeatable)")
    p.add_argument("--inputs", metavar="DATA.npz", help="real inputs (npz keyed by input name) instead of random ones")
    p.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance (default 1e-4)")
    p.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance (default 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed for random inputs")


# ---------------------------------------------------------------- inputs and comparison
def model_inputs(g, shapes: Optional[dict] = None) -> list[tuple[str, np.dtype, list]]:
    """(name, numpy dtype, shape) of the runtime inputs of an imported graph (or of a model path, imported here)."""
    if isinstance(g, (str, os.PathLike)):
        from .api import to_graph
        g = to_graph(g, **({"input_shapes": shapes} if shapes else {}))
    return [(v.name, v.type.dtype.np, list(v.type.shape)) for v in g.inputs]


def make_inputs(specs, data_path: Optional[str] = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs from an npz (keyed by input name) or random ones: floats ~ N(0,1), ints in [0, 32), bools."""
    if data_path:
        try:
            with np.load(data_path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise NnfuseError(f"--inputs {data_path}: cannot read ({e})") from None
        missing = [n for n, _, _ in specs if n not in data]
        if missing:
            raise NnfuseError(f"--inputs {data_path}: no array for input(s) {missing}; it has {sorted(data)}")
        wrong = [f"{n} ({data[n].dtype} -> {dt})" for n, dt, _ in specs if not np.can_cast(data[n].dtype, dt, "same_kind")]
        if wrong:   # e.g. float token ids: truncating them would make the check pass on inputs nobody meant
            raise NnfuseError(f"--inputs {data_path}: array(s) of the wrong kind for input(s) {', '.join(wrong)}")
        return {n: data[n].astype(dt, copy=False) for n, dt, _ in specs}
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, dt, shp in specs:
        shp = [d if isinstance(d, int) else 1 for d in shp]  # unbound symbolic dims: 1 (fix with --input-shape)
        if dt.kind == "f":
            feeds[name] = rng.standard_normal(shp).astype(dt)
        elif dt.kind in "iu":
            feeds[name] = rng.integers(0, 32, shp).astype(dt)
        elif dt.kind == "b":
            feeds[name] = rng.random(shp) < 0.5
        else:
            feeds[name] = rng.standard_normal(shp).astype(np.float32).astype(dt)
    return feeds


def ort_session(path_or_bytes, threads: int = 0):
    try:
        import onnxruntime as ort
    except ImportError:
        raise NnfuseError("this needs onnxruntime: pip install onnxruntime") from None
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(path_or_bytes, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise NnfuseError(f"onnxruntime cannot load the model: {str(e)[:400]}") from None


def ort_run(path: str, feeds: dict) -> list[np.ndarray]:
    s = ort_session(path)
    names = {i.name for i in s.get_inputs()}
    try:
        return s.run(None, {k: v for k, v in feeds.items() if k in names})
    except Exception as e:  # noqa: BLE001 - onnxruntime's own types: bad input values/shapes for this model
        raise NnfuseError(f"onnxruntime failed to run {path}: {str(e)[:400]}") from None


def compare(names: Sequence[str], got: Sequence[np.ndarray], want: Sequence[np.ndarray], atol: float, rtol: float) -> tuple[bool, list]:
    """Per output: (name, max abs error, ok). Shapes must agree; non-float outputs must be equal."""
    if len(got) != len(want):
        return False, [("(outputs)", float("inf"), False)]
    rows, ok_all = [], True
    for name, g, w in zip(names, got, want):
        g, w = np.asarray(g), np.asarray(w)
        if g.shape != w.shape:
            rows.append((name, float("inf"), False))
            ok_all = False
            continue
        if w.dtype.kind in "fc" or g.dtype.kind in "fc":
            gf, wf = g.astype(np.float64), w.astype(np.float64)
            both_nan = np.isnan(gf) & np.isnan(wf)
            diff = np.where(both_nan, 0.0, np.abs(gf - wf))
            e = float(np.nanmax(diff)) if diff.size else 0.0
            ok = bool(np.all((diff <= atol + rtol * np.abs(wf)) | both_nan)) and not np.isnan(diff).any()
        else:
            e = float(np.abs(g.astype(np.int64) - w.astype(np.int64)).max()) if g.size else 0.0
            ok = bool(np.array_equal(g, w))
        rows.append((name, e, ok))
        ok_all &= ok
    return ok_all, rows


def print_errors(rows, atol: float, rtol: float) -> None:
    out(f"{'output':32s} {'max abs err':>12s}  within atol={atol:g} rtol={rtol:g}")
    for name, e, ok in rows:
        out(f"{name[:32]:32s} {e:12.3e}  {'yes' if ok else 'NO'}")


# ---------------------------------------------------------------- optimize
def onnx_histogram(m) -> Counter:
    return Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}" for n in m.graph.node)


def model_bytes(m, path: str) -> int:
    """The .onnx file plus the external-data files its initializers point at."""
    total, seen = os.path.getsize(path), set()
    for t in m.graph.initializer:
        if t.data_location == 1:
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            f = os.path.join(os.path.dirname(os.path.abspath(path)), loc) if loc else None
            if f and f not in seen and os.path.exists(f):
                seen.add(f)
                total += os.path.getsize(f)
    return total


def before_after_table(a, b, size_a: int, size_b: int) -> str:
    ha, hb = onnx_histogram(a), onnx_histogram(b)
    rows = [f"{'op':28s} {'before':>8s} {'after':>8s}"]
    for op in sorted(set(ha) | set(hb), key=lambda o: (-ha.get(o, 0), o)):
        rows.append(f"{op[:28]:28s} {ha.get(op, 0):8d} {hb.get(op, 0):8d}")
    na, nb = len(a.graph.node), len(b.graph.node)
    pct = f" ({(nb - na) / na:+.0%})" if na else ""
    rows.append(f"{'nodes':28s} {na:8d} {nb:8d}{pct}")
    rows.append(f"{'bytes (with weights)':28s} {size_a:8d} {size_b:8d}")
    return "\n".join(rows)


# ---------------------------------------------------------------- approximate transformer passes (issue 8)
# A flag here switches its pass on; those passes run before the preset pipeline (fusion regions would hide the blocks).
PASS_FLAGS: list[tuple[str, str]] = [("drop_attention", "drop-attention"), ("ffn_fusion", "ffn-fusion"),
                                     ("target_speedup", "skip-layers"), ("num_skip", "skip-layers")]
add_pass_option("--ffn-fusion", "ffn_fusion", action="store_true", default=None,
                help="fuse runs of consecutive FFN blocks into one wide FFN (approximate; reports its error); when no two "
                     "FFNs are consecutive, first removes the attention of the layer with the lowest calibration score "
                     "(--drop-attention chooses instead)")
add_pass_option("--ffn-threshold", "ffn_threshold", type=float, metavar="T",
                help="max dependency (cosine distance) inside a fused FFN run (default 0.5)")
add_pass_option("--drop-attention", "drop_attention", metavar="IDX,...|auto[:K]",
                help="remove the attention of these layers ('auto:K': the K with the lowest calibration score)")
add_pass_option("--skip-layers", "target_speedup", type=float, metavar="R",
                help="skip layers spread through the middle of the stack for a predicted speedup R (e.g. 1.3)")
add_pass_option("--num-skip", "num_skip", type=int, metavar="K", help="skip exactly K layers (instead of --skip-layers R)")
add_pass_option("--skip-granularity", "skip_granularity", choices=["layer", "ffn"], help="skip whole layers (default) or FFNs")
add_pass_option("--precision", "precision", choices=["fp32", "bf16", "fp16"],
                help="GEMM/conv/attention in bf16|fp16 with f32 accumulation, weights stored so (policy: inspect --precision)")


def with_pass_flags(args: argparse.Namespace, options: dict) -> Optional[list]:
    """The pass list with the flag-enabled approximate passes in front; --inputs become their calibration data."""
    from .passes import pipeline
    base = args.passes.split(",") if args.passes else None
    pre = []
    for dest, name in PASS_FLAGS:
        if options.get(dest) is not None and name not in pre and not (name == "drop-attention" and options.get("ffn_fusion")):
            pre.append(name)   # with --ffn-fusion, the fusion pass drops the attention itself
    if not pre:
        return base
    if getattr(args, "inputs", None):
        specs = model_inputs(args.model, parse_input_shapes(args.input_shape))
        options["calibration"] = [make_inputs(specs, args.inputs)]
    return pre + [p for p in (base if base is not None else pipeline(_opt_level(args))) if p not in pre]


@command("optimize", "optimize an ONNX model: import, run the pass pipeline, export ONNX")
def cmd_optimize(args: argparse.Namespace) -> int:
    import onnx
    from .backends.onnx import export
    from .passes import optimize
    g = _load_for_cli(args.model, args)
    options = {dest: getattr(args, dest) for _, _, dest in PASS_OPTIONS if getattr(args, dest, None) is not None}
    passes = with_pass_flags(args, options)   # --ffn-fusion / --skip-layers / --drop-attention switch passes on
    g2, report = optimize(g, opt_level=_opt_level(args), passes=passes,
                          disable=args.disable.split(",") if args.disable else (), **options)
    m = export(g2, args.output)
    src = args.model
    if not src.lower().endswith(".onnx"):  # .mlir / .nnir in: the unoptimized import is the "before" model
        src = os.path.join(tempfile.mkdtemp(prefix="nnfuse-"), "original.onnx")
        export(g, src)
    a = onnx.load(src, load_external_data=False)
    out(before_after_table(a, m, model_bytes(a, src), model_bytes(m, args.output)))
    out("")
    out(report.table() if report.results else "(no passes ran)")
    err(f"wrote {args.output}")
    if args.verify:
        feeds = make_inputs(model_inputs(g), args.inputs, args.seed)
        want = ort_run(src, feeds)
        got = ort_run(args.output, feeds)
        ok, rows = compare([o.name for o in a.graph.output], got, want, args.atol, args.rtol)
        out("")
        out("verify (onnxruntime, original vs optimized" + (", random inputs" if not args.inputs else "") + "):")
        print_errors(rows, args.atol, args.rtol)
        if not ok:
            err("error: the optimized model's outputs differ beyond tolerance")
            return 1
    return 0


@cmd_optimize.args
def _optimize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="input model (.onnx, .mlir or .nnir)")
    p.add_argument("-o", "--output", required=True, help="output .onnx")
    p.add_argument("-O", dest="opt_level", type=int, choices=[0, 1, 2, 3], help="optimization level (default 2)")
    p.add_argument("--passes", help="comma-separated pass list instead of a preset")
    p.add_argument("--disable", help="comma-separated passes to switch off")
    p.add_argument("--verify", action="store_true", help="run original and optimized in onnxruntime and compare")
    _add_common(p)
    for flag, kw, _ in PASS_OPTIONS:
        p.add_argument(flag, **kw)


# ---------------------------------------------------------------- inspect
@command("inspect", "inputs/outputs, op histogram, parameters, FLOPs and peak activation memory of a model")
def cmd_inspect(args: argparse.Namespace) -> int:
    from .ir.analysis import analyze, human
    g = _load_for_cli(args.model, args)
    a = analyze(g)
    out(f"model {args.model}  (graph @{g.name})")
    out("inputs:")
    for v in g.inputs:
        out(f"  {v.name}: {v.type}")
    out("outputs:")
    for i, v in enumerate(g.outputs):
        name = g.output_names[i] if i < len(g.output_names) else f"output_{i}"
        out(f"  {name}: {v.type}")
    out(f"nodes: {len(g.nodes)}")
    out("ops:")
    for op, k in g.op_histogram().items():
        out(f"  {op:28s} {k:6d}   {human(a.flops_by_op.get(op, 0), 'FLOP'):>12s}")
    out(f"parameters: {a.params:,} ({human(a.param_bytes, 'B')})")
    out(f"FLOPs (estimate): {human(a.flops)}")
    out(f"peak activation memory (estimate): {human(a.peak_activation_bytes, 'B')}")
    if a.assumed:
        out(f"(symbolic dims counted as 1: {', '.join(sorted(a.assumed))}; fix them with --input-shape)")
    from .passes.blocks import discover
    out("transformer blocks:")
    for line in discover(g).describe():
        out("  " + line)
    if args.precision:
        from .passes.precision import precision_report
        out(precision_report(g, args.precision))
    return 0


@cmd_inspect.args
def _inspect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a .onnx (or .nnir) model")
    p.add_argument("--input-shape", action="append", metavar="NAME:D1,D2", help="fix an input's shape")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="also show this precision policy and what it does to the model")


# ---------------------------------------------------------------- verify
@command("verify", "compare nnfuse (or a second model) against onnxruntime numerically")
def cmd_verify(args: argparse.Namespace) -> int:
    if args.conformance:
        from .conformance import main as conformance_main
        return conformance_main(["--backend", args.backend, *(["--subsets", args.subsets] if args.subsets else [])])
    if not args.model:
        raise NnfuseError("verify needs a model (or --conformance)")
    if args.against != "onnxruntime":
        raise NnfuseError(f"--against {args.against}: only onnxruntime is supported for ONNX models")
    shapes = parse_input_shapes(args.input_shape)
    g = _load_for_cli(args.model, args)  # nnfuse's own checks first: clear errors for broken models
    feeds = make_inputs(model_inputs(g), args.inputs, args.seed)
    want = ort_run(args.model, feeds)
    if args.other:
        got, what = ort_run(args.other, feeds), f"{args.other} in onnxruntime"
    else:
        from .api import compile as nn_compile
        cm = nn_compile(g, backend=args.backend, opt_level=_opt_level(args))
        res = cm(*[feeds[v.name] for v in cm.graph.inputs])
        got, what = list(res) if isinstance(res, tuple) else [res], f"nnfuse backend '{args.backend}' -O{_opt_level(args)}"
    import onnx
    names = [o.name for o in onnx.load(args.model, load_external_data=False).graph.output]
    ok, rows = compare(names, got, want, args.atol, args.rtol)
    out(f"{what} vs onnxruntime on {args.model}" + (" (random inputs)" if not args.inputs else ""))
    print_errors(rows, args.atol, args.rtol)
    if not ok:
        err("error: outputs differ beyond tolerance")
        return 1
    return 0


@cmd_verify.args
def _verify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="a .onnx model (run by nnfuse, or the reference for OTHER)")
    p.add_argument("other", nargs="?", help="a second .onnx to compare against MODEL in onnxruntime")
    p.add_argument("--against", default="onnxruntime", help="the oracle (onnxruntime)")
    p.add_argument("--backend", default="reference", help="nnfuse backend to check (default reference)")
    p.add_argument("-O", dest="opt_level", type=int, choices=[0, 1, 2, 3], help="optimization level (default 2)")
    p.add_argument("--conformance", action="store_true", help="run the onnx wheel's test data (conformance sweep)")
    p.add_argument("--subsets", help="with --conformance: comma-separated subsets (light,pytorch-converted,...)")
    _add_common(p)


# ---------------------------------------------------------------- run
@command("run", "run a model on a backend with inputs from .npy files")
def cmd_run(args: argparse.Namespace) -> int:
    from .api import compile as nn_compile
    shapes = parse_input_shapes(args.input_shape)
    cm = nn_compile(args.model, backend=args.backend, opt_level=_opt_level(args), input_shapes=shapes or None,
                    **({"precision": args.precision} if args.precision else {}))
    names = [v.name for v in cm.graph.inputs]
    given = {}
    for spec in args.input or ():
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise NnfuseError(f"--input '{spec}': expected NAME=FILE.npy")
        if name not in names:
            raise NnfuseError(f"--input: the model has no input(s) {[name]}; inputs: {', '.join(names)}")
        try:
            given[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise NnfuseError(f"--input {name}: cannot read {path} ({e})") from None
    missing = [n for n in names if n not in given]
    if missing:
        if not args.random:
            raise NnfuseError(f"missing --input for {', '.join(missing)} (or pass --random for random inputs)")
        specs = [(v.name, v.type.dtype.np, [d if isinstance(d, int) else 1 for d in v.type.shape]) for v in cm.graph.inputs if v.name in missing]
        given.update(make_inputs(specs, seed=args.seed))
    res = cm(*[given[n] for n in names])
    outs = list(res) if isinstance(res, tuple) else [res]
    onames = [cm.graph.output_names[i] if i < len(cm.graph.output_names) else f"output_{i}" for i in range(len(outs))]
    for n, o in zip(onames, outs):
        o = np.asarray(o)
        stats = f"min {o.min():.4g} max {o.max():.4g} mean {o.astype(np.float64).mean():.4g}" if o.size and o.dtype.kind in "fiub" else ""
        out(f"{n}: {o.dtype}{list(o.shape)}  {stats}")
    if args.output:
        from .ir.serialize import save_arrays
        save_arrays(args.output, {n: np.asarray(o) for n, o in zip(onames, outs)})   # np.savez(**) breaks on 'file'
        err(f"wrote {args.output}")
    return 0


@cmd_run.args
def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a .onnx (or .nnir) model")
    p.add_argument("--input", action="append", metavar="NAME=FILE.npy", help="an input (repeatable)")
    p.add_argument("--random", action="store_true", help="random values for inputs not given")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="reference")
    p.add_argument("-O", dest="opt_level", type=int, choices=[0, 1, 2, 3], help="optimization level (default 2)")
    p.add_argument("-o", "--output", help="write the outputs to this .npz")
    p.add_argument("--input-shape", action="append", metavar="NAME:D1,D2", help="fix an input's shape")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="compute precision policy (default fp32)")
