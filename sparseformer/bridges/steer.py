"""Steering the dense model along a sparse node's decoder direction (docs/bridges.md; Gao et al. 2025, A.4).

A node of the sparse model (one channel at one site, e.g. `1.attn.act_in.37`, as `prune` names them) takes
different values on the two prompts of a task pair. Its counterfactual delta, at every token,
    delta_t = act_t(counterfactual prompt) - act_t(presented prompt),
is mapped into the dense model through the decoder of the bridge at the node's residual site and added, times a
strength in [0, 1], to the dense model's activation while it reads the presented prompt. The curve is the dense
model's probability of the counterfactual prompt's target token against the strength.

Two kinds of node carry a residual channel:
- read nodes (`L.attn.act_in`, `L.mlp.act_in`): the channel after the block's RMSNorm, while the bridge at
  `L.resid_in` / `L.resid_mid` maps the residual before it. A change d in the normed channel c is a change of
  d * rms_s / gamma_s[c] in the sparse residual; decoded, it is col_c * d * rms_s / gamma_s[c] in the dense
  residual and, through the dense norm, gamma_d * col_c * d * rms_s / (gamma_s[c] * rms_d) in the dense block's
  normed input, where it is added. rms_s, rms_d are the two models' RMS residual activations at the bridge site
  on pretraining text (the ratio of the paper's appendix), gamma the RMSNorm gains, col_c the decoder column.
- write nodes (`L.attn.resid_delta`, `L.mlp.resid_delta`): the channel a block adds to the residual, so its
  delta is a delta of the residual at the next site, decoded by that site's bridge without rescaling and added
  to the dense residual there.

Reported with the curve: the sparse model itself with the node patched by the same strength times delta (what
the node does where it lives), the dense model steered along the decoder directions of random other channels of
the same site with the same delta (a control), and the dense model run on the counterfactual prompts (where
full steering would ideally land).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..checkpoint import atomic_write_text
from ..errors import ConfigError
from ..hooks import record, replace
from ..prune.means import pretraining_batches
from ..prune.outputs import circuit_paths, read_circuit
from ..report.steering import viewer_with_curves, write_curve
from ..tasks import make_batch, max_prompt_len, resolve_task
from ..tasks.dataset import TaskBatch
from .run import Bridged

DEFAULT_STRENGTHS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
READ_SITES = {"attn.act_in": ("resid_in", "ln_1"), "mlp.act_in": ("resid_mid", "ln_2")}
WRITE_SITES = ("attn.resid_delta", "mlp.resid_delta")
RMS_TOKENS = 16384       # pretraining tokens for the reference RMS


@dataclass(frozen=True)
class SteerNode:
    """Where a sparse node lives, which bridge reads it and where its decoded delta enters the dense model."""
    node: str
    site: str           # its hook in the sparse model
    channel: int
    role: str           # "read" or "write"
    bridge_site: str    # the bridge whose decoder maps it
    dense_site: str     # the dense hook the delta is added at
    norm: str | None    # the RMSNorm before a read node ("ln_1" or "ln_2"), None for a write node
    layer: int


def parse_node(node: str, n_layer: int, width: int) -> SteerNode:
    """A node id `L.SITE.CHANNEL` -> its SteerNode; ConfigError when it names no residual channel."""
    head, _, channel = node.rpartition(".")
    layer_s, _, name = head.partition(".")
    if not (channel.isdigit() and layer_s.isdigit() and name):
        raise ConfigError(f"node {node!r} is not of the form LAYER.SITE.CHANNEL (e.g. 1.attn.act_in.37)")
    layer, c = int(layer_s), int(channel)
    if layer >= n_layer:
        raise ConfigError(f"node {node!r}: the model has layers 0..{n_layer - 1}")
    if c >= width:
        raise ConfigError(f"node {node!r}: channel {c} is outside the residual width {width}")
    if name in READ_SITES:
        bridge, norm = READ_SITES[name]
        return SteerNode(node, head, c, "read", f"{layer}.{bridge}", head, norm, layer)
    if name in WRITE_SITES:
        nxt = f"{layer}.resid_mid" if name.startswith("attn") else f"{layer + 1}.resid_in"
        if layer + 1 >= n_layer and name.startswith("mlp"):
            raise ConfigError(f"node {node!r} writes after the last bridge (the last MLP's write goes to the "
                              f"final norm); steer a read node or an earlier write")
        return SteerNode(node, head, c, "write", nxt, nxt, None, layer)
    raise ConfigError(f"node {node!r} carries no residual channel; steering needs a read node "
                      f"(attn.act_in, mlp.act_in) or a write node (attn.resid_delta, mlp.resid_delta)")


@torch.no_grad()
def reference_rms(bridged: Bridged, site: str, n_tokens: int = RMS_TOKENS) -> tuple[float, float]:
    """Root mean square of the sparse and the dense residual at `site` over pretraining tokens."""
    sums, count = [0.0, 0.0], 0
    cfg = bridged.sparse.config
    for idx in pretraining_batches(bridged.sparse, n_tokens, cfg.train.seq_len, seed=2468):
        for j, model in enumerate((bridged.sparse.model, bridged.dense.model)):
            idx = idx.to(next(model.parameters()).device)
            with record(model, site) as rec:
                model(idx)
            sums[j] += float(rec[site].double().pow(2).mean(-1).sum())
        count += idx.numel()
    return math.sqrt(sums[0] / count), math.sqrt(sums[1] / count)


def direction(bridged: Bridged, sn: SteerNode, channel: int, rms: tuple[float, float]) -> Tensor:
    """The dense-side vector that one unit of the node's activation (channel `channel` of its site) adds."""
    col = bridged.bridges.decoders[bridged.bridges.index(sn.bridge_site)].weight[:, channel].float()
    if sn.role == "write":
        return col
    g_s = getattr(bridged.sparse.model.transformer.h[sn.layer], sn.norm).weight[channel].float()
    g_d = getattr(bridged.dense.model.transformer.h[sn.layer], sn.norm).weight.float()
    if float(g_s) == 0.0:
        raise ConfigError(f"node {sn.node}: its RMSNorm gain is 0, so the channel carries no residual signal")
    return g_d * col * (rms[0] / (float(g_s) * rms[1]))


