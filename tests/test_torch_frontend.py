"""PyTorch frontend: ATen lowerings, hand-written MLP/CNN, metadata, dynamic shapes, errors, CompiledModel.

Oracle: PyTorch eager. Tolerances: single ops rtol=atol=1e-5 (f32), whole models rtol=atol=1e-4 (f32),
bf16 2e-2.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import nnfuse  # noqa: E402
from nnfuse.frontends import torch as torch_frontend  # noqa: E402
from nnfuse.ir import evaluate, verify  # noqa: E402

THIS = os.path.basename(__file__)


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def check(model, inputs, rtol=1e-5, atol=1e-5, **kw):
    """Import through torch.export, verify, evaluate on the reference interpreter, compare with eager."""
    model.eval()
    g = torch_frontend.load(model, tuple(inputs), **kw)
    verify(g)
    outs = evaluate(g, [t.numpy() for t in inputs])
    with torch.no_grad():
        ref = model(*inputs)
    ref = list(ref) if isinstance(ref, (tuple, list)) else [ref]
    assert len(outs) == len(ref)
    for o, r in zip(outs, ref):
        assert o.shape == tuple(r.shape) and o.dtype == r.numpy().dtype, (o.dtype, o.shape, r.dtype, r.shape)
        np.testing.assert_allclose(o, r.numpy(), rtol=rtol, atol=atol)
    return g


g0 = torch.Generator().manual_seed(0)


def rn(*shape):
    return torch.randn(*shape, generator=g0)


def ri(lo, hi, *shape):
    return torch.randint(lo, hi, shape, generator=g0)


OPS = {
    "arith_scalars": (lambda x: (x * 2 + 1) / 3 - 0.5, [rn(3, 4)]),
    "int_true_div": (lambda i: i / 2, [ri(-9, 9, 3, 4)]),
    "floor_div_float": (lambda x: x // 0.7, [rn(3, 4)]),
    "floor_div_int": (lambda i: torch.div(i, 4, rounding_mode="floor"), [ri(-20, 20, 10)]),
    "trunc_div_int": (lambda i: torch.div(i, 4, rounding_mode="trunc"), [ri(-20, 20, 10)]),
    "remainder_fmod": (lambda x: torch.remainder(x, 0.7) + torch.fmod(x, 0.7), [rn(3, 4)]),
    "pow_rsub": (lambda x: 1 - x ** 2 + 2 ** x, [rn(3, 4)]),
    "clamp_where": (lambda x: torch.where(x > 0, x.clamp(max=0.5), x.clamp(min=-0.2) * 3), [rn(3, 4)]),
    "masked_fill": (lambda x: x.masked_fill(x < -0.5, float("-inf")).softmax(-1), [rn(3, 5) + 1]),
    "compare_logic": (lambda x, y: ((x > y) & (x < 1)) | ~(y >= 0), [rn(3, 4), rn(3, 4)]),
    "bool_sum_cumsum": (lambda x: (x > 0).sum(0) + (x > 0).cumsum(0)[-1], [rn(4, 5)]),
    "max_dim_argmax": (lambda x: (x.max(1).values, x.max(1).indices, x.argmin(), x.amax((0, 1))), [rn(3, 5)]),
    "var_std_mean": (lambda x: (x.var(-1), x.std(0, keepdim=True), x.mean((0, 1)), torch.var_mean(x, 1)[0]), [rn(4, 6)]),
    "any_all": (lambda x: ((x > 1).any(-1), (x > -3).all()), [rn(4, 6)]),
    "unary_zoo": (lambda x: torch.exp(x).log1p() + x.sigmoid() * x.tanh() + torch.erf(x) + x.abs().sqrt().rsqrt()
                  + x.sin() * x.cos() + x.floor() - x.ceil() + x.round() + x.sign() + torch.expm1(x) + x.trunc(), [rn(3, 4)]),
    "activations": (lambda x: F.gelu(x) + F.gelu(x, approximate="tanh") + F.silu(x) + F.relu6(x * 4) + F.leaky_relu(x, 0.2)
                    + F.elu(x) + F.softplus(x) + F.hardsigmoid(x) + F.hardswish(x) + F.hardtanh(x), [rn(3, 4)]),
    "softmaxes": (lambda x: (x.softmax(0), F.log_softmax(x, -1)), [rn(3, 4)]),
    "views": (lambda x: x.view(2, -1).t().reshape(3, 2, 4).permute(2, 0, 1).transpose(0, 2).flatten().unsqueeze(0), [rn(4, 6)]),
    "squeeze_expand": (lambda x: x.unsqueeze(1).expand(4, 3, 6).squeeze(0) + x[:, None, :1].squeeze(-1).unsqueeze(-1), [rn(4, 6)]),
    "slices": (lambda x: x[1:, ::2] + x[:-1, -3:].flip(0)[:, :1] + x[0, 1::2] + x[-1, 2], [rn(4, 6)]),
    "cat_stack_split": (lambda x: torch.cat([*torch.chunk(x, 3, 1)[::-1], torch.stack([x[:, 0], x[:, 1]], 1)], 1)
                        + torch.split(torch.cat([x, x], 1), [7, 5], 1)[1][:, :1], [rn(4, 6)]),
    "unbind_repeat": (lambda x: sum(x.unbind(1)).repeat(2, 3) + x.repeat(1, 1)[0, 0], [rn(2, 3)]),
    "index_tensor": (lambda x, i, j: (x[:, i], x[i, j], x[i], x[:, :, j], x[i, :, j]), [rn(4, 5, 6), ri(-4, 4, 2, 3), ri(0, 5, 2, 3)]),
    "gather_index_select": (lambda x, i: x.gather(1, i) + x.index_select(0, i[:, 0])[:, :2], [rn(3, 5), ri(0, 3, 3, 2)]),
    "pads": (lambda x: F.pad(x, (1, 2)) .sum() + F.pad(x, (1, 1, 2, 0), value=3.0) .sum(-1).sum(-1)
             + F.pad(x, (1, 2, 2, 1), mode="reflect").mean((-1, -2)) + F.pad(x, (2, 1, 0, 1), mode="replicate").amax((-1, -2)), [rn(2, 3, 4, 5)]),
    "tril_triu": (lambda x: x.tril() + x.triu(1) * 2, [rn(4, 5)]),
    "factories": (lambda x: x + torch.arange(x.shape[-1]) + torch.ones_like(x) * torch.full((1, 4), 2.5) + torch.zeros(3, 4)
                  + torch.arange(2, 10, 2).float() + torch.tensor(1.5), [rn(3, 4)]),
    "mm_bmm_baddbmm": (lambda a, b, c: (a @ b[0], torch.bmm(a, b), torch.baddbmm(c, a, b, beta=0.5, alpha=2.0)),
                       [rn(2, 3, 4), rn(2, 4, 5), rn(2, 3, 5)]),
    "layer_rms_norm": (lambda x, w: F.layer_norm(x, (6,)) + F.rms_norm(x, (6,), w, eps=1e-6) + F.layer_norm(x, (5, 6), eps=1e-3),
                       [rn(2, 5, 6), rn(6)]),
    "sdpa": (lambda q, k, v, m: (F.scaled_dot_product_attention(q, k, v, is_causal=True),
                                 F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=0.3),
                                 F.scaled_dot_product_attention(q, k, v, attn_mask=m > 0)),
             [rn(2, 2, 5, 8), rn(2, 2, 5, 8), rn(2, 2, 5, 8), rn(5, 5)]),
    "sdpa_gqa": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True, is_causal=True),
                 [rn(1, 4, 6, 8), rn(1, 2, 6, 8), rn(1, 2, 6, 8)]),
    "casts": (lambda x: (x.to(torch.int32) * 2).to(torch.float64) + x.double().half().float(), [rn(3, 4) * 10]),
    "conv_pool_1d": (lambda x, w: F.avg_pool1d(F.max_pool1d(F.conv1d(x, w, padding=2, dilation=2), 2, ceil_mode=True), 3, 1, 1),
                     [rn(2, 4, 11), rn(6, 4, 3)]),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_aten_lowering(name):
    fn, inputs = OPS[name]
    check(Fn(fn), inputs)


def test_bf16_weights_shared_and_evaluated():
    m = nn.Linear(8, 4).to(torch.bfloat16)
    x = rn(3, 8).to(torch.bfloat16)
    g = torch_frontend.load(m, (x,))
    w = g.constants["weight"].data
    assert str(w.dtype) == "bfloat16" and w.ctypes.data == m.weight.data_ptr()
    cm = nnfuse.compile(m, (x,))
    got = cm(x)
    assert got.dtype == torch.bfloat16
    with torch.no_grad():
        np.testing.assert_allclose(got.float().numpy(), m(x).float().numpy(), rtol=2e-2, atol=2e-2)


# ---------------------------------------------------------------- hand-written models
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(16, 64), nn.Linear(64, 64), nn.Linear(64, 10)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        h = F.gelu(self.fc1(x))
        h = h + self.drop(F.relu(self.fc2(h)))
        return self.fc3(h).log_softmax(-1)


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, groups=2), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.pool = nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.MaxPool2d(2)
        self.blocks = nn.Sequential(Residual(8), Residual(8))
        self.avg, self.up, self.gn = nn.AvgPool2d(2), nn.ConvTranspose2d(8, 8, 2, stride=2), nn.GroupNorm(2, 8)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.blocks(self.pool(self.stem(x)))
        x = self.gn(self.up(self.avg(x)))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _randomize_bn(m):
    for b in m.modules():
        if isinstance(b, nn.BatchNorm2d):
            b.running_mean.normal_(generator=g0)
            b.running_var.uniform_(0.5, 2.0, generator=g0)
    return m


@pytest.mark.parametrize("make,shape", [(MLP, (5, 16)), (lambda: _randomize_bn(CNN()), (2, 3, 32, 32))], ids=["mlp", "cnn"])
def test_handwritten_model_compiles_and_matches(make, shape):
    m = make().eval()
    x = rn(*shape)
    cm = nnfuse.compile(m, (x,), backend="reference")
    got = cm(x)
    assert isinstance(got, torch.Tensor)
    with torch.no_grad():
        np.testing.assert_allclose(got.numpy(), m(x).numpy(), rtol=1e-4, atol=1e-4)
    assert isinstance(cm(x.numpy()), np.ndarray)  # numpy in, numpy out


def test_training_mode_model_is_compiled_for_inference_and_left_as_is():
    m = _randomize_bn(CNN()).train()
    x = rn(2, 3, 16, 16)
    cm = nnfuse.compile(m, (x,))
    assert m.training and all(s.training for s in m.modules())
    m.eval()
    with torch.no_grad():
        np.testing.assert_allclose(cm(x).numpy(), m(x).numpy(), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- metadata and weights
def test_meta_loc_src_and_weights_shared():
    m = CNN().eval()
    g = torch_frontend.load(m, (rn(1, 3, 16, 16),))
    locs = {n.meta.get("loc") for n in g.nodes}
    assert {"stem", "blocks.1.conv2", "blocks.0.bn1", "head", "gn"} <= locs, locs
    assert all(n.meta.get("src", "").startswith(THIS + ":") for n in g.nodes if n.meta.get("loc", "").startswith("blocks")), \
        [n.meta for n in g.nodes][:5]
    conv = next(n for n in g.nodes if n.op == "conv" and n.meta["loc"] == "stem")
    assert conv.meta["src"] == f"{THIS}:{CNN.forward.__code__.co_firstlineno + 1}"
    w = g.constants["stem.weight"].data
    assert np.shares_memory(w, m.stem.weight.detach().numpy())
    assert np.shares_memory(g.constants["blocks.0.bn1.running_var"].data, m.blocks[0].bn1.running_var.numpy())


def test_module_path_normalization():
    from nnfuse.frontends.torch_fx import module_path
    assert module_path("model.layers.3.mlp") == "model.layers.3.mlp"
    assert module_path("L['self'].model.layers[3].mlp") == "model.layers.3.mlp"
    assert module_path("L['self']._modules['layers']._modules['0']") == "layers.0"
    assert module_path("L['self']") == "" and module_path("") == ""


# ---------------------------------------------------------------- dynamic shapes
def test_dynamic_batch_one_compile_many_sizes():
    m = _randomize_bn(CNN()).eval()
    cm = nnfuse.compile(m, (rn(1, 3, 16, 16),), dynamic=True)  # an example batch of 1 still gives a symbolic B
    assert cm.graph.inputs[0].type.shape == ("B", 3, 16, 16)
    with torch.no_grad():
        for b in (1, 3, 6):
            x = rn(b, 3, 16, 16)
            np.testing.assert_allclose(cm(x).numpy(), m(x).numpy(), rtol=1e-4, atol=1e-4)


class Flatten2(nn.Module):
    def forward(self, x, y):
        return (x.reshape(x.shape[0] * x.shape[1], 4) @ y).softmax(-1)


class Add(nn.Module):
    def forward(self, a, b):
        return a + b


def test_dynamic_shapes_named_dims_become_symbols():
    m = Flatten2()
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    g = torch_frontend.load(m, (rn(2, 3, 4), rn(4, 5)), dynamic_shapes=({0: batch, 1: seq}, None))
    assert g.inputs[0].type.shape == ("batch", "seq", 4)
    assert g.outputs[0].type.shape == ("batch*seq", 5)
    cm = nnfuse.compile(g)
    for b, s in ((1, 1), (3, 7)):
        x, y = rn(b, s, 4), rn(4, 5)
        np.testing.assert_allclose(cm(x, y).numpy(), m(x, y).numpy(), rtol=1e-5, atol=1e-5)


def test_dynamic_size_the_ir_cannot_spell_is_a_clear_error():
    m = Fn(lambda x: torch.zeros(x.shape[1] + 1).sum() + x)
    with pytest.raises(nnfuse.NnfuseError, match=r"aten\.(full|zeros).*symbolic size S \+ 1 cannot be an nnfuse dim"):
        torch_frontend.load(m, (rn(2, 5),), dynamic_shapes=(({1: torch.export.Dim("S")},),))



class SliceTo(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("table", torch.arange(40.0).reshape(1, 40))

    def forward(self, x):  # slices with symbolic bounds, and of symbolic dims, become gathers
        return x[:, :1] * 2 + self.table[:, : x.shape[1]] + x[:, -2:-1]


def test_slices_with_symbolic_bounds():
    g = check(SliceTo(), [rn(2, 7)], dynamic_shapes=({1: torch.export.Dim("S", max=40)},))
    assert g.inputs[0].type.shape == (2, "S")
    cm = nnfuse.compile(g)
    for s in (3, 11):
        x = rn(2, s)
        np.testing.assert_allclose(cm(x).numpy(), SliceTo()(x).numpy(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- errors
class TopK(nn.Module):
    def forward(self, x):
        return torch.topk(x, 2).values


class Sort(nn.Module):
    def forward(self, x):
        return torch.sort(x, -1).values


class TwoBad(nn.Module):
    def __init__(self):
        super().__init__()
        self.picker, self.sorter, self.lin = TopK(), Sort(), nn.Linear(4, 4)

    def forward(self, x):
        return self.picker(self.lin(x)).sum() + self.sorter(x).sum()


def test_unsupported_ops_are_listed_together_with_module_and_line():
    with pytest.raises(nnfuse.NnfuseError) as e:
        nnfuse.compile(TwoBad(), (rn(2, 4),))
    msg = str(e.value)
    assert "2 unsupported ops" in msg
    assert f"aten.topk.default (1x): module 'picker' at {THIS}:{TopK.forward.__code__.co_firstlineno + 1}" in msg
    assert f"aten.sort.default (1x): module 'sorter' at {THIS}:{Sort.forward.__code__.co_firstlineno + 1}" in msg


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x


def test_untraceable_model_surfaces_torch_reason_and_hint():
    with pytest.raises(nnfuse.NnfuseError) as e:
        nnfuse.compile(DataDependent(), (rn(2, 4),))
    msg = str(e.value)
    assert "torch.export could not trace DataDependent" in msg and "data-dependent" in msg
    assert f"{THIS}:{DataDependent.forward.__code__.co_firstlineno + 1}" in msg
    assert "hint:" in msg and 'backend="nnfuse"' in msg
    with pytest.raises(nnfuse.NnfuseError, match="strict=False"):
        nnfuse.compile(DataDependent(), (rn(2, 4),), strict=True)


def test_compiled_model_input_errors_name_input_expected_and_received():
    cm = nnfuse.compile(Add(), (rn(2, 4), rn(2, 4)), dynamic=True)
    with pytest.raises(nnfuse.NnfuseError, match=r"input 'a': expected f32\[B,4\], got float64\[2, 4\]"):
        cm(rn(2, 4).double(), rn(2, 4))
    with pytest.raises(nnfuse.NnfuseError, match=r"input 'b': expected f32\[B,4\].*rank 1"):
        cm(rn(2, 4), rn(4))
    with pytest.raises(nnfuse.NnfuseError, match=r"input 'a': expected f32\[B,4\], got float32\[2, 5\]"):
        cm(rn(2, 5), rn(2, 4))
    with pytest.raises(nnfuse.NnfuseError, match=r"dim B is 3 here but 2"):
        cm(rn(2, 4), rn(3, 4))
    with pytest.raises(nnfuse.NnfuseError, match=r"takes 2 inputs \(a, b\), got 1"):
        cm(rn(2, 4))


def test_save_load_round_trip(tmp_path):
    m = _randomize_bn(CNN()).eval()
    x = rn(2, 3, 16, 16)
    cm = nnfuse.compile(m, (x,), dynamic=True)
    path = str(tmp_path / "cnn.nnir")
    cm.save(path)
    cm2 = nnfuse.load(path)
    assert cm2.backend == "reference" and cm2.graph.inputs[0].type.shape == ("B", 3, 16, 16)
    x3 = rn(3, 3, 16, 16)
    np.testing.assert_array_equal(cm2(x3).numpy(), cm(x3).numpy())


class SumAndDouble(nn.Module):
    def forward(self, x):
        return x.sum(), x * 2


def test_scalar_outputs_keep_their_shape():
    cm = nnfuse.compile(SumAndDouble(), (rn(3),))
    x = rn(3)
    s, d = cm(x)
    assert s.shape == () and d.shape == (3,)
    np.testing.assert_allclose(s.numpy(), x.sum().numpy(), rtol=1e-6)


def test_single_tensor_example_is_one_input_not_split_along_dim_0():
    """nnfuse.compile(m, x) with a bare tensor compiled for x[0]'s shape (tuple(x) split it into rows)."""
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 3).eval()
    x = torch.randn(1, 4)
    cm = nnfuse.compile(m, x)
    assert [list(v.type.shape) for v in cm.graph.inputs] == [[1, 4]]
    with torch.no_grad():
        torch.testing.assert_close(cm(x), m(x), rtol=1e-5, atol=1e-6)
