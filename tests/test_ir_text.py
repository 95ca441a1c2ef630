"""The text format: random valid graphs round-trip print -> parse -> print exactly (and verify);
.nnir save/load keeps weights; malformed text gives a located ParseError; `nnfuse dump` on .nnir."""
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nnfuse.ir as ir
from nnfuse.ir import Builder, ParseError, make_fused, parse, print_graph, verify

NAME_CHARS = st.sampled_from(list("abcXYZ_019.-") + ['"', "\\", "\n", " ", "é", "%", "@", "#", "{", "\t", "→"])
names = st.text(NAME_CHARS, min_size=1, max_size=6)
locs = st.text(max_size=12)  # any unicode, escapes and edge spaces included
DIMS = [1, 2, 3, 4, "B", "S", "B*S"]
IN_DTYPES = ["f32", "f16", "bf16", "f64", "i64", "i32", "bool"]
CONST_DTYPES = ["f32", "f16", "bf16", "f64", "i64", "i32", "i8", "u8", "bool", "i4", "u4", "f8e4m3", "f8e5m2"]
FLOAT_UNARY = ["exp", "tanh", "sigmoid", "gelu", "leaky_relu", "elu", "hard_sigmoid", "clip", "selu", "shrink", "erf", "silu"]
floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
small_floats = st.floats(-4, 4, allow_nan=False)


def _const_data(draw, shape, dt):
    n = int(np.prod(shape))
    if dt == "bool":
        vals = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    elif dt in ("i4",):
        vals = draw(st.lists(st.integers(-8, 7), min_size=n, max_size=n))
    elif dt in ("u4", "u8"):
        vals = draw(st.lists(st.integers(0, 15 if dt == "u4" else 255), min_size=n, max_size=n))
    elif dt in ("i64", "i32", "i8"):
        lim = {"i64": 2**63 - 1, "i32": 2**31 - 1, "i8": 127}[dt]
        vals = draw(st.lists(st.integers(-lim - 1, lim), min_size=n, max_size=n))
    else:
        vals = draw(st.lists(st.one_of(floats, small_floats) if dt in ("f32", "f64") else small_floats, min_size=n, max_size=n))
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range floats become inf in small dtypes: fine
        return np.array(vals, dtype=np.float64 if ir.dtype(dt).is_float else None).astype(ir.dtype(dt).np).reshape(shape)


@st.composite
def graphs(draw):
    b = Builder(draw(names))
    pool = []
    used = set()
    for _ in range(draw(st.integers(1, 3))):
        n = draw(names.filter(lambda s: s not in used))
        used.add(n)
        shape = draw(st.lists(st.sampled_from(DIMS), max_size=3))
        pool.append(b.input(n, shape, draw(st.sampled_from(IN_DTYPES))))
    for _ in range(draw(st.integers(0, 3))):
        dt = draw(st.sampled_from(CONST_DTYPES))
        shape = tuple(draw(st.lists(st.integers(1, 3), max_size=2))) if draw(st.booleans()) else (5, 4)  # (5,4): a reference
        pool.append(b.const(_const_data(draw, shape, dt), draw(names), dtype=dt))
    for _ in range(draw(st.integers(1, 8))):
        b.meta = {"loc": draw(locs)} if draw(st.booleans()) else {}
        v = draw(st.sampled_from(pool))
        step = draw(st.sampled_from(STEPS))
        out = step(draw, b, v)
        if out is not None:
            pool.extend(out if isinstance(out, list) else [out])
    outs = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3))
    onames = [draw(names) for _ in outs] if draw(st.booleans()) else None
    return b.output(*outs, names=onames)


def _is_float(v):
    return v.dtype.is_float


def s_unary(draw, b, v):
    if not _is_float(v):
        return None
    op = draw(st.sampled_from(FLOAT_UNARY))
    attrs = {"gelu": lambda: {"approximate": draw(st.sampled_from(["none", "tanh"]))},
             "leaky_relu": lambda: {"alpha": draw(floats)}, "elu": lambda: {"alpha": draw(small_floats)},
             "hard_sigmoid": lambda: {"alpha": draw(small_floats), "beta": draw(small_floats)},
             "clip": lambda: {"min": draw(st.none() | small_floats), "max": draw(st.none() | small_floats)},
             "shrink": lambda: {"lambd": draw(small_floats)}}.get(op, dict)()
    return b.op(op, v, **attrs)


