"""Annotator commands: `x2i annotators list` (weights present or not, and where) and `fetch` (download)."""
from __future__ import annotations

from typing import Optional

import typer

from x2i.cli.common import user_errors

annotators_app = typer.Typer(help="Annotators (edge, depth, pose, segmentation): list them, fetch their weights.",
                             no_args_is_help=True)


@annotators_app.command("list")
@user_errors(command="x2i annotators list")
def list_command(
    weights: Optional[str] = typer.Option(None, "--weights", help="Also look in this folder (an explicit weights path)."),
) -> None:
    """Each annotator, what it makes, the weight files it needs and whether they are on disk."""
    from x2i.annotators import ANNOTATORS, MissingWeights, create

    for name in ANNOTATORS:
        ann = create(name, weights=weights)
        specs = ann.weight_specs()
        if not specs:
            status, files = "ready", "no weights"
        else:
            files = "; ".join(f"{s.repo_id}: {', '.join(s.names())}" for s in specs)
            try:
                found = ann.resolve_weights()
                status = "ready (" + ", ".join(f"{r.where}: {r.directory}" for r in found) + ")"
            except MissingWeights:
                status = f"missing (x2i annotators fetch {name})"
        typer.echo(f"{name:17s} {ann.kind:13s} {files}\n{'':17s} {status}")


@annotators_app.command("fetch")
@user_errors(command="x2i annotators fetch")
def fetch_command(
    names: list[str] = typer.Argument(..., help="Annotator names (see `x2i annotators list`)."),
    to: Optional[str] = typer.Option(None, "--to", help="Download into DIR/<repo_id>/ (use with X2I_ANNOTATOR_DIR=DIR) "
                                                        "instead of the Hugging Face cache."),
) -> None:
    """Download the weight files of annotators (needs network access)."""
    from x2i.annotators import create, fetch

    for name in names:
        ann = create(name)
        specs = ann.weight_specs()
        if not specs:
            typer.echo(f"{name}: needs no weights")
            continue
        for spec in specs:
            got = fetch(spec, to)
            typer.echo(f"{name}: {spec.repo_id} {', '.join(got.files)} -> {got.directory}")
    if to is not None:
        typer.echo(f"set X2I_ANNOTATOR_DIR={to} (or pass the folders as params.weights.<annotator>)")


def register(app: typer.Typer) -> None:
    app.add_typer(annotators_app, name="annotators")
