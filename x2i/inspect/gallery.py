"""`x2i view`: a static HTML gallery of a dataset, opened straight from disk (file://, no server).

    <out>/index.html        one section per task; each sample shows its instruction with the input images placed
                            where their placeholders are, then the output image; a task filter (also as the URL
                            hash, `#task=vision/canny`); click a sample for its id, provenance, scores and meta
    <out>/thumbs/<h>.jpg    downscaled images, named by a hash of the original bytes: an image used by many rows
                            is written once, and a re-run only writes thumbnails it does not have yet

Fast on large datasets: rows are chosen from the `task` column alone (per task, a seeded sample of
`per_task` rows), then only the row groups holding chosen rows are read. Everything the page needs is inside
index.html (no fetch, which file:// pages cannot do).
"""
from __future__ import annotations

import hashlib
import html
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from x2i.core.errors import X2IError
from x2i.core.imageio import ImageError, decode
from x2i.core.prompt import split
from x2i.engine.manifest import ManifestError, manifest_path, read_manifest
from x2i.engine.shards import TMP_PREFIX, atomic_write_bytes, shard_files

THUMBS = "thumbs"


@dataclass
class GalleryConfig:
    per_task: int = 12  # samples shown per task
    seed: int = 0  # which samples: a seeded choice per task (the same seed shows the same rows)
    thumb_side: int = 256  # longer side of the thumbnails, in pixels
    tasks: list[str] | None = None  # only these tasks (None: all)
    title: str | None = None


@dataclass
class GalleryResult:
    index: Path
    samples: int
    tasks: dict[str, tuple[int, int]]  # task -> (shown, rows in the dataset)
    thumbs_written: int = 0
    thumbs_reused: int = 0
    broken: list[str] = field(default_factory=list)  # "id: what" for images that would not decode


# ---------------------------------------------------------------------------------------------------------------
# Choosing rows (task column only)
# ---------------------------------------------------------------------------------------------------------------

def choose_rows(files: list[Path], per_task: int, seed: int, tasks: list[str] | None = None
                ) -> tuple[dict[str, list[tuple[int, int]]], Counter]:
    """Per task, up to `per_task` (file index, row) pairs chosen with a seeded generator; and rows per task."""
    counts: Counter = Counter()
    for path in files:  # pass 1: rows per task
        for item in pq.read_table(path, columns=["task"]).column("task").value_counts().to_pylist():
            counts[item["values"]] += item["counts"]
    wanted = {t for t in counts if tasks is None or t in tasks}
    # The k-th row of a task (in file order) is chosen when k is in picks[task]; each task has its own stream.
    picks = {}
    for task in sorted(wanted):
        rng = np.random.default_rng([seed, int(hashlib.sha1(task.encode()).hexdigest()[:8], 16)])
        n = counts[task]
        picks[task] = np.sort(rng.choice(n, size=min(per_task, n), replace=False))
    chosen: dict[str, list[tuple[int, int]]] = {t: [] for t in sorted(wanted)}
    seen: Counter = Counter()
    for i, path in enumerate(files):  # pass 2: task-local positions -> (file, row)
        column = pq.read_table(path, columns=["task"]).column("task")
        for task in column.unique().to_pylist():
            if task not in wanted:
                continue
            rows = np.flatnonzero(pc.equal(column, task).to_numpy(zero_copy_only=False))
            local = np.arange(seen[task], seen[task] + len(rows))  # the task's k-th, (k+1)-th... rows
            seen[task] += len(rows)
            chosen[task] += [(i, int(r)) for r in rows[np.isin(local, picks[task])]]
    return chosen, counts


def read_rows(path: Path, rows: list[int]) -> list[dict[str, Any]]:
    """The given rows of one file (in the given order), reading only the row groups that hold them."""
    pf = pq.ParquetFile(path)
    starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)])
    out: dict[int, dict[str, Any]] = {}
    by_group: dict[int, list[int]] = {}
    for r in rows:
        by_group.setdefault(int(np.searchsorted(starts, r, side="right") - 1), []).append(r)
    for g, members in sorted(by_group.items()):
        table = pf.read_row_group(g)
        for r, row in zip(members, table.take([r - int(starts[g]) for r in members]).to_pylist()):
            out[r] = row
    return [out[r] for r in rows]


