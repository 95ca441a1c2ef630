"""All ops, registered on import. See `registry.py` for what an op definition holds."""
from . import attention, elementwise, generate, linalg, nn, reduce, region, shape  # noqa: F401  (registration side effects)
from . import quant  # noqa: F401,E402  (quantize/dequantize/matmul_integer/hadamard)
from .registry import ATTR_KINDS, OPS, REQUIRED, Attr, OpDef, OpError, get_op, norm_axis, register  # noqa: F401
