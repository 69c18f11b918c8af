"""`sparseformer steer`: steer a bridged run's dense model with a sparse node (docs/bridges.md)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import ConfigError


def _strengths(text: str) -> list[float]:
    try:
        values = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--strengths {text!r}: give comma-separated numbers, e.g. 0,0.25,0.5,0.75,1") from None
    if not values:
        raise ConfigError("--strengths: give at least one strength")
    return values


@click.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--task", required=True, help="Task whose pairs give the presented and counterfactual prompts.")
@click.option("--node", required=True,
              help="Sparse node LAYER.SITE.CHANNEL (a residual read or write, e.g. 1.attn.act_in.37), or 'top': "
                   "the steerable node of the task's circuit whose ablation costs most.")
@click.option("--strengths", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1", show_default=True,
              help="Comma-separated steering strengths.")
@click.option("--pairs", type=int, default=64, show_default=True, help="Task pairs (test split).")
@click.option("--reverse", is_flag=True, help="Present the B prompts and steer towards the A targets.")
@click.option("--controls", type=int, default=4, show_default=True,
              help="Random other channels whose directions make the control curve.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the curve as JSON.")
def steer(run_dir, task, node, strengths, pairs, reverse, controls, seed, device, as_json):
    """Add a sparse node's counterfactual delta, through the bridge decoder, to the dense model of RUN and report
    the probability of the counterfactual target against the steering strength (plus an SVG plot)."""
    from ..bridges import load_bridged
    from ..bridges.steer import steering_curve, top_node, write_steering
    if pairs < 1:
        raise ConfigError("--pairs must be at least 1")
    bridged = load_bridged(run_dir, device=device)
    if node == "top":
        node = top_node(run_dir, task)
    curve = steering_curve(bridged, task, node, _strengths(strengths), n_pairs=pairs, seed=seed, reverse=reverse,
                           controls=controls)
    json_path, svg_path, html_path = write_steering(run_dir, curve)
    if as_json:
        click.echo(json.dumps({**curve, "files": [str(p) for p in (json_path, svg_path, html_path) if p]}))
        return
    target = " / ".join(repr(t) for t in curve["target"])
    click.echo(f"{curve['node']} on {curve['task']} ({curve['n_pairs']} pairs, prompts {curve['presented']}): "
               f"P({target}) of the dense model")
    click.echo(f"{'strength':>8s} {'dense':>10s} {'control':>10s} {'sparse':>10s}")
    for i, s in enumerate(curve["strengths"]):
        c = curve["control"]["p_target"][i]
        click.echo(f"{s:8.3g} {curve['dense']['p_target'][i]:10.4g} {'n/a' if c is None else format(c, '10.4g'):>10s} "
                   f"{curve['sparse']['p_target'][i]:10.4g}")
    click.echo(f"dense model shown the counterfactual prompt: {curve['dense_counterfactual']['p_target']:.4g}")
    click.echo(f"  curve: {json_path}\n  plot:  {svg_path}" + (f"\n  viewer: {html_path}" if html_path else ""))


def register(group: click.Group) -> None:
    group.add_command(steer)
