"""The benchmark workloads of the cpu backend issue: (name, torch model, example input) or an ONNX path."""
from __future__ import annotations

import glob
import os


def torch_workload(name: str):
    import torch
    torch.manual_seed(0)
    if name == "mlp":
        nn = torch.nn
        m = nn.Sequential(nn.Linear(1024, 4096), nn.GELU(), nn.Linear(4096, 1024),
                          nn.Linear(1024, 4096), nn.GELU(), nn.Linear(4096, 1024))
        return m.eval(), torch.randn(32, 1024)
    import transformers as T

    class Logits(torch.nn.Module):
        def __init__(s, m):
            super().__init__()
            s.m = m

        def forward(s, x):
            o = s.m(x)
            return o.logits if hasattr(o, "logits") else o.last_hidden_state
    if name == "llama":
        c = T.LlamaConfig(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                          num_key_value_heads=8, vocab_size=8000, use_cache=False)
        return Logits(T.LlamaForCausalLM(c)).eval(), torch.randint(0, 8000, (1, 128))
    if name == "gpt2":
        c = T.GPT2Config(n_embd=512, n_layer=6, n_head=8, vocab_size=8000, n_positions=256, use_cache=False)
        return Logits(T.GPT2LMHeadModel(c)).eval(), torch.randint(0, 8000, (1, 128))
    if name == "bert":
        c = T.BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024, vocab_size=8000)
        return Logits(T.BertModel(c)).eval(), torch.randint(0, 8000, (8, 128))
    raise KeyError(name)


def resnet50_path(tmpdir: str, random_weights: bool = True) -> str:
    """The onnx wheel's light resnet50; its weights are all 0.02 (foldable), so by default re-randomize them."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    src = glob.glob(os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light/light_resnet50.onnx"))[0]
    if not random_weights:
        return src
    m = onnx.load(src)
    rng = np.random.default_rng(0)
    for init in m.graph.initializer:
        a = numpy_helper.to_array(init)
        if a.dtype == np.float32 and a.size > 1:
            fan = max(1, a[0].size if a.ndim > 1 else a.size)
            new = (rng.standard_normal(a.shape) * np.sqrt(1.0 / fan)).astype(np.float32)
            if a.ndim == 1:   # BN params / biases: keep variances positive
                new = np.abs(new) + 0.5
            init.CopyFrom(numpy_helper.from_array(new, init.name))
    path = os.path.join(tmpdir, "resnet50_random.onnx")
    onnx.save(m, path)
    return path


TORCH = ("mlp", "llama", "gpt2", "bert")
ALL = TORCH + ("resnet50", "gemm")
