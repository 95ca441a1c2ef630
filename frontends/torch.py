"""PyTorch importer: nn.Module + example inputs -> graph IR, through torch.export.

    graph = load(model, (x,), dynamic=True)

1. `torch.export.export` traces the model (non-strict by default) in eval mode under no_grad (and, for
   transformers models, with `config.use_cache` off: one forward pass, no KV-cache object to return).
2. `run_decompositions` lowers it to core ATen, except the ops nnfuse lowers itself (linear, layer_norm,
   gelu, silu, softmax, scaled_dot_product_attention, embedding, ...): they stay whole so the IR keeps them.
3. `torch_fx.Importer` maps each ATen node onto IR ops (`torch_aten*.py`). Parameters and buffers become
   constants that share memory with the torch tensors (numpy views, no copy).

Node meta: "loc" = module path as `named_modules()` spells it, "src" = "file.py:line" (see torch_fx).
Dynamic shapes: `dynamic=True` makes dim 0 of every tensor input a batch symbol "B" (torch's Dim.AUTO, so
a size torch must specialize stays static; an example batch of 1 is traced as a batch of 2 so it stays B);
`dynamic_shapes` (torch.export's format) names any dims, and the IR symbol is the `Dim`'s name. Sequence dims are not made dynamic by `dynamic=True`: transformers'
mask code computes sizes like S+1, which an IR dim cannot spell (`Importer.dim` says so when it happens).
"""
from __future__ import annotations

import re
import warnings
from typing import Any, Optional

import torch
import torch.utils._pytree as pytree

from ..ir import Graph, NnfuseError, verify
from . import torch_aten, torch_aten_shape  # noqa: F401  (register the lowerings)
from .torch_fx import LOWER, Importer, Unsupported, tensor_to_numpy


class TorchImportError(NnfuseError):
    pass


def decomposition_table() -> Any:
    """Core ATen decompositions minus every op nnfuse lowers natively."""
    table = torch.export.default_decompositions()
    for op in list(table.keys()):
        if str(op) in LOWER:
            table.pop(op)
    return table


def load(model: torch.nn.Module, example_inputs: tuple, dynamic: bool = False, dynamic_shapes: Any = None,
         strict: bool = False) -> Graph:
    """Import `model` called on `example_inputs` (a tuple of tensors) as a graph IR."""
    if not isinstance(example_inputs, tuple):
        example_inputs = tuple(example_inputs) if isinstance(example_inputs, list) else (example_inputs,)
    tensors = [t for t in pytree.tree_leaves(example_inputs) if isinstance(t, torch.Tensor)]
    names: dict = {}  # (index among the tensor inputs, axis) -> IR symbol
    if dynamic_shapes is None and dynamic:
        if any(t.dim() > 0 and t.shape[0] == 1 for t in tensors):
            # torch specializes a size-1 dim to the constant 1: trace with the example rows repeated to a batch
            # of 2 (values matter only to data-dependent code, which torch.export rejects anyway)
            example_inputs = pytree.tree_map(lambda t: t.repeat(2, *[1] * (t.dim() - 1)) if isinstance(t, torch.Tensor)
                                             and t.dim() > 0 and t.shape[0] == 1 else t, example_inputs)
            tensors = [t for t in pytree.tree_leaves(example_inputs) if isinstance(t, torch.Tensor)]
        dynamic_shapes = _batch_spec(tensors)
        names = {(i, 0): "B" for i, t in enumerate(tensors) if t.dim() > 0}
    elif dynamic_shapes is not None:
        names = _dim_names(model, example_inputs, dynamic_shapes, tensors)
    ep = export(model, example_inputs, dynamic_shapes, strict)
    return from_exported(ep, type(model).__name__, _symbol_names(ep, names))


def _batch_spec(leaves: list) -> Any:
    spec = torch.export.ShapesCollection()  # keyed by tensor: works for any forward signature
    for t in leaves:
        if isinstance(t, torch.Tensor) and t.dim() > 0:
            spec[t] = {0: torch.export.Dim.AUTO}
    return spec


def export(model: torch.nn.Module, args: tuple, dynamic_shapes: Any = None, strict: bool = False):
    """torch.export in eval mode, decomposed; failures become a TorchImportError with torch's reason."""
    modes = {m: m.training for m in model.modules()}
    model.eval()  # nnfuse compiles for inference: dropout off, batch norm on running statistics
    # transformers models return a KV cache object by default, which torch.export cannot output:
    # compile the plain forward pass (restored afterwards)
    config = getattr(model, "config", None)
    cache = getattr(config, "use_cache", None)
    if cache:
        config.use_cache = False
    try:
        with torch.no_grad():
            ep = torch.export.export(model, args, dynamic_shapes=dynamic_shapes, strict=strict)
    except Exception as e:  # noqa: BLE001  torch raises many types here; all mean "could not trace"
        raise TorchImportError(_export_failure(model, e, strict)) from None
    finally:
        for m, was in modes.items():
            m.training = was
        if cache:
            config.use_cache = cache
    try:
        with warnings.catch_warnings():  # torch 2.13's own pytree use warns about LeafSpec inside run_decompositions
            warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
            return ep.run_decompositions(decomposition_table())
    except Exception as e:  # noqa: BLE001
        raise TorchImportError(f"torch could not decompose the exported {type(model).__name__}: {type(e).__name__}: "
                               f"{_first_lines(str(e))}") from None


