"""Pruning end to end: find a circuit for a task, validate it, count its edges (SPEC §5).

`find_circuit` works on any model and task batches (the planted-circuit test uses it directly);
`prune_task` adds what a run directory provides: the task's pairs, the mean cache and pretraining snippets.
The result is a `CircuitResult`, whose `to_dict()` is the circuits/TASK.json document.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import PruneError, SparseformerError
from .ablate import Ablator, frozen_params
from .edges import Edge, circuit_edges, embedding_edges, unembedding_edges
from .search import SearchSettings, calibrate, search_circuit, trial_settings
from .sites import channel_label, mask_sites, node_ids, parse_node_id, split_flat
from .taskdata import TaskBatch, contrast_loss
from .validate import validate

log = logging.getLogger(__name__)

ABLATIONS = ("mean", "zero")


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


def find_circuit(model: nn.Module, train: TaskBatch, test: TaskBatch, means: dict[str, Tensor] | None, *,
                 task: str = "task", target_loss: float = 0.15, trials: int = 1,
                 settings: SearchSettings | None = None, seed: int = 0, freeze_norms: bool = False,
                 calibrate_logits: bool = False, progress: bool = False, n_random: int = 3,
                 max_node_ablations: int = 64, node_pairs: int = 16) -> CircuitResult:
    """Prune `model` for the pairs of `train` (mask search) and `test` (bisection and every reported loss).

    means=None means zero ablation. Runs `trials` searches (trial 0 at `settings`, the rest drawn around
    it) and keeps the circuit with the fewest edges (then nodes). Raises PruneError if the unpruned model
    does not reach `target_loss`.
    """
    if trials < 1:
        raise PruneError(f"--trials {trials}: need at least one trial")
    settings = settings or SearchSettings()
    sites = mask_sites(model.config)
    test = test.sorted_by_length()                       # evaluation chunks of similar lengths pad little
    ablator = Ablator(model, means if means is not None else _zero_means(sites), freeze_norms=freeze_norms)
    t0 = time.perf_counter()
    with frozen_params(model):
        z, b = ablator.eval_logits(test, None)
        full_loss = calibrate(z, b)[2] if calibrate_logits else float(contrast_loss(z, b))
        if not full_loss <= target_loss:
            raise PruneError(f"the unpruned model's loss on {task} is {full_loss:.4f} per sequence, above the "
                             f"target {target_loss:g}; raise --target-loss above it or train the model longer")
        outcomes = []
        for t in range(trials):
            s = trial_settings(settings, t, seed)
            out = search_circuit(ablator, sites, train, test, s, target_loss=target_loss,
                                 calibrated=calibrate_logits, seed=seed + t, progress=progress)
            outcomes.append((circuit_edges(model, out.kept), out, t))
        (edges, bias_edges), best, best_t = min(outcomes, key=lambda o: (len(o[0][0]), o[1].nodes, o[1].loss, o[2]))
        t1 = time.perf_counter()
        v = validate(ablator, sites, best.kept, test, scale=best.scale, shift=best.shift, n_random=n_random,
                     max_node_ablations=max_node_ablations, node_pairs=node_pairs, seed=seed)
        log.info("validation took %.1f s", time.perf_counter() - t1)
    targets = sorted(set(test.tok.tolist()) | (set(test.alt.tolist()) if test.kind == "binary" else set()))
    unembed = unembedding_edges(model, best.kept, targets)
    tau = split_flat(best.tau, sites)
    abl_means = ablator.means
    node_info = []
    for nid in node_ids(best.kept, sites):
        site, c = parse_node_id(nid)
        node_info.append({"id": nid, "site": site, "channel": c, "label": channel_label(site, c, model.config.d_head),
                          "tau": round(float(tau[site][c]), 4), "mean": round(float(abl_means[site][c]), 5),
                          "ablation_loss": v.node_losses.get(nid)})     # the circuit without this node
    cfg = model.config
    return CircuitResult(
        task=task, target_loss=target_loss, full_loss=full_loss, loss=v.loss, necessity_loss=v.necessity_loss,
        random_loss=v.random_loss, ablated_loss=v.ablated_loss, nodes=best.nodes, edges=len(edges),
        bias_edges=len(bias_edges), embedding_edges=embedding_edges(model, best.kept, test.prompt_tokens()),
        unembedding_edges=len(unembed), kept=best.kept, edge_list=edges, bias_edge_list=bias_edges,
        unembedding_edge_list=unembed, node_info=node_info, random_losses=v.random_losses,
        calibration={"scale": best.scale, "shift": best.shift} if calibrate_logits else None,
        settings={"ablation": "mean" if means is not None else "zero", "freeze_norms": freeze_norms,
                  "calibrate": calibrate_logits, "trials": trials, "seed": seed, "best_trial": best_t,
                  "search": best.settings.to_dict(), "train_pairs": train.n_pairs, "eval_pairs": test.n_pairs,
                  "kind": test.kind, "node_ablation_pairs": min(node_pairs, test.n_pairs),
                  "max_node_ablations": max_node_ablations, "time_s": round(time.perf_counter() - t0, 2)},
        trials=[{"trial": t, "edges": len(e), "nodes": o.nodes, "loss": o.loss, **o.settings.to_dict(),
                 "time_s": o.timings_s} for (e, _), o, t in outcomes],
        history=best.history,
        model={k: getattr(cfg, k) for k in ("n_layer", "d_model", "n_head", "d_head", "d_mlp", "vocab_size")},
        targets={str(t): str(t) for t in targets},
    )


def prune_task(run, task_name: str, *, target_loss: float = 0.15, ablation: str = "mean", trials: int = 1,
               steps: int | None = None, seed: int = 0, freeze_norms: bool = False, calibrate: bool = False,
               progress: bool = True, n_train: int = 512, n_test: int = 64, mean_tokens: int = 32768,
               snippet_tokens: int = 16384, settings: SearchSettings | None = None) -> CircuitResult:
    """Prune the model of a loaded run (`checkpoint.load_run`) for one task; see find_circuit."""
    from .means import pretraining_batches, run_means
    from .snippets import top_snippets
    from .taskdata import MAX_PROMPT_TOKENS, load_task, task_batches
    if ablation not in ABLATIONS:
        raise PruneError(f"--ablation {ablation!r} is unknown; choose one of {', '.join(ABLATIONS)}")
    if not target_loss > 0:
        raise PruneError(f"--target-loss {target_loss} must be positive (a per-sequence loss, e.g. 0.15)")
    t0 = time.perf_counter()
    task = load_task(task_name)
    train, test = task_batches(task, run.tokenizer, n_train=n_train, n_test=n_test, seed=seed,
                               max_len=min(MAX_PROMPT_TOKENS, run.config.model.block_size))
    settings = settings or SearchSettings()
    if steps is not None:
        settings = dataclasses.replace(settings, steps=steps)
    means = run_means(run, n_tokens=mean_tokens) if ablation == "mean" else None
    log.info("task pairs and means took %.1f s", time.perf_counter() - t0)
    result = find_circuit(run.model, train, test, means, task=task_name, target_loss=target_loss, trials=trials,
                          settings=settings, seed=seed, freeze_norms=freeze_norms, calibrate_logits=calibrate,
                          progress=progress)
    tok = run.tokenizer
    result.targets = {t: tok.decode([int(t)]) for t in result.targets}
    result.run, result.step = str(run.path), run.step
    result.settings["mean_tokens"] = mean_tokens if ablation == "mean" else None
    t0 = time.perf_counter()
    try:
        batches = pretraining_batches(run, snippet_tokens, run.config.train.seq_len, seed=4321)
        result.snippets = top_snippets(run.model, batches, result.kept, decode=lambda t: tok.decode([t]))
    except (SparseformerError, OSError) as e:   # snippets are a convenience; never lose a circuit over them
        log.warning("no pretraining snippets for the viewer: %s", e)
    log.info("snippets took %.1f s", time.perf_counter() - t0)
    return result
