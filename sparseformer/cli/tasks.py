"""`sparseformer tasks list|show` and `sparseformer eval RUN`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..errors import TaskError


@click.group()
def tasks() -> None:
    """The binary next-token Python tasks (docs/tasks.md)."""


@tasks.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {name, kind, source, description}.")
def list_cmd(as_json: bool) -> None:
    """List the registered tasks."""
    from ..tasks import list_tasks
    rows = [t.info() for t in list_tasks()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        kind = "" if r["kind"] == "binary" else f" [{r['kind']}]"
        click.echo(f"{r['name']:{width}s}  {r['description']}{kind}")


def _highlight(target: str) -> str:
    """The target, made visible: reverse video on a terminal (whitespace and newlines shown too)."""
    shown = target.replace("\n", "\u21b5\n")
    return click.style(shown, fg="green", bold=True, reverse=True)


@tasks.command("show")
@click.argument("name")
@click.option("-n", "count", type=int, default=5, show_default=True, help="How many pairs.")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {prompt_a, target_a, prompt_b, target_b}.")
def show_cmd(name: str, count: int, split: str, seed: int, as_json: bool) -> None:
    """Print pairs of task NAME (a registered name or a FILE.jsonl), targets highlighted."""
    from ..tasks import make_split, resolve_tasks
    if count < 1:
        raise click.BadParameter("must be at least 1", param_hint="-n")
    (task,) = resolve_tasks([name])
    pairs = make_split(task, split, count, seed)
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in pairs], indent=2, ensure_ascii=False))
        return
    click.echo(f"# {task.name} ({task.kind}): {task.description}")
    for i, p in enumerate(pairs):
        for side, prompt, target in (("A", p.prompt_a, p.target_a), ("B", p.prompt_b, p.target_b)):
            click.echo(click.style(f"--- pair {i} {side}: target {target!r} ---", fg="cyan"))
            click.echo(prompt + _highlight(target))
        click.echo()


def _load_run(path: Path, device: str):
    """load_run (a seam for tests)."""
    from ..checkpoint import load_run
    return load_run(path, device=device)


def format_table(rows: list[dict]) -> str:
    """The eval results as an aligned text table, with the mean over tasks last."""
    width = max([len(r["task"]) for r in rows] + [4])
    lines = [f"{'task':{width}s}  {'loss':>8s}  {'accuracy':>8s}  {'n':>5s}"]
    for r in rows:
        lines.append(f"{r['task']:{width}s}  {r['loss']:8.4f}  {r['accuracy']:8.3f}  {r['n']:5d}")
    if len(rows) > 1:
        mean_loss = sum(r["loss"] for r in rows) / len(rows)
        mean_acc = sum(r["accuracy"] for r in rows) / len(rows)
        lines.append(f"{'mean':{width}s}  {mean_loss:8.4f}  {mean_acc:8.3f}  {sum(r['n'] for r in rows):5d}")
    return "\n".join(lines)


@click.command("eval")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--tasks", "spec", default="all", show_default=True,
              help="Comma-separated task names, 'all', or FILE.jsonl (a custom task named after the file).")
@click.option("-n", "count", type=int, default=512, show_default=True, help="Pairs per task.")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True, help="Pairs per forward pass.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print {run, split, seed, results: [{task, loss, accuracy, n}]}.")
def eval_cmd(run: Path, spec: str, count: int, split: str, seed: int, batch_size: int, device: str, quiet: bool,
             as_json: bool) -> None:
    """Score a trained RUN on the tasks: per task, the mean per-sequence contrast loss, accuracy and n pairs."""
    from tqdm import tqdm

    from ..tasks import evaluate, max_prompt_len, resolve_tasks
    if count < 1:
        raise click.BadParameter("must be at least 1", param_hint="-n")
    if batch_size < 1:
        raise click.BadParameter("must be at least 1", param_hint="--batch-size")
    selected = resolve_tasks(spec)  # check names before loading the model
    loaded = _load_run(run, device)
    if loaded.tokenizer is None:
        raise TaskError(f"run {run} has no tokenizer; the task commands need one (train with a tokenizer, "
                        f"or copy tokenizer.json into the run directory)")
    max_len = max_prompt_len(getattr(getattr(loaded.model, "config", None), "block_size", None))
    rows = []
    bar = tqdm(selected, desc="eval", unit="task", file=sys.stderr, disable=quiet or as_json or not sys.stderr.isatty())
    for task in bar:
        bar.set_postfix_str(task.name)
        rows += evaluate(loaded.model, loaded.tokenizer, task, n=count, split=split, seed=seed,
                         batch_size=batch_size, max_len=max_len)
    if as_json:
        click.echo(json.dumps({"run": str(run), "split": split, "seed": seed, "results": rows}, indent=2))
    else:
        click.echo(format_table(rows))
        click.echo(f"loss: mean per-sequence contrast loss in nats (docs/tasks.md); accuracy: fraction of the 2n "
                   f"sequences whose correct token wins; {split} split, seed {seed}")


def register(group: click.Group) -> None:
    group.add_command(tasks)
    group.add_command(eval_cmd)
