"""Why the bisected circuit sits below its target loss, and what the search settings do to the cleaned circuit.

    python bench/prune_diagnosis.py RUN --task single_double_quote --out DIR [--target 0.15]
        [--variants k_coef=1e-3 k_coef=1e-3,clean_order=edges k_coef=1e-3,edge_coef=1e-4 steps=120 ...]

Each variant is the default mask search (`SearchSettings`) with the settings given (`--k-coef A B` is short for
variants k_coef=A and k_coef=B). Per variant: train the masks (once per distinct mask setting; the cleaning
order does not change them), rank the nodes by tau, bisect k for the target on the evaluation pairs, and
measure around it: the loss at k - 1 and k (the step the last node makes), every single-node step over 0.05
nats below k, how often adding a node raises the loss (the bisection assumes it never does), the same
circuits on held-out training pairs; then clean the bisected circuit in the variant's order and count what is
left. Writes DIR/prune_diagnosis.json and .md.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path


def parse_variant(spec: str) -> dict:
    """"k_coef=1e-3,clean_order=edges" -> {"k_coef": 0.001, "clean_order": "edges"}."""
    from sparseformer.prune import SearchSettings
    fields = SearchSettings.__dataclass_fields__
    out = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"unknown search setting {key!r} in variant {spec!r}")
        out[key] = value if fields[key].type in ("str", str) else type(getattr(SearchSettings(), key))(float(value))
    return out


def diagnose(run, task: str, target: float, variant: dict, window: int, masks_memo: dict) -> dict:
    import torch

    from sparseformer.prune import SearchSettings, run_means, task_pairs
    from sparseformer.prune.ablate import Ablator, frozen_params
    from sparseformer.prune.clean import clean_circuit
    from sparseformer.prune.edges import count_edges
    from sparseformer.prune.search import (_clean_order, bisect_nodes, circuit_loss_fn, keep_loss_fn, rank_nodes,
                                           train_masks)
    from sparseformer.prune.sites import kept_from_flat, mask_sites, n_nodes

    settings = replace(SearchSettings(), **variant)
    train, test = task_pairs(run, task, n_train=512, n_test=64)
    held_out = train.select(torch.arange(448, 512))                 # training pairs the masks saw least of
    sites = mask_sites(run.config.model)
    n = n_nodes(sites)
    with frozen_params(run.model):
        ab = Ablator(run.model, run_means(run))
        test = test.sorted_by_length()
        mask_key = tuple(replace(settings, clean_order="rank").to_dict().items())
        if mask_key not in masks_memo:
            t0 = time.perf_counter()
            tau, _ = train_masks(ab, sites, train, settings, seed=0)
            masks_memo[mask_key] = (tau, round(time.perf_counter() - t0, 1))
        tau, masks_s = masks_memo[mask_key]
        rank = rank_nodes(tau)
        loss_of = keep_loss_fn(ab, sites, test, calibrated=False)
        loss_at = circuit_loss_fn(loss_of, n, rank)
        k = bisect_nodes(loss_at, n, target)
        lo = max(0, k - window)
        curve = {j: loss_at(j)[0] for j in range(lo, min(n, k + 5) + 1)}
        steps = {j: curve[j - 1] - curve[j] for j in range(lo + 1, k + 1)}
        rises = sum(1 for d in steps.values() if d < 0)
        big = sorted(((j, d) for j, d in steps.items() if d > 0.05), key=lambda x: -x[1])
        held = circuit_loss_fn(keep_loss_fn(ab, sites, held_out.sorted_by_length(), calibrated=False), n, rank)
        keep = torch.zeros(n)
        keep[rank[:k]] = 1.0
        t0 = time.perf_counter()
        c = clean_circuit(loss_of, keep, _clean_order(ab, sites, rank[:k], settings.clean_order), target)
        clean_s = time.perf_counter() - t0
    kept_before = kept_from_flat(rank[:k].tolist(), sites)
    kept_after = kept_from_flat(c.keep.nonzero()[:, 0].tolist(), sites)
    return {"task": task, "target": target, "variant": variant, "settings": settings.to_dict(),
            "k_coef": settings.k_coef, "masks_seconds": masks_s,
            "nodes_tau_positive": int((tau > 0).sum()), "bisected_k": k, "loss_at_k": curve[k],
            "loss_at_k_minus_1": curve.get(k - 1), "edges_at_k": count_edges(run.model, kept_before),
            "largest_steps_below_k": [{"k": j, "drop": round(d, 4), "node_rank_tau": round(float(tau[rank[j - 1]]), 4)}
                                      for j, d in big[:8]],
            "rises_in_window": rises, "window": [lo, k],
            "held_out_train_loss_at_k": held(k)[0], "held_out_train_loss_at_k_minus_1": held(k - 1)[0] if k else None,
            "curve": {str(j): round(v, 4) for j, v in curve.items()},
            "cleaned": {"nodes": int(c.keep.sum()), "edges": count_edges(run.model, kept_after), "loss": c.loss,
                        "kept": kept_after, "evals": c.evals, "passes": c.passes, "seconds": round(clean_s, 1)}}


def markdown(doc: dict) -> str:
    lines = [f"# Where the bisected circuit lands: {doc['run']}", "", f"Command: `{doc['command']}`", "",
             "| variant | masks s | tau > 0 | bisected k | loss(k-1) | loss(k) | edges | largest single-node drops "
             "below k (k: drop) | rises in window | held-out train loss(k) | cleaned nodes / edges / loss | "
             "cleaning s (evals) |", "| --- " * 12 + "|"]
    for d in doc["runs"]:
        drops = ", ".join(f"{s['k']}: {s['drop']:.2f}" for s in d["largest_steps_below_k"][:4]) or "none"
        c = d["cleaned"]
        spec = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in d.get("variant", {"k_coef": d["k_coef"]}).items()) or "defaults"
        before = "" if d["loss_at_k_minus_1"] is None else f"{d['loss_at_k_minus_1']:.4f}"
        lines.append(f"| {spec} | {d['masks_seconds']:.0f} | {d['nodes_tau_positive']} | {d['bisected_k']} | "
                     f"{before} | {d['loss_at_k']:.4f} | {d['edges_at_k']} | {drops} | "
                     f"{d['rises_in_window']} of {d['window'][1] - d['window'][0]} | "
                     f"{d['held_out_train_loss_at_k']:.4f} | {c['nodes']} / {c['edges']} / {c['loss']:.4f} | "
                     f"{c['seconds']:.0f} ({c['evals']}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--task", default="single_double_quote")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--target", type=float, default=0.15)
    ap.add_argument("--k-coef", type=float, nargs="+", default=[])
    ap.add_argument("--variants", nargs="+", default=[], help="search settings per variant: key=value,key=value")
    ap.add_argument("--window", type=int, default=40, help="nodes below the bisected k to measure one by one")
    args = ap.parse_args()
    import sys

    from sparseformer.checkpoint import atomic_write_text, load_run
    run = load_run(args.run)
    doc = {"run": str(args.run), "step": run.step,
           "command": "python bench/prune_diagnosis.py " + " ".join(sys.argv[1:]), "runs": []}
    args.out.mkdir(parents=True, exist_ok=True)
    variants = [{"k_coef": kc} for kc in args.k_coef] + [parse_variant(v) for v in args.variants]
    memo: dict = {}
    for variant in variants or [{}]:
        doc["runs"].append(diagnose(run, args.task, args.target, variant, args.window, memo))
        atomic_write_text(args.out / "prune_diagnosis.json", json.dumps(doc, indent=1) + "\n")
        atomic_write_text(args.out / "prune_diagnosis.md", markdown(doc))
        print(markdown(doc), flush=True)


if __name__ == "__main__":
    main()
