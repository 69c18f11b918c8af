"""`sparseformer train`, `info` and `sample`."""

from __future__ import annotations

import json
from pathlib import Path

import click
import torch

from ..config import PRESETS, apply_overrides, get_preset
from ..errors import ConfigError


def config_from_flags(preset: str, *, data=None, steps=None, seed=None, device=None, density=None, dense=False,
                      deterministic=False, overrides=()):
    """The RunConfig of a preset with the training flags and --set overrides applied (train and bridge)."""
    cfg = get_preset(preset)
    extra = list(overrides)
    if data is not None:
        cfg.data.source = data
    if steps is not None:
        extra.append(f"train.steps={steps}")
    if seed is not None:
        extra.append(f"train.seed={seed}")
    if device is not None:
        extra.append(f"train.device={device}")
    if density is not None:
        if not 0 < density <= 1:
            raise ConfigError(f"--density {density} is outside (0, 1]; give the fraction of weights to keep")
        extra.append(f"sparsity.weight_density={density}")
    if dense:
        extra.append("sparsity.dense=true")
    if deterministic:
        extra.append("train.deterministic=true")
    return apply_overrides(cfg, extra)


@click.command()
@click.option("--preset", default="tiny", show_default=True, help=f"One of: {', '.join(PRESETS)}.")
@click.option("--data", "data", default=None, help="Corpus: 'stdlib' (default), a directory, a .jsonl or a text file.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory to create.")
@click.option("--steps", type=int, default=None, help="Optimizer steps (overrides the preset).")
@click.option("--seed", type=int, default=None, help="Seed for data order and init.")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:N.")
@click.option("--density", type=float, default=None, help="Final weight-matrix density (fraction kept).")
@click.option("--dense", is_flag=True, help="Train the same architecture without weight sparsity (the baseline).")
@click.option("--deterministic", is_flag=True,
              help="CUDA: deterministic algorithms only (slower; the CPU step is always deterministic).")
@click.option("--dist", "dist", type=click.Choice(["ddp", "fsdp"]), default=None,
              help="Under torchrun: DDP replicas (the default there) or FSDP2 shards.")
@click.option("--grad-accum", type=int, default=1, show_default=True,
              help="Micro-batches per rank and step (the global batch stays train.batch_size).")
@click.option("--dist-backend", type=click.Choice(["nccl", "gloo"]), default=None,
              help="torch.distributed backend (default: nccl on CUDA, gloo on the CPU).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--force", is_flag=True, help="Replace a run that already exists in --out.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE",
              help="Override any config field, e.g. --set train.lr=3e-3 (repeatable).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def train(preset, data, out, steps, seed, device, density, dense, deterministic, dist, grad_accum, dist_backend,
          resume, force, overrides, quiet, as_json):
    """Train a weight-sparse GPT (or resume one)."""
    from ..train import train as run_training
    cfg = config_from_flags(preset, data=data, steps=steps, seed=seed, device=device, density=density, dense=dense,
                            deterministic=deterministic, overrides=overrides)
    result = run_training(cfg, out, resume=resume, force=force, progress=not (quiet or as_json), dist=dist,
                          grad_accum=grad_accum, dist_backend=dist_backend)
    if not _is_main_rank():
        return
    summary = {"run": str(result.run_dir), "step": result.step, "loss": result.final_loss,
               "val_loss": result.val_loss, "interrupted": result.interrupted}
    if as_json:
        click.echo(json.dumps(summary))
    else:
        vl = f"{result.val_loss:.4f}" if result.val_loss is not None else "n/a"
        click.echo(f"run {result.run_dir}: step {result.step}, val_loss {vl}"
                   + (" (interrupted; --resume continues)" if result.interrupted else ""))


def _is_main_rank() -> bool:
    """Whether this process prints the result: rank 0 of a distributed run, or a single process."""
    import os
    return os.environ.get("RANK", "0") == "0"


def run_info(run_dir: Path) -> dict:
    """Per-tensor shapes, budgets k and nonzero counts of a run, plus totals."""
    from ..checkpoint import load_run
    from ..model import param_kind
    run = load_run(run_dir)
    ks = run.state.get("ks", {})
    rows = []
    for name, p in run.model.named_parameters():
        rows.append({"name": name, "shape": list(p.shape), "numel": p.numel(), "k": ks.get(name),
                     "kind": param_kind(name) if name in ks else "dense",
                     "nonzero": int(torch.count_nonzero(p))})
    sparse = [r for r in rows if r["k"] is not None]
    return {
        "run": str(run_dir), "step": run.step, "preset": run.config.preset, "dense": run.config.sparsity.dense,
        "tensors": rows,
        "total_params": sum(r["numel"] for r in rows),
        "total_nonzero": sum(r["nonzero"] for r in rows),
        "sparse_params": sum(r["numel"] for r in sparse),
        "sparse_nonzero": sum(r["nonzero"] for r in sparse),
        "all_at_k": all(r["nonzero"] <= r["k"] for r in sparse) if sparse else True,
    }


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def info(run_dir, as_json):
    """Show each tensor's shape, top-k budget and nonzero count."""
    data = run_info(run_dir)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"{data['run']}  step {data['step']}  preset {data['preset']}"
               + ("  (dense)" if data["dense"] else ""))
    click.echo(f"{'tensor':44s} {'shape':>14s} {'k':>9s} {'nonzero':>9s} {'density':>8s}")
    for r in data["tensors"]:
        k = "-" if r["k"] is None else str(r["k"])
        click.echo(f"{r['name']:44s} {'x'.join(map(str, r['shape'])):>14s} {k:>9s} {r['nonzero']:>9d} "
                   f"{r['nonzero'] / max(1, r['numel']):8.4f}")
    click.echo(f"total {data['total_params']} params, {data['total_nonzero']} nonzero")


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--prompt", default="", help="Text to continue.")
@click.option("-n", "--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-k", type=int, default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
def sample(run_dir, prompt, max_new_tokens, temperature, top_k, seed, device):
    """Continue a prompt with the model (greedy by default)."""
    from ..checkpoint import load_run
    from ..errors import TaskError
    run = load_run(run_dir, device=device)
    if run.tokenizer is None:
        raise TaskError(f"run {run_dir} has no tokenizer.json; sampling needs one")
    ids = run.tokenizer.encode(prompt) or [run.tokenizer.eot_id]
    dev = next(run.model.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(seed)
    out = run.model.generate(torch.tensor([ids], device=dev), max_new_tokens, temperature, top_k, gen)
    click.echo(run.tokenizer.decode(out[0].tolist()))


def register(group: click.Group) -> None:
    for cmd in (train, info, sample):
        group.add_command(cmd)
