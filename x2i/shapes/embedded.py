"""The embedded sample source: the shapes world and the package photos, written once in a real source format.

`embedded_source(format, options)` writes the sample into the x2i cache (`$X2I_CACHE`, default
`~/.cache/x2i`) the first time it is asked for, atomically (a temp folder renamed into place), and returns
the folder a source of that format reads. Each format has a writer in `WRITERS`.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from x2i.core.config import from_dict
from x2i.shapes.clips import write_clips
from x2i.shapes.img2dataset_writer import DownloadRecord, write_shard
from x2i.shapes.photos import PHOTOS
from x2i.shapes.world import make_scene
from x2i.shapes.writers import write_laion, write_magicbrush

EMBEDDED_VERSION = 1


@dataclass
class EmbeddedOptions:
    scenes: int = 200  # shapes-world scenes
    per_shard: int = 50  # rows per img2dataset shard (one build partition each)
    size: int = 512  # scene side in pixels
    seed: int = 0
    photos: bool = True  # add the photos shipped inside scikit-image / matplotlib


def cache_root() -> Path:
    return Path(os.environ.get("X2I_CACHE") or Path.home() / ".cache" / "x2i")


def _jpeg(im, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


GRIT_ADDITIONAL = [
    ("id", pa.int64()), ("noun_chunks", pa.list_(pa.list_(pa.float64()))),
    ("ref_exps", pa.list_(pa.list_(pa.float64()))), ("clip_similarity_vitb32", pa.float64()),
    ("clip_similarity_vitl14", pa.float64()), ("licence", pa.string()),
]
GRIT_SCHEMA = pa.schema([
    ("key", pa.string()), ("clip_similarity_vitb32", pa.float64()), ("clip_similarity_vitl14", pa.float64()),
    ("id", pa.int64()), ("url", pa.string()), ("caption", pa.string()), ("width", pa.int64()),
    ("height", pa.int64()), ("noun_chunks", pa.list_(pa.list_(pa.float64()))),
    ("ref_exps", pa.list_(pa.list_(pa.float64()))),
])


def grit_rows(opts: EmbeddedOptions) -> list[tuple[dict[str, Any], bytes]]:
    """(GRIT row, JPEG bytes) for the photos and the scenes, in a fixed order."""
    rows = []
    if opts.photos:
        for i, photo in enumerate(PHOTOS):
            im = photo.load()
            chunks = photo.chunks()
            rows.append(({"id": 9_000_000 + i, "url": f"https://x2i.invalid/embedded/photos/{photo.name}.jpg",
                          "caption": photo.caption, "width": im.width, "height": im.height,
                          "noun_chunks": chunks, "ref_exps": chunks[:1], "clip_similarity_vitb32": 0.35,
                          "clip_similarity_vitl14": 0.3, "licence": photo.licence}, _jpeg(im, 95)))
    for index in range(opts.scenes):
        scene = make_scene(index, opts.seed, opts.size, opts.size)
        caption, spans = scene.caption()
        rng = np.random.default_rng([opts.seed, index, 7])
        chunks = []
        for start, end, i in spans:
            x0, y0, x1, y1 = scene.shapes[i].box(scene.width, scene.height)
            chunks.append([float(start), float(end), x0 / scene.width, y0 / scene.height,
                           x1 / scene.width, y1 / scene.height, round(float(rng.uniform(0.6, 0.95)), 4)])
        bg = scene.background.phrase
        start = caption.index(bg)
        chunks.append([float(start), float(start + len(bg)), 0.0, 0.0, 1.0, 1.0, 0.5])  # GLIP boxes backgrounds too
        rows.append(({"id": 1_000_000 * (opts.seed + 1) + index,
                      "url": f"https://shapes.x2i.invalid/v{EMBEDDED_VERSION}/s{opts.seed}/{index:06d}.jpg",
                      "caption": caption, "width": scene.width, "height": scene.height,
                      "noun_chunks": chunks, "ref_exps": chunks[:1], "clip_similarity_vitb32": 0.33,
                      "clip_similarity_vitl14": 0.29, "licence": "CC0 (x2i shapes world)"},
                     _jpeg(scene.render())))
    return rows


def write_grit(out: Path, opts: EmbeddedOptions) -> Path:
    """GRIT as released (metadata parquet) + its img2dataset download with the GRIT columns saved alongside."""
    rows = grit_rows(opts)
    images = out / "images"
    meta_rows = []
    for shard, first in enumerate(range(0, len(rows), opts.per_shard)):
        records = []
        for k, (row, jpeg) in enumerate(rows[first:first + opts.per_shard]):
            extra = {name: row[name] for name, _ in GRIT_ADDITIONAL}
            records.append(DownloadRecord(row["url"], row["caption"], jpeg, row["width"], row["height"],
                                          additional=extra))
            meta_rows.append({**{c: row.get(c) for c in GRIT_SCHEMA.names}, "key": f"{shard:05d}{k:04d}"})
        write_shard(images, shard, records, GRIT_ADDITIONAL)
    (out / "metadata").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(meta_rows, schema=GRIT_SCHEMA), out / "metadata" / "grit-00000.parquet")
    return images


# format -> writer(out_dir, options) returning the folder the source of that format should read
WRITERS: dict[str, Callable[[Path, EmbeddedOptions], Path]] = {"grit": write_grit, "laion": write_laion,
                                                                "magicbrush": write_magicbrush,
                                                                "video": write_clips}  # scenes = clips


def embedded_source(fmt: str, options: dict[str, Any] | None = None) -> Path:
    """The folder holding the embedded sample in `fmt`, written on first use."""
    if fmt not in WRITERS:
        raise ValueError(f"no embedded sample for format {fmt!r}; have {sorted(WRITERS)}")
    opts = from_dict(EmbeddedOptions, options or {}, "source.options")
    fingerprint = hashlib.sha256(json.dumps([fmt, EMBEDDED_VERSION, vars(opts)], sort_keys=True).encode()).hexdigest()[:12]
    root = cache_root() / "embedded" / f"{fmt}-{fingerprint}"
    done = root / ".complete"
    if done.exists():
        return Path(done.read_text().strip())
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{fmt}-", dir=root.parent))
    try:
        target = WRITERS[fmt](tmp, opts)
        rel = target.relative_to(tmp)
        (tmp / ".complete").write_text(str(root / rel))
        try:
            os.rename(tmp, root)
        except OSError:  # another process finished first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Path(done.read_text().strip())
