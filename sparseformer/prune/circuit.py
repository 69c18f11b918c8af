"""Finding circuits on any model and task batches: `find_circuits` (several target losses, one mask training
per trial) and `find_circuit` (one target, validated, with its edges). docs/pruning.md describes the method.

`prune.run` adds what a run directory provides (the task's pairs, the mean cache, pretraining snippets).
The result of `find_circuit` is a `CircuitResult`, whose `to_dict()` is the circuits/TASK.json document.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import PruneError
from ..tasks.dataset import TaskBatch
from .ablate import Ablator, calibrated_loss, frozen_params
from .edges import Edge, circuit_edges, count_edges, embedding_edges, unembedding_edges
from .search import SearchOutcome, SearchSettings, calibrate, search_circuit, trial_settings
from .sites import channel_label, mask_sites, n_nodes, node_ids, parse_node_id, split_flat
from .validate import validate

log = logging.getLogger(__name__)


@dataclass
class CircuitResult:
    """A pruned circuit, its losses (per sequence, on the evaluation pairs) and its edges."""
    task: str
    target_loss: float
    full_loss: float                  # unpruned model
    loss: float                       # circuit alone (sufficiency)
    necessity_loss: float             # circuit ablated, rest intact
    random_loss: float                # random circuits of the same size per site (mean)
    ablated_loss: float               # every node ablated
    nodes: int
    edges: int                        # headline count: nonzero weights between kept nodes
    bias_edges: int
    embedding_edges: int
    unembedding_edges: int
    kept: dict[str, list[int]]
    edge_list: list[Edge]
    bias_edge_list: list[Edge]
    unembedding_edge_list: list[Edge]
    node_info: list[dict]             # per kept node: id, site, channel, label, tau, mean, ablation losses
    random_losses: list[float]
    calibration: dict | None          # {"scale", "shift"} when calibrated
    settings: dict
    trials: list[dict]
    history: list[dict]
    model: dict                       # n_layer, d_head, d_model, ... (for the viewer)
    targets: dict = field(default_factory=dict)    # token id -> text of the task's targets
    snippets: dict = field(default_factory=dict)   # node id -> {"top": [...], "bottom": [...]}
    before_cleaning: dict | None = None             # the bisected circuit before cleaning (viewer)
    faithfulness: dict | None = None                # the faithfulness controls, when run
    run: str | None = None
    step: int | None = None

    @property
    def sufficient(self) -> bool:
        return self.loss <= self.target_loss

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sufficient"] = self.sufficient
        for key in ("edge_list", "bias_edge_list", "unembedding_edge_list"):
            d[key] = [[e.src, e.tgt, round(e.weight, 6)] for e in getattr(self, key)]
        return d


def _zero_means(sites: dict[str, int]) -> dict[str, Tensor]:
    return {s: torch.zeros(w) for s, w in sites.items()}


@dataclass
class TargetSearch:
    """The best circuit the trials found for one target loss (None when the unpruned model misses it)."""
    target: float
    best: SearchOutcome | None = None
    best_trial: int | None = None
    edges: int | None = None
    trials: list[dict] = field(default_factory=list)      # one row per trial: trial, edges, nodes, loss, ...


@dataclass
class MultiSearch:
    """What `find_circuits` found: the unpruned loss, the node count and one TargetSearch per target."""
    full_loss: float
    n_nodes: int
    targets: list[TargetSearch]
    ablator: Ablator
    sites: dict[str, int]
    test: TaskBatch


def find_circuits(model: nn.Module, train: TaskBatch, test: TaskBatch, means: dict[str, Tensor] | None, *,
                  targets: Sequence[float], trials: int = 1, settings: SearchSettings | None = None, seed: int = 0,
                  freeze_norms: bool = False, calibrate_logits: bool = False, progress: bool = False,
                  clean: bool = True, control: bool = False) -> MultiSearch:
    """Prune `model` at several target losses at once: each trial trains masks on `train` once, bisects on
    `test` for every target and (with `clean`) cleans each circuit; per target the circuit with the fewest
    edges (then nodes) wins.

    means=None means zero ablation. Trial 0 runs at `settings`, the rest drawn around it. A target the
    unpruned model does not reach gets no circuit, and no masks are trained when none is reachable; with
    `control` (the faithfulness controls) every target is searched anyway and its best circuit kept, reached
    or not. The caller holds the model's parameters frozen (`frozen_params`)."""
    if trials < 1:
        raise PruneError(f"--trials {trials}: need at least one trial")
    settings = settings or SearchSettings()
    sites = mask_sites(model.config)
    test = test.sorted_by_length()                       # evaluation chunks of similar lengths pad little
    ablator = Ablator(model, means if means is not None else _zero_means(sites), freeze_norms=freeze_norms)
    z, b = ablator.eval_logits(test, None)
    full_loss = calibrate(z, b)[2] if calibrate_logits else float(calibrated_loss(z, b))
    found = [TargetSearch(t) for t in targets]
    reachable = found if control else [f for f in found if full_loss <= f.target]
    for t in range(trials if reachable else 0):
        s = trial_settings(settings, t, seed)
        outs = search_circuit(ablator, sites, train, test, s, targets=[f.target for f in reachable],
                              calibrated=calibrate_logits, seed=seed + t, progress=progress, clean=clean,
                              full_reaches=not control)
        for f, out in zip(reachable, outs):
            edges = count_edges(model, out.kept)
            row = {"trial": t, "edges": edges, "nodes": out.nodes, "loss": out.loss}
            if out.before is not None:
                row.update(edges_before=count_edges(model, out.before["kept"]), nodes_before=out.before["nodes"],
                           loss_before=out.before["loss"])
            f.trials.append({**row, **s.to_dict(), "time_s": out.timings_s})
            key = (not out.reached, edges, out.nodes, out.loss)
            if f.best is None or key < (not f.best.reached, f.edges, f.best.nodes, f.best.loss):
                f.best, f.best_trial, f.edges = out, t, edges
    return MultiSearch(full_loss=full_loss, n_nodes=n_nodes(sites), targets=found, ablator=ablator, sites=sites,
                       test=test)


