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


def randomize_light_weights(m, seed: int = 0) -> int:
    """The onnx wheel's light models make every weight with a ConstantOfShape node filled with 0.02, so their
    output is the same for any input: replace each weight-shaped (rank >= 2) fill by a random He-scaled
    initializer of the same shape (the same architecture, with numerics that mean something). Returns how many."""
    import numpy as np
    from onnx import numpy_helper
    rng = np.random.default_rng(seed)
    shapes = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    n_done = 0
    for n in list(m.graph.node):
        if n.op_type == "ConstantOfShape" and n.input[0] in shapes and len(shapes[n.input[0]]) >= 2:
            shp = [int(d) for d in shapes[n.input[0]]]
            w = rng.standard_normal(shp) * np.sqrt(2 / int(np.prod(shp[1:])))
            m.graph.initializer.append(numpy_helper.from_array(w.astype(np.float32), n.output[0]))
            m.graph.node.remove(n)
            n_done += 1
    return n_done


def resnet50_path(tmpdir: str, random_weights: bool = True) -> str:
    """The onnx wheel's light resnet50, by default with random conv/fc weights (`randomize_light_weights`)."""
    import onnx
    src = glob.glob(os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light/light_resnet50.onnx"))[0]
    if not random_weights:
        return src
    m = onnx.load(src)
    randomize_light_weights(m)
    path = os.path.join(tmpdir, "resnet50_random.onnx")
    onnx.save(m, path)
    return path


TORCH = ("mlp", "llama", "gpt2", "bert")
ALL = TORCH + ("resnet50", "gemm")
