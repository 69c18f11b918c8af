"""Circuit size per model and the sparse-vs-dense comparison at matched pretraining loss (docs/pruning.md).

Circuit size of a model at a target loss = geometric mean, over the tasks the model can do at that target,
of the edges of its pruned circuit. A task it cannot do (the unpruned model is above the target, or the
task cannot be posed with its tokenizer) is left out and counted.

Matched-loss ratio at a target: each sparse model is paired with the dense model whose pretraining
validation loss is closest to its own; the ratio is the geometric mean, over the tasks BOTH models can do
at that target, of dense edges / sparse edges (equivalently, the ratio of the two geometric means taken
over those common tasks). Above 1 means the sparse model's circuits are smaller. The headline pair at a
target is the one with the smallest loss gap (ties: more common tasks).
"""

from __future__ import annotations

from collections.abc import Sequence

from .adapters import geometric_mean


def target_key(t: float) -> str:
    """How a target loss is written as a JSON key: '0.15'."""
    return f"{t:g}"


def task_edges(model: dict, target: float) -> dict[str, int]:
    """task -> edges of the model's circuit at `target`, for the tasks it reached."""
    out = {}
    for task, c in model["circuits"].items():
        entry = c.get("targets", {}).get(target_key(target))
        if entry and entry.get("status") == "ok":
            out[task] = entry["edges"]
    return out


def circuit_size(model: dict, target: float, n_tasks: int) -> dict:
    """{geomean, n_tasks (reached), of (tasks asked), tasks} for one model at one target."""
    edges = task_edges(model, target)
    return {"geomean": geometric_mean(list(edges.values())), "n_tasks": len(edges), "of": n_tasks,
            "tasks": sorted(edges)}


def matched_pairs(models: Sequence[dict], target: float) -> list[dict]:
    """One row per sparse model with a val loss: its closest-loss dense partner and the edge ratio."""
    dense = [m for m in models if m["kind"] == "dense" and m.get("val_loss") is not None]
    rows = []
    for s in models:
        if s["kind"] != "sparse" or s.get("val_loss") is None or not dense:
            continue
        d = min(dense, key=lambda m: (abs(m["val_loss"] - s["val_loss"]), m["name"]))
        es, ed = task_edges(s, target), task_edges(d, target)
        common = sorted(set(es) & set(ed))
        gs = geometric_mean([es[t] for t in common]) if common else None
        gd = geometric_mean([ed[t] for t in common]) if common else None
        rows.append({"sparse": s["name"], "dense": d["name"], "sparse_loss": s["val_loss"], "dense_loss": d["val_loss"],
                     "loss_gap": abs(s["val_loss"] - d["val_loss"]), "common_tasks": common,
                     "sparse_geomean": gs, "dense_geomean": gd,
                     "ratio": (gd / gs) if common and gs else None})
    return rows


def headline(pairs: Sequence[dict]) -> dict | None:
    """The pair with the smallest loss gap among those with at least one common task."""
    usable = [p for p in pairs if p["ratio"] is not None]
    if not usable:
        return None
    return min(usable, key=lambda p: (p["loss_gap"], -len(p["common_tasks"]), p["sparse"]))
