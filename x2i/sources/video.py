"""Video clips (and image groups) as sources of in-context pairs: one source sample per clip, holding its frames.

`video`: a folder of clips — video files (.mp4, .webm, .avi, .mkv, .mov, read with OpenCV's VideoCapture) or
frame folders (a folder of numbered images) — with captions from a sidecar:
- WebVid's CSV (`videoid, name`, usually also `contentUrl, duration, page_dir`): a clip is the file whose stem
  is its `videoid` (anywhere under the folder, e.g. `<page_dir>/<videoid>.mp4`);
- or JSONL lines `{"video": path relative to the JSONL, "caption": ...}`.
`source.path` is the folder (the sidecar is `options.captions`, else the one .csv/.jsonl at its top), or the
sidecar itself (the clips under `source.images`, else next to it). An optional per-frame box sidecar
(`options.boxes`, default `boxes.jsonl` at the top) holds GRIT-style annotations per frame:
`{"videoid" | "video", "frame", "caption", "noun_chunks": [[start, end, x0, y0, x1, y1, conf], ...]}`.
With no path, the embedded shapes-world clips (x2i/shapes/clips.py) are written in this layout and read.

`image_groups`: a folder per subject (`<root>/<subject>/*.jpg`, caption in `<subject>/caption.txt`, else the
folder name), optional `boxes.jsonl` with `{"group", "image", "caption", "noun_chunks"}` lines: one source
sample per group, its images as the "frames" (no time order, so no cut detection and no box continuity).

Missing videos, unreadable files, clips without a caption and clips too short are counted rejects; a sidecar
of the wrong shape (no `videoid`/`name` column, JSONL lines that are not objects) raises SourceError.
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from x2i.core.config import from_dict
from x2i.core.errors import SourceError
from x2i.core.imageio import ImageError, decode
from x2i.core.sample import SOURCE_TASK, Sample
from x2i.engine.registry import register_source
from x2i.sources import Source
from x2i.sources.grit import parse_chunk
from x2i.engine.steps import Context

VIDEO_EXTS = {".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v"}
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
WEBVID_REQUIRED = ("videoid", "name")


@dataclass
class VideoOptions:
    captions: str | None = None  # WebVid CSV or JSONL sidecar
    boxes: str | None = None  # per-frame GRIT-style boxes (JSONL)
    frame_step: int = 1  # keep every n-th frame
    max_frames: int = 96  # frames kept per clip (after frame_step)
    clips_per_partition: int = 32
    embedded: dict[str, Any] = field(default_factory=dict)  # options of the embedded clips (scenes = clips)


def _is_frame_folder(d: Path) -> bool:
    files = [p for p in d.iterdir() if p.is_file()]
    return sum(p.suffix.lower() in IMAGE_EXTS for p in files) >= 2 and not any(p.is_dir() for p in d.iterdir())


def find_clips(root: Path) -> dict[str, Path]:
    """Relative path -> clip (video file or frame folder) under root, sorted."""
    clips = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in VIDEO_EXTS:
            clips[str(p.relative_to(root))] = p
        elif p.is_dir() and _is_frame_folder(p):
            clips[str(p.relative_to(root))] = p
    return clips


def read_frames(path: Path, step: int, max_frames: int) -> tuple[list[np.ndarray], list[int], float]:
    """RGB frames (every `step`-th, at most `max_frames`), their frame numbers and the fps (0 if unknown)."""
    import cv2

    frames, numbers = [], []
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        for n, f in enumerate(files):
            if n % step == 0 and len(frames) < max_frames:
                frames.append(np.asarray(decode(f.read_bytes())))
                numbers.append(n)
        return frames, numbers, 0.0
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return [], [], 0.0
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        n = 0
        while len(frames) < max_frames:
            ok, bgr = cap.read()
            if not ok or bgr is None:
                break
            if n % step == 0:
                frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                numbers.append(n)
            n += 1
    finally:
        cap.release()
    return frames, numbers, fps


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SourceError(path, f"line {n}: not JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise SourceError(path, f"line {n}: a JSON {type(obj).__name__}, not an object")
            yield n, obj


@lru_cache(maxsize=8)
def read_captions(path: str) -> tuple[str, dict[str, dict[str, Any]]]:
    """('stem' | 'path', key -> {caption, url, ...}) from a WebVid CSV or a {"video", "caption"} JSONL."""
    p = Path(path)
    if p.suffix.lower() == ".csv":
        with open(p, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in WEBVID_REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise SourceError(p, f"missing column(s) {missing} (WebVid CSV columns: videoid, contentUrl, "
                                     f"duration, page_dir, name); found {reader.fieldnames}")
            return "stem", {str(r["videoid"]).strip(): {"caption": r["name"], "url": r.get("contentUrl"),
                                                         "page_dir": r.get("page_dir"), "duration": r.get("duration")}
                            for r in reader}
    out = {}
    for n, obj in _jsonl(p):
        if not isinstance(obj.get("video"), str):
            raise SourceError(p, f"line {n}: no 'video' path (lines are {{\"video\": path, \"caption\": text}})")
        out[str(Path(obj["video"]))] = {"caption": obj.get("caption"), "url": obj.get("url"), "line": n}
    return "path", out


@lru_cache(maxsize=8)
def read_boxes(path: str, key_field: str) -> dict[str, dict[int, dict[str, Any]]]:
    """clip key -> frame -> {caption, noun_chunks} from a per-frame box sidecar."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for n, obj in _jsonl(Path(path)):
        key = obj.get(key_field, obj.get("video"))
        if key is None or not isinstance(obj.get("frame", obj.get("image")), (int, str)):
            raise SourceError(path, f"line {n}: needs '{key_field}' and 'frame' (or 'image')")
        out.setdefault(str(key), {})[obj.get("frame", obj.get("image"))] = obj
    return out


