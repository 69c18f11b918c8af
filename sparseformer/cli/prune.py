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
@click.option("--clean/--no-clean", default=True, show_default=True,
              help="After bisection, drop nodes while the loss stays at the target, until every node is needed.")
@click.option("--clean-order", type=click.Choice(["rank", "edges"]), default=None,
              help="Cleaning tries the lowest-ranked nodes first (rank) or those with the most edges (edges); "
                   "default: the search's (docs/pruning.md).")
@click.option("--edge-coef", type=float, default=None,
              help="Weight of the kept-edge count in the mask objective (default: the search's).")
@click.option("--faithfulness", "with_faithfulness", is_flag=True,
              help="Also run the faithfulness controls (see `sparseformer faithfulness`).")
@click.option("--train-pairs", type=int, default=512, show_default=True, help="Pairs for mask optimisation.")
@click.option("--eval-pairs", type=int, default=64, show_default=True,
              help="Held-out pairs for bisection and every reported loss.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def prune(run_dir, task, target_loss, ablation, trials, steps, freeze_norms, calibrate, clean, clean_order, edge_coef,
          with_faithfulness, train_pairs, eval_pairs, seed, device, quiet, as_json):
    """Find the smallest circuit of RUN's model that solves a task, validate it, and write its viewer."""
    from ..checkpoint import load_run
    from ..errors import PruneError
    from ..prune import SearchSettings, prune_task, write_outputs
    if steps is not None and steps < 1:
        raise PruneError(f"--steps {steps}: need at least one step")
    if edge_coef is not None and not edge_coef >= 0:
        raise PruneError(f"--edge-coef {edge_coef}: must be 0 or more")
    chosen = {"clean_order": clean_order, "edge_coef": edge_coef}
    settings = SearchSettings(**{k: v for k, v in chosen.items() if v is not None})
    if train_pairs < 1 or eval_pairs < 1:
        raise PruneError("--train-pairs and --eval-pairs must be at least 1")
    run = load_run(run_dir, device=device)
    result = prune_task(run, task, target_loss=target_loss, ablation=ablation, trials=trials, steps=steps,
                        seed=seed, freeze_norms=freeze_norms, calibrate=calibrate,
                        progress=not (quiet or as_json), n_train=train_pairs, n_test=eval_pairs, clean=clean,
                        faithfulness=with_faithfulness, settings=settings)
    json_path, html_path = write_outputs(run_dir, result)
    summary = {"task": result.task, "target_loss": result.target_loss, "full_loss": result.full_loss,
               "loss": result.loss, "sufficient": result.sufficient, "necessity_loss": result.necessity_loss,
               "random_loss": result.random_loss, "ablated_loss": result.ablated_loss, "nodes": result.nodes,
               "edges": result.edges, "bias_edges": result.bias_edges, "circuit": str(json_path),
               "viewer": str(html_path), "before_cleaning": _before(result.before_cleaning),
               "faithfulness": result.faithfulness}
    if as_json:
        click.echo(json.dumps(summary))
        return
    b = result.before_cleaning
    if b is not None:
        click.echo(f"{result.task}: bisection kept {b['nodes']} nodes, {b['edges']} edges at loss {b['loss']:.4f}; "
                   f"cleaning ({b['evals']} evaluations, {b['seconds']:.0f} s) left:")
    click.echo(f"{result.task}: {result.nodes} nodes, {result.edges} edges (+{result.bias_edges} bias) at loss "
               f"{result.loss:.4f} (target {result.target_loss:g}, full model {result.full_loss:.4f})")
    click.echo(f"  necessity (circuit ablated) {result.necessity_loss:.4f}, random circuit of the same size "
               f"{result.random_loss:.4f}, everything ablated {result.ablated_loss:.4f}")
    if result.faithfulness is not None:
        _print_faithfulness(result.faithfulness)
    click.echo(f"  circuit: {json_path}")
    click.echo(f"  viewer:  {html_path}")


def _before(b: dict | None) -> dict | None:
    return None if b is None else {k: b[k] for k in ("nodes", "edges", "loss", "evals", "passes", "seconds")}


def _print_faithfulness(report: dict) -> None:
    width = max(len(c["name"]) for c in report["controls"])
    for c in report["controls"]:
        click.echo(f"  {c['name']:{width}s}  {c['status']:4s}  {c['verdict']}")
    click.echo(f"  (faithfulness controls took {report['seconds']['total']:.0f} s)")


@click.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--task", "task", required=True, help="The task whose circuit (RUN/circuits/TASK.json) to check.")
@click.option("--controls", default="all", show_default=True,
              help="Comma-separated controls to run (sufficiency, necessity, ...; docs/pruning.md lists them).")
@click.option("--random-draws", type=int, default=5, show_default=True,
              help="Random circuits per random control (mean and spread).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def faithfulness(run_dir, task, controls, random_draws, device, quiet, as_json):
    """How far to trust the circuit of a task: one line per control; the table is added to the viewer."""
    from ..checkpoint import load_run
    from ..errors import PruneError
    from ..prune import CONTROLS, read_circuit, run_faithfulness, write_outputs
    from ..prune.outputs import circuit_paths
    json_path, _ = circuit_paths(run_dir, task)
    if not json_path.is_file():
        raise PruneError(f"no circuit for task {task!r} in {run_dir}; run `sparseformer prune {run_dir} --task {task}` "
                         f"first (or prune with --faithfulness)")
    names = CONTROLS if controls == "all" else [c.strip() for c in controls.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONTROLS]
    if unknown:
        raise PruneError(f"--controls: unknown control {unknown[0]!r}; choose from {', '.join(CONTROLS)}")
    if random_draws < 2:
        raise PruneError(f"--random-draws {random_draws}: need at least 2 for a spread")
    doc = read_circuit(json_path)
    run = load_run(run_dir, device=device)
    report = run_faithfulness(run, doc, controls=names, n_random=random_draws, progress=not (quiet or as_json))
    doc["faithfulness"] = report
    json_path, html_path = write_outputs(run_dir, doc)
    if as_json:
        click.echo(json.dumps({"task": task, **report, "circuit_file": str(json_path), "viewer": str(html_path)}))
        return
    c = report["circuit"]
    click.echo(f"{task}: {c['nodes']} nodes, {c['edges']} edges at loss {c['loss']:.4f} (target "
               f"{report['target_loss']:g}, full model {report['full_loss']:.4f})")
    _print_faithfulness(report)
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
    group.add_command(faithfulness)
