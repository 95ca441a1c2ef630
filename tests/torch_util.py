"""Small PyTorch models the tests share (import as `from torch_util import ...`)."""
from __future__ import annotations

import torch


class Logits(torch.nn.Module):
    """A transformers model as a module that returns a tensor: its logits, or last hidden state."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, ids):   # the graph input's name: tests match error messages on it
        o = self.m(ids)
        return o.logits if hasattr(o, "logits") else o.last_hidden_state


def tiny_llama(seed: int = 0) -> torch.nn.Module:
    """A 2-layer LLaMA (hidden 64, vocab 256) with random weights, in eval mode, unwrapped."""
    import transformers as T
    torch.manual_seed(seed)
    c = T.LlamaConfig(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, vocab_size=256, use_cache=False)
    return T.LlamaForCausalLM(c).eval()
