"""In-context generation from video (OmniGen2's recipe): the subject cut out of one frame, another frame as output.

Per clip (a source sample holding its frames, x2i/sources/video.py):
1. shots: a cut lies between frames t-1 and t when the HSV-histogram distance of the two frames (earth
   mover's distance of per-channel histograms, see `frame_profile`) exceeds `cut_threshold`; a pair never spans a cut. Image groups have no time order: one "shot", no cuts.
2. subjects per frame: the sidecar's GRIT-style phrases + boxes when it has them, else an open-vocabulary
   detector (`detector: grounding_dino`, weights resolved like every annotator).
3. the same instance across frames: a colour descriptor (hue-saturation histogram inside the box's ellipse,
   weight-free) must be similar (`min_identity`), phrases must agree when both frames name them, and in clips
   boxes must move continuously (centre jump <= `max_jump` box diagonals, area ratio within 1/2..2 per step).
4. a pair (a, b) of one track is kept when the frames are >= `min_gap` apart, identity holds in a vs b, and the
   appearance really changes: box scale (|log area ratio| >= min_scale_change), position (centre shift /
   frame diagonal >= min_shift) or background (histogram distance outside the boxes >= min_background_change).
   All scores go into meta.
Inputs: each subject of frame a, cut out with a box-prompted masker (grabcut by default, sam when chosen and
present) onto a neutral background; output: frame b; 1-3 subjects of one clip per sample (a single-subject
sample per track, plus one multi-subject sample when 2-3 tracks share a kept pair of frames).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from x2i.builders import Builder
from x2i.builders.subject_driven import entity_name, make_masker, masker_needs, segmented_subject
from x2i.core.errors import X2IError
from x2i.core.imageio import encode, fit
from x2i.core.prompt import placeholder
from x2i.core.sample import RejectSample, Sample
from x2i.engine.registry import register_builder
from x2i.engine.steps import Context, MapStep, Step

TASK = "in_context"
# OmniGen2-style in-context instructions; {refs}: "the red star from <img><|image_1|></img>" per subject.
TEMPLATES = ("{clauses} {caption}", "Generate a new image of {refs}. {caption}",
             "Let {refs} appear in a new scene: {caption}", "Show {refs} in another pose and place. {caption}",
             "{caption} Keep {refs} exactly as the same {noun}.")


@dataclass
class InContextParams:
    min_gap: int = 6  # frames between input and output frame (source frame numbers)
    cut_threshold: float = 0.045  # HSV histogram distance (EMD) between consecutive frames that marks a cut
    min_identity: float = 0.6  # descriptor similarity of the subject in the two frames
    max_jump: float = 1.0  # centre move between consecutive kept frames, in box diagonals
    min_scale_change: float = 0.25
    min_shift: float = 0.15
    min_background_change: float = 0.04
    min_box_area: float = 0.004  # fraction of the frame
    max_box_area: float = 0.6
    min_side: int = 24  # px
    max_subjects: int = 3
    multi_subject: bool = True
    masker: str = "grabcut"
    masker_weights: str | None = None
    masker_options: dict[str, Any] = field(default_factory=dict)
    detector: str | None = None  # an open-vocabulary detector (grounding_dino) for clips without boxes
    detector_weights: str | None = None
    detector_options: dict[str, Any] = field(default_factory=dict)
    detect_prompt: str | None = None  # default: the clip's caption
    device: str = "cpu"
    skip_missing: bool = True
    background: list[int] = field(default_factory=lambda: [255, 255, 255])
    pad: float = 0.08  # around the cut-out subject, fraction of its size


def hsv_hist(rgb: np.ndarray, mask: np.ndarray | None = None, bins=(16, 4, 4)) -> np.ndarray:
    import cv2

    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    m = None if mask is None else mask.astype(np.uint8) * 255
    h = cv2.calcHist([hsv], [0, 1, 2], m, list(bins), [0, 180, 0, 256, 0, 256])
    return cv2.normalize(h, h, 1.0, 0.0, cv2.NORM_L1).flatten()


def hist_distance(a: np.ndarray, b: np.ndarray) -> float:
    import cv2

    return float(cv2.compareHist(a.astype(np.float32), b.astype(np.float32), cv2.HISTCMP_BHATTACHARYYA))


def descriptor(rgb: np.ndarray, box: list[float]) -> np.ndarray:
    """Hue-saturation histogram inside the box's inscribed ellipse (less background than the box)."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    crop = rgb[max(0, y0):y1, max(0, x0):x1]
    h, w = crop.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    ell = ((xx - w / 2 + 0.5) / max(w / 2, 1)) ** 2 + ((yy - h / 2 + 0.5) / max(h / 2, 1)) ** 2 <= 0.8
    return hsv_hist(np.ascontiguousarray(crop), ell, bins=(18, 4, 1))


