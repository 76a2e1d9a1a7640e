"""`x2i publish`: a built dataset to a Hugging Face Hub dataset repo (the sequence is x2i/publish/run.py `publish`;
see x2i/publish/hub.py and docs/publishing.md)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from x2i.cli.common import user_errors

STAGE_DEFAULT = "_hub"  # x2i.publish.run.STAGE_DEFAULT, repeated so `--help` needs no import of the publisher


@user_errors
def publish_command(
    path: str = typer.Argument(..., help="Dataset folder built by x2i (data/ + manifest.json); local or s3://, gs://, hf://."),
    repo_id: str = typer.Option(..., "--repo-id", help="Hub dataset repo, ORG/NAME (created if missing)."),
    private: bool = typer.Option(False, "--private", help="Create the repo private (an existing repo keeps its visibility)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch to commit to (created if missing; default: main)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Build the repo folder and card locally, print what would be uploaded, upload nothing."),
    stage_dir: Optional[Path] = typer.Option(None, "--stage", help=f"Where the repo folder is built (default: DIR/{STAGE_DEFAULT}; for an object-store DIR, ./{STAGE_DEFAULT}/<last part of DIR>)."),
    license: str = typer.Option("other", "--license", help="The card's licence id (e.g. cc-by-4.0); per-row licences are listed in the card."),
    pretty_name: Optional[str] = typer.Option(None, "--pretty-name", help="Title of the dataset card."),
    shard_mb: int = typer.Option(500, "--shard-mb", min=1, help="Target size of the uploaded Parquet files; smaller built shards are merged."),
    files_per_commit: int = typer.Option(50, "--files-per-commit", min=1, max=99, help="Files per commit (the Hub allows fewer than 100)."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="Hub endpoint (default: $HF_ENDPOINT or https://huggingface.co)."),
    no_decode: bool = typer.Option(False, "--no-decode", help="Validate image headers only (faster, weaker)."),
) -> None:
    """Publish a dataset to the Hugging Face Hub (one config per task family + default; resumable: re-run it)."""
    from x2i.publish import PublishConfig, publish

    cfg = PublishConfig(repo_id=repo_id, private=private, revision=revision, license=license,
                        pretty_name=pretty_name, target_shard_bytes=shard_mb << 20,
                        files_per_commit=files_per_commit, endpoint=endpoint)
    done = publish(path, cfg, dry_run=dry_run, stage_dir=stage_dir, decode_images=not no_decode, log=typer.echo,
                   warn=lambda line: typer.echo(line, err=True))
    typer.echo(done.summary())


def register(app: typer.Typer) -> None:
    app.command("publish")(publish_command)