def s_binary(draw, b, v):
    if v.dtype.name == "bool":
        return b.op(draw(st.sampled_from(["and", "or", "xor"])), v, v)
    op = draw(st.sampled_from(["add", "sub", "mul", "div", "max", "min", "mod", "pow"]))
    other = v
    if v.type.rank and isinstance(v.shape[-1], int) and draw(st.booleans()):
        other = b.const(_const_data(draw, (v.shape[-1],), v.dtype.name), "bias", dtype=v.dtype.name)
    return b.op(op, v, other, **({"fmod": draw(st.booleans())} if op == "mod" else {}))


def s_compare_where(draw, b, v):
    c = b.op(draw(st.sampled_from(["lt", "le", "eq", "ne", "gt", "ge"])), v, v)
    return [c, b.where(c, v, v)]


def s_cast(draw, b, v):
    return b.cast(v, to=draw(st.sampled_from(IN_DTYPES + ["i8", "u8"])))


def s_reduce(draw, b, v):
    if not v.type.rank or v.dtype.name == "bool":
        return None
    axes = draw(st.lists(st.integers(-v.type.rank, v.type.rank - 1), min_size=1, max_size=2, unique_by=lambda a: a % v.type.rank))
    op = draw(st.sampled_from(["reduce_sum", "reduce_max", "reduce_min"] + (["reduce_mean", "reduce_l2"] if _is_float(v) else [])))
    return b.op(op, v, axes=axes, keepdims=draw(st.booleans()))


def s_argmax(draw, b, v):
    if not v.type.rank or v.dtype.name == "bool":
        return None
    return b.argmax(v, axis=draw(st.integers(-v.type.rank, v.type.rank - 1)), keepdims=draw(st.booleans()),
                    select_last_index=draw(st.booleans()))


def s_transpose(draw, b, v):
    return b.transpose(v, perm=draw(st.permutations(range(v.type.rank))))


def s_reshape(draw, b, v):
    if 0 in v.shape:  # -1 is ambiguous for an empty tensor (torch and ONNX reject it too)
        return None
    if v.type.rank < 2:
        return b.reshape(v, shape=[-1])
    return b.reshape(v, shape=[0, -1])


def _static_axes(v, at_least=1):
    return [i for i, d in enumerate(v.shape) if isinstance(d, int) and d >= at_least]


def s_split_concat(draw, b, v):
    axes = _static_axes(v, 2)
    if not axes:
        return None
    ax = draw(st.sampled_from(axes))
    d = v.shape[ax]
    cut = draw(st.integers(1, d - 1))
    parts = b.split(v, axis=ax, sizes=[cut, d - cut])
    return parts + [b.concat(parts[1], parts[0], v, axis=ax - v.type.rank)]


def s_slice(draw, b, v):
    axes = _static_axes(v)
    if not axes:
        return None
    ax = draw(st.sampled_from(axes))
    step = draw(st.sampled_from([1, 2, -1, -2]))
    return b.slice(v, starts=[draw(st.integers(-5, 5))], ends=[draw(st.sampled_from([-(2**63), -1, 0, 2, 2**63 - 1]))], axes=[ax],
                   steps=[step])


def s_softmax(draw, b, v):
    if not _is_float(v) or not v.type.rank:
        return None
    return b.op(draw(st.sampled_from(["softmax", "log_softmax"])), v, axis=draw(st.integers(-v.type.rank, v.type.rank - 1)))


def s_unsqueeze_expand(draw, b, v):
    u = b.unsqueeze(v, axes=[0])
    return [u, b.expand(u, shape=[draw(st.sampled_from([2, "B"]))] + [1] * v.type.rank)]


def s_make(draw, b, v):
    a = b.arange(start=draw(small_floats), end=draw(small_floats), step=draw(st.sampled_from([0.5, 1.0, -1.0, 3.0])),
                 dtype=draw(st.sampled_from(["i64", "f32"])))
    c = b.constant_of_shape(shape=draw(st.lists(st.sampled_from(DIMS), max_size=3)), value=draw(floats),
                            dtype=draw(st.sampled_from(["f32", "bf16", "i64", "bool"])))
    return [a, c, b.shape(v, start=draw(st.integers(-3, 0)))]


