"""Shapes-world clips: short videos whose every frame's objects, boxes, colours and cuts are known.

A clip is one or two shots of the same 1-3 objects (distinct colour+shape pairs, sometimes two of one colour so
identity cannot be read off colour alone). Within a shot each object moves along its own lane, turns and scales
(x0.6-1.7) while the background cross-fades to another pattern and pans, a light sweeps across the objects
(shading whose direction turns) and the whole frame's colour balance drifts. Objects carry a stripe texture
that turns with them, so a frame's object is never a flat patch: two frames of one object differ the way two
video frames of a real subject do (pose, scale, light), which is what in-context pairs need. A second shot
(after a hard cut) shows the same objects elsewhere on a new background: pairs must never span it.

`write_clips` writes the clips as real video files (mp4 via OpenCV's 'mp4v' writer; MJPG .avi, then a frame
folder, only when that codec is missing) with a WebVid-style CSV (videoid, contentUrl, duration, page_dir,
name) and a per-frame GRIT-style box sidecar (`boxes.jsonl`: videoid, frame, caption, noun_chunks).
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from x2i.shapes.world import BACKGROUNDS, COLORS, SHAPES, Background, Shape, _pastel

if TYPE_CHECKING:
    from x2i.shapes.embedded import EmbeddedOptions

FRAMES = 24
FPS = 8
CUT_SHARE = 0.35  # clips with a hard cut
AA = 4  # fixed-point bits for OpenCV's anti-aliased drawing


@dataclass(frozen=True)
class ClipObject:
    kind: str
    color: str
    start: tuple[float, float, float, float]  # cx, cy, radius, angle at the shot's first frame
    end: tuple[float, float, float, float]  # ... at its last frame

    @property
    def phrase(self) -> str:
        return f"{self.color} {self.kind}"


@dataclass(frozen=True)
class Shot:
    first: int  # first frame (inclusive)
    last: int  # last frame (inclusive)
    backgrounds: tuple[Background, Background]  # cross-faded from the first to the second
    objects: tuple[ClipObject, ...]
    gains: tuple[tuple[float, float, float], tuple[float, float, float]]  # colour balance at first/last frame
    light: tuple[float, float]  # light direction (degrees) at first/last frame
    pan: tuple[int, int]  # background offset (px) reached at the last frame


@dataclass(frozen=True)
class Clip:
    index: int
    seed: int
    width: int
    height: int
    shots: tuple[Shot, ...]
    frames: int = FRAMES
    fps: int = FPS

    @property
    def cuts(self) -> list[int]:
        """Frames that start a new shot (a cut lies between frame f-1 and f)."""
        return [s.first for s in self.shots[1:]]

    def shot_of(self, frame: int) -> int:
        return max(i for i, s in enumerate(self.shots) if s.first <= frame)

    def _u(self, frame: int) -> tuple[Shot, float]:
        shot = self.shots[self.shot_of(frame)]
        return shot, (frame - shot.first) / max(1, shot.last - shot.first)

    def shapes_at(self, frame: int) -> list[Shape]:
        """The objects of `frame` as world shapes (same order as the shot's objects, back to front)."""
        shot, u = self._u(frame)
        out = []
        for obj in shot.objects:
            cx, cy, r, a = (s + (e - s) * u for s, e in zip(obj.start, obj.end))
            out.append(Shape(obj.kind, obj.color, "medium", cx, cy, r, a if obj.kind != "circle" else 0.0))
        return out

    def boxes(self, frame: int) -> list[tuple[float, float, float, float]]:
        return [s.box(self.width, self.height) for s in self.shapes_at(frame)]

    def caption(self) -> str:
        """The clip's caption (WebVid's `name`): what moves, over what."""
        objs = self.shots[0].objects
        names = [f"a {o.phrase}" for o in objs]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        verb = "moves" if len(objs) == 1 else "move"
        return f"{listed[0].upper()}{listed[1:]} {verb} and turn{'s' if len(objs) == 1 else ''} over " \
               f"{self.shots[0].backgrounds[0].phrase}."

    def frame_caption(self, frame: int) -> tuple[str, list[tuple[int, int, int]]]:
        """One frame's caption, objects named left to right, and each object's (start, end, index) span."""
        shot, u = self._u(frame)
        shapes = self.shapes_at(frame)
        order = sorted(range(len(shapes)), key=lambda i: shapes[i].cx)
        text, spans = "", []
        for n, i in enumerate(order):
            sep = "" if n == 0 else (" and " if n == len(order) - 1 else ", ")
            phrase = f"{'A' if n == 0 else 'a'} {shot.objects[i].phrase}"
            text += sep
            spans.append((len(text), len(text) + len(phrase), i))
            text += phrase
        bg = shot.backgrounds[0 if u < 0.5 else 1]
        return f"{text} on {bg.phrase}.", spans

    def render(self, frame: int, cache: dict | None = None) -> np.ndarray:
        """RGB uint8 (height, width, 3). `cache` (any dict) keeps each shot's backgrounds between frames."""
        import cv2

        shot, u = self._u(frame)
        w, h = self.width, self.height
        cache = {} if cache is None else cache
        key = self.shot_of(frame)
        if key not in cache:  # the two pattern layers of a shot, rendered once, panned per frame
            cache[key] = [b.render(w + abs(shot.pan[0]), h + abs(shot.pan[1])) for b in shot.backgrounds]
        big = cache[key]
        px, py = int(round(shot.pan[0] * u)), int(round(shot.pan[1] * u))
        ox = px if shot.pan[0] >= 0 else abs(shot.pan[0]) + px
        oy = py if shot.pan[1] >= 0 else abs(shot.pan[1]) + py
        canvas = big[0][oy:oy + h, ox:ox + w] * (1 - u) + big[1][oy:oy + h, ox:ox + w] * u
        light = math.radians(shot.light[0] + (shot.light[1] - shot.light[0]) * u)
        for shape in self.shapes_at(frame):
            x0, y0, x1, y1 = (int(v) for v in shape.box(w, h))
            x0, y0, x1, y1 = max(0, x0 - 2), max(0, y0 - 2), min(w, x1 + 3), min(h, y1 + 3)
            mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
            pts = shape.outline()
            if pts is None:
                centre = (int((shape.cx - x0) * 2**AA), int((shape.cy - y0) * 2**AA))
                cv2.circle(mask, centre, int(shape.radius * 2**AA), 255, -1, cv2.LINE_AA, AA)
            else:
                local = (np.array(pts) - [x0, y0]) * 2**AA
                cv2.fillPoly(mask, [np.round(local).astype(np.int32)], 255, cv2.LINE_AA, AA)
            alpha = (mask.astype(np.float32) / 255.0)[..., None]
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            # Stripes turn with the object (pose), shading follows the light (illumination).
            a = math.radians(shape.angle + 30)
            r = max(shape.radius, 1.0)
            along = ((xx - shape.cx) * math.cos(a) + (yy - shape.cy) * math.sin(a)) / r
            stripes = 0.78 + 0.22 * (np.sin(along * math.pi * 2.2) > 0)
            shade = np.clip(1.0 + 0.22 * ((xx - shape.cx) * math.cos(light) + (yy - shape.cy) * math.sin(light)) / r,
                            0.7, 1.3)
            colour = np.array(COLORS[shape.color], np.float32)[None, None] * (stripes * shade)[..., None]
            canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1 - alpha) + colour * alpha
        gain = np.array(shot.gains[0], np.float32) * (1 - u) + np.array(shot.gains[1], np.float32) * u
        return np.clip(canvas * gain[None, None], 0, 255).round().astype(np.uint8)


