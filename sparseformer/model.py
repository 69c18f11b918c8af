"""The GPT-2-style decoder of Gao et al. 2025, with named hook points (docs/method.md, "Architecture").

Data flow: x = wte[idx] (+ wpe[:T]) -> per layer: x += Attn(RMSNorm(x)); x += MLP(RMSNorm(x)) -> final_resid
-> RMSNorm -> lm_head -> + final_logits_bias (+ bigram_table[idx]).

AbsTopK (keep the k = max(1, int(afrac * width)) largest |x| per token) sits at the configured sites; every hook point
is placed after the AbsTopK of its site, so records and interventions see the sparse activation. The sites
(hook name, width, AbsTopK name, pruning mask and edges) are declared once in sites.py.
Module names follow the official checkpoints (transformer.h.L.attn.c_attn, ...), so state dicts map 1:1.
Every Linear is a SparseLinear and every embedding a SparseEmbedding, built with its sparsity kind ("weight"
for the weight matrices and wpe, "embed" for wte and lm_head; biases are "bias") and, for the weight
matrices, the side of their neurons (where a protected top-j applies). The layers hold k, the training
schedule writes it (sparsity/params.py), SparseAdamW keeps each tensor at its k.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig
from .hooks import HookPoint
from .kernels.abstopk import abstopk
from .layers import SparseEmbedding, SparseLinear, sparse_tensors
from .sites import site_spec, site_width


class AbsTopK(nn.Module):
    """AbsTopK at one site (the k largest |x| of each token, ties to the lowest feature; gradients through
    the kept entries only); identity when k is None (the site is not sparsified)."""

    def __init__(self, k: int | None):
        super().__init__()
        self.k = k

    def forward(self, x: Tensor) -> Tensor:
        return x if self.k is None else abstopk(x, self.k)

    def extra_repr(self) -> str:
        return f"k={self.k}"


def _site_topk(cfg: ModelConfig, site: str) -> AbsTopK:
    """The AbsTopK of a site (declared in sites.py): on when the site's AbsTopK name is in cfg.afrac_sites."""
    spec = site_spec(site)
    on = cfg.afrac < 1 and spec.abstopk in cfg.afrac_sites
    return AbsTopK(cfg.afrac_k(site_width(cfg, spec)) if on else None)