def find_circuit(model: nn.Module, train: TaskBatch, test: TaskBatch, means: dict[str, Tensor] | None, *,
                 task: str = "task", target_loss: float = 0.15, trials: int = 1,
                 settings: SearchSettings | None = None, seed: int = 0, freeze_norms: bool = False,
                 calibrate_logits: bool = False, progress: bool = False, clean: bool = True, n_random: int = 3,
                 max_node_ablations: int = 64, node_pairs: int = 16) -> CircuitResult:
    """Prune `model` for the pairs of `train` (mask search) and `test` (bisection, cleaning and every
    reported loss), then validate the circuit (see find_circuits; raises PruneError if the unpruned model
    does not reach `target_loss`)."""
    t0 = time.perf_counter()
    with frozen_params(model):
        search = find_circuits(model, train, test, means, targets=[target_loss], trials=trials, settings=settings,
                               seed=seed, freeze_norms=freeze_norms, calibrate_logits=calibrate_logits,
                               progress=progress, clean=clean)
        found = search.targets[0]
        if found.best is None:
            raise PruneError(f"the unpruned model's loss on {task} is {search.full_loss:.4f} per sequence, above "
                             f"the target {target_loss:g}; raise --target-loss above it or train the model longer")
        best, test, sites = found.best, search.test, search.sites
        t1 = time.perf_counter()
        v = validate(search.ablator, sites, best.kept, test, scale=best.scale, shift=best.shift, n_random=n_random,
                     max_node_ablations=max_node_ablations, node_pairs=node_pairs, seed=seed,
                     node_losses=best.node_losses or None)
        log.info("validation took %.1f s", time.perf_counter() - t1)
    edges, bias_edges = circuit_edges(model, best.kept)
    targets = sorted(set(test.target_a.tolist()) | (set(test.target_b.tolist()) if test.kind == "binary" else set()))
    unembed = unembedding_edges(model, best.kept, targets)
    tau = split_flat(best.tau, sites)
    abl_means = search.ablator.means
    node_info = []
    for nid in node_ids(best.kept, sites):
        site, c = parse_node_id(nid)
        node_info.append({"id": nid, "site": site, "channel": c, "label": channel_label(site, c, model.config.d_head),
                          "tau": round(float(tau[site][c]), 4), "mean": round(float(abl_means[site][c]), 5),
                          "ablation_loss": v.node_losses.get(nid)})     # the circuit without this node
    cfg = model.config
    return CircuitResult(
        task=task, target_loss=target_loss, full_loss=search.full_loss, loss=v.loss,
        necessity_loss=v.necessity_loss, random_loss=v.random_loss, ablated_loss=v.ablated_loss, nodes=best.nodes,
        edges=len(edges), bias_edges=len(bias_edges),
        embedding_edges=embedding_edges(model, best.kept, test.prompt_tokens()), unembedding_edges=len(unembed),
        kept=best.kept, edge_list=edges, bias_edge_list=bias_edges, unembedding_edge_list=unembed,
        node_info=node_info, random_losses=v.random_losses,
        calibration={"scale": best.scale, "shift": best.shift} if calibrate_logits else None,
        settings={"ablation": "mean" if means is not None else "zero", "freeze_norms": freeze_norms,
                  "calibrate": calibrate_logits, "trials": trials, "seed": seed, "best_trial": found.best_trial,
                  "search": best.settings.to_dict(), "train_pairs": train.n_pairs, "eval_pairs": test.n_pairs,
                  "kind": test.kind, "clean": clean,
                  "node_ablation_pairs": test.n_pairs if best.node_losses else min(node_pairs, test.n_pairs),
                  "max_node_ablations": max_node_ablations, "time_s": round(time.perf_counter() - t0, 2)},
        trials=found.trials,
        history=best.history,
        model={k: getattr(cfg, k) for k in ("n_layer", "d_model", "n_head", "d_head", "d_mlp", "vocab_size")},
        targets={str(t): str(t) for t in targets},
        before_cleaning=_before_cleaning(model, best, sites),
    )


def _before_cleaning(model: nn.Module, best: SearchOutcome, sites: dict[str, int]) -> dict | None:
    """The bisected circuit before cleaning, for the viewer: its size and loss, the removed nodes and the
    weight edges that touch them."""
    if best.before is None:
        return None
    edges, _ = circuit_edges(model, best.before["kept"])
    removed = set(best.cleaning["removed"])
    d = model.config.d_head
    return {"nodes": best.before["nodes"], "edges": len(edges), "loss": best.before["loss"],
            **{k: best.cleaning[k] for k in ("evals", "passes", "seconds")},
            "removed": [{"id": nid, "site": parse_node_id(nid)[0], "channel": parse_node_id(nid)[1],
                         "label": channel_label(*parse_node_id(nid), d)} for nid in node_ids(best.before["kept"], sites)
                        if nid in removed],
            "edge_list": [[e.src, e.tgt, round(e.weight, 6)] for e in edges if e.src in removed or e.tgt in removed]}