def _first_lines(s: str, n: int = 12) -> str:
    lines = [ln for ln in s.strip().splitlines() if ln.strip()]
    return "\n".join(lines[:n]) + ("\n  ..." if len(lines) > n else "")


def _export_failure(model, e: Exception, strict: bool) -> str:
    hint = ("pass strict=False (non-strict tracing runs the Python code as is), or " if strict else "") + \
        "use torch.compile(model, backend=\"nnfuse\"), which splits the model at what it cannot trace and " \
        "runs those parts in PyTorch"
    at = _user_frame(e)
    return (f"torch.export could not trace {type(model).__name__}{' at ' + at if at else ''}: {type(e).__name__}: "
            f"{_first_lines(str(e))}\nhint: {hint}")


def _user_frame(e: Exception) -> str:
    """'file.py:line: code' of the innermost model frame in the traceback (not torch's or nnfuse's)."""
    import os
    import traceback
    import nnfuse
    skip = (os.path.dirname(torch.__file__), os.path.dirname(__file__), os.path.dirname(nnfuse.__file__))
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith(skip)]
    if not frames:
        return ""
    f = frames[-1]
    return f"{os.path.basename(f.filename)}:{f.lineno}" + (f" ({f.line.strip()})" if f.line else "")


def _dim_names(model, args: tuple, dynamic_shapes: Any, tensors: list) -> dict:
    """(tensor input index, axis) -> the name of the user's torch.export.Dim there."""
    from torch.export import dynamic_shapes as ds
    try:
        if hasattr(dynamic_shapes, "dynamic_shapes"):  # ShapesCollection / AdditionalInputs
            dynamic_shapes = dynamic_shapes.dynamic_shapes(model, args)
        constraints = ds._process_dynamic_shapes(ds._combine_args(model, args, {}), dynamic_shapes)
    except Exception:  # noqa: BLE001  a spec torch rejects: export reports it; names are cosmetic
        return {}
    index = {id(t): i for i, t in enumerate(tensors)}
    names = {}
    for c in constraints:
        name = getattr(c, "name", None)
        if isinstance(name, str) and getattr(c, "t_id", None) in index and type(c).__name__ == "_Constraint":
            names[index[c.t_id], c.dim] = name
    return names


def _symbol_names(ep, names: dict) -> dict:
    """sympy symbol -> IR symbol, for the dims `names` gives at the user inputs' positions."""
    specs = ep.graph_signature.input_specs
    user = [n for n, s in zip((n for n in ep.graph.nodes if n.op == "placeholder"), specs) if s.kind.name == "USER_INPUT"]
    vals = [n.meta.get("val") for n in user]
    vals = [v for v in vals if isinstance(v, torch.Tensor)]
    out: dict = {}
    for (i, axis), name in sorted(names.items()):
        if i >= len(vals) or axis >= vals[i].dim() or not isinstance(vals[i].shape[axis], torch.SymInt):
            continue  # torch kept this dim static
        expr = vals[i].shape[axis].node.expr
        if not expr.is_Symbol or expr in out:
            continue
        name, base, k = re.sub(r"\W", "_", name), re.sub(r"\W", "_", name), 1
        while name in out.values():
            name, k = f"{base}{k}", k + 1
        out[expr] = name
    return out


def from_exported(ep, name: str = "main", sym_names: Optional[dict] = None) -> Graph:
    """An ExportedProgram (already decomposed) -> graph IR."""
    im = Importer(name, sym_names)
    sig = ep.graph_signature
    params = {**sig.inputs_to_parameters, **sig.inputs_to_buffers, **sig.inputs_to_lifted_tensor_constants}
    tensors = {**ep.state_dict, **ep.constants}
    for n in ep.graph.nodes:
        if n.op != "placeholder":
            continue
        if n.name in params:
            target = params[n.name]
            t = tensors[target]
            if not isinstance(t, torch.Tensor):
                raise TorchImportError(f"constant '{target}' is a {type(t).__name__}, not a tensor")
            im.env[n] = im.const(tensor_to_numpy(t), target)
        elif isinstance(n.meta.get("val"), torch.Tensor):
            im.env[n] = im.g.add_input(n.name, im.ttype(n.meta["val"]))
        else:
            raise TorchImportError(f"input '{n.name}' is a {type(n.meta.get('val')).__name__}; nnfuse graphs take tensors "
                                   "(make scalars tensors or close over them)")
    try:
        outs = im.run(ep.graph, LOWER)
    except Unsupported as e:
        raise TorchImportError(f"cannot import {name}: {e}") from None
    im.g.set_outputs(outs, _output_names(ep, len(outs)))
    im.g.remove_unused_constants()
    im.g.meta["source"] = "torch"
    verify(im.g)
    return im.g


def _output_names(ep, n: int) -> list[str]:
    """Names from the output pytree: ModelOutput/dict keys ("logits"), else out0, out1..."""
    try:
        spec = ep.call_spec.out_spec
        keyed = pytree.tree_flatten_with_path(pytree.tree_unflatten(list(range(n)), spec))[0]
        names = []
        for path, _ in keyed:
            key = path[-1] if path else None
            k = getattr(key, "key", getattr(key, "name", getattr(key, "idx", None)))
            names.append(k if isinstance(k, str) else f"out{len(names)}")
        if len(set(names)) == n:
            return names
    except Exception:  # noqa: BLE001  names are cosmetic
        pass
    return [f"out{i}" for i in range(n)]
