"""A minimal PyTorch re-implementation of nanoGPT's model and training loop, for timing its
character-level tiny-Shakespeare CPU setting on this machine beside ``gpt3-jax train
configs/shakespeare-char.yaml``.

Written from nanoGPT's documented behaviour (README "I only have a macbook" setting and
``config/train_shakespeare_char.py``), not copied from it:

- data: characters of the text, vocabulary = its sorted set (65); first 90% train, last 10% val;
  batches of 12 random 64-character windows (``randint(len - 64)``).
- model: GPT-2 blocks (pre-LayerNorm, causal self-attention, 4× GELU MLP), learned positions,
  tied input/output embedding, no biases (nanoGPT's default ``bias=False``), N(0, 0.02) init with
  the residual projections at 0.02/√(2·n_layer); 4 layers, 4 heads, d 128, dropout 0.
- optimiser: AdamW(β1 0.9, β2 0.99), weight decay 0.1 on ≥2-D weights only, clipping at 1.0;
  lr 1e-3 warmed up linearly over 100 iterations, cosine to 1e-4 at 2000.
- evaluation: every 250 iterations (and at 0 and 2000), mean loss of 20 random batches of each
  split, as nanoGPT's ``estimate_loss``.

    python benchmarks/nanogpt_shakespeare_char.py [TEXT] [--json]   (default: gpt3_jax's embedded copy)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

N_LAYER, N_HEAD, D_MODEL, BLOCK, BATCH = 4, 4, 128, 64, 12
MAX_ITERS, WARMUP, LR, MIN_LR = 2000, 100, 1e-3, 1e-4
EVAL_EVERY, EVAL_ITERS = 250, 20


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(D_MODEL, bias=False)
        self.c_attn = nn.Linear(D_MODEL, 3 * D_MODEL, bias=False)
        self.attn_proj = nn.Linear(D_MODEL, D_MODEL, bias=False)
        self.ln_2 = nn.LayerNorm(D_MODEL, bias=False)
        self.c_fc = nn.Linear(D_MODEL, 4 * D_MODEL, bias=False)
        self.mlp_proj = nn.Linear(4 * D_MODEL, D_MODEL, bias=False)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (z.view(b, t, N_HEAD, d // N_HEAD).transpose(1, 2) for z in (q, k, v))  # (B, H, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.attn_proj(y.transpose(1, 2).reshape(b, t, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.ln_1(x))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, D_MODEL)
        self.wpe = nn.Embedding(BLOCK, D_MODEL)
        self.blocks = nn.ModuleList(Block() for _ in range(N_LAYER))
        self.ln_f = nn.LayerNorm(D_MODEL, bias=False)
        self.lm_head = nn.Linear(D_MODEL, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * N_LAYER) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def lr_at(it: int) -> float:
    if it < WARMUP:
        return LR * (it + 1) / (WARMUP + 1)
    ratio = min((it - WARMUP) / (MAX_ITERS - WARMUP), 1.0)
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LR - MIN_LR)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default = Path(__file__).resolve().parents[1] / "gpt3_jax" / "data" / "corpora" / "tinyshakespeare.txt"
    parser.add_argument("text", type=Path, nargs="?", default=default, help="default: tiny Shakespeare")
    parser.add_argument("--json", action="store_true", help="print one JSON line at the end")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        # on a busy 2-core machine, 2 intra-op threads can be several times slower than 1
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    torch.manual_seed(1337)
    text = args.text.read_text()
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([lookup[c] for c in text], dtype=torch.long)
    n = int(0.9 * len(ids))
    splits = {"train": ids[:n], "val": ids[n:]}

    def batch(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        data = splits[split]
        ix = torch.randint(len(data) - BLOCK, (BATCH,))
        x = torch.stack([data[i : i + BLOCK] for i in ix])
        y = torch.stack([data[i + 1 : i + 1 + BLOCK] for i in ix])
        return x, y

    model = GPT(len(chars))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LR,
        betas=(0.9, 0.99),
    )

    @torch.no_grad()
    def estimate() -> dict[str, float]:
        model.eval()
        out = {s: float(torch.stack([model(*batch(s)) for _ in range(EVAL_ITERS)]).mean()) for s in splits}
        model.train()
        return out

    losses: dict[str, float] = {}
    for it in range(MAX_ITERS + 1):
        for group in opt.param_groups:
            group["lr"] = lr_at(it)
        if it % EVAL_EVERY == 0:
            losses = estimate()
            print(f"step {it}: train {losses['train']:.4f}, val {losses['val']:.4f}", flush=True)
        if it == MAX_ITERS:
            break
        loss = model(*batch("train"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    wall = time.perf_counter() - t0
    result = {
        "val_loss": losses["val"],
        "train_loss": losses["train"],
        "wall_s": wall,
        "threads": torch.get_num_threads(),
    }
    print(
        json.dumps(result)
        if args.json
        else f"nanoGPT (PyTorch re-implementation): val {losses['val']:.4f} in {wall:.1f} s"
    )


if __name__ == "__main__":
    main()
