"""Perplexity of the trained byte-level LM (nnfuse.evaluation.trained_byte_lm) at fp32 and bf16 on the cpu backend.

usage: python benchmarks/bf16_accuracy.py [small]
"""
from __future__ import annotations

import sys

import numpy as np


def main(argv=None) -> int:
    import torch
    import nnfuse
    from nnfuse.evaluation import heldout_tokens, perplexity, trained_byte_lm
    name = (argv if argv is not None else sys.argv[1:] or ["small"])[0]
    model, info = trained_byte_lm(name)
    toks = heldout_tokens(name)
    with torch.no_grad():
        ppl_torch = perplexity(lambda ids: model(torch.from_numpy(ids)).logits.numpy(), toks)

    class Logits(torch.nn.Module):
        def __init__(s, m):
            super().__init__()
            s.m = m

        def forward(s, x):
            return s.m(x).logits
    ex = torch.from_numpy(toks[:1].astype(np.int64))
    out = {}
    for prec in ("fp32", "bf16"):
        cm = nnfuse.compile(Logits(model), (ex,), backend="cpu", precision=prec)
        out[prec] = perplexity(lambda ids: np.concatenate([np.asarray(cm(torch.from_numpy(ids[i:i + 1].astype(np.int64))))
                                                           for i in range(len(ids))]), toks)
        if prec == "bf16":
            acc = cm.stats()["accuracy"]
    print(f"trained byte LM '{name}' ({len(toks)} held-out windows): torch fp32 ppl {ppl_torch:.4f}, "
          f"nnfuse cpu fp32 {out['fp32']:.4f}, nnfuse cpu bf16 {out['bf16']:.4f} "
          f"(change {100 * (out['bf16'] / out['fp32'] - 1):+.2f}%); bf16 logits on one window: "
          f"max rel err {acc['max_rel_err']:.1e}, cosine {acc['cosine']:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
