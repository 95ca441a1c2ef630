"""A trained model to measure accuracy on: a byte-level LLaMA-style LM trained on the Python
standard library's own source (text every machine has), cached as safetensors.

Random-weight models say nothing about accuracy; approximate passes (quantization, FFN fusion,
layer skipping, bf16) report perplexity change on this model instead.

    model, info = trained_byte_lm("small")      # trains once (~minutes), then loads from cache
    ppl = perplexity(lambda ids: model(ids).logits, heldout_tokens())
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import numpy as np


@dataclass(frozen=True)
class LMConfig:
    hidden: int = 256
    intermediate: int = 704
    layers: int = 4
    heads: int = 4
    kv_heads: int = 4
    seq: int = 128
    batch: int = 16
    steps: int = 600
    lr: float = 2e-3
    corpus_bytes: int = 4_000_000


CONFIGS = {
    "small": LMConfig(),
    "tiny": LMConfig(hidden=64, intermediate=176, layers=2, heads=2, kv_heads=2, seq=64, batch=8, steps=150, corpus_bytes=400_000),
}


def cache_dir() -> str:
    d = os.environ.get("NNFUSE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "nnfuse")
    os.makedirs(os.path.join(d, "evalmodels"), exist_ok=True)
    return os.path.join(d, "evalmodels")


def corpus(max_bytes: int) -> bytes:
    """Deterministic text: the standard library's .py files in sorted order (tests/ and idlelib excluded)."""
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for dirpath, dirnames, names in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("test", "tests", "idlelib", "site-packages", "__pycache__"))
        files += [os.path.join(dirpath, n) for n in sorted(names) if n.endswith(".py")]
    out, total = [], 0
    for f in sorted(files):
        try:
            b = open(f, "rb").read()
        except OSError:
            continue
        out.append(b)
        total += len(b)
        if total >= max_bytes:
            break
    return b"".join(out)[:max_bytes]


def split_tokens(cfg: LMConfig) -> tuple[np.ndarray, np.ndarray]:
    data = np.frombuffer(corpus(cfg.corpus_bytes), dtype=np.uint8).astype(np.int64)
    cut = int(len(data) * 0.95)
    return data[:cut], data[cut:]


def heldout_tokens(name: str = "small", n_seqs: int = 16) -> np.ndarray:
    """[n_seqs, seq] held-out byte windows (non-overlapping, deterministic)."""
    cfg = CONFIGS[name]
    _, held = split_tokens(cfg)
    n = min(n_seqs, len(held) // cfg.seq)
    return held[: n * cfg.seq].reshape(n, cfg.seq)


def build_model(cfg: LMConfig):
    import torch
    import transformers as T
    c = T.LlamaConfig(hidden_size=cfg.hidden, intermediate_size=cfg.intermediate, num_hidden_layers=cfg.layers,
                      num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads, vocab_size=256,
                      max_position_embeddings=max(256, cfg.seq), use_cache=False, tie_word_embeddings=False)
    torch.manual_seed(0)
    return T.LlamaForCausalLM(c).eval()


def _key(cfg: LMConfig, seed: int) -> str:
    return hashlib.sha256(json.dumps({**asdict(cfg), "seed": seed, "v": 1}, sort_keys=True).encode()).hexdigest()[:16]


def trained_byte_lm(name: str = "small", seed: int = 0, progress: bool = True):
    """(model, info): trains on first use and caches the weights (safetensors, keyed by config and seed)."""
    import torch
    from safetensors.torch import load_file, save_file
    cfg = CONFIGS[name]
    model = build_model(cfg)
    path = os.path.join(cache_dir(), f"byte-llama-{name}-{_key(cfg, seed)}.safetensors")
    meta_path = path + ".json"
    if os.path.exists(path) and os.path.exists(meta_path):
        try:
            model.load_state_dict(load_file(path))
            return model.eval(), json.load(open(meta_path))
        except Exception:  # noqa: BLE001  (a corrupt cache entry is retrained)
            pass
    train, _ = split_tokens(cfg)
    g = torch.Generator().manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    t0 = time.time()
    data = torch.from_numpy(train)
    for step in range(cfg.steps):
        idx = torch.randint(0, len(data) - cfg.seq - 1, (cfg.batch,), generator=g)
        batch = torch.stack([data[i: i + cfg.seq + 1] for i in idx])
        loss = torch.nn.functional.cross_entropy(model(batch[:, :-1]).logits.reshape(-1, 256), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if progress and (step % 50 == 0 or step == cfg.steps - 1):
            print(f"\r  training byte-level LM '{name}': step {step + 1}/{cfg.steps} loss {loss.item():.3f} "
                  f"({time.time() - t0:.0f} s)", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    model.eval()
    with torch.no_grad():
        ppl = perplexity(lambda ids: model(torch.from_numpy(ids)).logits.numpy(), heldout_tokens(name))
    info = {"name": name, "config": asdict(cfg), "seed": seed, "train_seconds": round(time.time() - t0, 1), "heldout_ppl": ppl}
    tmp = path + f".tmp{os.getpid()}"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, path)
    with open(meta_path + f".tmp{os.getpid()}", "w") as f:
        json.dump(info, f)
    os.replace(meta_path + f".tmp{os.getpid()}", meta_path)
    return model, info


def perplexity(logits_fn: Callable[[np.ndarray], np.ndarray], tokens: np.ndarray, batch: Optional[int] = None) -> float:
    """exp(mean next-byte cross-entropy) of `logits_fn(ids[B,S]) -> [B,S,256]` over held-out windows."""
    nll, count = 0.0, 0
    step = batch or len(tokens)
    for i in range(0, len(tokens), step):
        ids = tokens[i: i + step]
        logits = np.asarray(logits_fn(ids), dtype=np.float64)[:, :-1]
        tgt = ids[:, 1:]
        m = logits.max(-1, keepdims=True)
        lse = (m[..., 0] + np.log(np.exp(logits - m).sum(-1)))
        picked = np.take_along_axis(logits, tgt[..., None], -1)[..., 0]
        nll += float((lse - picked).sum())
        count += tgt.size
    return float(np.exp(nll / count))
