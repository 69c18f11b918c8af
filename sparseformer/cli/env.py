"""`sparseformer env`: versions, devices and kernel backends, ready to paste into a bug report."""

from __future__ import annotations

import json
import platform
import sys

import click


def environment() -> dict:
    """A dict of the facts `sparseformer env` prints."""
    import numpy
    import torch

    from .. import __version__, kernels
    facts = {
        "sparseformer": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "numpy": numpy.__version__,
        "cuda_available": torch.cuda.is_available(),
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cpu_threads": torch.get_num_threads(),
    }
    try:
        import triton
        facts["triton"] = triton.__version__
    except Exception as e:  # triton is optional off Linux
        facts["triton"] = f"unavailable ({type(e).__name__})"
    facts["backends"] = {name: (reason or "available") for name, reason in kernels.available().items()}
    return facts


@click.command()
@click.option("--json", "as_json", is_flag=True)
def env(as_json):
    """Print versions, devices and which kernel backends can run here."""
    facts = environment()
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    for key, value in facts.items():
        if key == "backends":
            for name, status in value.items():
                click.echo(f"backend {name:7s} {status}")
        else:
            click.echo(f"{key:15s} {value}")


def register(group: click.Group) -> None:
    group.add_command(env)
