"""The activation sites of the GPT model, declared once.

A site is a named place in every layer where an activation may be sparsified by AbsTopK, is seen by a hook
point, and may be masked by the pruner. `model.py` places the sites in the forward pass; the pruner (its
mask sites, node ids, edges), the circuit viewer and the official checkpoint format read this table.

Each `Site` gives
- `name`: its hook name inside layer L (the hook is `"{L}.{name}"`, a pruning node `"{L}.{name}.{channel}"`);
- `width`: the ModelConfig attribute that gives its width (`d_model`, `d_attn`, `d_mlp`);
- `abstopk`: its name in `model.afrac_sites`, which is the location type of the official checkpoints
  (`attn_in`, ...): the external name, mapped to the site here and nowhere else;
- `mask`: whether the pruner masks it (a pruning site);
- `edges_from`: where the circuit edges into this site come from: the source site, and the Linear (a path
  from the block) whose nonzero weights connect source channels to this site's channels;
- `role`: "read" for sites that read the residual stream (after a norm), "write" for sites that write it;
- `heads`: its channels are per head (channel c belongs to head c // d_head);
- `label`, `row`: how the viewer titles the site's row, and a row shared by several sites (q, k and v).

Adding a site is one entry here plus its HookPoint (and AbsTopK) in model.py; see docs/extending.md.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EdgeSource:
    """The Linear whose weights [out, in] connect channels of `site` (in) to the declaring site (out).
    `blocks` > 1 when the Linear stacks several sites' rows (c_attn: q, k, v); `block` picks ours."""
    site: str
    weight: str
    block: int = 0
    blocks: int = 1


@dataclass(frozen=True)
class Site:
    name: str
    width: str
    abstopk: str | None = None
    mask: bool = True
    edges_from: EdgeSource | None = None
    role: str | None = None
    heads: bool = False
    label: str = ""
    row: str = ""

    @property
    def view_row(self) -> str:
        return self.row or self.name


def _qkv(name: str, block: int) -> Site:
    return Site(f"attn.{name}", "d_attn", f"attn_{name}", edges_from=EdgeSource("attn.act_in", "attn.c_attn", block, 3),
                heads=True, label="attn q / k / v", row="attn.qkv")


# Per layer, in forward order.
LAYER_SITES: tuple[Site, ...] = (
    Site("attn.act_in", "d_model", "attn_in", role="read", label="attn read"),
    _qkv("q", 0),
    _qkv("k", 1),
    _qkv("v", 2),
    Site("attn.resid_delta", "d_model", "attn_out", edges_from=EdgeSource("attn.v", "attn.c_proj"), role="write",
         label="attn write"),
    Site("resid_mid", "d_model", "resid_post_attn", mask=False),
    Site("mlp.act_in", "d_model", "mlp_in", role="read", label="mlp read"),
    Site("mlp.post_act", "d_mlp", "mlp_neuron", edges_from=EdgeSource("mlp.act_in", "mlp.c_fc"), label="mlp neurons"),
    Site("mlp.resid_delta", "d_model", "mlp_out", edges_from=EdgeSource("mlp.post_act", "mlp.c_proj"), role="write",
         label="mlp write"),
    # The block's output has no hook of its own: the next layer's resid_in (or final_resid) sees it.
    Site("resid_out", "d_model", "resid_post_mlp", mask=False),
)

# After the last layer, before ln_f.
FINAL_SITE = Site("final_resid", "d_model", role="read", label="final resid")

ABSTOPK_NAMES: tuple[str, ...] = tuple(s.abstopk for s in LAYER_SITES if s.abstopk)

def site_spec(site: str) -> Site:
    """The declaration of a site, by its name with or without the layer ('3.attn.q' or 'attn.q')."""
    head, _, rest = site.partition(".")
    name = rest if head.isdigit() else site
    for s in LAYER_SITES + (FINAL_SITE,):
        if s.name == name:
            return s
    raise KeyError(f"no site {site!r} is declared in sparseformer/sites.py")


def abstopk_widths(cfg) -> dict[str, int]:
    """Every AbsTopK name -> the width of its site in a model of config `cfg`."""
    return {s.abstopk: site_width(cfg, s) for s in LAYER_SITES if s.abstopk}


def site_width(cfg, site: Site | str) -> int:
    """The width of a site in a model of config `cfg`."""
    return int(getattr(cfg, (site if isinstance(site, Site) else site_spec(site)).width))


def mask_sites(cfg) -> dict[str, int]:
    """Every pruning site of the model -> its width, in forward order (layer by layer, then final_resid)."""
    sites = {f"{L}.{s.name}": site_width(cfg, s) for L in range(cfg.n_layer) for s in LAYER_SITES if s.mask}
    sites[FINAL_SITE.name] = site_width(cfg, FINAL_SITE)
    return sites


def viewer_layout() -> list[dict]:
    """The pruning sites of one layer, then final_resid, as the viewer draws them (forward order)."""
    def entry(s: Site, per_layer: bool) -> dict:
        return {"name": s.name, "label": s.label or s.name, "row": s.view_row, "role": s.role, "heads": s.heads,
                "per_layer": per_layer}
    return [entry(s, True) for s in LAYER_SITES if s.mask] + [entry(FINAL_SITE, False)]