def _readout(logits: Tensor, last: Tensor, tok_cf: Tensor, tok_pres: Tensor) -> tuple[float, float]:
    """Mean full-vocabulary probability of the counterfactual target, and mean 2-way probability against the
    presented target, at each row's last position."""
    z = logits[torch.arange(len(last), device=last.device), last].float()
    p = z.softmax(-1).gather(1, tok_cf[:, None]).squeeze(1)
    binary = torch.sigmoid(z.gather(1, tok_cf[:, None]) - z.gather(1, tok_pres[:, None])).squeeze(1)
    return float(p.mean()), float(binary.mean())


def _equal_length_pairs(batch: TaskBatch) -> tuple[TaskBatch, int]:
    """The pairs whose two prompts have the same number of tokens (the delta is taken position by position)."""
    keep = (batch.lengths_a == batch.lengths_b).nonzero().flatten()
    if len(keep) == 0:
        raise ConfigError(f"task {batch.task}: no pair has prompts of equal length in tokens, so a per-token "
                          f"counterfactual delta is not defined; use a task whose prompts differ in one token")
    return batch.select(keep), len(batch) - len(keep)


@torch.no_grad()
def steering_curve(bridged: Bridged, task: str, node: str, strengths=DEFAULT_STRENGTHS, *, n_pairs: int = 64,
                   seed: int = 0, reverse: bool = False, controls: int = 4) -> dict:
    """The steering curve of `node` on `task` (see the module docstring) as a JSON-ready dict. The presented
    prompts are the A prompts (B with `reverse`), the counterfactual ones their twins."""
    scfg = bridged.sparse.config.model
    sn = parse_node(node, scfg.n_layer, scfg.d_model)
    strengths = [float(s) for s in strengths]
    tok = bridged.sparse.tokenizer
    max_len = min(max_prompt_len(scfg.block_size), max_prompt_len(bridged.dense.config.model.block_size))
    batch, dropped = _equal_length_pairs(make_batch(resolve_task(task), tok, "test", n_pairs, seed, max_len=max_len))
    sparse, dense = bridged.sparse.model, bridged.dense.model
    batch = batch.to(next(sparse.parameters()).device)
    N = len(batch)
    pres, cf = (slice(N, 2 * N), slice(0, N)) if reverse else (slice(0, N), slice(N, 2 * N))
    tok_pres, tok_cf = (batch.target_b, batch.target_a) if reverse else (batch.target_a, batch.target_b)
    idx, last = batch.idx, batch.last[pres]
    valid = (torch.arange(idx.shape[1], device=idx.device)[None] <= last[:, None]).float()   # [N, T] real positions
    with record(sparse, sn.site) as rec:
        sparse(idx)
    act = rec[sn.site][..., sn.channel].float()                               # [2N, T]
    delta = (act[cf] - act[pres]) * valid                                     # [N, T]
    rms = reference_rms(bridged, sn.bridge_site)
    vec = direction(bridged, sn, sn.channel, rms)

    def dense_steered(v: Tensor, s: float) -> tuple[float, float]:
        add = (s * delta)[..., None] * v                                      # [N, T, d_dense]
        with replace(dense, {sn.dense_site: lambda x, _n: x + add.to(x.dtype)}):
            return _readout(dense(idx[pres]), last, tok_cf, tok_pres)

    def sparse_patched(s: float) -> tuple[float, float]:
        def patch(x: Tensor, _n: str) -> Tensor:
            x = x.clone()
            x[..., sn.channel] += (s * delta).to(x.dtype)
            return x
        with replace(sparse, {sn.site: patch}):
            return _readout(sparse(idx[pres]), last, tok_cf, tok_pres)

    rng = random.Random(f"steer:{node}:{seed}")
    others = rng.sample([c for c in range(scfg.d_model) if c != sn.channel], min(controls, scfg.d_model - 1))
    d_curve = [dense_steered(vec, s) for s in strengths]
    s_curve = [sparse_patched(s) for s in strengths]
    c_curves = [[dense_steered(direction(bridged, sn, c, rms), s)[0] for s in strengths] for c in others]
    ceiling = _readout(dense(idx[cf]), batch.last[cf], tok_cf, tok_pres)
    return {
        "task": batch.task, "node": node, "role": sn.role, "sparse_site": sn.site, "channel": sn.channel,
        "bridge_site": sn.bridge_site, "dense_site": sn.dense_site, "presented": "B" if reverse else "A",
        "target": _tokens(tok, tok_cf), "presented_target": _tokens(tok, tok_pres),
        "strengths": strengths,
        "dense": {"p_target": [p for p, _ in d_curve], "p_binary": [b for _, b in d_curve]},
        "sparse": {"p_target": [p for p, _ in s_curve], "p_binary": [b for _, b in s_curve]},
        "control": {"channels": others,
                    "p_target": [sum(c[i] for c in c_curves) / len(c_curves) if c_curves else None
                                 for i in range(len(strengths))]},
        "dense_counterfactual": {"p_target": ceiling[0], "p_binary": ceiling[1]},
        "rms_sparse": rms[0], "rms_dense": rms[1], "direction_norm": float(vec.norm()),
        "delta_last_mean": float(delta[torch.arange(N, device=delta.device), last].mean()),
        "n_pairs": N, "n_dropped": dropped, "seed": seed,
    }


