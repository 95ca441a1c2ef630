"""`torch.compile(model, backend="nnfuse")`: the TorchDynamo backend.

Registered under the `torch_dynamo_backends` entry point (pyproject.toml), so torch finds it by name
without nnfuse being imported first. Options: `torch.compile(m, backend="nnfuse",
options={"backend": "cpu", "opt_level": 2, ...})`; everything except "backend" goes to `nnfuse.compile`.

Route: dynamo's FX graph (torch-level calls: F.linear, methods, in-place ops) goes through
`aot_autograd`, which functionalizes it and traces it down to ATen with the same decomposition table
as the torch.export frontend; the forward compiler then feeds that ATen graph to the shared importer
(`frontends/torch_fx.py`). Lowering dynamo's graph directly would mean a second lowering table for the
whole torch API and hand-written functionalization; aot_autograd is what inductor uses for the same job.

- Graph breaks: dynamo calls the backend once per subgraph; each is compiled on its own.
- Parameters and buffers (dynamo passes them as graph inputs) are baked in as constants sharing the
  torch tensors' memory; if one is later replaced or changed in place (its version counter moves) the
  subgraph is rebuilt, since passes may have folded copies of it. Writes through `.data` are invisible.
- A subgraph nnfuse cannot import, compile or run falls back to PyTorch (the ATen graph) with ONE
  warning naming the reason (for unsupported ops: every op, with module path and source line).
- Inference only: with gradients enabled on trainable inputs the subgraph runs in PyTorch (one warning).
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Optional, Sequence

import torch

from .errors import NnfuseError


class NnfuseFallbackWarning(UserWarning):
    """A (sub)graph runs in PyTorch because nnfuse could not compile or run it."""


def nnfuse_backend(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], options: Optional[dict] = None,
                   mode: Optional[str] = None) -> Callable:
    """The dynamo backend entry point: returns a callable that runs `gm` through nnfuse."""
    from torch._dynamo.backends.common import aot_autograd
    from .frontends.torch import decomposition_table

    opts = dict(options or {})
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in example_inputs):
        _warn("gradients are enabled and inputs require grad; nnfuse compiles inference graphs "
              "(call the compiled model under torch.no_grad() or torch.inference_mode())")
        return gm.forward
    sources = [_source_name(n) for n in gm.graph.nodes if n.op == "placeholder"]
    real = list(example_inputs)

    def forward_compiler(aot_gm: torch.fx.GraphModule, aot_inputs: Sequence[Any]) -> Callable:
        return SubgraphRunner(aot_gm, real, sources, opts)

    decomps = {op: fn for op, fn in decomposition_table().items()}
    return aot_autograd(fw_compiler=forward_compiler, decompositions=decomps)(gm, example_inputs)


def _warn(msg: str) -> None:
    warnings.warn(f"nnfuse: running this graph in PyTorch: {msg}", NnfuseFallbackWarning, stacklevel=3)


def _source_name(n: torch.fx.Node) -> str:
    arg = n.meta.get("grapharg")
    src = getattr(arg, "source", None)
    try:
        return src.name() if src is not None else n.name
    except Exception:  # noqa: BLE001  a source kind without a printable name
        return n.name


def _is_weight(t: Any, source: str) -> bool:
    return isinstance(t, torch.nn.Parameter) or "._buffers[" in source or "._parameters[" in source


def _weight_name(source: str) -> str:
    from .frontends.torch_fx import module_path
    return module_path(source).replace("_parameters.", "").replace("_buffers.", "") or "w"


class SubgraphRunner:
    """One compiled ATen subgraph: builds the IR lazily from real weights; falls back to torch on failure."""

    def __init__(self, aot_gm: torch.fx.GraphModule, real: list, sources: list[str], opts: dict):
        self.gm, self.opts = aot_gm, dict(opts)
        self.backend = self.opts.pop("backend", "reference")
        placeholders = [n for n in aot_gm.graph.nodes if n.op == "placeholder"]
        aligned = len(placeholders) == len(real) == len(sources)
        self.weights = {i: real[i] for i in range(len(placeholders))
                        if aligned and isinstance(real[i], torch.Tensor) and _is_weight(real[i], sources[i])
                        and _same_meta(real[i], placeholders[i].meta.get("val"))}
        self.names = sources if aligned else [n.name for n in placeholders]
        self.fallback: Optional[Callable] = None
        self.compiled = None
        self.runtime_idx: list[int] = []
        self.ptrs: dict[int, int] = {}
        self._build()

    # ---- building
    def _build(self) -> None:
        from torch._subclasses.fake_tensor import unset_fake_temporarily
        try:
            with unset_fake_temporarily():  # aot_autograd calls us under fake mode; the weights are real tensors
                graph, self.runtime_idx = self._import()
            import nnfuse
            self.compiled = nnfuse.compile(graph, backend=self.backend, **self.opts)
            self.ptrs = {i: (t.data_ptr(), t._version) for i, t in self.weights.items()}
        except Exception as e:  # noqa: BLE001  never crash the user's torch.compile: run this part in torch
            self._fall_back(e)

    def _fall_back(self, e: Exception) -> None:
        msg = str(e) if isinstance(e, NnfuseError) else f"{type(e).__name__}: {e}"
        _warn(msg)
        self.fallback = self.gm.forward if hasattr(self.gm, "forward") else self.gm
        self.compiled = None

    def _import(self):
        from .frontends.torch import LOWER
        from .frontends.torch_fx import Importer, Unsupported, tensor_to_numpy
        im = Importer("dynamo_graph")
        runtime_idx = []
        tensor_syms: set = set()
        for i, n in enumerate(n for n in self.gm.graph.nodes if n.op == "placeholder"):
            val = n.meta.get("val")
            if i in self.weights:
                im.env[n] = im.const(tensor_to_numpy(self.weights[i]), _weight_name(self.names[i]))
            elif isinstance(val, torch.Tensor):
                im.env[n] = im.g.add_input(_input_name(self.names[i], i), im.ttype(val))
                tensor_syms |= {d for d in im.env[n].type.shape if isinstance(d, str)}
                runtime_idx.append(i)
            elif isinstance(val, (torch.SymInt, int)) and not isinstance(val, bool):
                im.env[n] = im.dim(val)
            else:
                raise Unsupported(f"graph input {n.name} is a {type(val).__name__}")
        for n in self.gm.graph.nodes:  # a size argument must be readable from some tensor input's shape
            if n.op == "placeholder" and isinstance(im.env[n], str) and im.env[n] not in tensor_syms \
                    and not any(im.env[n] in s.split("*") for s in tensor_syms):
                raise Unsupported(f"size argument {im.env[n]} is not a dim of any tensor input")
        outs = im.run(self.gm.graph, LOWER)
        im.g.set_outputs(outs)
        im.g.remove_unused_constants()
        return im.g, runtime_idx

    # ---- running
    def __call__(self, *args):
        if self.fallback is None and any((args[i].data_ptr(), args[i]._version) != p for i, p in self.ptrs.items()):
            # weights were replaced or updated in place (passes may have folded copies of them): rebuild
            self.weights = {i: args[i] for i in self.weights}
            self._build()
        if self.fallback is not None:
            return self.fallback(*args)
        from .frontends.torch_fx import numpy_to_tensor, tensor_to_numpy
        try:
            outs = self.compiled.executable([tensor_to_numpy(args[i]) for i in self.runtime_idx])
        except Exception as e:  # noqa: BLE001  a backend failing at run time: switch this subgraph to torch for good
            self._fall_back(e)
            return self.fallback(*args)
        return tuple(numpy_to_tensor(o) for o in outs)


def _same_meta(t: torch.Tensor, fake: Any) -> bool:
    return isinstance(fake, torch.Tensor) and tuple(t.shape) == tuple(fake.shape) and t.dtype == fake.dtype


def _input_name(source: str, i: int) -> str:
    import re
    from .frontends.torch_fx import module_path
    local = re.fullmatch(r"L\['(\w+)'\]", source)
    name = local.group(1) if local else re.sub(r"\W", "_", module_path(source)).strip("_")
    return name or f"arg{i}"
