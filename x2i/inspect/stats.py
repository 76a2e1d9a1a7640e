"""`x2i stats`: what a dataset holds, computed from the shards without touching image bytes.

Rows per task, input images per sample, output sizes (histogram of the longer side, aspect ratios), instruction
lengths, quality-score summaries, and rejects per reason (from manifest.json, or the rejects ledger).

Copy-paste rate (subject tasks only: `COPY_PASTE_TASKS`): the share of rows whose input appears verbatim in the
output (x2i/curation/copy_paste.py). Rows that went through the `copy_paste` step carry their scores in meta and
cost nothing; other rows are measured by decoding their images, at most `COPY_PASTE_ROWS` per task (the first in
shard order), and the report says how many were measured. Edit and condition tasks are left out: an edit's input
is the output by design.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from x2i.engine.manifest import manifest_path, read_manifest
from x2i.engine.shards import shard_files

SIDE_BINS = [0, 256, 384, 512, 640, 768, 1024, 1536, 2048, 10**9]
COPY_PASTE_TASKS = ("subject_driven", "in_context", "few_shot/subject_driven", "few_shot/in_context")
COPY_PASTE_ROWS = 300
STAT_COLUMNS = ["task", "width", "height", "instruction", "aesthetic", "clip_score", "input_images.list.element.path"]


def _bin_label(lo: int, hi: int) -> str:
    return f">={lo}" if hi >= 10**9 else f"{lo}-{hi - 1}"


def _summary(values: list[float]) -> dict[str, Any] | None:
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return None
    q = np.percentile(arr, [5, 50, 95])
    return {"count": int(arr.size), "mean": round(float(arr.mean()), 4), "min": round(float(arr.min()), 4),
            "p5": round(float(q[0]), 4), "median": round(float(q[1]), 4), "p95": round(float(q[2]), 4),
            "max": round(float(arr.max()), 4)}


def collect(path: str | Path) -> dict[str, Any]:
    """Per-row columns needed for statistics and plots (no image bytes are read)."""
    cols: dict[str, list] = {"task": [], "width": [], "height": [], "instruction_chars": [], "inputs": [],
                             "aesthetic": [], "clip_score": []}
    for f in shard_files(Path(path)):
        table = pq.ParquetFile(f).read(columns=STAT_COLUMNS)
        cols["task"] += table.column("task").to_pylist()
        cols["width"] += table.column("width").to_pylist()
        cols["height"] += table.column("height").to_pylist()
        cols["instruction_chars"] += [len(s or "") for s in table.column("instruction").to_pylist()]
        cols["inputs"] += [len(v or []) for v in table.column("input_images").to_pylist()]
        cols["aesthetic"] += table.column("aesthetic").to_pylist()
        cols["clip_score"] += table.column("clip_score").to_pylist()
    return cols


def rejects_of(path: str | Path) -> dict[str, int]:
    root = Path(path)
    if manifest_path(root).exists():
        return dict(read_manifest(root).rejects)
    counts: Counter = Counter()
    for f in sorted((root / "rejects").glob("*.parquet")) if (root / "rejects").is_dir() else []:
        counts.update(pq.read_table(f, columns=["reason"]).column("reason").to_pylist())
    return dict(counts)


def compute(path: str | Path) -> dict[str, Any]:
    cols = collect(path)
    n = len(cols["task"])
    sides = [max(w or 0, h or 0) for w, h in zip(cols["width"], cols["height"])]
    hist = np.histogram(sides, bins=SIDE_BINS)[0] if n else np.zeros(len(SIDE_BINS) - 1, int)
    aspects = [w / h for w, h in zip(cols["width"], cols["height"]) if w and h]
    per_task: dict[str, dict[str, Any]] = {}
    for task in sorted(set(cols["task"])):
        idx = [i for i, t in enumerate(cols["task"]) if t == task]
        per_task[task] = {"rows": len(idx),
                          "inputs_per_sample": dict(sorted(Counter(cols["inputs"][i] for i in idx).items()))}
    rejects = rejects_of(path)
    copy_paste = copy_paste_rates(path, [t for t in per_task if t in COPY_PASTE_TASKS])
    return {
        "rows": n,
        "tasks": per_task,
        "output_long_side": {_bin_label(lo, hi): int(c) for lo, hi, c in zip(SIDE_BINS, SIDE_BINS[1:], hist) if c},
        "aspect_ratio": _summary(aspects),
        "instruction_chars": _summary(cols["instruction_chars"]),
        "aesthetic": _summary(cols["aesthetic"]),
        "clip_score": _summary(cols["clip_score"]),
        "rejects": dict(sorted(rejects.items(), key=lambda kv: -kv[1])),
        "rejects_total": sum(rejects.values()),
        "copy_paste": copy_paste,
    }


def copy_paste_rates(path: str | Path, tasks: list[str], max_rows: int = COPY_PASTE_ROWS,
                     threshold: float = 0.97) -> dict[str, dict[str, Any]]:
    """Per task: rows checked, copies and their share (scores from meta, else measured on up to max_rows)."""
    if not tasks:
        return {}
    import json

    from x2i.curation.copy_paste import copy_scores_of

    out: dict[str, dict[str, Any]] = {t: {"rows_checked": 0, "copies": 0, "measured": 0} for t in tasks}
    for f in shard_files(Path(path)):
        pf = pq.ParquetFile(f)
        table = pf.read(columns=["task", "meta"])  # images are read only for rows that still need measuring
        need_images = []
        for i, (task, meta) in enumerate(zip(table.column("task").to_pylist(), table.column("meta").to_pylist())):
            if task not in out:
                continue
            m = json.loads(meta or "{}")
            cp = m.get("copy_paste")
            if cp is not None:
                out[task]["rows_checked"] += 1
                out[task]["copies"] += int(max(cp["scores"] or [-1]) >= threshold)
            elif out[task]["measured"] < max_rows:
                out[task]["measured"] += 1
                need_images.append((i, task, m))
        if need_images:
            images = pf.read(columns=["input_images", "output_image"])
            for i, task, m in need_images:
                inputs = [im["bytes"] for im in images.column("input_images")[i].as_py() or []]
                if not inputs:
                    continue
                scores = copy_scores_of(inputs, images.column("output_image")[i].as_py()["bytes"], m)
                out[task]["rows_checked"] += 1
                out[task]["copies"] += int(max(scores) >= threshold)
    for entry in out.values():
        entry["rate"] = round(entry["copies"] / entry["rows_checked"], 4) if entry["rows_checked"] else None
    return out


def render(stats: dict[str, Any]) -> str:
    """Plain-text report."""
    lines = [f"rows: {stats['rows']}"]
    for task, info in stats["tasks"].items():
        inputs = ", ".join(f"{k}:{v}" for k, v in info["inputs_per_sample"].items())
        lines.append(f"  {task:32s} {info['rows']:>8d} rows   inputs per sample {inputs}")
    if stats["output_long_side"]:
        lines.append("output long side (px):")
        peak = max(stats["output_long_side"].values())
        for label, count in stats["output_long_side"].items():
            lines.append(f"  {label:>10s} {count:>8d} {'#' * max(1, round(30 * count / peak))}")
    for key in ("aspect_ratio", "instruction_chars", "aesthetic", "clip_score"):
        s = stats[key]
        if s:
            lines.append(f"{key}: mean {s['mean']} median {s['median']} [p5 {s['p5']}, p95 {s['p95']}] "
                         f"(min {s['min']}, max {s['max']}, n {s['count']})")
    for task, cp in stats.get("copy_paste", {}).items():
        lines.append(f"copy-paste {task}: {cp['copies']}/{cp['rows_checked']} rows = {cp['rate']} "
                     f"(input verbatim in output, NCC >= 0.97; {cp['measured']} measured here)")
    lines.append(f"rejects: {stats['rejects_total']}")
    for reason, count in stats["rejects"].items():
        lines.append(f"  {reason:32s} {count:>8d}")
    return "\n".join(lines)
