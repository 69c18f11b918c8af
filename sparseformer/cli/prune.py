"""`sparseformer prune` (find a task's circuit) and `sparseformer circuits` (the table of found circuits)."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--task", "task", required=True, help="Task name (see `sparseformer tasks list`) or a FILE.jsonl.")
@click.option("--target-loss", type=float, default=0.15, show_default=True,
              help="Per-sequence task loss the circuit must reach.")
@click.option("--ablation", type=click.Choice(["mean", "zero"]), default="mean", show_default=True,
              help="Replace pruned nodes by their pretraining mean, or by zero.")
@click.option("--trials", type=int, default=1, show_default=True,
              help="Random-search trials over k_coef, lr and init around the defaults; the smallest circuit wins.")
@click.option("--steps", type=int, default=None, help="Mask-optimisation steps per trial (default 40).")
@click.option("--freeze-norms/--no-freeze-norms", default=False, show_default=True,
              help="Divide by the unpruned model's RMSNorm scales (stops norm-scale cheating).")
@click.option("--calibrate/--no-calibrate", default=False, show_default=True,
              help="Fit a logit scale and shift (16 LBFGS steps) for every circuit tried.")
@click.option("--train-pairs", type=int, default=512, show_default=True, help="Pairs for mask optimisation.")
@click.option("--eval-pairs", type=int, default=64, show_default=True,
              help="Held-out pairs for bisection and every reported loss.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def prune(run_dir, task, target_loss, ablation, trials, steps, freeze_norms, calibrate, train_pairs, eval_pairs,
          seed, device, quiet, as_json):
    """Find the smallest circuit of RUN's model that solves a task, validate it, and write its viewer."""
    from ..checkpoint import load_run
    from ..errors import PruneError
    from ..prune import prune_task, write_outputs
    if steps is not None and steps < 1:
        raise PruneError(f"--steps {steps}: need at least one step")
    if train_pairs < 1 or eval_pairs < 1:
        raise PruneError("--train-pairs and --eval-pairs must be at least 1")
    run = load_run(run_dir, device=device)
    result = prune_task(run, task, target_loss=target_loss, ablation=ablation, trials=trials, steps=steps,
                        seed=seed, freeze_norms=freeze_norms, calibrate=calibrate,
                        progress=not (quiet or as_json), n_train=train_pairs, n_test=eval_pairs)
    json_path, html_path = write_outputs(run_dir, result)
    summary = {"task": result.task, "target_loss": result.target_loss, "full_loss": result.full_loss,
               "loss": result.loss, "sufficient": result.sufficient, "necessity_loss": result.necessity_loss,
               "random_loss": result.random_loss, "ablated_loss": result.ablated_loss, "nodes": result.nodes,
               "edges": result.edges, "bias_edges": result.bias_edges, "circuit": str(json_path),
               "viewer": str(html_path)}
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(f"{result.task}: {result.nodes} nodes, {result.edges} edges (+{result.bias_edges} bias) at loss "
               f"{result.loss:.4f} (target {result.target_loss:g}, full model {result.full_loss:.4f})")
    click.echo(f"  necessity (circuit ablated) {result.necessity_loss:.4f}, random circuit of the same size "
               f"{result.random_loss:.4f}, everything ablated {result.ablated_loss:.4f}")
    click.echo(f"  circuit: {json_path}")
    click.echo(f"  viewer:  {html_path}")


def _fmt(x, spec=".4f") -> str:
    return "n/a" if x is None else format(x, spec)


@click.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--tasks", default=None, help="Comma-separated tasks (default: every circuit in RUN/circuits).")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def circuits(run_dir, tasks, as_json):
    """Table of RUN's circuits (nodes, edges, losses) and the geometric mean of edges over tasks."""
    from ..errors import CheckpointError
    from ..prune import summarize_circuits
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    names = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
    doc = summarize_circuits(run_dir, names)
    if as_json:
        click.echo(json.dumps(doc))
        return
    rows = doc["rows"]
    if not rows:
        click.echo(f"no circuits in {run_dir} yet; make one with `sparseformer prune {run_dir} --task NAME`")
        return
    header = ("task", "nodes", "edges", "bias", "loss", "target", "full", "necessity", "random")
    table = [header] + [(r["task"], str(r["nodes"]), str(r["edges"]), str(r["bias_edges"]), _fmt(r["loss"]),
                         _fmt(r["target_loss"], "g"), _fmt(r["full_loss"]), _fmt(r["necessity_loss"]),
                         _fmt(r["random_loss"])) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    click.echo(f"geometric mean over {len(rows)} task(s): {doc['geomean_edges']:.1f} edges, "
               f"{doc['geomean_nodes']:.1f} nodes")


def register(group: click.Group) -> None:
    group.add_command(prune)
    group.add_command(circuits)