def frame_entities(record: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """GRIT-style chunks of one frame as entities (phrase, span, box, confidence); None without a record."""
    if record is None:
        return None
    caption = record.get("caption") or ""
    ents = []
    for i, chunk in enumerate(record.get("noun_chunks") or []):
        ent, _ = parse_chunk(chunk, caption)
        if ent is not None:
            ents.append({**ent, "chunk_index": i})
    return ents


@register_source("video")
class VideoSource(Source):
    format = "video"
    temporal = True

    def __init__(self, config):
        super().__init__(config)
        self.opts = from_dict(VideoOptions, dict(config.options), "source.options")
        if self.opts.frame_step < 1 or self.opts.max_frames < 2 or self.opts.clips_per_partition < 1:
            raise SourceError("source.options", "frame_step >= 1, max_frames >= 2, clips_per_partition >= 1")
        self.embedded = config.path is None and config.images is None
        if self.embedded:
            from x2i.shapes.embedded import embedded_source

            if self.format != "video":
                raise SourceError("source.path", f"format {self.format} has no embedded sample: give a folder")
            self.root = embedded_source("video", self.opts.embedded)
            self.captions, self.boxes = self._default_sidecars(self.root)
        else:
            path = Path(config.path or config.images)
            if not path.exists():
                raise SourceError(path, "no such file or directory")
            if path.is_file():
                self.root = Path(config.images) if config.images else path.parent
                self.captions = path
                self.boxes = Path(self.opts.boxes) if self.opts.boxes else None
            else:
                self.root = path
                found_caps, found_boxes = self._default_sidecars(path)
                self.captions = Path(self.opts.captions) if self.opts.captions else found_caps
                self.boxes = Path(self.opts.boxes) if self.opts.boxes else found_boxes
        for p in (self.captions, self.boxes):
            if p is not None and not p.is_file():
                raise SourceError(p, "no such file")

    def _default_sidecars(self, root: Path) -> tuple[Path | None, Path | None]:
        boxes = root / "boxes.jsonl"
        found = sorted(p for p in root.iterdir() if p.suffix.lower() in (".csv", ".jsonl") and p != boxes)
        if len(found) > 1:
            raise SourceError(root, f"several caption sidecars {[p.name for p in found]}: choose one with "
                                    "source.options.captions")
        return (found[0] if found else None), (boxes if boxes.is_file() else None)

    def entries(self) -> list[tuple[str, str | None]]:
        """(clip key, clip path relative to root or None) for every captioned or found clip, in a stable order."""
        if not self.root.is_dir():
            raise SourceError(self.root, "not a folder of clips")
        clips = find_clips(self.root)
        if self.captions is None:
            if not clips:
                raise SourceError(self.root, "no video files or frame folders found")
            return [(rel, rel) for rel in clips]
        mode, caps = read_captions(str(self.captions))
        if mode == "stem":
            by_stem = {Path(rel).stem if not clips[rel].is_dir() else Path(rel).name: rel for rel in clips}
            keys = list(caps) + sorted(set(by_stem) - set(caps))
            return [(k, by_stem.get(k)) for k in keys]
        base = self.captions.parent
        rels = {k: os.path.relpath(base / k, self.root) for k in caps}
        known = set(rels.values())
        return [(k, rels[k]) for k in caps] + [(r, r) for r in clips if r not in known]

    def partitions(self) -> list[tuple[tuple[str, str | None], ...]]:
        entries = self.entries()
        n = self.opts.clips_per_partition
        return [tuple(entries[i:i + n]) for i in range(0, len(entries), n)]

    def count(self, partition) -> int:
        return len(partition)

    def label(self, partition) -> str:
        return f"clips/{partition[0][0]}..{partition[-1][0]}"

    def describe(self) -> dict[str, Any]:
        return {"format": self.format, "path": self.config.path, "images": self.config.images,
                "embedded": self.embedded, "root": str(self.root),
                "captions": str(self.captions) if self.captions else None,
                "boxes": str(self.boxes) if self.boxes else None}

    def read(self, partition, ctx: Context, limit: int | None = None) -> Iterator[Sample]:
        caps = read_captions(str(self.captions))[1] if self.captions else {}
        boxes = read_boxes(str(self.boxes), "videoid" if self.format == "video" else "group") if self.boxes else {}
        for n, (key, rel) in enumerate(partition):
            if limit is not None and n >= limit:
                return
            info = caps.get(key, {})

            def reject(reason: str, detail: str) -> None:
                ctx.reject(None, reason, f"read_{self.format}", detail, source=self.format, source_key=key,
                           task=SOURCE_TASK, meta={k: v for k, v in (("url", info.get("url")), ("file", rel)) if v})

            if rel is None or not (self.root / rel).exists():
                reject(f"{self.format}_missing", f"no clip for {key!r} under {self.root}")
                continue
            caption = info.get("caption") if self.captions else self._caption(self.root / rel)
            if not isinstance(caption, str) or not caption.strip():
                reject("caption_missing", f"no caption for {key!r}")
                continue
            try:
                frames, numbers, fps = self._frames(self.root / rel)
            except ImageError as exc:
                reject(exc.reason, f"{rel}: {exc}")
                continue
            if not frames:
                reject(f"{self.format}_unreadable", f"{rel}: no frame could be decoded")
                continue
            if len(frames) < 2:
                reject("clip_too_short", f"{rel}: {len(frames)} frame(s)")
                continue
            per_frame = boxes.get(key) or boxes.get(rel) or {}
            records = [per_frame.get(n, per_frame.get(str(n))) for n in self._frame_keys(numbers)]
            meta = {"caption": caption, "url": info.get("url"), "file": rel, "clip": key, "fps": fps,
                    "frame_numbers": numbers, "temporal": self.temporal,
                    "frame_captions": [r.get("caption") if r else None for r in records],
                    "frame_entities": [frame_entities(r) for r in records] if per_frame else None,
                    "frames": frames}
            yield Sample(SOURCE_TASK, caption, None, [], self.format, key, meta)

    def _caption(self, clip: Path) -> str | None:
        return None

    def _frame_keys(self, numbers: list[int]) -> list[Any]:
        return numbers

    def _frames(self, clip: Path) -> tuple[list[np.ndarray], list[int], float]:
        return read_frames(clip, self.opts.frame_step, self.opts.max_frames)


@register_source("image_groups")
class ImageGroupsSource(VideoSource):
    """A folder per subject: its images are "frames" of one subject without time order."""

    format = "image_groups"
    temporal = False

    def _default_sidecars(self, root: Path) -> tuple[Path | None, Path | None]:
        boxes = root / "boxes.jsonl"
        return None, (boxes if boxes.is_file() else None)

    def entries(self) -> list[tuple[str, str | None]]:
        if not self.root.is_dir():
            raise SourceError(self.root, "not a folder of subject folders")
        groups = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        if not groups:
            raise SourceError(self.root, "no subject folders found (<root>/<subject>/*.jpg)")
        return [(g, g) for g in groups]

    def _caption(self, group: Path) -> str | None:
        f = group / "caption.txt"
        return f.read_text(encoding="utf-8").strip() if f.is_file() else group.name.replace("_", " ")

    def _frames(self, group: Path) -> tuple[list[np.ndarray], list[int], float]:
        files = sorted(p for p in group.iterdir() if p.suffix.lower() in IMAGE_EXTS)[: self.opts.max_frames]
        self._names = [p.name for p in files]  # box records of a group are keyed by image file name
        return [np.asarray(decode(p.read_bytes())) for p in files], list(range(len(files))), 0.0

    def _frame_keys(self, numbers: list[int]) -> list[Any]:
        return self._names
