"""QA figures of a dataset: the ones the QA notebooks show and `x2i stats --plot DIR` writes as PNGs.

- `rows_per_task`, `rejects_per_reason`, `score_histograms` (aesthetic, CLIP), `size_distributions` (output
  width x height, aspect ratio, long side): from `x2i.inspect.stats.collect` (columns only, no image bytes);
- `sample_grid(task)`: a few rows of a task, inputs -> output with the instruction above them;
- `condition_pairs(task)`: for annotator tasks (vision/..., control/...), image | condition | overlay, the
  overlay showing at a glance whether the condition lines up with the image.

Figures are `matplotlib.figure.Figure` objects made without pyplot (no global state, no GUI backend); Jupyter
displays them inline and `save` writes them as PNG. Samples are chosen like the gallery's (same seed, same rows).
"""
from __future__ import annotations

import re
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from x2i.core.errors import X2IError
from x2i.inspect.gallery import choose_rows, read_rows
from x2i.core.imageio import ImageError, decode
from x2i.core.prompt import PLACEHOLDER_PATTERN
from x2i.engine.shards import shard_files
from x2i.inspect.stats import SIDE_BINS, collect, rejects_of

THUMB = 256


def _barh(fig: Figure, labels: list[str], values: list[int], title: str, empty: str) -> Figure:
    ax = fig.add_subplot()
    if not values:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        y = np.arange(len(labels))
        ax.barh(y, values, color="#2b59c3")
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        for yi, v in zip(y, values):
            ax.text(v, yi, f" {v:,}", va="center", fontsize=8)
        ax.set_xlim(0, max(values) * 1.15)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def rows_per_task(cols: dict[str, list]) -> Figure:
    counts = Counter(cols["task"])
    labels = sorted(counts)
    fig = Figure(figsize=(7, 0.8 + 0.35 * max(len(labels), 2)))
    return _barh(fig, labels, [counts[t] for t in labels], f"rows per task ({sum(counts.values()):,} rows)",
                 "no rows")


def rejects_per_reason(rejects: dict[str, int]) -> Figure:
    items = sorted(rejects.items(), key=lambda kv: -kv[1])
    fig = Figure(figsize=(7, 0.8 + 0.35 * max(len(items), 2)))
    return _barh(fig, [k for k, _ in items], [v for _, v in items],
                 f"rejects per reason ({sum(rejects.values()):,} rejected)", "no rejects recorded")