def s_fused(draw, b, v):
    if not _is_float(v):
        return None
    body = Builder(draw(names))
    x = body.input(draw(names), v.shape, v.dtype.name)
    body.meta = {"loc": draw(locs)}
    c = body.const(_const_data(draw, (), v.dtype.name), draw(names), dtype=v.dtype.name)
    y = body.mul(body.op(draw(st.sampled_from(FLOAT_UNARY[:4])), x), c)
    body.output(y, body.reduce_sum(y, keepdims=True))
    extra = {"scales": tuple(draw(st.lists(small_floats, max_size=3))), "tag": draw(names)} if draw(st.booleans()) else {}
    n = make_fused(draw(st.sampled_from(["pointwise", "generic", 'odd"kind'])), [v], body.graph, dict(b.meta), **extra)
    b.graph.add_node(n)
    return n.outputs


STEPS = [s_unary, s_binary, s_compare_where, s_cast, s_reduce, s_argmax, s_transpose, s_reshape, s_split_concat, s_slice,
         s_softmax, s_unsqueeze_expand, s_make, s_fused]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(graphs())
def test_print_parse_roundtrip(g):
    verify(g)
    text = print_graph(g)
    g2 = parse(text)
    verify(g2)
    assert print_graph(g2) == text
    for k, v in g.constants.items():  # inline constants come back exactly (NaN stays NaN, -0.0 stays -0.0)
        if v.data is not None and v.data.size <= 16:
            a, c = v.data.reshape(-1), g2.constants[k].data.reshape(-1)
            assert a.dtype == c.dtype
            if ir.dtype(a.dtype).is_float:
                a, c = a.astype(np.float64), c.astype(np.float64)
                assert np.array_equal(np.isnan(a), np.isnan(c))
                a, c = a[~np.isnan(a)], c[~np.isnan(c)]
                np.testing.assert_array_equal(np.signbit(a), np.signbit(c))
            np.testing.assert_array_equal(a, c)


def test_roundtrip_details():
    b = Builder('a"b\n')
    x = b.input('we"ird\nname', ["B", 3])
    b.meta = {"loc": " model.layers.0 \\n # x\n"}
    s = b.split(x, axis=1, sizes=[1, 2])
    g = b.output(s[1], s[0], names=['o"1', "o2"])
    text = print_graph(g)
    assert '%0, %1 = split(%"we\\"ird\\nname")' in text and "# " in text
    g2 = parse(text)
    assert g2.name == 'a"b\n' and g2.inputs[0].name == 'we"ird\nname' and g2.output_names == ['o"1', "o2"]
    assert g2.nodes[0].meta["loc"] == " model.layers.0 \\n # x\n"
    assert print_graph(g2) == text


# ---------------------------------------------------------------- save / load with weights
def test_save_load_weights(tmp_path, rng):
    b = Builder("m")
    x = b.input("x", ["B", 8], "bf16")
    w = b.const(rng.standard_normal((8, 4)).astype(ml_dtypes.bfloat16), "fc.weight")
    q = b.const(rng.integers(-8, 8, (4, 6)).astype(ml_dtypes.int4), "q.int4")
    f8 = b.const(rng.standard_normal((20,)).astype(ml_dtypes.float8_e4m3fn), "f8")
    ids = b.const(rng.integers(0, 2**40, (3, 7)).astype(np.int64), "file")  # 'file' broke np.savez(**kw)
    y = b.matmul(x, w)
    body = Builder("body")
    bx = body.input("x", ["B", 4], "bf16")
    body.output(body.add(bx, body.const(np.ones(4, ml_dtypes.bfloat16) * 3, "fc.weight")))  # same name as the outer constant
    n = make_fused("pointwise", [y], body.graph)
    b.graph.add_node(n)
    g = b.output(n.outputs[0], b.cast(q, to="i8"), b.cast(f8, to="f32"), b.reduce_sum(ids))
    path = str(tmp_path / "m.nnir")
    ir.save(g, path)
    g2 = ir.load(path)
    verify(g2)
    assert print_graph(g2) == print_graph(g)
    for k, v in g.constants.items():
        got = g2.constants[k].data
        assert got.dtype == v.data.dtype and got.shape == v.data.shape
        np.testing.assert_array_equal(got.view(np.uint8), v.data.view(np.uint8))
    np.testing.assert_array_equal(g2.nodes[1].body.constants["fc.weight"].data.astype(np.float32), np.full(4, 3.0))
    xin = rng.standard_normal((2, 8)).astype(ml_dtypes.bfloat16)
    for a, c in zip(ir.evaluate(g, [xin]), ir.evaluate(g2, [xin])):
        np.testing.assert_array_equal(np.asarray(a).reshape(-1).view(np.uint8), np.asarray(c).reshape(-1).view(np.uint8))


