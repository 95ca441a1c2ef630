"""ONNX backend: graph IR -> ONNX ModelProto (standard opset), run by onnxruntime.

`export(graph)` builds a model that passes `onnx.checker.check_model(full_check=True)`. Graph input
and output names are kept; every other name is generated (sanitized, unique). Fused regions are
inlined as their body ops (onnxruntime's own graph optimizer re-fuses the standard patterns);
symbolic dims in shape attributes are rebuilt at runtime from `Shape` of the graph input that binds them.
"""
from __future__ import annotations

import re
from typing import Any, Optional, Sequence

import numpy as np

from ..ir import Graph, NnfuseError, Value
from ..ir.types import TensorType

OPSET = 20
IR_DTYPE_TO_ONNX = {"f32": 1, "u8": 2, "i8": 3, "i16": 5, "i32": 6, "i64": 7, "bool": 9, "f16": 10, "f64": 11, "bf16": 16,
                    "f8e4m3": 17, "f8e5m2": 19, "u4": 21, "i4": 22, "f4e2m1": 23}


class OnnxExportError(NnfuseError):
    pass


def _clean(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_./:-]", "_", s)[:120] or "v"


class Exporter:
    def __init__(self, graph: Graph, opset: int = OPSET):
        self.graph, self.opset = graph, opset
        self.nodes: list = []
        self.inits: list = []
        self.names: dict[int, str] = {}   # value id -> ONNX name
        self.used: set[str] = set()
        self.sym_cache: dict[str, str] = {}
        self.meta: dict = {}

    # ---------------------------------------------------------------- names, constants, nodes
    def fresh(self, base: str) -> str:
        base = _clean(base)
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name

    def name(self, v: Value) -> str:
        try:
            return self.names[v.id]
        except KeyError:
            raise OnnxExportError(f"onnx export: value {v!r} is used before it is defined") from None

    def init(self, data: np.ndarray, base: str = "const") -> str:
        from onnx import numpy_helper
        n = self.fresh(base)
        t = numpy_helper.from_array(np.ascontiguousarray(data).reshape(data.shape), n)  # keeps 0-d scalars 0-d
        self.inits.append(t)
        return n

    def ints(self, vals: Sequence[int], base: str = "shape") -> str:
        return self.init(np.asarray(list(vals), dtype=np.int64), base)

    def scalar(self, value: Any, dtype: str, base: str = "k") -> str:
        from ..ir import dtype as to_dtype
        return self.init(np.asarray(value, dtype=to_dtype(dtype).np), base)

    def node(self, op_type: str, inputs: Sequence[str], n_out: int = 1, domain: str = "", outputs: Optional[list] = None,
             **attrs: Any) -> Any:
        from onnx import helper
        outs = outputs or [self.fresh(f"{op_type.lower()}_out") for _ in range(n_out)]
        loc = self.meta.get("loc", "")
        nm = self.fresh(f"{loc}/{op_type}" if loc else op_type)
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=nm, domain=domain or None, **attrs))
        return outs[0] if len(outs) == 1 else outs

    def dims(self, shape: Sequence, base: str = "shape") -> str:
        """An int64 1-D tensor name holding `shape`; symbolic entries come from Shape of the input binding them."""
        if all(isinstance(d, int) for d in shape):
            return self.ints(shape, base)
        parts = [self.ints([d], base) if isinstance(d, int) else self.sym(d) for d in shape]
        return self.node("Concat", parts, axis=0)

    def sym(self, d: str) -> str:
        """A [1] int64 tensor with the runtime value of symbolic dim `d` (a product like "B*S" too)."""
        if d in self.sym_cache:
            return self.sym_cache[d]
        factors = d.split("*")
        if len(factors) > 1:
            acc = self.sym(factors[0]) if not factors[0].isdigit() else self.ints([int(factors[0])])
            for f in factors[1:]:
                acc = self.node("Mul", [acc, self.sym(f) if not f.isdigit() else self.ints([int(f)])])
            self.sym_cache[d] = acc
            return acc
        for v in self.graph.inputs:
            if d in v.type.shape:
                ax = v.type.shape.index(d)
                r = self.node("Shape", [self.name(v)], start=ax, end=ax + 1)
                self.sym_cache[d] = r
                return r
        raise OnnxExportError(f"onnx export: symbolic dim {d!r} is not bound by any graph input")

    # ---------------------------------------------------------------- driver
    def run(self):
        from onnx import helper
        g = self.graph
        for v in g.inputs:
            self.used.add(v.name)
            self.names[v.id] = v.name
        out_names = [g.output_names[i] if i < len(g.output_names) and g.output_names[i] else f"output_{i}"
                     for i in range(len(g.outputs))]
        for i, n in enumerate(out_names):  # an output may not reuse an input's or another output's name
            if n in self.used:
                out_names[i] = self.fresh(n)
            self.used.add(out_names[i])
        for k, v in g.constants.items():
            if v.data is None:
                raise OnnxExportError(f"onnx export: constant @{k} has no data (load the graph with its weights)")
            self.names[v.id] = self.init(v.data, k)
        self.emit_graph(g)
        # graph outputs: rename the producing node's output when we can, else add an Identity
        final = []
        taken: set[int] = set()
        for v, name in zip(g.outputs, out_names):
            src = self.name(v)
            prod = next((nd for nd in reversed(self.nodes) if src in nd.output), None)
            if prod is not None and v.id not in taken and src not in {i.name for i in g.inputs}:
                prod.output[list(prod.output).index(src)] = name
                for nd in self.nodes:
                    for j, i in enumerate(nd.input):
                        if i == src:
                            nd.input[j] = name
                self.names[v.id] = name
                taken.add(v.id)
            else:
                self.nodes.append(helper.make_node("Identity", [src], [name], name=self.fresh(f"{name}/Identity")))
            final.append(helper.make_tensor_value_info(name, IR_DTYPE_TO_ONNX[v.type.dtype.name], _shape(v.type)))
        inputs = [helper.make_tensor_value_info(v.name, _onnx_dtype(v.type), _shape(v.type)) for v in g.inputs]
        gp = helper.make_graph(self.nodes, _clean(g.name), inputs, final, initializer=self.inits)
        m = helper.make_model(gp, opset_imports=[helper.make_opsetid("", self.opset)], producer_name="nnfuse")
        m.ir_version = min(m.ir_version, 10)
        return m

    def emit_graph(self, g: Graph) -> None:
        from .onnx_ops import EMITTERS
        for n in g.nodes:
            if n.body is not None:
                self.inline(n)
                continue
            fn = EMITTERS.get(n.op)
            if fn is None:
                raise OnnxExportError(f"onnx export: IR op '{n.op}' has no ONNX form ({n.loc or 'unnamed node'})")
            self.meta = n.meta
            outs = fn(self, n, [self.name(v) for v in n.inputs])
            outs = outs if isinstance(outs, list) else [outs]
            for v, o in zip(n.outputs, outs):
                self.names[v.id] = o

    def inline(self, n) -> None:
        b = n.body
        for bv, v in zip(b.inputs, n.inputs):
            self.names[bv.id] = self.name(v)
        for k, c in b.constants.items():
            self.names[c.id] = self.init(c.data, k)
        self.emit_graph(b)
        for bv, v in zip(b.outputs, n.outputs):
            self.names[v.id] = self.name(bv)