# ---------------------------------------------------------------------------------------------------------------
# Thumbnails
# ---------------------------------------------------------------------------------------------------------------

class Thumbnailer:
    def __init__(self, folder: Path, side: int):
        self.folder, self.side = folder, side
        self.folder.mkdir(parents=True, exist_ok=True)
        self.used: dict[str, tuple[int, int]] = {}  # file name -> thumbnail size
        self.written = self.reused = 0

    def __call__(self, data: bytes) -> tuple[str, int, int]:
        """(relative path, width, height) of the thumbnail of an encoded image; raises ImageError."""
        # PNG stays PNG (masks and edge maps keep their hard edges), everything else becomes JPEG.
        ext = "png" if data[:4] == b"\x89PNG" else "jpg"
        name = f"{hashlib.sha1(data).hexdigest()[:20]}-{self.side}.{ext}"
        if name not in self.used:
            path = self.folder / name
            if path.exists():
                with Image.open(path) as im:
                    self.used[name] = im.size
                self.reused += 1
            else:
                im = decode(data)
                im.thumbnail((self.side, self.side), Image.Resampling.LANCZOS)
                buf = io.BytesIO()
                im.save(buf, "PNG", optimize=True) if ext == "png" else im.save(buf, "JPEG", quality=85)
                atomic_write_bytes(path, buf.getvalue())
                self.used[name] = im.size
                self.written += 1
        w, h = self.used[name]
        return f"{THUMBS}/{name}", w, h

    def prune(self) -> None:
        """Remove thumbnails no sample uses any more (from earlier runs over other rows)."""
        for path in self.folder.iterdir():
            if path.name not in self.used and not path.name.startswith(TMP_PREFIX):
                path.unlink()


# ---------------------------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------------------------

def _img(thumb: Thumbnailer, struct: Any, alt: str, cls: str, broken: list[str], rid: str) -> str:
    if not isinstance(struct, dict) or not struct.get("bytes"):
        broken.append(f"{rid}: {alt} missing")
        return f'<span class="broken {cls}">{html.escape(alt)}: missing</span>'
    try:
        src, w, h = thumb(struct["bytes"])
    except ImageError as exc:
        broken.append(f"{rid}: {alt} does not decode ({exc.reason})")
        return f'<span class="broken {cls}">{html.escape(alt)}: {html.escape(exc.reason)}</span>'
    return f'<img class="{cls}" src="{html.escape(src)}" width="{w}" height="{h}" alt="{html.escape(alt)}">'


def sample_html(row: dict[str, Any], index: int, thumb: Thumbnailer, broken: list[str]) -> str:
    """One sample: the instruction with its input images in place, an arrow, the output image."""
    rid = row.get("id") or f"row {index}"
    inputs = row.get("input_images") or []
    placed: set[int] = set()
    prompt = []
    for piece in split(row.get("instruction") or ""):
        if isinstance(piece, int) and 1 <= piece <= len(inputs):
            placed.add(piece)
            prompt.append(_img(thumb, inputs[piece - 1], f"input {piece}", "in", broken, rid))
        else:
            prompt.append(html.escape(piece if isinstance(piece, str) else f"<img><|image_{piece}|></img>"))
    extra = [k for k in range(1, len(inputs) + 1) if k not in placed]  # only in malformed rows
    if extra:
        prompt.append('<span class="unplaced">unplaced: '
                      + "".join(_img(thumb, inputs[k - 1], f"input {k}", "in", broken, rid) for k in extra) + "</span>")
    out = _img(thumb, row.get("output_image"), "output", "out", broken, rid)
    size = f"{row.get('width')}×{row.get('height')}"
    return (f'<article class="sample" data-index="{index}" tabindex="0" title="click for details">'
            f'<div class="prompt">{"".join(prompt)}</div><div class="arrow">→</div>'
            f'<figure>{out}<figcaption>{html.escape(size)}</figcaption></figure></article>')


