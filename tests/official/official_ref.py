"""Test helpers written from the released format (docs/method.md, "The paper's released checkpoints"), independent of
sparseformer's model and converter: build official checkpoints, run the official forward, write and read
data-gym tokenizer files, and compare tensors bit for bit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import regex
import torch
import torch.nn.functional as F

TINYPYTHON_REGEX = r"""[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def base_config(**kw) -> dict:
    """A small beeg_config.json dict in the released files' style."""
    c = dict(block_size=16, vocab_size=48, n_layer=2, n_head=4, d_model=32, d_head=8, d_mlp=64, dropout=0.0,
             bias=True, ln_bias=True, rms_norm=True, residual_activation_type="identity", activation_type="gelu",
             afrac=None, afrac_loctypes="attn_in,attn_out,mlp_in,mlp_out", tied_unembed=False,
             tokenizer_name="tinypython_2k", enable_bigram_table=False, learnable_bigram_table=False,
             d_pos_emb=None, sink=False, flash=True, grad_checkpointing=False)
    c.update(kw)
    return c


def _dims(c: dict) -> tuple[int, int, int, int, int]:
    d = c["d_model"]
    h = c["n_head"]
    dh = c.get("d_head") or d // h
    m = c.get("d_mlp") or c.get("n_mlp") or 4 * d
    return d, h, dh, m, c["vocab_size"]


def random_state(c: dict, seed: int, density: float = 0.3, wpe: str = "zero",
                 dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """final_model.pt contents with random, mostly-zero weights, keys and order as the format lists them."""
    g = torch.Generator().manual_seed(seed)
    d, h, dh, m, V = _dims(c)
    a = h * dh

    def sparse(*shape, scale=0.5):
        t = torch.randn(*shape, generator=g) * scale
        return (t * (torch.rand(*shape, generator=g) < density)).to(dtype)

    def gain(n):
        return (1 + 0.2 * torch.randn(n, generator=g)).to(dtype)

    sd = {"transformer.wte.weight": sparse(V, d, scale=1.0)}
    sd["transformer.wpe.weight"] = (torch.zeros(c["block_size"], d, dtype=dtype) if wpe == "zero"
                                    else sparse(c["block_size"], d, scale=0.3))
    for L in range(c["n_layer"]):
        p = f"transformer.h.{L}."
        sd[p + "ln_1.weight"] = gain(d)
        sd[p + "attn.c_attn.weight"] = sparse(3 * a, d)
        if c["bias"]:
            sd[p + "attn.c_attn.bias"] = sparse(3 * a, scale=0.1)
        sd[p + "attn.c_proj.weight"] = sparse(d, a)
        if c["bias"]:
            sd[p + "attn.c_proj.bias"] = sparse(d, scale=0.1)
        if c["sink"]:
            sd[p + "attn.attn_imp.sink_logit"] = torch.randn(h, generator=g).to(dtype)
        sd[p + "ln_2.weight"] = gain(d)
        sd[p + "mlp.c_fc.weight"] = sparse(m, d)
        if c["bias"]:
            sd[p + "mlp.c_fc.bias"] = sparse(m, scale=0.1)
        sd[p + "mlp.c_proj.weight"] = sparse(d, m)
        if c["bias"]:
            sd[p + "mlp.c_proj.bias"] = sparse(d, scale=0.1)
    sd["transformer.ln_f.weight"] = gain(d)
    sd["lm_head.weight"] = sparse(V, d, scale=1.0)
    sd["final_logits_bias"] = (0.1 * torch.randn(V, generator=g)).to(dtype)
    if c["enable_bigram_table"]:
        sd["bigram_table"] = (torch.rand(V, V, generator=g) * 0.5).to(dtype)
    return sd


def write_official(directory: Path, c: dict, sd: dict, coo=()) -> Path:
    """Write beeg_config.json + final_model.pt; keys in `coo` are stored as torch sparse COO."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "beeg_config.json").write_text(json.dumps(c))
    torch.save({k: (v.to_sparse() if k in coo else v) for k, v in sd.items()}, directory / "final_model.pt")
    return directory


def official_forward(sd: dict, c: dict, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits [B, T, V] and the activation at every hook of the released code, computed in float64 from the
    format."""
    w = {k: (v.to_dense() if v.is_sparse else v).double() for k, v in sd.items()}
    d, H, D, m, V = _dims(c)
    B, T = idx.shape
    afrac = c.get("afrac")
    sites = set(c.get("afrac_loctypes", "attn_in,attn_out,mlp_in,mlp_out").split(",")) if afrac else set()
    eps = torch.finfo(torch.float64).eps
    acts: dict[str, torch.Tensor] = {}

    def topk(x, site):
        if site not in sites:
            return x
        keep = x.abs().topk(int(afrac * x.shape[-1]), dim=-1).indices
        return torch.zeros_like(x).scatter(-1, keep, x.gather(-1, keep))

    def rms(x, g):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * g

    def linear(x, name):
        y = x @ w[name + ".weight"].T
        return y + w[name + ".bias"] if name + ".bias" in w else y

    x = w["transformer.wte.weight"][idx] + w["transformer.wpe.weight"][:T]
    for L in range(c["n_layer"]):
        p = f"transformer.h.{L}."
        acts[f"{L}.resid_in"] = x
        a_in = acts[f"{L}.attn.act_in"] = topk(rms(x, w[p + "ln_1.weight"]), "attn_in")
        q, k, v = linear(a_in, p + "attn.c_attn").split(H * D, dim=-1)
        q = acts[f"{L}.attn.q"] = topk(q, "attn_q")
        k = acts[f"{L}.attn.k"] = topk(k, "attn_k")
        v = acts[f"{L}.attn.v"] = topk(v, "attn_v")
        s = torch.einsum("bthd,bshd->bhts", q.view(B, T, H, D), k.view(B, T, H, D)) / math.sqrt(D)
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        if p + "attn.attn_imp.sink_logit" in w:   # one extra always-visible slot: score sink[h], value 0
            s = torch.cat([s, w[p + "attn.attn_imp.sink_logit"].view(1, H, 1, 1).expand(B, H, T, 1)], dim=-1)
        probs = s.softmax(-1)[..., :T]
        y = acts[f"{L}.attn.y"] = torch.einsum("bhts,bshd->bthd", probs, v.view(B, T, H, D)).reshape(B, T, H * D)
        out = acts[f"{L}.attn.resid_delta"] = topk(linear(y, p + "attn.c_proj"), "attn_out")
        x = acts[f"{L}.resid_mid"] = x + out
        m_in = acts[f"{L}.mlp.act_in"] = topk(rms(x, w[p + "ln_2.weight"]), "mlp_in")
        pre = linear(m_in, p + "mlp.c_fc")
        post = F.gelu(pre) if c.get("activation_type", "gelu") == "gelu" else F.relu(pre)
        post = acts[f"{L}.mlp.post_act"] = topk(post, "mlp_neuron")
        out = acts[f"{L}.mlp.resid_delta"] = topk(linear(post, p + "mlp.c_proj"), "mlp_out")
        x = x + out
    acts["final_resid"] = x
    logits = rms(x, w["transformer.ln_f.weight"]) @ w["lm_head.weight"].T + w["final_logits_bias"]
    if "bigram_table" in w:
        logits = logits + w["bigram_table"][idx]
    return logits, acts


# ---------------------------------------------------------------------------------------------------------
# Data-gym tokenizer files

def datagym_byte_order() -> list[int]:
    """Bytes in data-gym rank order: printable ones (not space) first, then the rest, each ascending."""
    first = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    return first + [b for b in range(256) if b not in first]


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable spelling of each byte: printable bytes as themselves, the others from U+0100 on."""
    others = [b for b in range(256) if not (chr(b).isprintable() and chr(b) != " ")]
    table = {b: chr(b) for b in range(256) if b not in others}
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return table


def write_datagym_from_hf(spec: dict, directory: Path, eot_id: int) -> None:
    """encoder.json + vocab.bpe from a tokenizer.json spec whose ids are already BPE ranks."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for t, i in spec["model"]["vocab"].items() if t != "<|endoftext|>"}
    merges = [m.split(" ") if isinstance(m, str) else m for m in spec["model"]["merges"]]
    (directory / "encoder.json").write_text(json.dumps({**vocab, "<|endoftext|>": eot_id}))
    (directory / "vocab.bpe").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))


