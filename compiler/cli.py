"""The `nnfuse` command line. Exit codes: 0 ok, 1 a user error (bad model, failed check), 2 bad usage."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from . import __version__
from .ir import NnfuseError

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {}


def command(name: str, help: str):
    """Register a subcommand: the decorated function runs it; `.args` adds its arguments."""
    def deco(run):
        def add_args(setup):
            COMMANDS[name] = (setup, run, help)
            return setup
        run.args = add_args
        COMMANDS[name] = (lambda p: None, run, help)
        return run
    return deco


def out(text: str = "") -> None:
    sys.stdout.write(text + ("" if text.endswith("\n") else "\n"))


def err(text: str) -> None:
    sys.stderr.write(text + ("" if text.endswith("\n") else "\n"))


# ---------------------------------------------------------------- dump
def _load_for_cli(path: str, args: argparse.Namespace):
    from .api import to_graph
    opts = {}
    if getattr(args, "input_shape", None):
        opts["input_shapes"] = parse_input_shapes(args.input_shape)
    return to_graph(path, **opts)


def parse_input_shapes(specs) -> dict:
    shapes = {}
    for s in specs or ():
        name, _, dims = s.rpartition(":")
        if not name or not dims:
            raise NnfuseError(f"--input-shape '{s}': expected NAME:D1,D2,... (e.g. x:1,3,224,224)")
        dl = [int(d) if d.strip().lstrip("-").isdigit() else d.strip() for d in dims.split(",")]
        bad = [d for d in dl if (isinstance(d, int) and d < 0) or (isinstance(d, str) and not all(f.strip().isidentifier() or f.strip().isdigit() for f in d.split("*")))]
        if bad:
            raise NnfuseError(f"--input-shape '{s}': dims must be sizes >= 0 or symbol names, not {bad}")
        shapes[name] = dl
    return shapes


@command("dump", "print a model's IR (graph level; kernel/source with a backend)")
def cmd_dump(args: argparse.Namespace) -> int:
    from .ir import print_graph, save, verify
    g = _load_for_cli(args.model, args)
    verify(g)
    if args.opt_level is not None or args.print_after_all or args.passes:
        from .passes import optimize
        g, report = optimize(g, opt_level=args.opt_level if args.opt_level is not None else 2,
                             passes=args.passes.split(",") if args.passes else None, verify_each=True,
                             print_after_all=args.print_after_all, emit=lambda s: out(s))
    if args.level != "graph":
        from .api import compile as nn_compile
        cm = nn_compile(g, backend=args.backend, opt_level=0)
        text = cm.dump(args.level)
    else:
        text = print_graph(g)
    if args.output:
        if args.output.endswith(".nnir") and args.level == "graph":
            wp = save(g, args.output)
            err(f"wrote {args.output} (+ weights {wp})")
        else:
            with open(args.output, "w") as f:
                f.write(text)
            err(f"wrote {args.output}")
    else:
        out(text)
    return 0


@cmd_dump.args
def _dump_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a .nnir, .onnx or .mlir file")
    p.add_argument("-o", "--output", help="write here (.nnir writes the weights beside it)")
    p.add_argument("--level", default="graph", choices=["graph", "kernel", "source"])
    p.add_argument("--backend", default="cpu", help="backend for --level kernel/source")
    p.add_argument("-O", dest="opt_level", type=int, choices=[0, 1, 2, 3], help="optimize before printing")
    p.add_argument("--passes", help="comma-separated pass list instead of a preset")
    p.add_argument("--print-after-all", action="store_true", help="print the IR after every pass")
    p.add_argument("--input-shape", action="append", metavar="NAME:D1,D2", help="fix an input's shape")


# ---------------------------------------------------------------- compile
@command("compile", "compile a model for a backend: optimize, lower, build; report the passes and the program")
def cmd_compile(args: argparse.Namespace) -> int:
    import time
    from .api import compile as nn_compile
    opts = {}
    if args.input_shape:
        opts["input_shapes"] = parse_input_shapes(args.input_shape)
    for key in ("precision", "quantize"):
        if getattr(args, key):
            opts[key] = getattr(args, key)
    if sys.stderr.isatty():   # progress for a person watching; scripts get only the result (or one error line)
        err(f"compiling {args.model} for {args.backend} at O{args.opt_level} ...")
    t0 = time.perf_counter()
    cm = nn_compile(args.model, backend=args.backend, opt_level=args.opt_level, **opts)
    st = cm.stats()
    out(cm.report.table() if cm.report is not None and cm.report.results else "(no passes ran)")
    out("")
    rows = [("nodes after passes", st["nodes"]), ("compile seconds", f"{time.perf_counter() - t0:.2f}")]
    for key in ("kernels", "kernel_kinds", "arena_bytes", "naive_bytes", "cache_hit", "threads"):
        if key in st:
            rows.append((key.replace("_", " "), st[key]))
    for fam, path in st.get("kernel_paths", {}).items():   # what -march=native chose on this CPU
        rows.append((f"{fam.replace('_', '-')} kernels", path))
    for k, v in rows:
        out(f"{k:20s} {v}")
    if args.output:
        cm.save(args.output)
        err(f"wrote {args.output} (reload with nnfuse.load or `nnfuse run {args.output} --backend {args.backend}`)")
    return 0


@cmd_compile.args
def _compile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a .onnx, .mlir or .nnir file")
    p.add_argument("--backend", default="cpu", help="cpu (default), triton, cuda, reference, mlir, onnx")
    p.add_argument("-O", dest="opt_level", type=int, default=2, choices=[0, 1, 2, 3], help="optimization level (default 2)")
    p.add_argument("-o", "--output", help="save the optimized graph here (.nnir + weights beside it)")
    p.add_argument("--input-shape", action="append", metavar="NAME:D1,D2", help="fix an input's shape (repeatable)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="compute precision policy (default fp32)")
    p.add_argument("--quantize", metavar="SCHEME", help="quantization scheme, e.g. w8a8, w4g128 (see docs/quantization.md)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnfuse", description="nnfuse: a compiler and IR toolkit for neural-network graphs")
    p.add_argument("--version", action="version", version=f"nnfuse {__version__}")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    _load_commands()
    for name, (setup, _, help) in COMMANDS.items():
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,  # keep `nnfuse --debug CMD`
                        help="show Python tracebacks on errors")
        setup(sp)
    return p


def _load_commands() -> None:
    """Commands defined in other modules register themselves on import."""
    import importlib
    for mod in ("nnfuse.cli_onnx", "nnfuse.cli_bench", "nnfuse.cli_quant"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if not args.command:
        p.print_help()
        return 2
    debug = args.debug
    try:
        return COMMANDS[args.command][1](args) or 0
    except NnfuseError as e:
        if debug:
            raise
        err(f"error: {e}")
        return 1
    except OSError as e:   # a path the user gave cannot be read or written: their error, not a bug
        if debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        err(f"error: {where}{e.strerror or e}")
        return 1
    except KeyboardInterrupt:
        err("interrupted")
        return 130
    except Exception as e:  # a bug in nnfuse: say so plainly, traceback with --debug
        if debug:
            raise
        err(f"internal error: {type(e).__name__}: {e}\n(run with --debug for the traceback; please report it)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