def _gain(rng: np.random.Generator) -> tuple[float, float, float]:
    base = rng.uniform(0.82, 1.12)
    return tuple(float(base * rng.uniform(0.93, 1.07)) for _ in range(3))


def _objects(rng: np.random.Generator, picks: list[tuple[str, str]], w: int, h: int) -> tuple[ClipObject, ...]:
    """One object per horizontal lane, moving across it while turning and scaling."""
    lanes = len(picks)
    lane_h = h / lanes
    out = []
    for k, (kind, color) in enumerate(picks):
        rmax = min(lane_h * 0.46, h * 0.2)
        r0, r1 = rmax * rng.uniform(0.45, 1.0), rmax * rng.uniform(0.45, 1.0)
        if abs(math.log(r1 / r0)) < 0.25:  # make scale change visible in most clips
            r1 = r0 * (0.65 if r0 > rmax * 0.7 else 1.5)
            r1 = min(r1, rmax)
        cy = lane_h * (k + 0.5)
        left = rng.random() < 0.5
        x0 = rng.uniform(r0 + 2, w * 0.35)
        x1 = rng.uniform(w * 0.65, w - r1 - 2)
        if not left:
            x0, x1 = w - x0, w - x1
            x0, x1 = min(max(x0, r0 + 2), w - r0 - 2), min(max(x1, r1 + 2), w - r1 - 2)
        dy = lane_h * 0.5 - max(r0, r1) - 2
        y0, y1 = cy + rng.uniform(-1, 1) * max(dy, 0), cy + rng.uniform(-1, 1) * max(dy, 0)
        a0 = float(rng.uniform(-30, 30))
        a1 = a0 + float(rng.choice([-1, 1]) * rng.uniform(35, 80))
        out.append(ClipObject(kind, color, (x0, y0, r0, a0), (x1, y1, r1, a1)))
    return tuple(out)


def _background(rng: np.random.Generator, not_kind: str | None = None) -> Background:
    kinds = [k for k in BACKGROUNDS if k != not_kind]
    return Background(kinds[rng.integers(len(kinds))], _pastel(rng), _pastel(rng), int(rng.integers(16, 48)),
                      int(rng.integers(2**31)))