def frame_profile(rgb: np.ndarray, mask: np.ndarray | None = None) -> list[np.ndarray | None]:
    """Cumulative 32-bin histograms of H (saturated pixels only: grey has no stable hue), S and V of a frame.

    Compared by earth mover's distance (mean |CDF difference|), so a small global shift of light moves the
    distance a little, whereas hard-binned histograms jump whenever a flat region crosses a bin edge."""
    import cv2

    small = cv2.resize(rgb, (112, max(8, round(112 * rgb.shape[0] / rgb.shape[1]))), interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    m = None if mask is None else cv2.resize(mask.astype(np.uint8), hsv.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    out = []
    for ch, top in ((0, 180), (1, 256), (2, 256)):
        sel = (hsv[..., 1] > 60).astype(np.uint8) if ch == 0 else np.ones(hsv.shape[:2], np.uint8)
        if m is not None:
            sel &= m
        h = cv2.calcHist([hsv], [ch], sel, [32], [0, top]).flatten()
        out.append(np.cumsum(h / h.sum()) if h.sum() >= 20 else None)
    return out


def profile_distance(a: list, b: list) -> float:
    d = [float(np.abs(x - y).mean()) for x, y in zip(a, b) if x is not None and y is not None]
    return float(np.mean(d)) if d else 0.0


def cuts_of(frames: list[np.ndarray], threshold: float) -> tuple[list[int], list[float]]:
    """Indices t where a cut lies between frame t-1 and t, and every consecutive distance."""
    profiles = [frame_profile(f) for f in frames]
    d = [profile_distance(a, b) for a, b in zip(profiles, profiles[1:])]
    return [t + 1 for t, v in enumerate(d) if v > threshold], d


def _centre(b):
    return (b[0] + b[2]) / 2, (b[1] + b[3]) / 2


def _diag(b):
    return math.hypot(b[2] - b[0], b[3] - b[1])


def _area(b):
    return max(1e-6, (b[2] - b[0]) * (b[3] - b[1]))


def _same_phrase(a: dict, b: dict) -> bool:
    if not a.get("phrase") or not b.get("phrase"):
        return True
    return entity_name(a["phrase"])[0].lower() == entity_name(b["phrase"])[0].lower()


class InContextStep(MapStep):
    name = "in_context"

    def __init__(self, p: InContextParams, output, masker, detector):
        self.p, self.o, self.masker, self.detector = p, output, masker, detector

    def needs(self) -> list[tuple[str, str]]:
        return masker_needs(self.masker) + masker_needs(self.detector)

    # -- subjects per frame ---------------------------------------------------------------------------------
    def _detections(self, sample: Sample, frames: list[np.ndarray]) -> list[list[dict[str, Any]]]:
        ents = sample.meta.get("frame_entities")
        if ents is not None:
            out = []
            for f, fe in zip(frames, ents):
                h, w = f.shape[:2]
                out.append([{"phrase": e["phrase"], "box": [e["box"][0] * w, e["box"][1] * h, e["box"][2] * w,
                                                             e["box"][3] * h], "score": e.get("confidence")}
                            for e in fe or []])
            return out
        if self.detector is None:
            raise RejectSample("no_boxes", "the clip has no box sidecar and no detector is configured "
                                           "(params.detector: grounding_dino)")
        prompt = self.p.detect_prompt or sample.meta.get("caption") or ""
        text = self.detector.prompt([prompt])
        return self.detector.detect([Image.fromarray(f) for f in frames], [text] * len(frames))

    def _usable(self, det: dict, w: int, h: int) -> bool:
        b = det["box"]
        area = _area(b) / (w * h)
        return (self.p.min_box_area <= area <= self.p.max_box_area
                and min(b[2] - b[0], b[3] - b[1]) >= self.p.min_side)

    # -- tracks ---------------------------------------------------------------------------------------------
    def _tracks(self, frames, dets, shots: list[tuple[int, int]], temporal: bool) -> list[dict[int, dict]]:
        """Tracks as {frame index: detection}; clips link consecutive frames, image groups link to the first."""
        from scipy.optimize import linear_sum_assignment

        tracks: list[dict[int, dict]] = []
        for first, last in shots:
            open_: list[dict[int, dict]] = []
            for t in range(first, last + 1):
                cur = dets[t]
                prev = [(tr, tr[max(tr)]) for tr in open_ if (max(tr) == t - 1 or not temporal)]
                cost = np.full((len(prev), len(cur)), 1e6)
                for i, (_, pd) in enumerate(prev):
                    for j, cd in enumerate(cur):
                        sim = 1.0 - hist_distance(pd["desc"], cd["desc"])
                        if sim < self.p.min_identity or not _same_phrase(pd, cd):
                            continue
                        jump = math.dist(_centre(pd["box"]), _centre(cd["box"])) / max(_diag(pd["box"]), 1.0)
                        ratio = _area(cd["box"]) / _area(pd["box"])
                        if temporal and (jump > self.p.max_jump or not 0.5 <= ratio <= 2.0):
                            continue
                        cost[i, j] = (1.0 - sim) + (0.5 * jump if temporal else 0.0)
                matched = set()
                if prev and cur:
                    for i, j in zip(*linear_sum_assignment(cost)):
                        if cost[i, j] < 1e6:
                            prev[i][0][t] = cur[j]
                            matched.add(j)
                for j, cd in enumerate(cur):
                    if j not in matched:
                        tr = {t: cd}
                        open_.append(tr)
                        tracks.append(tr)
        return tracks

    def _pair_scores(self, tr: dict[int, dict], a: int, b: int, bg: dict[int, np.ndarray], w: int, h: int
                     ) -> dict[str, float]:
        da, db = tr[a], tr[b]
        return {"identity": round(1.0 - hist_distance(da["desc"], db["desc"]), 4),
                "scale_change": round(abs(math.log(_area(db["box"]) / _area(da["box"]))), 4),
                "shift": round(math.dist(_centre(da["box"]), _centre(db["box"])) / math.hypot(w, h), 4),
                "background_change": round(profile_distance(bg[a], bg[b]), 4)}

    def _keep(self, s: dict[str, float]) -> bool:
        p = self.p
        return s["identity"] >= p.min_identity and (s["scale_change"] >= p.min_scale_change or s["shift"] >= p.min_shift
                                                    or s["background_change"] >= p.min_background_change)

    # -- samples --------------------------------------------------------------------------------------------
    def process(self, sample: Sample, ctx: Context) -> list[Sample]:
        frames: list[np.ndarray] = sample.meta.pop("frames")
        numbers = sample.meta["frame_numbers"]
        temporal = sample.meta.get("temporal", True)
        cuts, dists = cuts_of(frames, self.p.cut_threshold) if temporal else ([], [])
        bounds = [0] + cuts + [len(frames)]
        shots = [(s, e - 1) for s, e in zip(bounds, bounds[1:])]
        dets = self._detections(sample, frames)
        for t, (f, fd) in enumerate(zip(frames, dets)):
            h, w = f.shape[:2]
            dets[t] = [{**d, "desc": descriptor(f, d["box"]), "frame": t} for d in fd if self._usable(d, w, h)]
        if not any(dets):
            raise RejectSample("no_usable_subject", f"{len(frames)} frame(s), no box within the size limits")
        bg = {}
        for t, f in enumerate(frames):  # background: everything outside the subjects' boxes
            m = np.ones(f.shape[:2], bool)
            for d in dets[t]:
                x0, y0, x1, y1 = (int(round(v)) for v in d["box"])
                m[max(0, y0):y1, max(0, x0):x1] = False
            bg[t] = frame_profile(f, m if m.any() else None)
        tracks = [tr for tr in self._tracks(frames, dets, shots, temporal) if len(tr) >= 2]
        shot_of = {t: i for i, (s, e) in enumerate(shots) for t in range(s, e + 1)}
        rng = ctx.rng(sample.source, sample.source_key, TASK)
        chosen: list[tuple[dict, int, int, dict]] = []
        h, w = frames[0].shape[:2]
        for tr in tracks:
            ts = sorted(tr)
            cands = []
            for i, a in enumerate(ts):
                for b in ts[i + 1:]:
                    if shot_of[a] != shot_of[b] or (temporal and numbers[b] - numbers[a] < self.p.min_gap):
                        continue
                    s = self._pair_scores(tr, a, b, bg, w, h)
                    if self._keep(s):
                        cands.append((a, b, s))
            if not cands:
                ctx.reject(None, "no_diverse_pair", self.name, f"track of {len(ts)} frame(s)", source=sample.source,
                           source_key=f"{sample.source_key}#track{len(chosen)}", task=TASK)
                continue
            a, b, s = cands[int(rng.integers(len(cands)))]
            if rng.random() < 0.5:  # either direction is a valid pair; draw it so inputs are not always earlier
                a, b = b, a
                s = self._pair_scores(tr, a, b, bg, w, h)
            chosen.append((tr, a, b, s))
        if not chosen:
            raise RejectSample("no_pair", f"{len(tracks)} track(s), no pair of frames both diverse and same-identity")
        out = [self._make(sample, frames, [(tr, s)], a, b, cuts, numbers, dists, "single", rng)
               for tr, a, b, s in chosen]
        multi = self._multi(tracks, chosen, bg, w, h, shot_of, numbers, temporal)
        if multi is not None and self.p.multi_subject:
            a, b, group = multi
            out.append(self._make(sample, frames, group, a, b, cuts, numbers, dists, "multi", rng))
        return out

    def _multi(self, tracks, chosen, bg, w, h, shot_of, numbers, temporal):
        """2-3 tracks sharing a kept pair of frames (taken from the chosen single pairs' frames)."""
        if len(tracks) < 2 or self.p.max_subjects < 2:
            return None
        for _, a, b, _ in chosen:
            group = []
            for tr in tracks:
                if a in tr and b in tr:
                    s = self._pair_scores(tr, a, b, bg, w, h)
                    if self._keep(s):
                        group.append((tr, s))
            if len(group) >= 2:
                return a, b, sorted(group, key=lambda g: g[0][a]["box"][0])[: self.p.max_subjects]
        return None

    def _make(self, sample, frames, group, a, b, cuts, numbers, dists, kind, rng) -> Sample:
        o = self.o
        src = Image.fromarray(frames[a])
        boxes = [tuple(tr[a]["box"]) for tr, _ in group]
        (masks, scores), = self.masker.masks([src], [boxes])
        inputs, subjects = [], []
        out_img, t = fit(encode(Image.fromarray(frames[b]), "PNG"), o.max_side, o.multiple, o.jpeg)
        if out_img.format != "JPEG":
            out_img = encode(out_img.pil(), "JPEG", o.jpeg)
        for (tr, s), mask, score in zip(group, masks, scores):
            im, cut = segmented_subject(src, mask, tuple(self.p.background), self.p.pad, o.max_input_side, o.multiple)
            enc = encode(im, "JPEG", o.jpeg)
            inputs.append(enc)
            bb = t.box(tuple(tr[b]["box"]))
            subjects.append({"phrase": tr[a].get("phrase"), "phrase_out": tr[b].get("phrase"),
                             "box_in": [round(v, 2) for v in tr[a]["box"]],
                             "box_out": [round(bb[0] / t.width, 6), round(bb[1] / t.height, 6),
                                         round(bb[2] / t.width, 6), round(bb[3] / t.height, 6)],
                             "track_frames": len(tr), "mask_source": self.masker.name if score > 0 else "box",
                             "mask_score": score, "input_size": [enc.width, enc.height], **cut, **s})
        caption = (sample.meta.get("frame_captions") or [None] * len(frames))[b] or sample.meta["caption"]
        template = int(rng.integers(len(TEMPLATES)))
        instruction = self._instruction(subjects, caption, template)
        meta = {k: v for k, v in sample.meta.items() if k not in ("frame_entities", "frame_captions", "frame_numbers")}
        meta.update(kind=kind, template=template, target_caption=caption, frames=[numbers[a], numbers[b]],
                    frame_gap=abs(numbers[b] - numbers[a]), cuts=[numbers[c] for c in cuts],
                    cut_scores=[round(v, 4) for v in dists], subjects=subjects, subject_input="mask",
                    background=list(self.p.background), masker=self.masker.name,
                    output_transform={"scale": t.scale, "crop_left": t.crop_left, "crop_top": t.crop_top})
        out = Sample(TASK, instruction, out_img, inputs, sample.source, sample.source_key, meta)
        return out.with_id({"kind": kind, "frames": [numbers[a], numbers[b]],
                            "subjects": [s["box_in"] for s in subjects]})

    @staticmethod
    def _instruction(subjects: list[dict], caption: str, template: int) -> str:
        names = [entity_name(s["phrase"] or "the subject") for s in subjects]
        refs = [f"{n[0][0].lower()}{n[0][1:]} from {placeholder(k)}" if n[0].startswith("The ") else
                f"{n[0]} from {placeholder(k)}" for k, n in enumerate(names, 1)]
        joined = refs[0] if len(refs) == 1 else ", ".join(refs[:-1]) + " and " + refs[-1]
        clauses = " ".join(f"{n} {be} in {placeholder(k)}." for k, (n, be) in enumerate(names, 1))
        noun = "subject" if len(refs) == 1 else "subjects"
        return TEMPLATES[template].format(clauses=clauses, refs=joined, caption=caption.strip(), noun=noun).strip()


@register_builder("in_context")
class InContextBuilder(Builder):
    name = TASK
    source_formats = ("video", "image_groups")
    Params = InContextParams

    def __init__(self, recipe):
        super().__init__(recipe)
        p = self.params
        if len(p.background) != 3 or not all(0 <= int(v) <= 255 for v in p.background):
            raise X2IError(f"params.background: {p.background}; give [r, g, b] in 0..255")
        self.masker, self._notes = make_masker(p.masker, p.masker_options, p.device, p.masker_weights, p.skip_missing)
        self.detector = None
        if p.detector is not None:
            from x2i.annotators import get

            self.detector = get(p.detector, p.detector_options, p.device, p.detector_weights)
            if self.detector.kind != "detector":
                raise X2IError(f"params.detector: {p.detector} is a {self.detector.kind} annotator, not a detector")
            self.detector.resolve_weights()  # MissingWeights before any work: no detector, no boxes

    def steps(self) -> list[Step]:
        return [InContextStep(self.params, self.recipe.output, self.masker, self.detector)]

    def notes(self) -> list[str]:
        return self._notes
