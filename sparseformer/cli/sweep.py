"""`sparseformer sweep CONFIG`: train a grid of sparse and dense models, prune them, write the frontier."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Results directory (default: [sweep] out, else a directory named after CONFIG next to it).")
@click.option("--runs", type=click.Path(path_type=Path), default=None,
              help="Where the run directories go (default: [sweep] runs, else OUT/runs).")
@click.option("--force", is_flag=True, help="Retrain, re-evaluate and re-prune every model from scratch.")
@click.option("--dry-run", is_flag=True, help="List the models and their step counts; train nothing.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the results (or the plan) as JSON.")
def sweep(config, out, runs, force, dry_run, quiet, as_json):
    """Train, evaluate and prune the models listed in CONFIG (TOML or JSON); resumable.

    Writes OUT/results.json, results.md, frontier.svg and edges_vs_target.svg. Run the same command again
    after an interruption: finished models, evaluations and circuits are reused.
    """
    from ..sweep import default_dirs, load_sweep, run_sweep
    from ..sweep.runner import describe_plan
    cfg = load_sweep(config)
    out, runs = default_dirs(cfg, out, runs)
    if dry_run:
        plan = describe_plan(cfg, runs)
        if as_json:
            click.echo(json.dumps({"out": str(out), "runs": str(runs), "models": plan}, indent=1))
            return
        click.echo(f"sweep {cfg.name}: {len(plan)} models, {cfg.budget.describe()}, results in {out}, runs in {runs}")
        for r in plan:
            steps = "probe" if r["steps"] is None else f"{r['steps']} steps"
            click.echo(f"  {r['name']:28s} {r['kind']:6s} d_model {r['d_model']:5d} layers {r['n_layer']} "
                       f"density {r['weight_density']:.4g}  {steps}  [{r['status']}]")
        return
    result = run_sweep(cfg, out, runs, force=force, progress=not (quiet or as_json))
    if as_json:
        click.echo((out / "results.json").read_text())
        return
    for f in result.files:
        click.echo(f"wrote {f}")
    if result.interrupted:
        click.echo("interrupted: run the same command again to continue")


def register(group: click.Group) -> None:
    group.add_command(sweep)
