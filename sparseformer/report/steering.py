"""Steering curves of a bridged run (sparseformer.bridges.steer): their files, their plot, and the viewer.

    RUN/steering/TASK/NODE.json    the curve (bridges.steering_curve's dict)
    RUN/steering/TASK/NODE.svg     its plot: P(counterfactual target) against the steering strength

`viewer_with_curves` renders a circuit's viewer with every curve of its task: clicking a node that has one shows
it (docs/bridges.md).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..checkpoint import atomic_write_text
from ..errors import CheckpointError
from .svg import BLUE, GREEN, GREY, ORANGE, Axes
from .viewer import render_viewer

STEERING_DIR = "steering"
P_FLOOR = 1e-6           # probabilities below this are drawn at it (log axis)


def steering_svg(curve: dict) -> str:
    """The plot of one steering curve."""
    xs = curve["strengths"]
    target = " / ".join(repr(t) for t in curve["target"])
    ax = Axes(title=f"Steering the dense model with {curve['node']} ({curve['task']})",
              subtitle=f"{curve['n_pairs']} pairs; presented prompts {curve['presented']}, counterfactual target "
                       f"{target}", xlabel="steering strength", ylabel="P(counterfactual target), log scale",
              ylog=10, notes=[f"dense: the decoder direction of {curve['bridge_site']} channel {curve['channel']} "
                              f"added at {curve['dense_site']}; control: the same delta along "
                              f"{len(curve['control']['channels'])} random channels' directions (mean)",
                              "sparse: the node itself patched in the sparse model; dashed green: the dense model "
                              "shown the counterfactual prompt"])

    def clip(ps):
        return [None if p is None else max(P_FLOOR, p) for p in ps]

    ax.line(xs, clip(curve["dense"]["p_target"]), color=BLUE, label="dense, steered")
    ax.line(xs, clip(curve["control"]["p_target"]), color=GREY, label="dense, control directions", marker="square")
    ax.line(xs, clip(curve["sparse"]["p_target"]), color=ORANGE, label="sparse, node patched", dash=True,
            marker="triangle")
    ceiling = max(P_FLOOR, curve["dense_counterfactual"]["p_target"])
    ax.line([xs[0], xs[-1]], [ceiling, ceiling], color=GREEN, label="dense on counterfactual prompt", dash=True)
    return ax.render()


def steering_paths(run_dir: str | Path, task: str, node: str) -> tuple[Path, Path]:
    d = Path(run_dir) / STEERING_DIR / task
    return d / f"{node}.json", d / f"{node}.svg"


def read_steering(run_dir: str | Path, task: str) -> dict[str, dict]:
    """Every steering curve computed for `task` in the run: {node: curve}."""
    d = Path(run_dir) / STEERING_DIR / task
    curves = {}
    for path in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            curve = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path} is not a readable steering curve ({type(e).__name__}); "
                                  f"steer again") from None
        curves[curve["node"]] = curve
    return curves


def write_curve(run_dir: str | Path, curve: dict) -> tuple[Path, Path]:
    """Write the curve's JSON and SVG (atomically); returns their paths."""
    json_path, svg_path = steering_paths(run_dir, curve["task"], curve["node"])
    json_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json_path, json.dumps(curve, indent=1) + "\n")
    atomic_write_text(svg_path, steering_svg(curve))
    return json_path, svg_path


def viewer_with_curves(run_dir: str | Path, circuit: dict) -> str:
    """The viewer of a circuit document, showing every steering curve computed in the run for its task."""
    doc = dict(circuit, steering={node: _compact(c) for node, c in read_steering(run_dir, circuit["task"]).items()})
    return render_viewer(doc)


def _compact(curve: dict) -> dict:
    """What the viewer draws of a curve."""
    return {"strengths": curve["strengths"], "dense": curve["dense"]["p_target"],
            "control": curve["control"]["p_target"], "sparse": curve["sparse"]["p_target"],
            "ceiling": curve["dense_counterfactual"]["p_target"], "target": curve["target"],
            "presented": curve["presented"], "n_pairs": curve["n_pairs"]}
