"""A hand-written Transformer in plain PyTorch (no Hugging Face): Galaxy needs no template for it.

Pre-norm blocks with a fused QKV projection, a GELU MLP and a final LayerNorm. Recognition
works from the graph's patterns (linear, scaled_dot_product_attention, layer_norm, residual
adds), so this family compiles like the bundled HF ones. Sizes: tiny (tests) and base.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SIZES = {
    "tiny": dict(dim=48, heads=6, layers=2, seq_len=24),
    "base": dict(dim=768, heads=12, layers=12, seq_len=256),
}


class Block(torch.nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm_1 = torch.nn.LayerNorm(dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.norm_2 = torch.nn.LayerNorm(dim)
        self.up = torch.nn.Linear(dim, 4 * dim)
        self.down = torch.nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(self.norm_1(x)).split(d, dim=-1)
        q, k, v = (t.view(b, s, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, s, d))
        return x + self.down(F.gelu(self.up(self.norm_2(x))))


class TinyTransformer(torch.nn.Module):
    def __init__(self, dim: int, heads: int, layers: int, vocab: int = 256, max_len: int = 1024):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.pos = torch.nn.Embedding(max_len, dim)
        self.blocks = torch.nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm = torch.nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embed(tokens) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def build_model(size: str = "base") -> torch.nn.Module:
    cfg = SIZES[size]
    torch.manual_seed(0)
    return TinyTransformer(cfg["dim"], cfg["heads"], cfg["layers"]).eval()


def example_inputs(size: str = "base", seq_len: int | None = None) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    length = seq_len or SIZES[size]["seq_len"]
    return {"tokens": torch.randint(0, 256, (1, length), generator=generator)}