# ---------------------------------------------------------------- malformed text
GOOD = """graph @g(%x: f32[2,3]) -> (f32[2,3]) {
  const @w : f32[3] = [1.0, 2.0, 3.0]
  %0 = relu(%x) : f32[2,3]
  %1 = add(%0, @w) : f32[2,3]
  return %1
}
"""
BAD = {  # name: (replace this, with this, expected message part, line)
    "missing paren": ("relu(%x)", "relu(%x", "unexpected", 3),
    "unknown op": ("relu(", "frobnicate(", "unknown op 'frobnicate'", 3),
    "unknown dtype": ("%x: f32[2,3]", "%x: f33[2,3]", "unknown dtype 'f33'", 1),
    "undefined value": ("add(%0, @w)", "add(%9, @w)", "undefined value %9", 4),
    "undefined const": ("add(%0, @w)", "add(%0, @v)", "undefined value @v", 4),
    "redefined value": ("%1 = add", "%0 = add", "defined twice", 4),
    "wrong result count": ("%0 = relu(%x) : f32[2,3]", "%0, %5 = relu(%x) : f32[2,3], f32[2,3]", "gives 1 result(s)", 3),
    "bad attr": ("relu(%x)", "relu(%x) {alpha = 2.0}", "unknown attribute", 3),
    "bad attr value": ("relu(%x)", 'gelu(%x) {approximate = "fast"}', "must be one of", 3),
    "const count": ("[1.0, 2.0, 3.0]", "[1.0, 2.0]", "needs 3 values, got 2", 2),
    "return mismatch": ("return %1", "return %1, %0", "return has 2 values", 5),
    "return type": ("-> (f32[2,3])", "-> (f32[3,2])", "signature says f32[3,2]", 1),
    "bad char": ("%1 = add", "%1 = add$", "unexpected character '$'", 4),
    "truncated": ("  return %1\n}\n", "  return %1\n", "unexpected end of input", 5),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_text(case):
    old, new, msg, line = BAD[case]
    assert old in GOOD
    text = GOOD.replace(old, new)
    with pytest.raises(ParseError) as e:
        parse(text, "model.nnir")
    s = str(e.value)
    assert s.startswith(f"model.nnir:{line}:") and msg in s, s
    assert e.value.line == line and e.value.column >= 1
    src = text.splitlines()[line - 1] if line <= len(text.splitlines()) else ""
    assert src.strip() in s  # the offending line is quoted
    assert "Traceback" not in s and "lark" not in s.lower()


def test_good_text_parses():
    g = parse(GOOD)
    verify(g)
    assert print_graph(g) == GOOD
    np.testing.assert_array_equal(ir.evaluate(g, [np.array([[-1, 2, -3], [4, -5, 6]], np.float32)])[0], [[1, 4, 3], [5, 2, 9]])


# ---------------------------------------------------------------- the CLI face
NNFUSE = os.path.join(os.path.dirname(sys.executable), "nnfuse")


def test_cli_dump_nnir(tmp_path):
    p = tmp_path / "g.nnir"
    p.write_text(GOOD)
    r = subprocess.run([NNFUSE, "dump", str(p)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == GOOD
    out = tmp_path / "h.nnir"
    r = subprocess.run([NNFUSE, "dump", str(p), "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and out.read_text() == GOOD


def test_cli_dump_bad_text(tmp_path):
    p = tmp_path / "bad.nnir"
    p.write_text(GOOD.replace("relu(%x)", "relu(%x"))
    r = subprocess.run([NNFUSE, "dump", str(p)], capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert f"{p}:3:" in out and "Traceback" not in out


FUSED = """graph @g(%x: f32[B,4]) -> (f32[B,4]) {
  %0 = fused(%x) {kind = "pointwise", scales = [0.5, 2.0]} : f32[B,4] graph @body(%a: f32[B,4]) -> (f32[B,4]) {  # blk.0
    const @c : f32[] = 2.0
    %0 = exp(%a) : f32[B,4]  # blk.0.exp
    %1 = mul(%0, @c) : f32[B,4]
    return %1
  }
  return %0
}
"""


def test_fused_region_text():
    g = parse(FUSED)
    verify(g)
    assert print_graph(g) == FUSED
    n = g.nodes[0]
    assert n.attrs == {"kind": "pointwise", "scales": (0.5, 2.0)} and n.loc == "blk.0" and n.body.nodes[0].loc == "blk.0.exp"
    np.testing.assert_allclose(ir.evaluate(g, [np.zeros((2, 4), np.float32)])[0], np.full((2, 4), 2.0))
    assert print_graph(parse(FUSED.replace("\n", "\r\n"))) == FUSED  # CRLF files parse the same
    with pytest.raises(ParseError) as e:  # errors inside a region point into the region
        parse(FUSED.replace("exp(%a)", "exq(%a)"), "f.nnir")
    assert str(e.value).startswith("f.nnir:4:") and "unknown op 'exq'" in str(e.value)
    with pytest.raises(ParseError) as e:  # a region does not see the outer scope
        parse(FUSED.replace("exp(%a)", "exp(%x)"), "f.nnir")
    assert str(e.value).startswith("f.nnir:4:") and "undefined value %x" in str(e.value)


def test_parse_error_at_end_of_input_points_past_the_text():
    with pytest.raises(ParseError) as e:
        parse("graph @g(%x: f32[2]) -> (f32[2]) {\n  return %x\n", "f.nnir")
    assert str(e.value).startswith("f.nnir:2:12: unexpected end of input")


def _mm_graph(n_out: int):
    b = Builder("m")
    x = b.input("x", ["B", 4])
    return b.output(b.relu(b.matmul(x, b.const(np.ones((4, n_out), np.float32), "w"))))


def test_load_rejects_weights_of_another_model(tmp_path):
    """A .npz whose array shapes/dtypes disagree with the text was attached silently (wrong output shape)."""
    a, other = str(tmp_path / "a.nnir"), str(tmp_path / "b.nnir")
    ir.save(_mm_graph(30), a)
    ir.save(_mm_graph(50), other)
    os.replace(str(tmp_path / "b.npz"), str(tmp_path / "a.npz"))
    with pytest.raises(ir.NnfuseError, match=r"a\.npz: constant @w has shape \[4, 50\] but the graph declares f32\[4,30\]"):
        ir.load(a)
    np.savez(str(tmp_path / "a.npz"), w=np.ones((4, 30), np.float64))
    with pytest.raises(ir.NnfuseError, match="constant @w is float64"):
        ir.load(a)
    (tmp_path / "a.npz").write_bytes(b"not a zip file")
    with pytest.raises(ir.NnfuseError, match="not a readable nnfuse weights file"):
        ir.load(a)
    np.savez(str(tmp_path / "a.npz"), w=np.full((4, 30), 2, np.float32))
    assert float(ir.load(a).constants["w"].data[0, 0]) == 2.0


def test_load_unreadable_or_missing_nnir_is_a_clear_error(tmp_path):
    p = tmp_path / "bin.nnir"
    p.write_bytes(b"\xff\xfe\x00 garbage")
    with pytest.raises(ir.NnfuseError, match="cannot read as nnir text"):
        ir.load(str(p))
    with pytest.raises(ir.NnfuseError, match="no such file"):
        ir.load(str(tmp_path / "none.nnir"))


def test_compile_without_weights_names_the_constants(tmp_path):
    """A .nnir whose weights file is gone: every backend must say so (cpu said 'value used before it is defined')."""
    import nnfuse
    p = str(tmp_path / "m.nnir")
    ir.save(_mm_graph(30), p)
    os.remove(str(tmp_path / "m.npz"))
    for backend in ("reference", "cpu"):
        with pytest.raises(ir.NnfuseError, match="constant.*@w.*no data"):
            nnfuse.compile(p, backend=backend)
    with pytest.raises(ir.NnfuseError, match="no such file"):
        nnfuse.load(str(tmp_path / "none.nnir"))
