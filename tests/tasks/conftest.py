"""Fixtures for the task tests: a real BPE tokenizer trained on a slice of the standard library, a
character-level fake tokenizer, and small causal models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparseformer.data.corpus import stdlib_dir
from sparseformer.data.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    """A 2048-token BPE (tinypython pre-tokenizer regex) trained on ~1 MB of this interpreter's standard library."""
    texts, size = [], 0
    for path in sorted(stdlib_dir().glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="ignore")
        texts.append(text)
        size += len(text)
        if size > 1_000_000:
            break
    return Tokenizer.train(texts, vocab_size=2048)


class CharTokenizer:
    """One token per character (ids = code points + 1, so 0 stays the pad id); `same` maps characters
    onto one id, which makes targets collide on purpose."""

    def __init__(self, same: str = ""):
        self.same = same
        self.vocab_size = 300
        self.eot_id = 299

    def _id(self, ch: str) -> int:
        return 1 + ord(self.same[0] if ch in self.same else ch) % 290

    def encode(self, text: str) -> list[int]:
        return [self._id(c) for c in text]

    def decode(self, ids) -> str:
        return "".join(chr(i - 1) for i in ids)


class CausalToy(nn.Module):
    """Logits at position t depend on the tokens 0..t only (a running mean of embeddings)."""

    def __init__(self, vocab: int = 2048, d: int = 16, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = nn.Parameter(torch.randn(vocab, d, generator=g))
        self.out = nn.Parameter(torch.randn(d, vocab, generator=g) / d ** 0.5)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:     # idx [B, T] -> logits [B, T, V]
        x = self.emb[idx]                                       # [B, T, d]
        steps = torch.arange(1, idx.shape[1] + 1, device=idx.device)[None, :, None]
        return (x.cumsum(1) / steps) @ self.out


class Oracle(nn.Module):
    """Knows the answers: at a position whose prefix is a known prompt it puts `margin` on the target."""

    def __init__(self, answers: dict[tuple[int, ...], int], vocab: int, margin: float = 20.0):
        super().__init__()
        self.answers, self.vocab, self.margin = answers, vocab, margin
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        logits = torch.zeros(B, T, self.vocab) + self.dummy
        for b in range(B):
            row = idx[b].tolist()
            for t in range(T):
                tok = self.answers.get(tuple(row[:t + 1]))
                if tok is not None:
                    logits[b, t, tok] = self.margin
        return logits
