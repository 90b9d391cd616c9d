"""Small Transformers for text, written so that every projection is an nn.Linear (Kronecker factors over token
positions, per-example gradients from hooks) and every path of tdakit can take them.

- ``TransformerClassifier``: token and position embeddings, pre-LayerNorm blocks (self-attention, then an MLP),
  a final LayerNorm, the mean over the sentence's tokens, a Linear head: token ids [n, L] -> logits [n, classes].
- ``CausalLM``: the same blocks with causal attention and a Linear (optionally tied to the token embedding)
  to next-token logits: token ids [n, L] -> [n, L, vocabulary].

Token id 0 is padding (``datasets.text``): a padded position is never attended to and never pooled, so padding a
sentence to any length gives the same outputs for its real tokens. Attention is written out (scores, a mask,
softmax), not through a fused kernel: it has second derivatives and batching rules everywhere (exact unrolling,
vmap). Dropout is left out (tdakit trains without it).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .errors import InputError, SettingError

PAD_ID = 0


class SelfAttention(nn.Module):
    """Multi-head self-attention from four Linear projections (query, key, value, output). x [n, L, width],
    keep [n, L] bool (False: padding, never attended to) -> [n, L, width]; ``causal``: position t sees 0..t."""

    def __init__(self, width: int, heads: int, causal: bool = False):
        super().__init__()
        if width % heads:
            raise SettingError(f"width {width} must be a multiple of heads {heads}")
        self.heads, self.causal = heads, causal
        self.query, self.key, self.value, self.out = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        n, length, width = x.shape
        per_head = width // self.heads

        def split(t: Tensor) -> Tensor:  # [n, L, width] -> [n, heads, L, per_head]
            return t.reshape(n, length, self.heads, per_head).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(per_head)  # [n, heads, L, L]
        allowed = keep[:, None, None, :]
        if self.causal:
            allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)  # finite: an all-padding row stays finite
        mixed = torch.softmax(scores, -1) @ v
        return self.out(mixed.transpose(1, 2).reshape(n, length, width))


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: x + attention(LN(x)), then x + MLP(LN(x)) (Linear, GELU, Linear)."""

    def __init__(self, width: int, heads: int, hidden: int, causal: bool = False):
        super().__init__()
        self.norm1, self.attention = nn.LayerNorm(width), SelfAttention(width, heads, causal)
        self.norm2, self.up, self.down = nn.LayerNorm(width), nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x), keep)
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class Encoder(nn.Module):
    """Token and position embeddings and ``depth`` blocks: ids [n, L] -> (states [n, L, width], keep [n, L])."""

    def __init__(self, vocabulary: int, width: int, heads: int, depth: int, max_length: int, causal: bool):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocabulary, width), nn.Embedding(max_length, width)
        self.blocks = nn.ModuleList(Block(width, heads, 4 * width, causal) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.max_length = max_length

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        if ids.is_floating_point():
            raise InputError(f"a text model takes integer token ids [n, L], got {ids.dtype}; encode the text with "
                             "a datasets.text.Vocabulary")
        length = ids.shape[-1]
        if length > self.max_length:
            raise InputError(f"sequences of {length} tokens are longer than the model's max_length "
                             f"{self.max_length}; cut them (the datasets' length=) or build the model longer")
        keep = ids != PAD_ID
        places = torch.arange(length, device=ids.device).expand(ids.shape)  # per example: Kronecker factors need it
        x = self.tokens(ids) + self.positions(places)
        for block in self.blocks:
            x = block(x, keep)
        return self.norm(x), keep


class TransformerClassifier(nn.Module):
    """Sentence classifier: ids [n, L] (0 = padding) -> logits [n, classes], from the mean of the final states
    over the sentence's own tokens."""

    def __init__(self, vocabulary: int, classes: int = 2, width: int = 32, heads: int = 2, depth: int = 2,
                 max_length: int = 64):
        super().__init__()
        self.encoder = Encoder(vocabulary, width, heads, depth, max_length, causal=False)
        self.head = nn.Linear(width, classes)

    def forward(self, ids: Tensor) -> Tensor:
        states, keep = self.encoder(ids)
        weights = keep.to(states.dtype)[..., None]
        pooled = (states * weights).sum(-2) / weights.sum(-2).clamp(min=1.0)
        return self.head(pooled)


class CausalLM(nn.Module):
    """Language model: ids [n, L] -> next-token logits [n, L, vocabulary]. tie=True reads the output projection
    from the token embedding (one parameter; Kronecker curvatures then need it left out, see layers.py)."""

    def __init__(self, vocabulary: int, width: int = 32, heads: int = 2, depth: int = 2, max_length: int = 64,
                 tie: bool = False):
        super().__init__()
        self.encoder = Encoder(vocabulary, width, heads, depth, max_length, causal=True)
        self.head = nn.Linear(width, vocabulary, bias=False)
        if tie:
            self.head.weight = self.encoder.tokens.weight

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.encoder(ids)[0])


__all__ = ["TransformerClassifier", "CausalLM", "SelfAttention", "Block", "Encoder", "PAD_ID"]
