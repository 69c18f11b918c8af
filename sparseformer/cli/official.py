"""`sparseformer import-official` and `export-official`: the paper's released checkpoint format."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("import-official")
@click.argument("src_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory to create.")
@click.option("--tokenizer-dir", type=click.Path(path_type=Path), default=None,
              help="Folder with encoder.json + vocab.bpe (default: SRC_DIR when it has them).")
@click.option("--force", is_flag=True, help="Replace the run files already in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def import_official_cmd(src_dir, out, tokenizer_dir, force, as_json):
    """Import an official model directory (beeg_config.json + final_model.pt) as a run directory."""
    from ..official import import_official
    m = import_official(src_dir, out, tokenizer_dir=tokenizer_dir, force=force)
    mc = m.config.model
    params = sum(p.numel() for p in m.model.parameters())
    nonzero = sum(int(p.count_nonzero()) for p in m.model.parameters())
    summary = {"run": str(out), "source": str(src_dir), "n_layer": mc.n_layer, "d_model": mc.d_model,
               "n_head": mc.n_head, "d_head": mc.d_head, "d_mlp": mc.d_mlp, "params": params,
               "nonzero": nonzero, "tokenizer": m.tokenizer is not None,
               "coo_tensors": sum(v["layout"] == "coo" for v in m.layouts.values())}
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(f"imported {src_dir} -> {out}: {mc.n_layer} layers, d_model {mc.d_model}, "
                   f"{mc.n_head}x{mc.d_head} heads, {nonzero}/{params} nonzero")
    if m.tokenizer is None:
        click.echo("no tokenizer imported: logits and kernels work; task commands need one "
                   "(import again with --tokenizer-dir DIR --force)", err=True)


@click.command("export-official")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory to write.")
@click.option("--coo", "mode", flag_value="coo", help="Store sparse tensors as torch sparse COO where smaller.")
@click.option("--dense", "mode", flag_value="dense", help="Store every tensor dense.")
@click.option("--force", is_flag=True, help="Replace files already in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def export_official_cmd(run_dir, out, mode, force, as_json):
    """Write a run in the official layout (beeg_config.json, final_model.pt, encoder.json, vocab.bpe).

    By default tensors keep the layout they were imported with (dense for runs trained here)."""
    from ..official import export_official
    files = [p.name for p in export_official(run_dir, out, mode=mode or "original", force=force)]
    if as_json:
        click.echo(json.dumps({"run": str(run_dir), "out": str(out), "files": files}))
    else:
        click.echo(f"exported {run_dir} -> {out}: {', '.join(files)}")


def register(group: click.Group) -> None:
    group.add_command(import_official_cmd)
    group.add_command(export_official_cmd)
