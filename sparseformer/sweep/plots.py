"""The sweep's two plots, from the results dict (table.py):

frontier.svg         pretraining val loss against geometric-mean circuit edges at the headline target
                     (the paper's Fig. 3): sparse models joined across width at equal (pfrac, afrac), dense
                     models joined across width.
edges_vs_target.svg  geometric-mean circuit edges against target task loss, one line per model, sparse
                     solid and dense dashed (the paper's Fig. 2), with the matched-loss ratio in the subtitle.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ..checkpoint import atomic_write_text
from .compare import target_key
from ..report.svg import PALETTE, Axes

DENSE_PALETTE = ("#555555", "#999999", "#111111", "#bbbbbb")

FRONTIER, EDGES_VS_TARGET = "frontier.svg", "edges_vs_target.svg"


def _groups(models: list[dict]) -> list[tuple[str, list[dict]]]:
    """(legend label, models sorted by width): one group per sparse (pfrac, afrac), then the dense ones
    (per depth)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for m in models:
        key = ("sparse", m["pfrac"], m["afrac"]) if m["kind"] == "sparse" else ("dense", m["n_layer"])
        groups[key].append(m)
    out = []
    for key in sorted(groups, key=lambda k: (k[0] == "dense", str(k))):
        label = (f"sparse pfrac={key[1]:g} afrac={key[2]:g}" if key[0] == "sparse"
                 else f"dense, {key[1]} layers")
        out.append((label, sorted(groups[key], key=lambda m: m["width"])))
    return out


def frontier_svg(table: dict) -> str:
    s = table["sweep"]
    head = target_key(s["target_loss"])
    ax = Axes(title="Interpretability frontier", xlog=2,
              subtitle=f"circuit size at target task loss {head} vs pretraining loss (lower left is better)",
              xlabel="geometric-mean circuit edges over reached tasks (log scale)",
              ylabel="pretraining val loss (nats/token)",
              notes=["labels: width multiplier (tasks reached / asked); tasks a model cannot do are left out"])
    n_sparse = n_dense = 0
    for label, ms in _groups(table["models"]):
        dense = ms[0]["kind"] == "dense"
        color = DENSE_PALETTE[n_dense % len(DENSE_PALETTE)] if dense else PALETTE[n_sparse % len(PALETTE)]
        n_dense, n_sparse = n_dense + dense, n_sparse + (not dense)
        sizes = [m["circuit_size"][head] for m in ms]
        ax.line([c["geomean"] for c in sizes], [m["val_loss"] for m in ms], label=label, dash=dense,
                color=color, marker="square" if dense else "circle",
                texts=[f"{m['width']:g}x ({c['n_tasks']}/{c['of']})" for m, c in zip(ms, sizes)])
    return ax.render()


def edges_vs_target_svg(table: dict) -> str:
    s = table["sweep"]
    targets = s["targets"]
    hl = table["comparison"]["targets"].get(target_key(s["target_loss"]), {}).get("headline")
    sub = ("matched-loss ratio at target {t}: dense/sparse = {r:.2f}x ({sp} vs {de}, val loss {ls:.3f} vs {ld:.3f}, "
           "{n} common tasks)".format(t=target_key(s["target_loss"]), r=hl["ratio"], sp=hl["sparse"], de=hl["dense"],
                                      ls=hl["sparse_loss"], ld=hl["dense_loss"], n=len(hl["common_tasks"]))
           if hl else f"no sparse/dense pair with a common task at target {target_key(s['target_loss'])}")
    ax = Axes(title="Circuit size against target loss: sparse vs dense", subtitle=sub, xlog=10, ylog=2,
              xticks=list(targets), xlabel="target task loss (nats per sequence, log scale)",
              ylabel="geometric-mean circuit edges (log scale)",
              notes=["each point: geometric mean over the tasks that model reaches at that target (see results.md)"])
    n_sparse = n_dense = 0
    for m in table["models"]:
        dense = m["kind"] == "dense"
        color = DENSE_PALETTE[n_dense % len(DENSE_PALETTE)] if dense else PALETTE[n_sparse % len(PALETTE)]
        n_dense, n_sparse = n_dense + dense, n_sparse + (not dense)
        ys = [m["circuit_size"][target_key(t)]["geomean"] for t in targets]
        ax.line(list(targets), ys, color=color, dash=dense, marker="square" if dense else "circle",
                label=f"{m['name']} (loss {m['val_loss']:.3f})" if m["val_loss"] is not None else m["name"])
    return ax.render()


def write_plots(table: dict, out: Path) -> list[Path]:
    """Write both plots into `out`; returns their paths."""
    out = Path(out)
    paths = [out / FRONTIER, out / EDGES_VS_TARGET]
    atomic_write_text(paths[0], frontier_svg(table))
    atomic_write_text(paths[1], edges_vs_target_svg(table))
    return paths
