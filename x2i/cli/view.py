"""`x2i view`: a static HTML gallery of a dataset (see x2i/inspect/gallery.py and docs/inspect.md)."""
from __future__ import annotations

from pathlib import Path

import typer

from x2i.cli.common import user_errors


@user_errors
def view_command(
    path: str = typer.Argument(..., help="Dataset folder or Parquet file; local or s3://, gs://, hf://."),
    out: Path = typer.Option(Path("gallery"), "--out", "-o", help="Gallery folder (index.html + thumbs/)."),
    per_task: int = typer.Option(12, "--per-task", "-n", min=1, help="Samples shown per task."),
    seed: int = typer.Option(0, "--seed", help="Which samples: a seeded choice per task."),
    task: list[str] = typer.Option([], "--task", "-t", help="Only these tasks (repeatable)."),
    thumb: int = typer.Option(256, "--thumb", min=32, max=2048, help="Longer side of the thumbnails (px)."),
) -> None:
    """Write a static HTML gallery of a dataset (open index.html from disk; no server needed)."""
    from x2i.inspect.gallery import GalleryConfig, build_gallery
    from x2i.inspect.remote import readable

    with readable(path) as local:
        result = build_gallery(local, out, GalleryConfig(per_task=per_task, seed=seed, thumb_side=thumb,
                                                         tasks=task or None), log=typer.echo)
    for problem in result.broken[:20]:
        typer.echo(f"warning: {problem}", err=True)
    typer.echo(f"wrote {result.index} ({result.samples} samples, {result.thumbs_written} new thumbnail(s), "
               f"{result.thumbs_reused} reused); open file://{result.index.resolve()}")


def register(app: typer.Typer) -> None:
    app.command("view")(view_command)
