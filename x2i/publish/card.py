"""The dataset card (README.md) written by `x2i publish`.

The YAML header is what the Hub and `datasets` read: `configs` (data_files globs per config: `train`, and `test`
when the build held source items out),
`dataset_info` (features and split sizes per config; `datasets` checks the row counts when it loads), licence,
task categories, tags and size category. The body is for people: the configs, how to load them, the schema
and the provenance of the data (recipe, sources, per-row licences, x2i version, what was rejected and why).

Local paths are reduced to their last component, so a card never shows the publisher's file system.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
import yaml

from x2i import __version__
from x2i.core.schema import HF_FEATURES, SCHEMA_VERSION
from x2i.engine.shards import shard_files

if TYPE_CHECKING:
    from x2i.engine.manifest import Manifest
    from x2i.publish.hub import PublishConfig, Staged


def _feature_yaml(name: str, feature: Any) -> dict[str, str]:
    """One schema column in the card's YAML form (`datasets` >= 4 spells a list of images `list: image`)."""
    if isinstance(feature, list):
        return {"name": name, "list": _feature_yaml(name, feature[0])["dtype"]}
    return {"name": name, "dtype": "image" if feature["_type"] == "Image" else feature["dtype"]}


FEATURES_YAML: list[dict[str, str]] = [_feature_yaml(n, f) for n, f in HF_FEATURES.items()]

COLUMN_DOCS = [
    ("id", "deterministic id: hash of (source, source_key, task, parameters)"),
    ("task", "task name, e.g. `subject_driven`, `vision/canny`"),
    ("instruction", "the prompt; input image k appears as `<img><|image_k|></img>`, k = 1..N in order"),
    ("input_images", "list of images (N may be 0)"),
    ("output_image", "the image to generate"),
    ("source, source_key", "where the row came from"),
    ("width, height", "output image size"),
    ("meta", "JSON object: boxes, phrases, annotator, licence, url, ..."),
    ("aesthetic, clip_score", "quality scores (null when not computed)"),
    ("phash", "perceptual hash of the output (null when not computed)"),
]

_SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                    (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]


class _NoAliasDumper(yaml.SafeDumper):
    """Writes repeated objects out in full: no `&id001` anchors in a card people read and edit."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def size_category(rows: int) -> str:
    return next((label for limit, label in _SIZE_CATEGORIES if rows < limit), "n>1T")


def scrub_paths(value: Any) -> Any:
    """Absolute local paths -> their last component (recursively)."""
    if isinstance(value, dict):
        return {k: scrub_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_paths(v) for v in value]
    if isinstance(value, str) and (os.path.isabs(value) or value.startswith("~")):
        return Path(value).name
    return value


def provenance_counts(dataset: Path) -> tuple[Counter, Counter]:
    """Rows per `source` and per licence named in `meta` (no image bytes read)."""
    sources: Counter = Counter()
    licences: Counter = Counter()
    for path in shard_files(dataset):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096, columns=["source", "meta"]):
            cols = batch.to_pydict()
            sources.update(s or "(none)" for s in cols["source"])
            for text in cols["meta"]:
                try:
                    meta = json.loads(text) if text else {}
                except ValueError:
                    meta = {}
                lic = meta.get("licence", meta.get("license")) if isinstance(meta, dict) else None
                licences[str(lic) if lic else "(not stated)"] += 1
    return sources, licences


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _md(text: Any) -> str:
    """A value made safe for a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def card_metadata(staged: "Staged", cfg: "PublishConfig") -> dict[str, Any]:
    """The YAML header as a dict."""
    by_task: dict[str, list] = {}
    for f in staged.files:
        if f.task is not None:
            by_task.setdefault(f.task, []).append(f)
    arrow_bytes = {}  # uncompressed size, the closest to what `datasets` reports as num_bytes
    for fs in by_task.values():
        for f in fs:
            md = pq.ParquetFile(staged.root / f.path).metadata
            arrow_bytes[f.path] = sum(md.row_group(g).total_byte_size for g in range(md.num_row_groups))
    configs, infos = [], []
    for name, tasks in staged.configs.items():
        files = [f for t in tasks for f in by_task[t]]
        folders = sorted({f.path.rsplit("/", 1)[0] for f in files})
        split_of = {f.path: f.path.rsplit("/", 1)[1].split("-", 1)[0] for f in files}  # train-/test-NNNNN-...
        splits = [s for s in ("train", "test") if s in split_of.values()]
        configs.append({"config_name": name,
                        "data_files": [{"split": s, "path": [f"{d}/{s}-*.parquet" for d in folders]} for s in splits]})
        num_bytes = sum(arrow_bytes[f.path] for f in files)
        infos.append({"config_name": name, "features": FEATURES_YAML,
                      "splits": [{"name": s, "num_bytes": sum(arrow_bytes[f.path] for f in files if split_of[f.path] == s),
                                  "num_examples": sum(f.rows for f in files if split_of[f.path] == s)} for s in splits],
                      "download_size": sum(f.bytes for f in files), "dataset_size": num_bytes})
    categories = ["image-to-image"]
    if any(t.startswith("text_to_image") for t in staged.tasks):
        categories.insert(0, "text-to-image")
    meta: dict[str, Any] = {"license": cfg.license}
    if cfg.license == "other":  # the Hub asks for an id when the licence is not one of its own
        meta["license_name"] = "per-row-licences"
    if cfg.pretty_name:
        meta["pretty_name"] = cfg.pretty_name
    meta.update({"task_categories": categories, "tags": ["x2i", "omnigen", "any-to-image", "image-generation"],
                 "size_categories": [size_category(sum(staged.tasks.values()))],
                 "configs": configs, "dataset_info": infos})
    return meta


