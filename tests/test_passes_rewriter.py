"""The pattern rewriter: matching (ops, attrs, constants, shared captures, one-use, commutation) and the driver."""
import numpy as np
import pytest

from nnfuse.ir import Builder, evaluate, verify
from nnfuse.passes.rewriter import Const, Match, Op, Rule, Var, apply_rules


def _match(pat, v, g):
    return list(pat.match(v, Match(v, g.use_counts())))


def test_op_var_const_and_commutation():
    b = Builder()
    x = b.input("x", [4])
    y = b.mul(b.const(np.float32(1.0), "one"), x)  # constant first: mul is matched in both orders
    g = b.output(y)
    ms = _match(Op("mul", Var("x"), Const("c", value=1.0)), y, g)
    assert len(ms) == 1 and ms[0]["x"] is x and ms[0].scalar("c") == 1.0
    assert _match(Op("mul", Var("x"), Const(value=2.0)), y, g) == []
    assert _match(Op("sub", Var(), Const(value=1.0)), y, g) == []


def test_shared_capture_must_bind_the_same_value():
    b = Builder()
    x, z = b.input("x", [3, 4]), b.input("z", [3, 4])
    m = b.reduce_mean(x, axes=[-1], keepdims=True)
    good, bad = b.sub(x, m), b.sub(z, m)
    g = b.output(good, bad)
    X = Var("x")
    pat = Op("sub", X, Op("reduce_mean", X, attrs={"keepdims": True}))
    assert len(_match(pat, good, g)) == 1
    assert _match(pat, bad, g) == []  # z - mean(x) is not x - mean(x)


def test_attr_constraints_and_one_use():
    b = Builder()
    x = b.input("x", [2, 3])
    t = b.transpose(x, perm=[1, 0])
    y, w = b.relu(t), b.neg(t)
    g = b.output(y, w)
    assert len(_match(Op("relu", Op("transpose", Var(), attrs={"perm": (1, 0)})), y, g)) == 1
    assert _match(Op("relu", Op("transpose", Var(), attrs={"perm": lambda p: p == (0, 1)})), y, g) == []
    assert _match(Op("relu", Op("transpose", Var(), one_use=True)), y, g) == []  # t has two readers
    assert len(_match(Op("relu", Var("v", where=lambda v: v.type.rank == 2)), y, g)) == 1


def test_driver_reaches_fixpoint_and_keeps_results():
    b = Builder()
    x = b.input("x", [5])
    y = x
    for _ in range(4):  # neg(neg(neg(neg(x)))) -> x, needing two rewrites of the same rule
        y = b.neg(y)
    g = b.output(b.relu(y))
    xs = [np.linspace(-2, 2, 5, dtype=np.float32)]
    before = evaluate(g, xs)[0]
    fired = apply_rules(g, [Rule("neg-neg", Op("neg", Op("neg", Var("x"))), lambda m, rw: m["x"])])
    assert fired == {"neg-neg": 2}
    assert [n.op for n in g.nodes] == ["relu"]
    verify(g)
    np.testing.assert_array_equal(evaluate(g, xs)[0], before)


def test_builder_creates_nodes_and_type_changing_replacements_are_refused():
    b = Builder()
    x = b.input("x", [2, 3])
    g = b.output(b.mul(x, b.const(np.float32(2.0), "two")))
    # x*2 -> x+x: built in place, before the root
    fired = apply_rules(g, [Rule("mul2", Op("mul", Var("x"), Const(value=2.0)), lambda m, rw: rw.op("add", m["x"], m["x"]))])
    assert fired == {"mul2": 1} and [n.op for n in g.nodes] == ["add"]
    verify(g)
    # a rule whose result has another type is declined, not applied
    b = Builder()
    x = b.input("x", [2, 3])
    g = b.output(b.relu(x))
    fired = apply_rules(g, [Rule("bad", Op("relu", Var("x")), lambda m, rw: rw.op("reduce_sum", m["x"], axes=[0]))])
    assert fired == {} and [n.op for n in g.nodes] == ["relu"]


def test_build_that_does_not_type_check_is_declined():
    b = Builder()
    x = b.input("x", [2, 3])
    g = b.output(b.relu(x))
    fired = apply_rules(g, [Rule("bad", Op("relu", Var("x")), lambda m, rw: rw.op("matmul", m["x"], m["x"]))])
    assert fired == {}


def test_rules_for_unregistered_ops_never_fire():
    b = Builder()
    x = b.input("x", [2])
    g = b.output(b.relu(x))
    assert apply_rules(g, [Rule("nope", Op("no_such_op", Var()), lambda m, rw: None)]) == {}


def test_approximate_constant_literal():
    b = Builder()
    x = b.input("x", [2])
    y = b.mul(x, b.const(np.float32(0.7978846), "c"))
    g = b.output(y)
    assert len(_match(Op("mul", Var(), Const(value=float(np.sqrt(2 / np.pi)), rtol=1e-4)), y, g)) == 1
    assert _match(Op("mul", Var(), Const(value=float(np.sqrt(2 / np.pi)))), y, g) == []


@pytest.mark.parametrize("op", ["add", "mul"])
def test_commutation_with_a_shared_operand(op):
    b = Builder()
    x = b.input("x", [3])
    y = getattr(b, op)(x, x)
    g = b.output(y)
    assert len(_match(Op(op, Var("a"), Var("a")), y, g)) == 1
