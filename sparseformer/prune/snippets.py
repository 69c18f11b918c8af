"""Top-activating pretraining snippets for the kept nodes of a circuit (shown by the viewer).

For each kept node: the `n_top` token positions with the highest activation and the `n_top` with the
lowest (only negative ones; many sites are signed), each as a window of tokens around the position.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from ..hooks import record
from .sites import node_id


def _snippet(row: Tensor, pos: int, act: float, decode: Callable[[int], str], before: int, after: int) -> dict:
    lo, hi = max(0, pos - before), min(row.numel(), pos + after + 1)
    return {"tokens": [decode(int(t)) for t in row[lo:hi]], "highlight": pos - lo, "act": round(act, 4)}


@torch.no_grad()
def top_snippets(model: torch.nn.Module, batches: Iterable[Tensor], kept: dict[str, Sequence[int]], *,
                 decode: Callable[[int], str] = str, n_top: int = 5, before: int = 12,
                 after: int = 3) -> dict[str, dict[str, list[dict]]]:
    """node id -> {"top": [...], "bottom": [...]} snippets {tokens, highlight, act} over `batches`."""
    sites = [s for s, c in kept.items() if c]
    if not sites:
        return {}
    device = next(model.parameters()).device
    tokens: list[Tensor] = []
    acts: dict[str, list[Tensor]] = {s: [] for s in sites}
    for idx in batches:
        with record(model, sites) as rec:
            model(idx.to(device))
        tokens.append(idx.cpu())
        for s in sites:
            acts[s].append(rec[s][..., list(kept[s])].float().cpu().reshape(-1, len(kept[s])))
    if not tokens:
        return {}
    T = tokens[0].shape[1]
    if any(t.shape[1] != T for t in tokens):
        raise ValueError("top_snippets: all batches must have the same sequence length")
    rows = torch.cat(tokens)                                            # [N, T]; flat token i = (i // T, i % T)
    out: dict[str, dict[str, list[dict]]] = {}
    for s in sites:
        a = torch.cat(acts[s])                                          # [N_tokens, n_kept]
        k = min(n_top, a.shape[0])
        for j, c in enumerate(kept[s]):
            col = a[:, j]
            top = col.topk(k)
            bot = (-col).topk(k)
            entry = {"top": [], "bottom": []}
            for key, vals, idxs, sign in (("top", top.values, top.indices, 1), ("bottom", bot.values, bot.indices, -1)):
                for v, i in zip(vals.tolist(), idxs.tolist()):
                    v = sign * v
                    if (key == "top" and v <= 0) or (key == "bottom" and v >= 0):
                        continue
                    r, p = divmod(i, T)
                    entry[key].append(_snippet(rows[r], p, v, decode, before, after))
            out[node_id(s, c)] = entry
    return out