def make_clip(index: int, seed: int = 0, width: int = 448, height: int = 320) -> Clip:
    """Clip `index` of world `seed`: always the same clip for the same arguments."""
    rng = np.random.default_rng([seed, index, width, height, 31])
    n = int(rng.choice([1, 2, 2, 3, 3]))
    colours, kinds = list(COLORS), list(SHAPES)
    picks: list[tuple[str, str]] = []
    while len(picks) < n:
        kind = kinds[rng.integers(len(kinds))]
        # Now and then reuse a colour, so that telling objects apart needs more than colour.
        color = picks[0][1] if picks and rng.random() < 0.25 else colours[rng.integers(len(colours))]
        if all((kind, color) != p and color_kind_ok(p, kind, color) for p in picks):
            picks.append((kind, color))
    cut = int(rng.integers(FRAMES // 3, 2 * FRAMES // 3 + 1)) if rng.random() < CUT_SHARE else None
    spans = [(0, FRAMES - 1)] if cut is None else [(0, cut - 1), (cut, FRAMES - 1)]
    shots = []
    previous_bg = None
    for first, last in spans:
        order = [picks[i] for i in rng.permutation(len(picks))]
        bg0 = _background(rng, previous_bg)
        bg1 = _background(rng, bg0.kind)
        previous_bg = bg1.kind
        pan = (int(rng.integers(-60, 61)), int(rng.integers(-30, 31)))
        light0 = float(rng.uniform(0, 360))
        shots.append(Shot(first, last, (bg0, bg1), _objects(rng, order, width, height), (_gain(rng), _gain(rng)),
                          (light0, light0 + float(rng.uniform(90, 200))), pan))
    # Every shot names its objects in one canonical order (the first shot's), so object k is one identity.
    canon = [o.phrase for o in shots[0].objects]
    shots = [Shot(s.first, s.last, s.backgrounds, tuple(sorted(s.objects, key=lambda o: canon.index(o.phrase))),
                  s.gains, s.light, s.pan) for s in shots]
    return Clip(index, seed, width, height, tuple(shots))


def color_kind_ok(pick: tuple[str, str], kind: str, color: str) -> bool:
    """Two objects of one clip never share both colour and shape (they would be indistinguishable)."""
    return pick != (kind, color)


def frame_size(size: int) -> tuple[int, int]:
    """Video frame size for the embedded `size` option (512 -> 448 x 320: a landscape video frame)."""
    w = max(64, int(round(size * 0.875 / 16)) * 16)
    return w, max(48, int(round(w * 5 / 7 / 16)) * 16)


def _writer(path_stem: Path, fps: int, size: tuple[int, int]):
    """(writer, path): mp4/mp4v if this OpenCV can write it, else MJPG .avi; (None, folder) for frame folders."""
    import cv2

    for fourcc, ext in (("mp4v", ".mp4"), ("MJPG", ".avi")):
        path = path_stem.with_suffix(ext)
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
        if writer.isOpened():
            return writer, path
        writer.release()
        path.unlink(missing_ok=True)
    return None, path_stem


def write_clip(clip: Clip, path_stem: Path) -> Path:
    """Write one clip as a video file (or a frame folder when no codec is available); returns its path."""
    import cv2

    path_stem.parent.mkdir(parents=True, exist_ok=True)
    writer, path = _writer(path_stem, clip.fps, (clip.width, clip.height))
    if writer is None:
        path.mkdir(parents=True, exist_ok=True)
    cache: dict = {}
    for f in range(clip.frames):
        bgr = cv2.cvtColor(clip.render(f, cache), cv2.COLOR_RGB2BGR)
        if writer is None:
            cv2.imwrite(str(path / f"{f:05d}.png"), bgr)
        else:
            writer.write(bgr)
    if writer is not None:
        writer.release()
    return path


WEBVID_COLUMNS = ("videoid", "contentUrl", "duration", "page_dir", "name")


def write_clips(out: Path, opts: "EmbeddedOptions") -> Path:
    """`opts.scenes` clips as videos under out/videos/<page_dir>/<videoid>.mp4 + results.csv + boxes.jsonl."""
    width, height = frame_size(opts.size)
    rows, boxes = [], []
    for index in range(opts.scenes):
        clip = make_clip(index, opts.seed, width, height)
        videoid = 1_000_000 * (opts.seed + 1) + index
        page_dir = f"shapes_{index // opts.per_shard:03d}"
        write_clip(clip, out / "videos" / page_dir / str(videoid))
        seconds = clip.frames // clip.fps
        rows.append({"videoid": videoid, "contentUrl": f"https://shapes.x2i.invalid/clips/{videoid}.mp4",
                     "duration": f"PT00H00M{seconds:02d}S", "page_dir": page_dir, "name": clip.caption()})
        for f in range(clip.frames):
            caption, spans = clip.frame_caption(f)
            chunks = []
            for start, end, i in spans:
                x0, y0, x1, y1 = clip.boxes(f)[i]
                chunks.append([start, end, round(x0 / width, 6), round(y0 / height, 6), round(x1 / width, 6),
                               round(y1 / height, 6), 0.9])
            boxes.append({"videoid": videoid, "frame": f, "caption": caption, "noun_chunks": chunks})
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=WEBVID_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    with open(out / "boxes.jsonl", "w") as fh:
        fh.writelines(json.dumps(b) + "\n" for b in boxes)
    return out
