"""Dataset commands: build, validate, stats, export, import."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from x2i.cli.common import fail, user_errors


def _summary(manifest, out: Path | str) -> str:
    """What `x2i build` prints: notes, rows per task, the commonest reject reasons, where the manifest is."""
    lines = [f"note: {note}" for note in manifest.notes]
    lines.append(f"wrote {manifest.rows} rows to {out}")
    for task, info in manifest.tasks.items():
        lines.append(f"  {task}: {info.rows} rows in {info.shards} shard(s)")
    if manifest.rejects:
        top = manifest.top_rejects()
        lines.append(f"  rejected {manifest.rejects_total}: " + ", ".join(f"{k} {v}" for k, v in top[:8])
                     + (" ..." if len(top) > 8 else ""))
    lines.append(f"  manifest: {out}/manifest.json")  # out: a local Path or an object-store URI
    return "\n".join(lines)


@user_errors
def build_command(
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Task family to build, e.g. subject-driven (a recipe shipped in manifests/)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="A recipe YAML file instead of --task."),
    source: Optional[str] = typer.Option(None, "--source", "-s", help="Source path (metadata file/folder). Default: the embedded sample."),
    images: Optional[str] = typer.Option(None, "--images", help="img2dataset output folder, when separate from --source."),
    source_format: Optional[str] = typer.Option(None, "--format", help="Source format (default: the recipe's)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output folder or s3://, gs://, hf:// URI (default: out/<recipe name>)."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", min=0, help="Read at most N source records (the first N, in partition order)."),
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="Parallel partitions (processes or Ray CPUs)."),
    executor: str = typer.Option("local", "--executor", "-e", help="local or ray."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Join an existing Ray cluster (with --executor ray)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Recipe seed (every random choice derives from it)."),
    annotators: Optional[str] = typer.Option(None, "--annotators", help="Comma-separated annotators, for tasks that use them."),
    overrides: list[str] = typer.Option([], "--set", help="Override a recipe key: --set params.min_crop_side=96 (repeatable)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing build in --out instead of resuming it."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    max_error_rate: float = typer.Option(0.0, "--max-error-rate", min=0.0, max=0.99, help="Share of source rows that may fail with an undeclared error, counted as 'unexpected_error' rejects (default 0: the first one stops the build)."),
    allow_empty: bool = typer.Option(False, "--allow-empty", help="Accept a build that reads rows but keeps none (otherwise exit 2)."),
    holdout: Optional[float] = typer.Option(None, "--holdout", min=0.0, max=0.99, help="Hold this share of source items (a GRIT image, a clip, an edit session) out as the test split, in test/ (by a hash of their key)."),
) -> None:
    """Build a dataset from a recipe; re-running the same command resumes an interrupted build."""
    from x2i.engine.build import build_recipe

    if (task is None) == (recipe is None):
        fail("give exactly one of --task or --recipe (see `x2i recipes` for the shipped tasks)")
    annotator_list = [a.strip() for a in annotators.split(",") if a.strip()] if annotators is not None else None
    manifest, out_dir = build_recipe(recipe if recipe is not None else task, out, sets=overrides, options={
        "source.path": source, "source.images": images, "source.format": source_format, "seed": seed,
        "params.annotators": annotator_list, "output.holdout": holdout}, executor=executor, workers=workers, ray_address=ray_address,
        limit=limit, overwrite=overwrite, progress=not quiet, max_error_rate=max_error_rate, allow_empty=allow_empty)
    typer.echo(_summary(manifest, out_dir))
    if workers > len(manifest.partitions):  # a partition is the unit of parallel work: the rest sat idle
        parts = len(manifest.partitions)
        typer.echo(f"note: the source made {parts} partition(s), so only {parts} of the {workers} workers had work; "
                   "split it finer to use them all (source.options.rows_per_partition, where its format has it)",
                   err=True)


@user_errors
def recipes_command() -> None:
    """List the recipes shipped with x2i (usable as --task)."""
    from x2i.engine.recipe import load_recipe, task_names

    for name in task_names():
        r = load_recipe(name)
        typer.echo(f"{name:28s} builder={r.builder} source={r.source.format}")


@user_errors
def validate_command(
    path: str = typer.Argument(..., help="Dataset folder (with manifest.json) or a Parquet file; local or s3://, gs://, hf://."),
    multiple: int = typer.Option(16, help="Required divisor of output width/height (1 disables the check)."),
    no_decode: bool = typer.Option(False, "--no-decode", help="Read image headers only (faster, weaker)."),
    partial: bool = typer.Option(False, "--partial", help="Check the shards present in an unfinished build "
                                                          "(no manifest.json required)."),
    max_report: int = typer.Option(50, help="Problems to print (all are counted)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check schema, placeholders vs images, decodable images, sizes, duplicate ids and the manifest.

    Exit 0: valid. Exit 1: problems found, or an unfinished build (no manifest.json; re-run the build to finish
    it, or use --partial)."""
    from x2i.inspect.remote import display, readable
    from x2i.inspect.validate import validate

    with readable(path) as local:
        report = validate(local, multiple=multiple, decode_images=not no_decode, progress=not as_json,
                          partial=partial)
        report.incomplete = display(report.incomplete, local, path)
        for problem in report.problems:
            problem.file = display(problem.file, local, path)
    if as_json:
        typer.echo(json.dumps({"ok": report.ok, "files": report.files, "rows": report.rows,
                               "images": report.images, "incomplete": report.incomplete, "note": report.note,
                               "problems": [vars(p) for p in report.problems]}, indent=1))
    else:
        for problem in report.problems[:max_report]:
            typer.echo(str(problem))
        if len(report.problems) > max_report:
            typer.echo(f"... and {len(report.problems) - max_report} more")
        typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(1)


