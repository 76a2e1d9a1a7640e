"""The shapes world: deterministic procedural scenes whose every caption, box, mask and depth order is known.

A scene is 1-4 coloured shapes (circle, square, triangle, star) in 6 saturated colours on a low-saturation
textured background, drawn back to front (depth order = list order). Scene `i` of seed `s` is always the same
scene, so the world can be written out in any real source format and checked exactly afterwards.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from x2i.core.boxes import iou

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZES = {"small": 0.09, "medium": 0.14, "large": 0.20}  # half-extent as a fraction of the shorter side
BACKGROUNDS = ("plain", "gradient", "striped", "checkered", "speckled")
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Shape:
    kind: str
    color: str
    size: str
    cx: float  # centre, pixels
    cy: float
    radius: float  # half-extent, pixels
    angle: float = 0.0  # rotation, degrees

    @property
    def phrase(self) -> str:
        return f"{self.size} {self.color} {self.kind}"

    def outline(self, scale: float = 1.0) -> list[tuple[float, float]] | None:
        """Polygon vertices (None for a circle)."""
        cx, cy, r = self.cx * scale, self.cy * scale, self.radius * scale
        if self.kind == "circle":
            return None
        if self.kind == "square":
            corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
            pts = [(x * r * 0.86, y * r * 0.86) for x, y in corners]
        elif self.kind == "triangle":
            pts = [(r * math.cos(math.radians(-90 + 120 * k)), r * math.sin(math.radians(-90 + 120 * k)))
                   for k in range(3)]
        else:  # five-pointed star
            pts = []
            for k in range(10):
                rr = r if k % 2 == 0 else r * 0.45
                a = math.radians(-90 + 36 * k)
                pts.append((rr * math.cos(a), rr * math.sin(a)))
        a = math.radians(self.angle)
        ca, sa = math.cos(a), math.sin(a)
        return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in pts]

    def box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """Tight pixel box (x0, y0, x1, y1) of the whole shape, clipped to the canvas."""
        pts = self.outline()
        if pts is None:
            x0, y0, x1, y1 = self.cx - self.radius, self.cy - self.radius, self.cx + self.radius, self.cy + self.radius
        else:
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
        return max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1)

    def coverage(self, width: int, height: int) -> np.ndarray:
        """Anti-aliased coverage in [0, 1] (float32, height x width)."""
        big = Image.new("L", (width * SUPERSAMPLE, height * SUPERSAMPLE), 0)
        draw = ImageDraw.Draw(big)
        pts = self.outline(SUPERSAMPLE)
        if pts is None:
            s = SUPERSAMPLE
            draw.ellipse([(self.cx - self.radius) * s, (self.cy - self.radius) * s,
                          (self.cx + self.radius) * s, (self.cy + self.radius) * s], fill=255)
        else:
            draw.polygon(pts, fill=255)
        small = big.resize((width, height), Image.Resampling.BOX)
        return np.asarray(small, dtype=np.float32) / 255.0


@dataclass(frozen=True)
class Background:
    kind: str
    base: tuple[int, int, int]
    accent: tuple[int, int, int]
    period: int = 32
    seed: int = 0

    @property
    def phrase(self) -> str:
        return {"plain": "a plain background", "gradient": "a gradient background",
                "striped": "a striped background", "checkered": "a checkered background",
                "speckled": "a speckled background"}[self.kind]

    def render(self, width: int, height: int) -> np.ndarray:
        base, accent = np.array(self.base, np.float32), np.array(self.accent, np.float32)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        if self.kind == "plain":
            t = np.zeros((height, width), np.float32)
        elif self.kind == "gradient":
            t = (xx / max(1, width - 1) + yy / max(1, height - 1)) / 2
        elif self.kind == "striped":
            t = ((xx + yy) // self.period % 2).astype(np.float32)
        elif self.kind == "checkered":
            t = ((xx // self.period + yy // self.period) % 2).astype(np.float32)
        else:
            rng = np.random.default_rng(self.seed)
            noise = Image.fromarray((rng.random((height // 8 + 1, width // 8 + 1)) * 255).astype(np.uint8))
            noise = noise.resize((width, height), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(2))
            t = np.asarray(noise, np.float32) / 255.0
        return base[None, None] * (1 - t[..., None]) + accent[None, None] * t[..., None]


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    background: Background
    shapes: tuple[Shape, ...] = field(default_factory=tuple)  # back to front
    index: int = 0
    seed: int = 0

    def render(self) -> Image.Image:
        canvas = self.background.render(self.width, self.height)
        for shape in self.shapes:
            alpha = shape.coverage(self.width, self.height)[..., None]
            canvas = canvas * (1 - alpha) + np.array(COLORS[shape.color], np.float32) * alpha
        return Image.fromarray(np.clip(canvas.round(), 0, 255).astype(np.uint8), "RGB")

    def masks(self, visible: bool = True) -> list[np.ndarray]:
        """Boolean masks per shape (back to front); `visible` removes what later shapes cover."""
        full = [s.coverage(self.width, self.height) >= 0.5 for s in self.shapes]
        if not visible:
            return full
        out = []
        for i, m in enumerate(full):
            covered = np.zeros_like(m)
            for later in full[i + 1:]:
                covered |= later
            out.append(m & ~covered)
        return out

    def boxes(self) -> list[tuple[float, float, float, float]]:
        return [s.box(self.width, self.height) for s in self.shapes]

    def caption(self) -> tuple[str, list[tuple[int, int, int]]]:
        """The caption (shapes named left to right) and each shape's (start, end, shape index) span in it."""
        order = sorted(range(len(self.shapes)), key=lambda i: (self.shapes[i].cx, self.shapes[i].cy))
        pieces, spans, pos = [], [], 0
        for n, i in enumerate(order):
            phrase = self.shapes[i].phrase
            article = "An" if n == 0 and phrase[0] in "aeiou" else "A" if n == 0 else "an" if phrase[0] in "aeiou" else "a"
            sep = "" if n == 0 else (" and " if n == len(order) - 1 else ", ")
            pieces.append(sep)
            pos += len(sep)
            text = f"{article} {phrase}"
            spans.append((pos, pos + len(text), i))
            pieces.append(text)
            pos += len(text)
        text = "".join(pieces) + f" on {self.background.phrase}."
        return text, spans

    def with_shapes(self, shapes: list[Shape]) -> "Scene":
        return replace(self, shapes=tuple(shapes))


