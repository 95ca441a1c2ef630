"""MLIR types, attributes and locations -> nnfuse terms, through torch-mlir's Python bindings and C API.

torch-mlir ships no Python class for `!torch.vtensor`, so its shape and dtype are read through the
exported C API (`torchMlirTorchValueTensorTypeGet*`) with ctypes on the binding's own capsules.
`dense_resource` weights have no Python accessor either: they are materialized by MLIR itself — each
becomes a public `memref.global`, lowered to LLVM and JIT-loaded, and its bytes are read at the symbol's
address (one ExecutionEngine for all the weights of a module).
"""
from __future__ import annotations

import ctypes
import os
from typing import Optional

import numpy as np

from torch_mlir import ir
import torch_mlir._mlir_libs as _libs

from ..ir import NnfuseError, TensorType

_api = ctypes.CDLL(os.path.join(os.path.dirname(_libs.__file__), "libTorchMLIRAggregateCAPI.so"))
_py = ctypes.pythonapi
_py.PyCapsule_GetName.restype, _py.PyCapsule_GetName.argtypes = ctypes.c_char_p, [ctypes.py_object]
_py.PyCapsule_GetPointer.restype, _py.PyCapsule_GetPointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
_py.PyCapsule_New.restype, _py.PyCapsule_New.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


class _MlirType(ctypes.Structure):  # MlirType in the C API: one opaque pointer, passed by value
    _fields_ = [("ptr", ctypes.c_void_p)]


def _isa(cls, x) -> bool:
    """`isinstance` that also sees through the bindings' generic Type/Attribute wrappers."""
    if isinstance(x, cls):
        return True
    try:
        cls(x)
        return True
    except (ValueError, TypeError):
        return False


def _sig(name, res, *args):
    f = getattr(_api, name)
    f.restype, f.argtypes = res, list(args)
    return f


_is_vtensor = _sig("torchMlirTypeIsATorchValueTensor", ctypes.c_bool, _MlirType)
_has_sizes = _sig("torchMlirTorchValueTensorTypeHasSizes", ctypes.c_bool, _MlirType)
_has_dtype = _sig("torchMlirTorchValueTensorTypeHasDtype", ctypes.c_bool, _MlirType)
_rank = _sig("torchMlirTorchValueTensorTypeGetRank", ctypes.c_int64, _MlirType)
_sizes = _sig("torchMlirTorchValueTensorTypeGetSizes", ctypes.c_int64, _MlirType, ctypes.POINTER(ctypes.c_int64))
_dtype = _sig("torchMlirTorchValueTensorTypeGetDtype", _MlirType, _MlirType)


def _c_type(t) -> _MlirType:
    cap = t._CAPIPtr
    return _MlirType(_py.PyCapsule_GetPointer(cap, _py.PyCapsule_GetName(cap)))


def resource_name(attr: ir.Attribute) -> str:
    """The blob key of a `dense_resource<key>` attribute (the C API's GetName gives the handle's dialect name)."""
    s = str(attr)  # the attribute alone prints as `dense_resource<key> : tensor<...>`
    key = s[len("dense_resource<"):s.find(">")] if s.startswith("dense_resource<") else ""
    return "".join(c if c.isalnum() or c in "_.-" else "_" for c in key) or "w"


def _py_type(c: _MlirType, like: ir.Type) -> ir.Type:
    name = _py.PyCapsule_GetName(like._CAPIPtr)
    return ir.Type._CAPICreate(_py.PyCapsule_New(c.ptr, name, None))


def element_dtype(t: ir.Type) -> str:
    """An MLIR element type (f32, si64, i1, ...) -> nnfuse dtype name."""
    if _isa(ir.F32Type, t):
        return "f32"
    if _isa(ir.F16Type, t):
        return "f16"
    if _isa(ir.BF16Type, t):
        return "bf16"
    if _isa(ir.F64Type, t):
        return "f64"
    if _isa(ir.IntegerType, t):
        it = ir.IntegerType(t)
        if it.width == 1:
            return "bool"
        if it.width in (4, 8, 16, 32, 64):
            name = f"{'u' if it.is_unsigned else 'i'}{it.width}"
            if name in ("i4", "i8", "i16", "i32", "i64", "u8", "u4"):
                return name
    if _isa(ir.IndexType, t):
        return "i64"
    raise NnfuseError(f"element type {t} is not supported")


def _dims(sizes) -> tuple:
    # a dynamic dim (-1 in torch types, ShapedType's kDynamic in builtin ones) becomes a symbol
    return tuple(d if d >= 0 else f"d{i}" for i, d in enumerate(sizes))


