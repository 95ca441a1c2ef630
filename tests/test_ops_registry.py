"""The registry as a whole: every op is tested somewhere, schemas are well formed, and generic
misuse (arity, attributes) fails at construction with an error naming the op and operand types."""
import glob
import os

import pytest
from conftest import infer

import nnfuse.ir as ir
from nnfuse.ir import OPS, OpError, TensorType
from nnfuse.ir.ops import ATTR_KINDS

HERE = os.path.dirname(__file__)


def test_every_op_has_semantics_tests():
    src = "".join(open(p).read() for p in glob.glob(os.path.join(HERE, "test_ops_*.py")) if not p.endswith("test_ops_registry.py"))
    untested = [name for name in OPS if name != "fused" and f'"{name}"' not in src]
    assert not untested, f"ops without a test in tests/test_ops_*.py: {untested}"


def test_required_ops_exist():
    need = """neg abs exp log sqrt rsqrt reciprocal tanh sigmoid relu leaky_relu elu gelu silu softplus hard_sigmoid hard_swish erf
    sin cos floor ceil round sign identity not cast clip add sub mul div pow max min mod eq ne lt le gt ge and or xor where
    reduce_sum reduce_mean reduce_max reduce_min reduce_prod reduce_l2 reduce_log_sum_exp argmax argmin softmax log_softmax
    cumsum matmul gemm layer_norm rms_norm reshape transpose concat split slice gather expand squeeze unsqueeze flatten fused
    conv conv_transpose max_pool avg_pool global_avg_pool global_max_pool batch_norm instance_norm group_norm lrn prelu selu
    shrink pad tile gather_elements embedding arange constant_of_shape shape scaled_dot_product_attention""".split()
    assert not [n for n in need if n not in OPS]


@pytest.mark.parametrize("name", sorted(OPS))
def test_schema_well_formed(name):
    od = OPS[name]
    assert od.name == name and od.kind in ("unary", "binary", "reduce", "matmul", "conv", "pool", "norm", "attention", "shape",
                                           "misc", "region")
    lo, hi = od.arity
    assert lo >= 0 and (hi == -1 or hi >= lo)
    for k, a in od.attrs.items():
        assert a.kind in ATTR_KINDS, f"{name}.{k}: kind {a.kind}"


@pytest.mark.parametrize("name", sorted(n for n, od in OPS.items() if od.arity[1] >= 0 and n != "fused"))
def test_too_many_operands(name):
    od = OPS[name]
    ts = [TensorType([2, 3], "f32")] * (od.arity[1] + 1)
    with pytest.raises(OpError) as e:
        od.infer_types(ts, {})
    assert f"op '{name}' on (" in str(e.value) and "f32[2,3]" in str(e.value) and "operands" in str(e.value)


@pytest.mark.parametrize("name", sorted(n for n, od in OPS.items() if od.kind == "unary"))
def test_unary_symbolic_passthrough(name):
    t = TensorType(["B", "S*B", 4], "f32")
    attrs = {"to": "f16"} if name == "cast" else {}
    if name == "not":
        t = t.with_dtype("bool")
    assert infer(name, t, **attrs).shape == ("B", "B*S", 4)


def test_attr_coercion_errors():
    b = ir.Builder()
    x = b.input("x", [2, 3])
    with pytest.raises(OpError, match="'transpose': attribute 'perm' must be ints"):
        b.transpose(x, perm="10")
    with pytest.raises(OpError, match="'concat': attribute 'axis' must be int"):
        b.concat(x, axis=1.5)
    with pytest.raises(OpError, match="'cast': attribute 'to' must be dtype"):
        b.cast(x, to="f99")
    with pytest.raises(OpError, match="'pad': attribute 'mode' must be one of"):
        b.pad(x, pads=[0, 0, 0, 0], mode="wrap")
    with pytest.raises(OpError, match="unknown op 'frobnicate'"):
        b.op("frobnicate", x)
    with pytest.raises(OpError, match="fused.*body"):
        b.op("fused", x)
