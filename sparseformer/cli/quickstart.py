"""`sparseformer quickstart`: the whole pipeline on the embedded default in one command (sparseformer.pipeline).

Train the `tiny` preset on this Python's standard library, evaluate the 20 tasks, prune one task's circuit,
write the circuit JSON and the HTML viewer, and print where everything is.
"""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/quickstart"), show_default=True,
              help="Run directory (reused when it already holds a finished tiny run).")
@click.option("--steps", type=int, default=None, help="Training steps (default: the tiny preset's).")
@click.option("--task", default="single_double_quote", show_default=True, help="Task to prune.")
@click.option("--eval-pairs", type=int, default=256, show_default=True, help="Test pairs per task.")
@click.option("--device", default="auto", show_default=True)
@click.option("--force", is_flag=True, help="Retrain even if --out holds a run.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def quickstart(out, steps, task, eval_pairs, device, force, quiet, as_json):
    """Train the tiny model, evaluate the tasks, prune a circuit and write the viewer."""
    from ..pipeline import quickstart as run_quickstart
    s = run_quickstart(out, steps=steps, task=task, eval_pairs=eval_pairs, device=device,
                       progress=not (quiet or as_json), force=force)
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    click.echo(f"trained {s['run']} to step {s['step']}: validation loss {s['val_loss']:.4f}")
    click.echo(f"{'task':28s} {'loss':>8s} {'acc':>6s}")
    for r in s["eval"]:
        click.echo(f"{r['task']:28s} {r['loss']:8.4f} {r['accuracy']:6.3f}")
    c = s["circuit"]
    if s["circuit_note"]:
        click.echo(f"note: {s['circuit_note']}")
    b = c["before_cleaning"]
    if b is not None:
        click.echo(f"bisection kept {b['nodes']} nodes, {b['edges']} edges at loss {b['loss']:.4f}; cleaning "
                   f"({b['evals']} evaluations, {b['seconds']:.0f} s) removed every node the target does not need:")
    verdict = "reaches" if c["sufficient"] else "does NOT reach"
    click.echo(f"circuit for {c['task']}: {c['nodes']} nodes, {c['edges']} edges; loss {c['loss']:.4f} "
               f"({verdict} the target {c['target_loss']}; full model {c['full_loss']:.4f}); "
               f"necessity {c['necessity_loss']:.4f}, random circuit {c['random_loss']:.4f}")
    click.echo(f"task results: {s['eval_file']}")
    click.echo(f"circuit:      {c['json']}")
    click.echo(f"viewer:       {c['viewer']}   (open it in a browser)")
    click.echo(f"took {s['seconds']['total']:.0f} s (train {s['seconds']['train']:.0f} s)")


def register(group: click.Group) -> None:
    group.add_command(quickstart)
