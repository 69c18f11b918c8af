"""Pruning nodes: ids, labels, and conversions between circuit representations.

The pruning sites (which activations get masks, their widths, the weights that give their edges) are
declared once in `sparseformer.sites`; `mask_sites(cfg)` lists them. A node is one channel at one site,
applied at every token position. Its id is `"{site}.{channel}"` (`0.mlp.post_act.27`). A circuit is a
dict `site -> sorted kept channels`; pruning also uses a flat vector over all nodes, in the order of
`mask_sites` (sites in forward order, channels ascending). See docs/pruning.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from ..sites import FINAL_SITE, mask_sites, site_spec

FINAL = FINAL_SITE.name

__all__ = ["FINAL", "mask_sites"]


def is_per_head(site: str) -> bool:
    """Whether a site's channels are grouped by head (q, k, v: channel c is head c // d_head)."""
    return site_spec(site).heads


def node_id(site: str, channel: int) -> str:
    return f"{site}.{channel}"


def parse_node_id(nid: str) -> tuple[str, int]:
    site, _, channel = nid.rpartition(".")
    return site, int(channel)


def channel_label(site: str, channel: int, d_head: int) -> str:
    """How a channel is shown: `h{head}.ch{c}` at per-head sites (q, k, v: flat across heads), else the index."""
    return f"h{channel // d_head}.ch{channel % d_head}" if is_per_head(site) else str(channel)


def n_nodes(sites: dict[str, int]) -> int:
    return sum(sites.values())


def split_flat(flat: Tensor, sites: dict[str, int]) -> dict[str, Tensor]:
    """A flat vector over all nodes -> one view per site."""
    return dict(zip(sites, flat.split(list(sites.values()))))


def kept_from_flat(indices: Iterable[int], sites: dict[str, int]) -> dict[str, list[int]]:
    """Flat node indices -> circuit dict (only sites with kept channels)."""
    starts, pos = {}, 0
    for site, width in sites.items():
        starts[site] = pos
        pos += width
    bounds = list(starts.items())
    kept: dict[str, list[int]] = {}
    for i in sorted(int(i) for i in indices):
        site = next(s for s, start in reversed(bounds) if i >= start)
        kept.setdefault(site, []).append(i - starts[site])
    return kept


def flat_from_kept(kept: dict[str, Sequence[int]], sites: dict[str, int]) -> Tensor:
    """Circuit dict -> bool vector over all nodes."""
    parts = []
    for site, width in sites.items():
        m = torch.zeros(width, dtype=torch.bool)
        if kept.get(site):
            m[torch.as_tensor(list(kept[site]), dtype=torch.long)] = True
        parts.append(m)
    return torch.cat(parts)


def keep_masks(kept: dict[str, Sequence[int]], sites: dict[str, int]) -> dict[str, Tensor]:
    """Circuit dict -> float 0/1 keep vector per site (every site present)."""
    return {s: m.float() for s, m in split_flat(flat_from_kept(kept, sites), sites).items()}


def count_nodes(kept: dict[str, Sequence[int]]) -> int:
    return sum(len(v) for v in kept.values())


def node_ids(kept: dict[str, Sequence[int]], sites: dict[str, int]) -> list[str]:
    """Kept node ids in forward order."""
    return [node_id(s, c) for s in sites for c in sorted(kept.get(s, ()))]
