"""`x2i publish`: a built dataset to a Hugging Face Hub dataset repo (see x2i/publish/hub.py and docs/publishing.md)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from x2i.cli.common import user_errors

STAGE_DEFAULT = "_hub"


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 1024:.1f} KB"


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
    from x2i.core.errors import X2IError
    from x2i.publish.hub import PublishConfig, check_repo_id, hub_api, redact, resolve_token, stage, upload
    from x2i.inspect.validate import require_valid

    from x2i.core.storage import is_uri
    from x2i.inspect.remote import readable

    check_repo_id(repo_id)
    token = None if dry_run else resolve_token()  # before any work: no token, nothing done
    if stage_dir is None and is_uri(path):  # the stage is local: the Hub upload reads it from disk
        stage_dir = Path(STAGE_DEFAULT) / path.rstrip("/").rsplit("/", 1)[-1]
    with readable(path) as local:
        if not local.is_dir() or not (local / "data").is_dir():
            raise X2IError(f"{path}: not a dataset folder (expected {path.rstrip('/')}/data)")
        manifest = require_valid(local, decode_images=not no_decode, log=lambda line: typer.echo(line, err=True))
        cfg = PublishConfig(repo_id=repo_id, private=private, revision=revision, license=license,
                            pretty_name=pretty_name, target_shard_bytes=shard_mb << 20,
                            files_per_commit=files_per_commit, endpoint=endpoint)
        staged = stage(local, stage_dir or local / STAGE_DEFAULT, cfg, manifest=manifest, log=typer.echo)
    per_commit = min(files_per_commit, 99)
    data = [f for f in staged.files if f.task is not None]
    typer.echo(_staged_report(staged))
    where = f"{repo_id}" + (f" (branch {revision})" if revision else "")
    if dry_run:
        commits = -(-len(data) // per_commit) + 1
        typer.echo(f"dry run: would upload {len(staged.files)} file(s) to dataset {where} in {commits} commit(s) "
                   f"of at most {per_commit} files (files already on the Hub are skipped); nothing uploaded")
        return
    try:
        result = upload(staged, hub_api(cfg, token), cfg, log=typer.echo)
    except Exception as exc:  # network, permissions, server refusals: one line, token never shown
        raise X2IError(redact(f"upload to {where} failed: {type(exc).__name__}: {' '.join(str(exc).split())} "
                              "(finished commits are kept; re-run the same command to resume)", token)) from None
    typer.echo(f"published {where}: {len(result.uploaded)} file(s) uploaded in {len(result.commits)} commit(s), "
               f"{len(result.skipped)} already there, {len(result.deleted)} stale file(s) removed: {result.url}")


def _staged_report(staged) -> str:
    """The staged repo folder: files, sizes and rows per config."""
    lines = [f"staged {staged.root}: {len(staged.files)} file(s), {_size(sum(f.bytes for f in staged.files))}"]
    for name, tasks in staged.configs.items():
        lines.append(f"  config {name}: {sum(staged.tasks[t] for t in tasks)} rows ({', '.join(tasks)})")
    for f in staged.files:
        lines.append(f"  {f.path}  {_size(f.bytes)}" + (f"  {f.rows} rows" if f.task else ""))
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    app.command("publish")(publish_command)