def _detail(row: dict[str, Any]) -> dict[str, Any]:
    try:
        meta = json.loads(row.get("meta") or "{}")
    except ValueError:
        meta = row.get("meta")
    keys = ("id", "task", "source", "source_key", "width", "height", "aesthetic", "clip_score", "phash", "instruction")
    out = {k: row.get(k) for k in keys}
    for k in ("aesthetic", "clip_score"):  # float32 noise rounded off; JSON.parse has no NaN
        if isinstance(out[k], float):
            out[k] = round(out[k], 4) if np.isfinite(out[k]) else None
    return {**out, "inputs": len(row.get("input_images") or []), "meta": meta}


def _script_json(value: Any) -> str:
    """JSON that cannot end the <script> element it sits in."""
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def build_gallery(dataset: str | Path, out: str | Path, cfg: GalleryConfig | None = None,
                  log=lambda msg: None) -> GalleryResult:
    cfg = cfg or GalleryConfig()
    dataset, out = Path(dataset), Path(out)
    files = shard_files(dataset)
    if not files:
        raise X2IError(f"{dataset}: no parquet shards found")
    chosen, counts = choose_rows(files, cfg.per_task, cfg.seed, cfg.tasks)
    if cfg.tasks:
        missing = sorted(set(cfg.tasks) - set(counts))
        if missing:
            raise X2IError(f"no rows of task(s) {missing} in {dataset}; tasks there: {sorted(counts)}")
    _check_out(out)
    thumb = Thumbnailer(out / THUMBS, cfg.thumb_side)
    broken: list[str] = []
    details: list[dict[str, Any]] = []
    sections: list[str] = []
    shown: dict[str, tuple[int, int]] = {}
    for n_task, (task, picks) in enumerate(chosen.items()):
        cards = []
        by_file: dict[int, list[int]] = {}
        for f, r in picks:
            by_file.setdefault(f, []).append(r)
        for f, rows in sorted(by_file.items()):
            for row in read_rows(files[f], rows):
                cards.append(sample_html(row, len(details), thumb, broken))
                details.append(_detail(row))
        shown[task] = (len(cards), counts[task])
        log(f"{task}: {len(cards)} of {counts[task]} rows")
        sections.append(f'<section class="task" data-task="{html.escape(task)}" id="task-{n_task}">'
                        f'<h2>{html.escape(task)} <small>{len(cards)} of {counts[task]:,} rows</small></h2>'
                        f'<div class="grid">{"".join(cards)}</div></section>')
    thumb.prune()
    title = cfg.title or _dataset_name(dataset)
    buttons = [f'<button type="button" data-task="" aria-pressed="true">all <small>{sum(counts[t] for t in shown):,}</small></button>']
    buttons += [f'<button type="button" data-task="{html.escape(t)}" aria-pressed="false">{html.escape(t)} '
                f'<small>{counts[t]:,}</small></button>' for t in shown]
    page = PAGE.format(title=html.escape(title), buttons="".join(buttons), sections="".join(sections),
                       samples=_script_json(details), css=CSS, js=JS,
                       summary=html.escape(f"{sum(counts[t] for t in shown):,} rows in {len(shown)} task(s); "
                                           f"showing {len(details)} (seed {cfg.seed})"))
    index = out / "index.html"
    atomic_write_bytes(index, page.encode("utf-8"))
    return GalleryResult(index, len(details), shown, thumb.written, thumb.reused, broken)


GENERATOR = '<meta name="generator" content="x2i view">'


def _check_out(out: Path) -> None:
    """Write only into an empty folder or an earlier gallery (its thumbnails are pruned, index.html replaced)."""
    if not out.exists() or not any(out.iterdir()):
        return
    index = out / "index.html"
    ours = index.exists() and GENERATOR in index.read_text(errors="replace")[:2000]
    foreign = [p.name for p in out.iterdir() if p.name not in ("index.html", THUMBS)]
    if not ours or foreign:
        raise X2IError(f"{out} is not empty and is not an x2i gallery; choose another --out")