def score_histograms(cols: dict[str, list]) -> Figure:
    fig = Figure(figsize=(10, 3.4))
    axes = fig.subplots(1, 2)
    for ax, key, title in zip(axes, ("aesthetic", "clip_score"), ("aesthetic score", "CLIP score")):
        values = np.array([v for v in cols[key] if v is not None and np.isfinite(v)], dtype=float)
        missing = len(cols[key]) - len(values)
        if len(values):
            ax.hist(values, bins=30, color="#2b59c3")
            ax.axvline(np.median(values), color="#e0a020", label=f"median {np.median(values):.3f}")
            ax.legend(fontsize=8)
            ax.set_ylabel("rows")
        else:
            ax.text(0.5, 0.5, "not computed\n(null in every row)", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_title(f"{title} (n={len(values):,}, null {missing:,})")
    fig.tight_layout()
    return fig


def size_distributions(cols: dict[str, list]) -> Figure:
    w = np.array([v or 0 for v in cols["width"]], dtype=float)
    h = np.array([v or 0 for v in cols["height"]], dtype=float)
    ok = (w > 0) & (h > 0)
    w, h = w[ok], h[ok]
    fig = Figure(figsize=(13, 3.6))
    ax1, ax2, ax3 = fig.subplots(1, 3)
    if len(w):
        pairs = Counter(zip(w.tolist(), h.tolist()))
        xs, ys = zip(*pairs)
        sizes = np.array(list(pairs.values()), dtype=float)
        ax1.scatter(xs, ys, s=12 + 120 * sizes / sizes.max(), alpha=0.6, color="#2b59c3")
        ratio = np.log2(w / h)  # log scale: 2:1 and 1:2 are equally far from square
        ticks = [-2, -1, -np.log2(4 / 3), 0, np.log2(4 / 3), 1, 2]
        lo, hi = min(ticks[0], ratio.min() - 0.1), max(ticks[-1], ratio.max() + 0.1)
        ax2.hist(ratio, bins=np.linspace(lo, hi, 49), color="#2b59c3")
        ax2.set_xticks(ticks, ["1:4", "1:2", "3:4", "1:1", "4:3", "2:1", "4:1"])
        ax2.set_xlim(lo, hi)
        side = np.maximum(w, h)
        counts = np.histogram(side, bins=SIDE_BINS)[0]
        labels = [f">={lo}" if hi >= 10**9 else f"{lo}-{hi - 1}" for lo, hi in zip(SIDE_BINS, SIDE_BINS[1:])]
        keep = [i for i, c in enumerate(counts) if c] or [0]
        bars = ax3.bar([labels[i] for i in keep], [counts[i] for i in keep], color="#2b59c3")
        ax3.bar_label(bars, [f"{counts[i]:,}" for i in keep], fontsize=8)
        ax3.tick_params(axis="x", labelrotation=30, labelsize=8)
    else:
        for ax in (ax1, ax2, ax3):
            ax.text(0.5, 0.5, "no sizes", ha="center", va="center", transform=ax.transAxes)
    ax1.set(title="output width x height (marker size = rows)", xlabel="width", ylabel="height")
    ax2.set(title="output aspect ratio (w:h)", ylabel="rows")
    ax3.set(title="output long side (px)", ylabel="rows")
    fig.tight_layout()
    return fig


def _thumb(struct: Any) -> np.ndarray | None:
    if not isinstance(struct, dict) or not struct.get("bytes"):
        return None
    try:
        im = decode(struct["bytes"])
    except ImageError:
        return None
    im.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
    return np.asarray(im)


def _show(ax, image: np.ndarray | None, title: str) -> None:
    if image is None:
        ax.text(0.5, 0.5, "missing or\nundecodable", ha="center", va="center", color="#c33", transform=ax.transAxes)
    else:
        ax.imshow(image)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def _text(instruction: str, width: int) -> str:
    """The instruction with placeholders shown as [k], wrapped, at most 4 lines."""
    text = PLACEHOLDER_PATTERN.sub(lambda m: f"[{m.group(1)}]", instruction or "")
    return "\n".join(textwrap.wrap(text, width, max_lines=4, placeholder=" ..."))


def task_rows(path: str | Path, task: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Up to n rows of a task, chosen as the gallery chooses them."""
    files = shard_files(Path(path))
    chosen, counts = choose_rows(files, n, seed, [task])
    if task not in counts:
        raise X2IError(f"no rows of task {task!r} in {path}; tasks there: {sorted(counts)}")
    rows = []
    for f in sorted({f for f, _ in chosen[task]}):
        rows += read_rows(files[f], [r for ff, r in chosen[task] if ff == f])
    return rows


def sample_grid(path: str | Path, task: str, n: int = 4, seed: int = 0) -> Figure:
    """n samples of a task, one per line: input 1..k -> output, the instruction above."""
    rows = task_rows(path, task, n, seed)
    cols = 1 + max(len(r["input_images"] or []) for r in rows)
    fig = Figure(figsize=(2.6 * max(cols, 2), 3.4 * len(rows)), layout="constrained")
    fig.suptitle(task, fontsize=13, fontweight="bold")
    for sub, row in zip(np.atleast_1d(fig.subfigures(len(rows), 1)), rows):
        sub.suptitle(_text(row["instruction"], 26 * max(cols, 2)), fontsize=9, ha="left", x=0.01)
        axes = np.atleast_1d(sub.subplots(1, cols))
        inputs = row["input_images"] or []
        for k, ax in enumerate(axes[:-1], 1):
            if k <= len(inputs):
                _show(ax, _thumb(inputs[k - 1]), f"input [{k}]")
            else:
                ax.set_axis_off()
        _show(axes[-1], _thumb(row["output_image"]), f"output {row['width']}x{row['height']}")
    return fig


def condition_pairs(path: str | Path, task: str, n: int = 4, seed: int = 0) -> Figure:
    """Annotator tasks: image | condition | overlay. For control/... the condition is the input and the image the
    output; otherwise (vision/... and the like) the image is the input and the condition the output."""
    import json

    rows = task_rows(path, task, n, seed)
    fig = Figure(figsize=(9, 3.5 * len(rows)), layout="constrained")
    fig.suptitle(task, fontsize=13, fontweight="bold")
    for sub, row in zip(np.atleast_1d(fig.subfigures(len(rows), 1)), rows):
        first_input = (row["input_images"] or [None])[0]
        image, condition = ((row["output_image"], first_input) if task.startswith("control/")
                            else (first_input, row["output_image"]))
        image, condition = _thumb(image), _thumb(condition)
        try:
            annotator = json.loads(row["meta"] or "{}").get("annotator")
        except (ValueError, AttributeError):
            annotator = None
        label = f"annotator: {annotator}\n" if annotator else ""
        sub.suptitle(label + _text(row["instruction"], 80), fontsize=9, ha="left", x=0.01)
        a1, a2, a3 = sub.subplots(1, 3)
        _show(a1, image, "image")
        _show(a2, condition, "condition")
        overlay = None
        if image is not None and condition is not None:
            cond = np.asarray(Image.fromarray(condition).resize((image.shape[1], image.shape[0])), dtype=float)
            overlay = (0.5 * image.astype(float) + 0.5 * cond).astype(np.uint8)
        _show(a3, overlay, "overlay (50/50)")
    return fig


def family_tasks(cols: dict[str, list], family: str) -> list[str]:
    """The tasks of a family (`vision` -> vision/canny, vision/depth, ...), or an error naming the families there."""
    tasks = sorted({t for t in cols["task"] if t.split("/", 1)[0] == family})
    if not tasks:
        families = sorted({t.split("/", 1)[0] for t in cols["task"]})
        raise X2IError(f"no tasks of family {family!r} in this dataset; families there: {families}")
    return tasks


def annotator_counts(path: str | Path, tasks: list[str]) -> list[tuple[str, str, int]]:
    """(task, annotator as stated in meta, rows) for the given tasks; reads only the task and meta columns."""
    import json

    import pyarrow.parquet as pq

    counts: Counter = Counter()
    for f in shard_files(Path(path)):
        for batch in pq.ParquetFile(f).iter_batches(batch_size=4096, columns=["task", "meta"]):
            for task, meta in zip(batch.column("task").to_pylist(), batch.column("meta").to_pylist()):
                if task in tasks:
                    try:
                        annotator = json.loads(meta or "{}").get("annotator")
                    except (ValueError, AttributeError):
                        annotator = None
                    counts[(task, json.dumps(annotator, sort_keys=True) if annotator else "(not stated)")] += 1
    return [(t, a, n) for (t, a), n in sorted(counts.items())]


def _slug(task: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", task.replace("/", "__"))


def overview(path: str | Path, cols: dict[str, list] | None = None) -> dict[str, Figure]:
    """The dataset-level figures, by file stem."""
    cols = cols if cols is not None else collect(path)
    return {"rows_per_task": rows_per_task(cols), "rejects_per_reason": rejects_per_reason(rejects_of(path)),
            "scores": score_histograms(cols), "sizes": size_distributions(cols)}


def save_all(path: str | Path, out: str | Path, per_task: int = 4, seed: int = 0) -> list[Path]:
    """Write every QA notebook figure as PNG into `out`: the overview plus `samples-<task>.png` per task."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cols = collect(path)
    figures = overview(path, cols)
    tasks = sorted(set(cols["task"]))
    written = []
    for name, fig in figures.items():
        written.append(out / f"{name}.png")
        fig.savefig(written[-1], dpi=100)
    for task in tasks:
        written.append(out / f"samples-{_slug(task)}.png")
        sample_grid(path, task, per_task, seed).savefig(written[-1], dpi=80)
    return written