def tensor_type(t: ir.Type) -> Optional[TensorType]:
    """`!torch.vtensor<[..],dt>` or a builtin ranked tensor -> TensorType; None for non-tensor types."""
    if _isa(ir.RankedTensorType, t):
        rt = ir.RankedTensorType(t)
        return TensorType([d if not rt.is_dynamic_dim(i) else f"d{i}" for i, d in enumerate(rt.shape)],
                          element_dtype(rt.element_type))
    c = _c_type(t)
    if not _is_vtensor(c):
        return None
    if not _has_sizes(c) or not _has_dtype(c):
        raise NnfuseError(f"tensor type {t} has no static rank/dtype (run torch-mlir's backend pipeline first)")
    r = _rank(c)
    buf = (ctypes.c_int64 * max(r, 1))()
    _sizes(c, buf)
    return TensorType(_dims(list(buf)[:r]), element_dtype(_py_type(_dtype(c), t)))


def location(loc: ir.Location) -> str:
    """`file:line:col` for a file location, the name for a NameLoc, else MLIR's own spelling."""
    try:
        if isinstance(loc.filename, str):
            return f"{loc.filename}:{loc.start_line}:{loc.start_col}"
    except Exception:  # noqa: BLE001  (not a FileLineColLoc)
        pass
    s = str(loc)
    if s == "loc(unknown)":
        return ""
    if s.startswith('loc("') and '":' in s:  # loc("file":line:col), as diagnostics print it
        file, _, rest = s[5:-1].partition('":')
        return f"{file}:{rest}"
    return s[4:-1] if s.startswith("loc(") else s


def is_resource(attr: ir.Attribute) -> bool:
    try:
        ir.DenseResourceElementsAttr(attr)
        return True
    except ValueError:
        return False


def dense_to_numpy(attr: ir.Attribute, dtype: str) -> np.ndarray:
    """A dense elements attribute (splat or not) -> numpy array of the nnfuse dtype."""
    from ..ir import dtype as to_dtype
    np_t = to_dtype(dtype).np
    shape = tuple(ir.ShapedType(attr.type).shape)
    if _isa(ir.DenseElementsAttr, attr):
        d = ir.DenseElementsAttr(attr)
        if d.is_splat:
            v = d.get_splat_value()
            return np.full(shape, _scalar(v), dtype=np_t)
        if _isa(ir.DenseIntElementsAttr, attr) or _isa(ir.DenseFPElementsAttr, attr):
            try:
                return np.array(d, copy=True).astype(np_t).reshape(shape)
            except (TypeError, ValueError, RuntimeError):
                return np.array([_scalar(d[i]) for i in range(len(d))], dtype=np_t).reshape(shape)
    raise NnfuseError(f"cannot read constant attribute {str(attr)[:80]}")


def _scalar(a):
    if _isa(ir.BoolAttr, a):
        return ir.BoolAttr(a).value
    if _isa(ir.IntegerAttr, a):
        return ir.IntegerAttr(a).value
    if _isa(ir.FloatAttr, a):
        return ir.FloatAttr(a).value
    raise NnfuseError(f"cannot read scalar attribute {a}")


def read_resources(attrs: list[ir.Attribute], ctx: ir.Context, dtypes: list[str]) -> list[np.ndarray]:
    """Materialize `dense_resource` blobs: public memref.globals -> LLVM -> JIT; copy each from its address."""
    if not attrs:
        return []
    from torch_mlir.dialects import memref
    from torch_mlir import passmanager
    from torch_mlir.execution_engine import ExecutionEngine
    from ..ir import dtype as to_dtype
    with ctx, ir.Location.unknown():
        mod = ir.Module.create()
        with ir.InsertionPoint(mod.body):
            for i, a in enumerate(attrs):
                st = ir.ShapedType(a.type)
                # ExecutionEngine.raw_lookup(n) resolves "_mlir_" + n: name the globals to match
                memref.GlobalOp(sym_name=f"_mlir_w{i}", type_=ir.MemRefType.get(st.shape, st.element_type),
                                initial_value=a, constant=True, sym_visibility="public", alignment=64)
        passmanager.PassManager.parse("builtin.module(finalize-memref-to-llvm,reconcile-unrealized-casts)").run(mod.operation)
        engine = ExecutionEngine(mod, opt_level=0)
        out = []
        for i, (a, dt) in enumerate(zip(attrs, dtypes)):
            st = ir.ShapedType(a.type)
            shape = tuple(st.shape)
            n = int(np.prod(shape, dtype=np.int64))
            store = np.uint8 if dt == "bool" else to_dtype(dt).np  # i1 globals are one byte per element
            nbytes = n * np.dtype(store).itemsize
            addr = engine.raw_lookup(f"w{i}")
            if not addr:
                raise NnfuseError(f"weight {str(a)[:60]}: the JIT did not materialize it")
            raw = (ctypes.c_ubyte * nbytes).from_address(addr) if nbytes else b""
            arr = np.frombuffer(bytes(raw), dtype=store).reshape(shape)
            out.append(arr.astype(bool) if dt == "bool" else arr.copy())
        del engine
    return out
