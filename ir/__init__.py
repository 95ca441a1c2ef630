"""nnfuse.ir: graph IR (level 1), dtypes, op registry, text format, verifier, evaluator."""
from . import dtypes  # noqa: F401
from .builder import Builder, make_fused, make_node  # noqa: F401
from .dtypes import DTYPES, DType, dtype  # noqa: F401
from .evaluate import EvalError, evaluate  # noqa: F401
from .graph import Graph, Node, Value  # noqa: F401
from .nxview import to_dot, to_networkx  # noqa: F401
from .ops import OPS, Attr, OpDef, OpError, get_op, register  # noqa: F401
from .parser import ParseError, parse, parse_file  # noqa: F401
from .printer import print_graph  # noqa: F401
from .serialize import load, save  # noqa: F401
from .types import Dim, TensorType, broadcast_shapes  # noqa: F401
from .verifier import RULES, VerifyError, verify  # noqa: F401
from .errors import NnfuseError  # noqa: F401
