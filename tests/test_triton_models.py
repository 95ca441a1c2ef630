"""Whole models through nnfuse.compile(..., backend="triton") vs PyTorch eager (Triton's interpreter when no GPU)."""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

import nnfuse  # noqa: E402


def _first(out):
    if isinstance(out, (list, tuple)):
        return out[0]
    if hasattr(out, "logits") and out.logits is not None:
        return out.logits
    return getattr(out, "last_hidden_state", out)


def _check(model, x, tol=1e-3):
    model.eval()
    with torch.no_grad():
        ref = _first(model(x))
        cm = nnfuse.compile(model, (x,), backend="triton")
        got = torch.as_tensor(_first(cm(x)))
    assert tuple(got.shape) == tuple(ref.shape)
    err = (got.float() - ref.float()).abs().max().item()
    assert err < tol, f"max abs error {err:.2e}"
    src = cm.source()
    assert "@triton.jit" in src and "def nnf_run" in src
    return cm


def test_mlp():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.GELU(), torch.nn.LayerNorm(64), torch.nn.Linear(64, 10),
                            torch.nn.Softmax(-1))
    cm = _check(m, torch.randn(5, 20))
    assert "tl.dot(" in cm.source()


def test_small_cnn():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 1),
                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4))
    _check(m, torch.randn(2, 3, 9, 9))


def _transformers():
    return pytest.importorskip("transformers")


@pytest.mark.parametrize("name", ["gpt2", "llama", "bert"])
def test_tiny_transformers(name):
    T = _transformers()
    torch.manual_seed(0)
    if name == "gpt2":
        m = T.GPT2LMHeadModel(T.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=97, n_positions=32))
    elif name == "llama":
        m = T.LlamaForCausalLM(T.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, vocab_size=97))
    else:
        m = T.BertModel(T.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                     vocab_size=97))
    if hasattr(m.config, "use_cache"):
        m.config.use_cache = False
    _check(m, torch.randint(0, 97, (2, 8)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the triton backend runs there")
def test_no_gpu_and_no_interpreter_is_a_clear_error():
    import subprocess
    import sys
    code = ("import numpy as np, nnfuse\n"
            "from nnfuse.ir import Builder, NnfuseError\n"
            "b = Builder('g'); x = b.input('x', (2, 3), 'f32'); g = b.output(b.relu(x))\n"
            "try:\n    nnfuse.compile(g, backend='triton')\nexcept NnfuseError as e:\n    print('ERR', e)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "ERR the triton backend needs a CUDA GPU, or TRITON_INTERPRET=1" in r.stdout, r.stdout + r.stderr


def test_zero_size_tensors_are_refused_not_run_out_of_bounds():
    """Triton kernels size grids and masks for at least one element: a zero-size input segfaulted the interpreter,
    a reduction over an empty axis returned garbage, a softmax over [0, 64] corrupted the heap."""
    from nnfuse.ir import Builder, NnfuseError
    b = Builder("empty")
    g = b.output(b.relu(b.input("x", [0, 4])))
    with pytest.raises(NnfuseError, match="'x' is a zero-size tensor f32\\[0,4\\]: the triton backend"):
        nnfuse.compile(g, backend="triton")
    b = Builder("empty_inside")
    x = b.input("x", [2, 4])
    y = b.softmax(b.slice(x, starts=[0], ends=[0], axes=[0]), axis=-1)
    g = b.output(b.reduce_max(y, axes=[0]))
    with pytest.raises(NnfuseError, match="node slice produces a zero-size tensor f32\\[0,4\\]"):
        nnfuse.compile(g, backend="triton", opt_level=0)


def test_symbolic_shapes_error_names_the_triton_backend():
    from nnfuse.ir import Builder, NnfuseError
    b = Builder("dyn")
    g = b.output(b.relu(b.input("x", ["B", 4])))
    with pytest.raises(NnfuseError, match="input 'x' has symbolic shape f32\\[B,4\\]: the triton backend needs static"):
        nnfuse.compile(g, backend="triton")
