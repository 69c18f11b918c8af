"""`sparseformer bridge`: train a sparse model coupled to a dense run through bridges (docs/bridges.md)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..config import PRESETS


@click.command()
@click.option("--dense", "dense_run", type=click.Path(path_type=Path), required=True,
              help="The dense run to bridge (frozen; same depth and tokenizer).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory of the sparse model.")
@click.option("--preset", default="tiny", show_default=True, help=f"The sparse model: one of {', '.join(PRESETS)}.")
@click.option("--steps", type=int, default=None, help="Optimizer steps (overrides the preset).")
@click.option("--seed", type=int, default=None, help="Seed for data order and init.")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:N.")
@click.option("--density", type=float, default=None, help="Final weight-matrix density of the sparse model.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE",
              help="Override any config field of the sparse model, e.g. --set train.lr=1e-2 (repeatable).")
@click.option("--nmse-weight", type=float, default=1.0, show_default=True, help="Weight of the NMSE terms.")
@click.option("--kl-weight", type=float, default=1.0, show_default=True, help="Weight of the KL terms.")
@click.option("--encoder-afrac", type=float, default=None,
              help="AbsTopK keep fraction of the encoders (default: the sparse model's afrac; 1 = off).")
@click.option("--kl-sites-per-step", type=int, default=0, show_default=True,
              help="Sites whose KL terms each step computes, in turn (0 = every site, the paper's sum).")
@click.option("--resume", is_flag=True, help="Continue the bridged run in --out from its last checkpoint.")
@click.option("--force", is_flag=True, help="Replace a run that already exists in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the result and the per-site metrics as JSON.")
def bridge(dense_run, out, preset, steps, seed, device, density, overrides, nmse_weight, kl_weight, encoder_afrac,
           kl_sites_per_step, resume, force, quiet, as_json):
    """Train a sparse model coupled to the frozen model of DENSE through bridges at every residual site."""
    from ..bridges import BridgeSettings, bridge as run_bridge, metrics_table
    from .train import config_from_flags
    cfg = None if resume else config_from_flags(preset, steps=steps, seed=seed, device=device, density=density,
                                                overrides=overrides)
    settings = BridgeSettings(encoder_afrac=encoder_afrac, nmse_weight=nmse_weight, kl_weight=kl_weight,
                              kl_sites_per_step=kl_sites_per_step)
    result = run_bridge(dense_run, out, cfg, settings, resume=resume, force=force,
                        progress=not (quiet or as_json))
    tr = result.train
    if as_json:
        click.echo(json.dumps({"run": str(tr.run_dir), "dense_run": result.info.dense_run, "step": tr.step,
                               "loss": tr.final_loss, "val_loss": tr.val_loss, "interrupted": tr.interrupted,
                               "metrics": result.metrics}))
        return
    click.echo(f"bridged run {tr.run_dir} (dense: {result.info.dense_run}): step {tr.step}"
               + (" (interrupted; --resume continues)" if tr.interrupted else ""))
    if result.metrics is not None:
        click.echo(metrics_table(result.metrics), nl=False)


def register(group: click.Group) -> None:
    group.add_command(bridge)