def _dataset_name(dataset: Path) -> str:
    if manifest_path(dataset).exists():
        try:
            return read_manifest(dataset).name or dataset.name
        except ManifestError:
            pass  # a damaged manifest only costs the gallery its title: `x2i validate` is where it is reported
    return dataset.resolve().name


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="generator" content="x2i view">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}: x2i gallery</title><link rel="icon" href="data:,"><style>{css}</style></head>
<body><header><h1>{title}</h1><p class="summary">{summary}</p><nav id="filter" aria-label="task filter">{buttons}</nav></header>
<main>{sections}</main>
<dialog id="detail"><form method="dialog"><button class="close" aria-label="close">×</button></form>
<h3 id="detail-title"></h3><pre id="detail-body"></pre></dialog>
<script type="application/json" id="samples">{samples}</script>
<script>{js}</script></body></html>
"""

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;background:#f4f4f6;color:#1d1d22}
header{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid #ddd;padding:10px 18px}
h1{font-size:20px;margin:0 0 2px}.summary{margin:0 0 8px;color:#666}
nav button{margin:0 6px 6px 0;padding:4px 10px;border:1px solid #bbb;border-radius:14px;background:#fafafa;cursor:pointer;font:inherit}
nav button[aria-pressed=true]{background:#2b59c3;border-color:#2b59c3;color:#fff}
nav small,h2 small{color:inherit;opacity:.7;font-weight:normal}
main{padding:8px 18px 40px}section h2{font-size:16px;margin:18px 0 8px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:12px}
.sample{display:flex;align-items:center;gap:10px;background:#fff;border:1px solid #ddd;border-radius:8px;padding:10px;cursor:pointer}
.sample:hover,.sample:focus{border-color:#2b59c3;outline:none;box-shadow:0 0 0 2px #2b59c333}
.prompt{flex:1;min-width:0;overflow-wrap:anywhere}
.prompt img.in{height:72px;width:auto;vertical-align:middle;margin:2px 3px;border:2px solid #e0a020;border-radius:4px}
.arrow{font-size:22px;color:#888}
figure{margin:0;text-align:center}figure img.out{max-width:200px;max-height:200px;width:auto;height:auto;border-radius:4px;display:block}
figcaption{font-size:11px;color:#888}
.broken{display:inline-block;padding:4px;border:1px dashed #c33;color:#c33;font-size:12px}
.unplaced{display:block;color:#c33;font-size:12px}
dialog{max-width:min(900px,90vw);max-height:85vh;border:1px solid #999;border-radius:8px;padding:16px}
dialog pre{white-space:pre-wrap;font-size:12px;background:#f6f6f8;padding:10px;border-radius:6px}
dialog .close{float:right;font-size:18px;border:none;background:none;cursor:pointer}
"""

JS = """
const samples = JSON.parse(document.getElementById('samples').textContent);
const buttons = [...document.querySelectorAll('#filter button')];
function show(task) {
  for (const s of document.querySelectorAll('section.task')) s.hidden = !!task && s.dataset.task !== task;
  for (const b of buttons) b.setAttribute('aria-pressed', String(b.dataset.task === task));
}
function fromHash() {
  const m = location.hash.match(/^#task=(.*)$/);
  const task = m ? decodeURIComponent(m[1]) : '';
  show(buttons.some(b => b.dataset.task === task) ? task : '');
}
for (const b of buttons) b.addEventListener('click', () => {
  location.hash = b.dataset.task ? 'task=' + encodeURIComponent(b.dataset.task) : '';
  show(b.dataset.task);
});
window.addEventListener('hashchange', fromHash);
fromHash();
const dialog = document.getElementById('detail');
function open(el) {
  const s = samples[Number(el.dataset.index)];
  document.getElementById('detail-title').textContent = s.task + ' \\u2014 ' + s.id;
  document.getElementById('detail-body').textContent = JSON.stringify(s, null, 2);
  dialog.showModal();
}
for (const el of document.querySelectorAll('.sample')) {
  el.addEventListener('click', () => open(el));
  el.addEventListener('keydown', e => { if (e.key === 'Enter') open(el); });
}
"""