@user_errors
def stats_command(
    path: str = typer.Argument(..., help="Dataset folder or Parquet file; local or s3://, gs://, hf://."),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also write the QA notebook's figures as PNGs into this folder."),
) -> None:
    """Rows per task, inputs per sample, output sizes, score summaries and rejects per reason."""
    from x2i.core.errors import X2IError
    from x2i.engine.shards import shard_files
    from x2i.inspect.remote import readable
    from x2i.inspect.stats import compute, render

    with readable(path) as local:
        if not local.exists() or not shard_files(local):
            raise X2IError(f"{path}: no parquet shards found")
        stats = compute(local)
        typer.echo(json.dumps(stats, indent=1) if as_json else render(stats))
        if plot is not None:
            from x2i.inspect.plots import save_all

            written = save_all(local, plot)
            typer.echo(f"wrote {len(written)} figure(s) to {plot}", err=as_json)  # keep --json output parseable


@user_errors
def export_command(
    path: str = typer.Argument(..., help="Dataset folder to export; local or s3://, gs://, hf://."),
    fmt: str = typer.Option("omnigen", "--format", "-f", help="Export format (omnigen)."),
    out: str = typer.Option(..., "--out", "-o", help="Local output folder (data.jsonl + images/)."),
    task: list[str] = typer.Option([], "--task", "-t", help="Only these tasks (repeatable)."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="At most N rows."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out."),
) -> None:
    """Export to OmniGen's fine-tuning format (JSONL + image folder)."""
    from x2i.core.errors import X2IError
    from x2i.core.storage import check_target, is_uri
    from x2i.inspect.export import export_omnigen
    from x2i.inspect.remote import readable

    if fmt != "omnigen":
        fail(f"unknown export format {fmt!r}; supported: omnigen")
    check_target(out)
    if is_uri(out):  # OmniGen's trainer reads a local JSONL and image folder
        raise X2IError(f"{out}: x2i export writes a local folder; give a local --out")
    with readable(path) as local:
        result = export_omnigen(local, Path(out), tasks=task or None, limit=limit, overwrite=overwrite)
    typer.echo(f"exported {result['rows']} rows to {result['jsonl']} (images in {result['images']})")
    typer.echo(f"train OmniGen with: --json_file {result['jsonl']} --image_path {result['images']}")


@user_errors
def import_command(
    path: Path = typer.Argument(..., help="OmniGen JSONL file (or a folder of .jsonl files)."),
    fmt: str = typer.Option("omnigen", "--format", "-f", help="Import format (omnigen)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder the JSONL's image paths are relative to (default: the JSONL's folder)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output dataset folder."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", min=0, help="Read at most N lines."),
    workers: int = typer.Option(1, "--workers", "-w", min=1),
    executor: str = typer.Option("local", "--executor", "-e", help="local or ray."),
    overwrite: bool = typer.Option(False, "--overwrite"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Import OmniGen-format JSONL (OmniGen fine-tuning data, the released X2I subsets) into x2i Parquet."""
    from x2i.engine.build import build_recipe

    if fmt != "omnigen":
        fail(f"unknown import format {fmt!r}; supported: omnigen")
    manifest, out = build_recipe("omnigen_import", out, options={
        "source.path": str(path), "source.images": str(images) if images else None}, executor=executor,
        workers=workers, limit=limit, overwrite=overwrite, progress=not quiet)
    typer.echo(_summary(manifest, out))


def register(app: typer.Typer) -> None:
    app.command("build")(build_command)
    app.command("recipes")(recipes_command)
    app.command("validate")(validate_command)
    app.command("stats")(stats_command)
    app.command("export")(export_command)
    app.command("import")(import_command)