def render_card(dataset: Path, staged: "Staged", cfg: "PublishConfig", manifest: "Manifest | None") -> str:
    meta = card_metadata(staged, cfg)
    rows = sum(staged.tasks.values())
    title = cfg.pretty_name or (manifest.name if manifest else None) or cfg.repo_id.split("/")[-1]
    version, schema = (manifest.x2i_version, manifest.schema_version) if manifest else (__version__, SCHEMA_VERSION)
    sources, licences = provenance_counts(dataset)
    out = ["---", yaml.dump(meta, Dumper=_NoAliasDumper, sort_keys=False, allow_unicode=True, width=120).rstrip(), "---", "",
           f"# {title}", "",
           f"X2I (\"anything to image\") training data: {rows:,} rows in {len(staged.tasks)} task(s), built with "
           f"x2i {version} (schema v{schema}).",
           "Every row is an interleaved instruction, its input images and the output image, in the OmniGen "
           "prompt format.", "",
           "## Configs", "",
           "`default` holds every task; each task family (the part of the task name before `/`) has its own config.",
           "", "| config | tasks | rows | files | size |", "|---|---|---:|---:|---:|"]
    info_by_name = {i["config_name"]: i for i in meta["dataset_info"]}
    for name, tasks in staged.configs.items():
        info = info_by_name[name]
        n_files = sum(1 for f in staged.files if f.task in tasks)
        shown = ", ".join(f"`{_md(t)}`" for t in tasks[:12]) + (f" (+{len(tasks) - 12})" if len(tasks) > 12 else "")
        out.append(f"| `{name}` | {shown} | {info['splits'][0]['num_examples']:,} | {n_files} | "
                   f"{_human(info['download_size'])} |")
    out += ["", "| task | rows |", "|---|---:|"]
    out += [f"| `{_md(t)}` | {n:,} |" for t, n in staged.tasks.items()]
    example = next((n for n in staged.configs if n != "default"), "default")
    out += ["", "## Loading", "", "```python", "from datasets import load_dataset", "",
            f'ds = load_dataset("{cfg.repo_id}", "{example}", split="train")',
            "row = ds[0]  # row['output_image'] and row['input_images'][k] are PIL images", "```", "",
            "## Columns", "", "| column | meaning |", "|---|---|"]
    out += [f"| `{c}` | {_md(d)} |" for c, d in COLUMN_DOCS]
    out += ["", "## Provenance", ""]
    if manifest:
        source = scrub_paths(manifest.source)
        out += [f"- Recipe `{manifest.name}` (builder `{manifest.recipe.get('builder')}`, "
                f"seed {manifest.recipe.get('seed')}), built {manifest.created_at}.",
                f"- Source format `{source.get('format')}`"
                + (" (the embedded sample: the procedural shapes world and package photos)" if source.get("embedded")
                   else f", from `{source.get('path')}`") + ".",
                f"- {manifest.source_samples:,} source samples read; {manifest.rows:,} rows "
                f"written; {manifest.rejects_total:,} rejected."]
        out += [f"- Note: {_md(n)}" for n in manifest.notes]
    else:
        out.append("- No manifest.json was found next to the data: recipe and rejects are unknown.")
    out += ["", "Rows per source:", "", "| source | rows |", "|---|---:|"]
    out += [f"| `{_md(s)}` | {n:,} |" for s, n in sources.most_common(20)]
    out += ["", "Licences stated per row (in `meta`):", "", "| licence | rows |", "|---|---:|"]
    out += [f"| {_md(s)} | {n:,} |" for s, n in licences.most_common(20)]
    if manifest and manifest.rejects:
        out += ["", "Rejected during the build (a row is rejected with one reason; nothing is dropped silently):",
                "", "| reason | count |", "|---|---:|"]
        out += [f"| `{_md(r)}` | {n:,} |" for r, n in manifest.top_rejects()]
    if manifest and manifest.recipe:
        recipe = yaml.safe_dump(scrub_paths(manifest.recipe), sort_keys=False, allow_unicode=True).rstrip()
        out += ["", "<details><summary>Recipe</summary>", "", "```yaml", recipe, "```", "", "</details>"]
    out += ["", "## Licence", "",
            f"The card's licence field is `{cfg.license}`. Each row's own licence, where its source states one, is "
            "in `meta` (counted above); respect the terms of every source before training on or redistributing "
            "this data.", ""]
    return "\n".join(out)
