"""The `sparseformer` command line. Each submodule of this package defines its commands and a
`register(group)` function; they are collected here, so adding a command is adding a module."""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys

import click

from ..errors import SparseformerError


class _Group(click.Group):
    """Turns library errors into one 'Error: ...' line (exit 1) unless --debug."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SparseformerError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            raise click.ClickException(str(e)) from None


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug level).")
@click.version_option(package_name="sparseformer")
@click.pass_context
def main(ctx: click.Context, debug: bool, verbose: int) -> None:
    """Train weight-sparse transformers and read their circuits."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    level = logging.WARNING if verbose == 0 else (logging.INFO if verbose == 1 else logging.DEBUG)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}").register(main)