def _rmsnorm(cfg: ModelConfig, width: int) -> nn.RMSNorm:
    return nn.RMSNorm(width, eps=cfg.rms_norm_eps)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        d_attn = cfg.d_attn
        self.n_head, self.d_head = cfg.n_head, cfg.d_head
        self.c_attn = SparseLinear(cfg.d_model, 3 * d_attn, bias=cfg.bias, neuron_axis="rows")   # q, k, v
        self.c_proj = SparseLinear(d_attn, cfg.d_model, bias=cfg.bias, neuron_axis="cols")
        self.sink_logit = nn.Parameter(torch.zeros(cfg.n_head)) if cfg.sink else None
        self.topk_q = _site_topk(cfg, "attn.q")
        self.topk_k = _site_topk(cfg, "attn.k")
        self.topk_v = _site_topk(cfg, "attn.v")
        self.topk_out = _site_topk(cfg, "attn.resid_delta")
        p = f"{layer}.attn"
        self.hook_q = HookPoint(f"{p}.q")                  # [B, T, n_head*d_head]
        self.hook_k = HookPoint(f"{p}.k")                  # [B, T, n_head*d_head]
        self.hook_v = HookPoint(f"{p}.v")                  # [B, T, n_head*d_head]
        self.hook_y = HookPoint(f"{p}.y")                  # [B, T, n_head*d_head], heads concatenated
        self.hook_resid_delta = HookPoint(f"{p}.resid_delta")  # [B, T, d_model]

    def forward(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        q, k, v = self.c_attn(x).split(self.n_head * self.d_head, dim=2)
        q = self.hook_q(self.topk_q(q))
        k = self.hook_k(self.topk_k(k))
        v = self.hook_v(self.topk_v(v))
        q, k, v = (t.view(B, T, self.n_head, self.d_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hd)
        if self.sink_logit is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = _attention_with_sink(q, k, v, self.sink_logit)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.d_head)
        y = self.hook_y(y)
        return self.hook_resid_delta(self.topk_out(self.c_proj(y)))


def _attention_with_sink(q: Tensor, k: Tensor, v: Tensor, sink: Tensor) -> Tensor:
    """Causal attention with one extra always-visible slot per head: score sink[h], zero value, so a head
    can attend to nothing (docs/method.md, "Architecture")."""
    B, H, T, D = q.shape
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D))                      # (B, H, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    sink_col = sink.to(scores.dtype).view(1, H, 1, 1).expand(B, H, T, 1)
    probs = torch.cat([scores, sink_col], dim=-1).softmax(dim=-1)[..., :T]          # drop the sink slot
    return probs.to(v.dtype) @ v


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.c_fc = SparseLinear(cfg.d_model, cfg.d_mlp, bias=cfg.bias, neuron_axis="rows")
        self.act = nn.GELU() if cfg.activation == "gelu" else nn.ReLU()
        self.c_proj = SparseLinear(cfg.d_mlp, cfg.d_model, bias=cfg.bias, neuron_axis="cols")
        self.topk_neuron = _site_topk(cfg, "mlp.post_act")
        self.topk_out = _site_topk(cfg, "mlp.resid_delta")
        self.hook_post_act = HookPoint(f"{layer}.mlp.post_act")          # [B, T, d_mlp]
        self.hook_resid_delta = HookPoint(f"{layer}.mlp.resid_delta")    # [B, T, d_model]

    def forward(self, x: Tensor) -> Tensor:
        h = self.hook_post_act(self.topk_neuron(self.act(self.c_fc(x))))
        return self.hook_resid_delta(self.topk_out(self.c_proj(h)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        # hook points and AbsTopK hold no parameters; they are registered in forward order, so
        # `GPT.hook_names()` lists the sites in the order the forward pass reaches them
        self.hook_resid_in = HookPoint(f"{layer}.resid_in")              # [B, T, d_model]
        self.ln_1 = _rmsnorm(cfg, cfg.d_model)
        self.topk_attn_in = _site_topk(cfg, "attn.act_in")
        self.hook_attn_in = HookPoint(f"{layer}.attn.act_in")            # [B, T, d_model]
        self.attn = CausalSelfAttention(cfg, layer)
        self.topk_resid_attn = _site_topk(cfg, "resid_mid")
        self.hook_resid_mid = HookPoint(f"{layer}.resid_mid")            # [B, T, d_model]
        self.ln_2 = _rmsnorm(cfg, cfg.d_model)
        self.topk_mlp_in = _site_topk(cfg, "mlp.act_in")
        self.hook_mlp_in = HookPoint(f"{layer}.mlp.act_in")              # [B, T, d_model]
        self.mlp = MLP(cfg, layer)
        self.topk_resid_mlp = _site_topk(cfg, "resid_out")

    def forward(self, x: Tensor) -> Tensor:
        x = self.hook_resid_in(x)
        x = x + self.attn(self.hook_attn_in(self.topk_attn_in(self.ln_1(x))))
        x = self.hook_resid_mid(self.topk_resid_attn(x))
        x = x + self.mlp(self.hook_mlp_in(self.topk_mlp_in(self.ln_2(x))))
        return self.topk_resid_mlp(x)


class GPT(nn.Module):
    """Decoder-only transformer; forward(idx [B, T] int64) -> logits [B, T, vocab] (float32)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=SparseEmbedding(cfg.vocab_size, cfg.d_model, kind="embed"),
            h=nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer)),
            ln_f=_rmsnorm(cfg, cfg.d_model),
        ))
        if cfg.learned_pos_emb:
            self.transformer["wpe"] = SparseEmbedding(cfg.block_size, cfg.d_model, kind="weight")
        self.lm_head = SparseLinear(cfg.d_model, cfg.vocab_size, bias=False, kind="embed", neuron_axis=None)
        self.register_buffer("final_logits_bias", torch.zeros(cfg.vocab_size))
        if cfg.bigram_table:
            table = torch.rand(cfg.vocab_size, cfg.vocab_size) * 0.02   # uniform[0,1) * 0.02, the released init
            if cfg.learnable_bigram_table:
                self.bigram_table = nn.Parameter(table)
            else:
                self.register_buffer("bigram_table", table)
        else:
            self.bigram_table = None
        self.hook_final_resid = HookPoint("final_resid")                 # [B, T, d_model]
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """N(0, 0.02) weights, residual c_proj N(0, 0.02/sqrt(2 n_layer)), zero biases (docs/method.md,
        "Initialisation")."""
        std = self.config.init_std
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                s = std / math.sqrt(2 * self.config.n_layer) if name.endswith("c_proj") else std
                nn.init.normal_(module.weight, 0.0, s)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)
            elif isinstance(module, nn.RMSNorm):
                nn.init.ones_(module.weight)
            elif isinstance(module, CausalSelfAttention) and module.sink_logit is not None:
                nn.init.zeros_(module.sink_logit)

    def hook_names(self) -> list[str]:
        """All hook point names in forward order."""
        from .hooks import hook_points
        return list(hook_points(self))

    def forward(self, idx: Tensor) -> Tensor:
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        x = self.transformer.wte(idx)
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe.weight[:T]
        for block in self.transformer.h:
            x = block(x)
        x = self.hook_final_resid(x)
        logits = self.lm_head(self.transformer.ln_f(x)).float()
        logits = logits + self.final_logits_bias
        if self.bigram_table is not None:
            # an embedding lookup, not bigram_table[idx]: the indexing backward accumulates rows with
            # unordered parallel adds on the CPU, embedding's backward in a fixed order (docs/reproducibility.md)
            logits = logits + F.embedding(idx, self.bigram_table).float()
        return logits

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
                 generator: torch.Generator | None = None, stop_token: int | None = None) -> Tensor:
        """Extend idx [B, T] by up to max_new_tokens: greedy at temperature 0, else sampled."""
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.config.block_size:])[:, -1, :]
            if temperature <= 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = logits.topk(min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(logits.softmax(-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
            if stop_token is not None and bool((nxt == stop_token).all()):
                break
        return idx

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def param_kind(name: str) -> str | None:
    """The sparsity kind of a GPT parameter name ("weight", "embed", "bias"), or None for tensors that are
    never sparse; for code that has names but no model (checkpoint files, the official format)."""
    return _param_kinds().get(_layer_pattern(name))


@lru_cache(maxsize=1)
def _param_kinds() -> dict[str, str]:
    """Kind of every sparse-capable GPT parameter, layer numbers written '*', read from a small GPT's layers."""
    cfg = ModelConfig(vocab_size=8, n_layer=1, d_model=8, n_head=2, d_head=4, d_mlp=8, block_size=4, bias=True,
                      learned_pos_emb=True)
    return {_layer_pattern(t.name): t.kind for t in sparse_tensors(GPT(cfg), declared=True)}


def _layer_pattern(name: str) -> str:
    return re.sub(r"\.\d+\.", ".*.", name)
