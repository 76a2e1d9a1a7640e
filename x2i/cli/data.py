"""Dataset commands: build, validate, stats, export, import."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from x2i.cli.common import fail, user_errors


def _summary(manifest: dict, out: Path) -> str:
    lines = [f"note: {note}" for note in manifest.get("notes", [])]
    lines.append(f"wrote {manifest['rows']} rows to {out}")
    for task, info in manifest["tasks"].items():
        lines.append(f"  {task}: {info['rows']} rows in {info['shards']} shard(s)")
    if manifest["rejects"]:
        top = sorted(manifest["rejects"].items(), key=lambda kv: -kv[1])
        lines.append(f"  rejected {manifest['rejects_total']}: " + ", ".join(f"{k} {v}" for k, v in top[:8])
                     + (" ..." if len(top) > 8 else ""))
    lines.append(f"  manifest: {out / 'manifest.json'}")
    return "\n".join(lines)


@user_errors
def build_command(
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Task family to build, e.g. subject-driven (a recipe shipped in manifests/)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="A recipe YAML file instead of --task."),
    source: Optional[str] = typer.Option(None, "--source", "-s", help="Source path (metadata file/folder). Default: the embedded sample."),
    images: Optional[str] = typer.Option(None, "--images", help="img2dataset output folder, when separate from --source."),
    source_format: Optional[str] = typer.Option(None, "--format", help="Source format (default: the recipe's)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: out/<recipe name>)."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", min=0, help="Read at most N source records (the first N, in partition order)."),
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="Parallel partitions (processes or Ray CPUs)."),
    executor: str = typer.Option("local", "--executor", "-e", help="local or ray."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Join an existing Ray cluster (with --executor ray)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Recipe seed (every random choice derives from it)."),
    annotators: Optional[str] = typer.Option(None, "--annotators", help="Comma-separated annotators, for tasks that use them."),
    overrides: list[str] = typer.Option([], "--set", help="Override a recipe key: --set params.min_crop_side=96 (repeatable)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing build in --out instead of resuming it."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Build a dataset from a recipe; re-running the same command resumes an interrupted build."""
    from x2i.build import build
    from x2i.config import set_dotted
    from x2i.recipe import Recipe, load_recipe

    if (task is None) == (recipe is None):
        fail("give exactly one of --task or --recipe (see `x2i recipes` for the shipped tasks)")
    data = load_recipe(recipe if recipe is not None else task).to_dict()
    if source is not None:
        data["source"]["path"] = source
    if images is not None:
        data["source"]["images"] = images
    if source_format is not None:
        data["source"]["format"] = source_format
    if seed is not None:
        data["seed"] = seed
    if annotators is not None:
        data["params"]["annotators"] = [a.strip() for a in annotators.split(",") if a.strip()]
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"--set expects key=value, got {item!r}")
        set_dotted(data, key.strip(), value)
    resolved = Recipe.from_dict(data)
    out_dir = out if out is not None else Path("out") / resolved.name
    manifest = build(resolved, out_dir, executor=executor, workers=workers, ray_address=ray_address,
                     limit=limit, overwrite=overwrite, progress=not quiet)
    typer.echo(_summary(manifest, out_dir))


@user_errors
def recipes_command() -> None:
    """List the recipes shipped with x2i (usable as --task)."""
    from x2i.recipe import list_recipes, load_recipe

    for name in list_recipes():
        r = load_recipe(name)
        typer.echo(f"{name.replace('_', '-'):28s} builder={r.builder} source={r.source.format}")


def register(app: typer.Typer) -> None:
    app.command("build")(build_command)
    app.command("recipes")(recipes_command)