def _pastel(rng: np.random.Generator) -> tuple[int, int, int]:
    """A low-saturation colour, far from the six shape colours."""
    grey = rng.uniform(150, 235)
    tint = rng.uniform(-18, 18, size=3)
    return tuple(int(np.clip(grey + t, 0, 255)) for t in tint)


def random_shape(rng: np.random.Generator, width: int, height: int, kind: str | None = None,
                 color: str | None = None, size: str | None = None) -> Shape:
    kind = kind or SHAPES[rng.integers(len(SHAPES))]
    color = color or list(COLORS)[rng.integers(len(COLORS))]
    size = size or list(SIZES)[rng.integers(len(SIZES))]
    radius = SIZES[size] * min(width, height)
    cx = rng.uniform(radius, width - radius)
    cy = rng.uniform(radius, height - radius)
    angle = 0.0 if kind == "circle" else float(rng.uniform(-20, 20))
    return Shape(kind, color, size, float(cx), float(cy), float(radius), angle)


def make_scene(index: int, seed: int = 0, width: int = 512, height: int = 512,
               max_shapes: int = 4, max_overlap: float = 0.15) -> Scene:
    """Scene `index` of world `seed`: always the same scene for the same arguments."""
    rng = np.random.default_rng([seed, index, width, height])
    bg_kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    background = Background(bg_kind, _pastel(rng), _pastel(rng), int(rng.integers(16, 48)),
                            int(rng.integers(2**31)))
    n = int(rng.integers(1, max_shapes + 1))
    shapes: list[Shape] = []
    for _ in range(n):
        for _attempt in range(50):
            cand = random_shape(rng, width, height)
            box = cand.box(width, height)
            if all(iou(box, s.box(width, height)) <= max_overlap for s in shapes):
                shapes.append(cand)
                break
    return Scene(width, height, background, tuple(shapes), index, seed)