def _tokens(tokenizer, ids: Tensor) -> list[str]:
    """The distinct target tokens, as text (most tasks have one or two)."""
    return sorted({tokenizer.decode([int(t)]) for t in ids})


def steerable(site: str, n_layer: int) -> bool:
    """Whether nodes of this site (`L.attn.act_in`, ...) carry a residual channel that a bridge maps."""
    layer, _, name = site.partition(".")
    last_write = name == "mlp.resid_delta" and layer.isdigit() and int(layer) + 1 >= n_layer
    return (name in READ_SITES or name in WRITE_SITES) and not last_write


def top_node(run_dir, task: str) -> str:
    """The steerable node of the run's circuit for `task` whose ablation from the circuit raises the task loss
    most (written by `prune`); ConfigError when there is no such circuit or node."""
    path = circuit_paths(run_dir, task)[0]
    if not path.is_file():
        raise ConfigError(f"--node top needs the circuit of {task}: run `sparseformer prune {run_dir} --task {task}`")
    doc = read_circuit(path)
    n_layer = int(doc.get("model", {}).get("n_layer", 0))
    nodes = [n for n in doc.get("node_info", []) if steerable(n["site"], n_layer)]
    if not nodes:
        raise ConfigError(f"the circuit of {task} in {run_dir} has no residual read or write node to steer")
    best = max(nodes, key=lambda n: -math.inf if n.get("ablation_loss") is None else n["ablation_loss"])
    return best["id"]


def write_steering(run_dir: str | Path, curve: dict) -> tuple[Path, Path, Path | None]:
    """Write the curve's JSON and SVG and rebuild the task's circuit viewer with its curves (when the run has a
    circuit for the task); returns the three paths (the viewer's None when there is no circuit)."""
    json_path, svg_path = write_curve(run_dir, curve)
    circuit_json, html_path = circuit_paths(run_dir, curve["task"])
    if not circuit_json.is_file():
        return json_path, svg_path, None
    atomic_write_text(html_path, viewer_with_curves(run_dir, read_circuit(circuit_json)))
    return json_path, svg_path, html_path
