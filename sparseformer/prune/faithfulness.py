"""How far to trust a circuit: seven controls, each with a one-line verdict (docs/pruning.md).

A circuit that reaches the target loss may still not be how the model does the task: pruning can build
behaviour out of mean-ablated parts (a replication by J. Drori reached low loss on a nonsense task), solve
a task with attention patterns the full model does not use, or lean on the final norms rescaling a shrunken
residual stream. Each control returns a status: "pass" (it supports trusting the circuit), "fail" (it
undermines it) or "n/a" (it cannot be run, e.g. there is no circuit), with a verdict line and its numbers.

    sufficiency   the circuit alone vs random circuits of the same size per site (n draws)
    necessity     the circuit ablated vs random node sets of the same size ablated
    ablation      the circuit's loss under mean, zero and resample ablation
    norms         pruning again with frozen norms (or free, if the circuit froze them): size and loss
    nonsense      pruning for the same prompts with arbitrary target tokens (full-vocabulary loss)
    random_init   pruning the same architecture and sparsity pattern with random weights
    attention     for each kept head, how far its attention moves between the full model and the circuit
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..tasks.dataset import TaskBatch
from .ablate import Ablator, frozen_params
from .circuit import find_circuits
from .controls import (attention_agreement, mean_and_spread, nonsense_batch, random_draws, random_init_like,
                       resample_values)
from .edges import count_edges
from .search import SearchSettings
from .sites import flat_from_kept, mask_sites, split_flat

log = logging.getLogger(__name__)

CONTROLS = ("sufficiency", "necessity", "ablation", "norms", "nonsense", "random_init", "attention")
SPREAD = 2.0            # random circuits must miss by this many standard deviations
NORMS_RATIO = 2.0       # the other norm setting may need at most this many times the edges
NONSENSE_RATIO = 3.0    # a nonsense or random-weight circuit must be at least this many times larger
ATTENTION_TV = 0.3      # largest mean total-variation distance of a kept head's attention


@dataclass
class CircuitUnderTest:
    """What the controls check: the kept nodes (None when the full model misses the target) and how the
    circuit was found."""
    kept: dict[str, list[int]] | None
    target_loss: float
    ablation: str = "mean"
    freeze_norms: bool = False
    calibrate: bool = False
    scale: float = 1.0
    shift: float = 0.0
    settings: SearchSettings = field(default_factory=SearchSettings)
    trials: int = 1
    seed: int = 0


def _control(name: str, status: str, verdict: str, **data) -> dict:
    return {"name": name, "status": status, "verdict": verdict, **data}


def _prune(model, train, test, means, c: CircuitUnderTest, *, freeze_norms: bool, progress: bool) -> dict:
    """Prune as the circuit was pruned (control mode: the target need not be reachable); size and loss."""
    with frozen_params(model):
        s = find_circuits(model, train, test, means, targets=[c.target_loss], trials=c.trials, settings=c.settings,
                          seed=c.seed, freeze_norms=freeze_norms, calibrate_logits=c.calibrate, progress=progress,
                          control=True)
    best = s.targets[0].best
    return {"full_loss": s.full_loss, "reached": bool(best.reached), "loss": best.loss, "nodes": best.nodes,
            "edges": s.targets[0].edges}


def faithfulness(model: nn.Module, train: TaskBatch, test: TaskBatch, means: dict[str, Tensor],
                 circuit: CircuitUnderTest, *, nonsense_tokens: tuple[int, int],
                 means_fn: Callable[[nn.Module], dict[str, Tensor]], controls: Sequence[str] = CONTROLS,
                 n_random: int = 5, progress: bool = False) -> dict:
    """Run the controls on `circuit` (pruned from `model` with pairs `train`/`test`; `means` are the
    pretraining means, used whatever the circuit's ablation). `means_fn(model)` gives the means of another
    model (the random-weight twin). Returns {"full_loss", "circuit": {...}, "controls": [...], "seconds"}."""
    unknown = [c for c in controls if c not in CONTROLS]
    if unknown:
        raise ValueError(f"unknown faithfulness control {unknown[0]!r}; choose from {', '.join(CONTROLS)}")
    t_all = time.perf_counter()
    sites = mask_sites(model.config)
    test = test.sorted_by_length()
    zeros = {s: torch.zeros(w) for s, w in sites.items()}
    native = means if circuit.ablation == "mean" else zeros
    target, kept = circuit.target_loss, circuit.kept
    out: list[dict] = []
    seconds: dict[str, float] = {}
    with frozen_params(model):
        ab = Ablator(model, native, freeze_norms=circuit.freeze_norms)
        full_loss = ab.eval_loss(test, None, circuit.scale, circuit.shift)
        keep = flat_from_kept(kept, sites).float() if kept is not None else None
        loss = ab.eval_loss(test, split_flat(keep, sites), circuit.scale, circuit.shift) if kept is not None else None
        edges = count_edges(model, kept) if kept is not None else None
        nodes = int(keep.sum()) if keep is not None else None
        no_circuit = (f"no circuit: the full model's loss {full_loss:.4f} is above the target {target:g}"
                      if kept is None else None)
        for name in controls:
            t0 = time.perf_counter()
            if name == "sufficiency" or name == "necessity":
                if kept is None:
                    out.append(_control(name, "fail" if name == "sufficiency" else "n/a", no_circuit))
                else:
                    out.append(_random_control(name, ab, sites, kept, test, loss, target, n_random, circuit))
            elif name == "attention":
                out.append(_control(name, "n/a", no_circuit) if kept is None
                           else _attention_control(ab, sites, kept, test))
            elif name == "ablation":
                out.append(_control(name, "n/a", no_circuit) if kept is None
                           else _ablation_control(model, sites, means, zeros, keep, test, target, circuit))
            elif name == "norms":
                if kept is None:
                    out.append(_control(name, "n/a", no_circuit))
                else:
                    other = _prune(model, train, test, native, circuit, freeze_norms=not circuit.freeze_norms,
                                   progress=progress)
                    out.append(_norms_control(other, edges, loss, target, circuit.freeze_norms))
            elif name == "nonsense":
                ns_train, ns_test = (nonsense_batch(b, *nonsense_tokens) for b in (train, test))
                other = _prune(model, ns_train, ns_test, native, circuit, freeze_norms=circuit.freeze_norms,
                               progress=progress)
                out.append(_size_control(name, "nonsense targets", other, edges, target))
            elif name == "random_init":
                twin = random_init_like(model, seed=circuit.seed)
                twin_means = means_fn(twin) if circuit.ablation == "mean" else zeros
                other = _prune(twin, train, test, twin_means, circuit, freeze_norms=circuit.freeze_norms,
                               progress=progress)
                out.append(_size_control(name, "random weights with the same sparsity pattern", other, edges, target))
            seconds[name] = round(time.perf_counter() - t0, 1)
            log.info("faithfulness %s: %s (%.1f s)", name, out[-1]["verdict"], seconds[name])
    seconds["total"] = round(time.perf_counter() - t_all, 1)
    return {"target_loss": target, "full_loss": full_loss,
            "circuit": {"nodes": nodes, "edges": edges, "loss": loss, "ablation": circuit.ablation,
                        "freeze_norms": circuit.freeze_norms},
            "controls": out, "seconds": seconds}


def _random_control(name: str, ab: Ablator, sites, kept, test, loss: float, target: float, n: int,
                    c: CircuitUnderTest) -> dict:
    alone, ablated = random_draws(ab, sites, kept, test, n=n, seed=c.seed, scale=c.scale, shift=c.shift)
    if name == "sufficiency":
        m, sd = mean_and_spread(alone)
        data = {"loss": loss, "random_mean": m, "random_sd": sd, "random": alone}
        if not loss <= target:
            return _control(name, "fail", f"the circuit's loss {loss:.4f} is above the target {target:g}", **data)
        if m - SPREAD * sd > target:
            return _control(name, "pass", f"circuit {loss:.4f} <= target {target:g}; random circuits of the same "
                            f"size per site {m:.4f} +- {sd:.4f} miss it: the choice of nodes matters", **data)
        return _control(name, "fail", f"random circuits of the same size per site reach {m:.4f} +- {sd:.4f}, close "
                        f"to the target {target:g}: the circuit's size, not its nodes, does the task", **data)
    m, sd = mean_and_spread(ablated)
    abl = ab.eval_loss(test, split_flat(1 - flat_from_kept(kept, sites).float(), sites), c.scale, c.shift)
    data = {"necessity_loss": abl, "ratio": abl / max(loss, 1e-12), "random_mean": m, "random_sd": sd,
            "random": ablated}
    if abl > target and abl > m + SPREAD * sd:
        return _control(name, "pass", f"ablating the circuit gives {abl:.4f} ({abl / max(loss, 1e-12):.1f}x the "
                        f"circuit's loss); ablating random node sets of its size {m:.4f} +- {sd:.4f}", **data)
    return _control(name, "fail", f"ablating the circuit gives {abl:.4f}, not clearly worse than ablating random "
                    f"node sets of its size ({m:.4f} +- {sd:.4f}): the rest of the model does the task too", **data)


def _ablation_control(model, sites, means, zeros, keep: Tensor, test, target: float, c: CircuitUnderTest) -> dict:
    k = split_flat(keep, sites)
    losses = {"mean": Ablator(model, means, freeze_norms=c.freeze_norms).eval_loss(test, k, c.scale, c.shift),
              "zero": Ablator(model, zeros, freeze_norms=c.freeze_norms).eval_loss(test, k, c.scale, c.shift),
              "resample": Ablator(model, means, freeze_norms=c.freeze_norms,
                                  values=resample_values(model, sites, means, c.seed)).eval_loss(test, k, c.scale,
                                                                                                   c.shift)}
    shown = ", ".join(f"{a} {v:.4f}" for a, v in losses.items())
    broken = [a for a, v in losses.items() if not v <= target]
    if not broken:
        return _control("ablation", "pass", f"the circuit reaches the target under every ablation ({shown})", **losses)
    return _control("ablation", "fail", f"the circuit misses the target under {' and '.join(broken)} ablation "
                    f"({shown}): it depends on the values the pruned nodes are given", **losses)


def _norms_control(other: dict, edges: int, loss: float, target: float, frozen: bool) -> dict:
    mode = "free" if frozen else "frozen"
    data = {f"{mode}_{k}": v for k, v in other.items()}
    if not other["reached"]:
        return _control("norms", "fail", f"with {mode} norms no circuit reaches the target (best {other['loss']:.4f})",
                        **data)
    ratio = other["edges"] / max(edges, 1)
    text = f"with {mode} norms: {other['edges']} edges at {other['loss']:.4f} vs {edges} at {loss:.4f} ({ratio:.1f}x)"
    if frozen or ratio <= NORMS_RATIO:
        return _control("norms", "pass", text + ": no sign of norm-scale cheating", ratio=ratio, **data)
    return _control("norms", "fail", text + ": the circuit leans on the norms rescaling a shrunken residual stream",
                    ratio=ratio, **data)


def _size_control(name: str, what: str, other: dict, edges: int | None, target: float) -> dict:
    data = {f"control_{k}": v for k, v in other.items()}
    if not other["reached"]:
        return _control(name, "pass", f"pruning for {what} does not reach the target (best {other['loss']:.4f}, "
                        f"unpruned {other['full_loss']:.4f})", **data)
    if edges is None:
        return _control(name, "fail", f"WARNING: pruning for {what} reaches the target ({other['edges']} edges) while "
                        f"the real task has no circuit", **data)
    ratio = other["edges"] / max(edges, 1)
    text = (f"pruning for {what} reaches the target with {other['edges']} edges, {ratio:.1f}x the real "
            f"circuit's {edges}")
    if ratio >= NONSENSE_RATIO:
        return _control(name, "pass", text, ratio=ratio, **data)
    return _control(name, "fail", "WARNING: " + text + ": a circuit of this size proves little", ratio=ratio, **data)


def _attention_control(ab: Ablator, sites, kept, test) -> dict:
    heads = attention_agreement(ab, sites, kept, test)
    if not heads:
        return _control("attention", "n/a", "the circuit keeps no attention channel", heads=[])
    worst = max(heads, key=lambda h: h["tv"])
    text = (f"{len(heads)} kept head(s); largest attention shift {worst['head']} {worst['tv']:.2f} (total "
            f"variation; entropy {worst['entropy_full']:.2f} full vs {worst['entropy_circuit']:.2f} circuit)")
    if worst["tv"] <= ATTENTION_TV:
        return _control("attention", "pass", text + ": the circuit attends as the model does", heads=heads)
    return _control("attention", "fail", text + ": the circuit solves the task with other attention than the model's",
                    heads=heads)
