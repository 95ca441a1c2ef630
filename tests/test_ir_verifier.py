"""The verifier: every named rule is triggered by a hand-broken graph, and the error names the rule
and prints the offending node's line."""
import numpy as np
import pytest

from nnfuse.ir import RULES, Builder, Graph, NnfuseError, TensorType, Value, VerifyError, verify


def base():
    b = Builder("g")
    x = b.input("x", ["B", 4])
    w = b.const(np.ones(4, np.float32), "w")
    y = b.add(x, w)
    z = b.relu(y)
    b.output(z)
    return b.graph


def fused_graph():
    b = Builder("g")
    x = b.input("x", ["B", 4])
    body = Builder("body")
    bx = body.input("x", ["B", 4])
    body.output(body.exp(bx))
    b.fused("pointwise", [x], body.graph)
    b.output(b.graph.nodes[0].outputs[0])
    return b.graph


def break_ssa_order(g):
    g.nodes.reverse()
    return "relu"


def break_single_def(g):
    g.nodes[1].outputs = g.nodes[0].outputs
    g.outputs = list(g.nodes[1].outputs)
    return "relu"


def break_known_op(g):
    g.nodes[1].op = "frobnicate"
    return "frobnicate"


def break_attrs(g):
    g.nodes[1].attrs = {"alpha": 2.0}
    return "relu"


def break_types(g):
    g.nodes[1].outputs[0].type = TensorType(["B", 5], "f32")
    return "relu"


def break_region(g):
    g.nodes[0].body.inputs[0].type = TensorType(["B", 3], "f32")
    return "fused"


def break_region_results(g):
    g.nodes[0].outputs[0].type = TensorType(["B", 4], "f16")
    return "fused"


def break_region_isolated(g):
    body = g.nodes[0].body
    body.nodes[0].inputs = [g.inputs[0]]  # the body reads the outer graph's input directly
    return "exp"


def break_outputs(g):
    g.outputs = [Value(TensorType([2], "f32"), "ghost")]
    return None


def break_const_data(g):
    g.constants["w"].data = np.ones(5, np.float32)
    return None


def break_unique_names(g):
    g.add_input("x", TensorType([2], "f32"))
    return None


CASES = {
    "ssa-order": (base, break_ssa_order), "ssa-single-def": (base, break_single_def), "known-op": (base, break_known_op),
    "attrs": (base, break_attrs), "type-agreement": (base, break_types), "region": (fused_graph, break_region),
    "region-isolated": (fused_graph, break_region_isolated), "outputs-defined": (base, break_outputs),
    "const-data": (base, break_const_data), "unique-names": (base, break_unique_names),
}


def test_every_rule_has_a_case():
    assert set(CASES) == set(RULES)


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_triggered(rule):
    make, brk = CASES[rule]
    g = make()
    verify(g)  # sound before breaking
    op = brk(g)
    with pytest.raises(VerifyError) as e:
        verify(g, where="my-pass")
    err = e.value
    assert isinstance(err, NnfuseError)
    assert err.rule == rule and str(err).startswith(f"[{rule}] after pass 'my-pass'"), str(err)
    if op is not None:  # node rules print the offending line as the printer writes it
        line = str(err).splitlines()[1]
        assert f"= {op}(" in line and " : " in line, str(err)


def test_region_results_mismatch():
    g = fused_graph()
    break_region_results(g)
    with pytest.raises(VerifyError, match=r"\[region\].*results f16\[B,4\] do not match body outputs f32\[B,4\]"):
        verify(g)


def test_type_agreement_message_names_both_types():
    g = base()
    break_types(g)
    with pytest.raises(VerifyError) as e:
        verify(g)
    assert "f32[B,5]" in str(e.value) and "inference gives f32[B,4]" in str(e.value)
    assert "%1 = relu(%0) : f32[B,5]" in str(e.value)


def test_fused_without_body():
    g = fused_graph()
    g.nodes[0].body = None
    with pytest.raises(VerifyError, match=r"\[region\] fused node without a body"):
        verify(g)


def test_empty_and_valid_graphs_pass():
    g = Graph("empty")
    verify(g)
    b = Builder()
    x = b.input("x", [2])
    verify(b.output(x))
    verify(fused_graph())