def read_ranks(directory: Path) -> dict[bytes, int]:
    """Mergeable ranks of data-gym files, as the official loader derives them; checks encoder.json."""
    b2u = byte_to_unicode()
    u2b = {u: b for b, u in b2u.items()}
    ranks = {bytes([b]): i for i, b in enumerate(datagym_byte_order())}
    lines = (directory / "vocab.bpe").read_text().split("\n")[1:-1]
    for line in lines:
        a, b = line.split()
        ranks[bytes(u2b[ch] for ch in a + b)] = len(ranks)
    encoder = json.loads((directory / "encoder.json").read_text())
    encoder.pop("<|endoftext|>", None)
    assert {bytes(u2b[ch] for ch in t): i for t, i in encoder.items()} == ranks
    return ranks


def rank_bpe_encode(text: str, ranks: dict[bytes, int]) -> list[int]:
    """Encode like the official (tiktoken) loader: split with the regex, then repeatedly merge the adjacent
    pair whose concatenation has the lowest rank."""
    ids = []
    for piece in regex.findall(TINYPYTHON_REGEX, text):
        parts = [bytes([b]) for b in piece.encode("utf-8")]
        while len(parts) > 1:
            cands = [(ranks.get(parts[i] + parts[i + 1]), i) for i in range(len(parts) - 1)]
            cands = [(r, i) for r, i in cands if r is not None]
            if not cands:
                break
            _, i = min(cands)
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        ids.extend(ranks[p] for p in parts)
    return ids


# ---------------------------------------------------------------------------------------------------------
# Bitwise comparison

_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(_INT[t.element_size()])


def assert_same_tensor(key: str, a: torch.Tensor, b: torch.Tensor) -> None:
    """Same layout, dtype, shape and bits (COO: same coalesced indices and values)."""
    assert a.layout == b.layout, f"{key}: layout {a.layout} != {b.layout}"
    assert a.dtype == b.dtype, f"{key}: dtype {a.dtype} != {b.dtype}"
    assert a.shape == b.shape, f"{key}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    if a.is_sparse:
        assert a.is_coalesced() and b.is_coalesced(), key
        assert torch.equal(a.indices(), b.indices()), f"{key}: COO indices differ"
        a, b = a.values(), b.values()
    assert torch.equal(bits(a), bits(b)), f"{key}: values differ"