def _onnx_dtype(t: TensorType) -> int:
    try:
        return IR_DTYPE_TO_ONNX[t.dtype.name]
    except KeyError:
        raise OnnxExportError(f"onnx export: dtype {t.dtype} has no ONNX element type") from None


def _shape(t: TensorType) -> list:
    return [d if isinstance(d, int) else str(d) for d in t.shape]


def _has_dtype(g: Graph, names: tuple) -> bool:
    vals = list(g.inputs) + list(g.constants.values()) + [o for n in g.nodes for o in n.outputs]
    return any(v.type.dtype.name in names for v in vals) or any(_has_dtype(n.body, names) for n in g.nodes if n.body is not None)


def export(graph: Graph, path: Optional[str] = None, opset: int = OPSET, check: bool = True):
    """Graph IR -> onnx.ModelProto (written to `path` when given)."""
    import onnx
    if _has_dtype(graph, ("i4", "u4")):
        opset = max(opset, 21)  # 4-bit tensors (and casts from them) are opset 21
    m = Exporter(graph, opset).run()
    if check:
        try:
            onnx.checker.check_model(m, full_check=True)
        except Exception as e:  # noqa: BLE001 - the checker raises several error types
            raise OnnxExportError(f"onnx export produced an invalid model (nnfuse bug): {str(e)[:500]}") from None
    if path is not None:
        onnx.save(m, path)
    return m


class OnnxExecutable:
    """Runs the exported model in onnxruntime (CPU)."""
    name = "onnx"

    def __init__(self, graph: Graph, threads: int = 0):
        import onnxruntime as ort
        self.graph = graph
        self.model = export(graph)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        self.session = ort.InferenceSession(self.model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        self.input_names = [v.name for v in graph.inputs]

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, dict(zip(self.input_names, inputs)))

    def source(self) -> str:
        import onnx
        return onnx.printer.to_text(self.model)

    def stats(self) -> dict:
        return {"onnx_nodes": len(self.model.graph.node)}


def compile_graph(graph: Graph, **options: Any) -> OnnxExecutable:
    return OnnxExecutable(graph, int(options.get("threads", 0) or 0))
