"""Model scores as recipe steps: the LAION improved aesthetic score and CLIP image-text similarity.

Both are `BatchMapStep`s: embeddings are computed for `batch_size` samples at once (one forward pass), and a
batch that fails is retried sample by sample so one corrupt image cannot sink its batch-mates. Scores go into the
`aesthetic` / `clip_score` columns with their provenance in `meta`. A score that is not a finite number is a
counted reject (`aesthetic_nan`, `clip_score_nan`), never compared as False. Thresholds are exclusive: a sample
is kept when its score is > `min`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from x2i.curation.models import (DEFAULT_CLIP, DEFAULT_PREDICTOR, DEFAULT_PREDICTOR_REPO, load_clip, load_predictor,
                                 pick_device, pick_precision, resolve_clip, resolve_predictor)
from x2i.core.errors import X2IError, require_modules
from x2i.core.prompt import remove_placeholders
from x2i.core.sample import Sample
from x2i.engine.registry import register_step
from x2i.engine.steps import BatchMapStep, Context


@dataclass
class AestheticParams:
    min: float | None = None  # keep samples whose score is > min; None: score only
    clip_model: str = DEFAULT_CLIP  # hf-hub:<org>/<repo> or a local folder (open_clip layout)
    predictor: str = DEFAULT_PREDICTOR  # file name (looked up) or a path
    predictor_repo: str = DEFAULT_PREDICTOR_REPO  # Hub repo to look for the file in the HF cache
    allow_download: bool = False  # fetch missing weights from the Hub (never when HF_HUB_OFFLINE is set)
    device: str = "auto"  # auto: cuda when available, else cpu
    precision: str = "auto"  # auto: fp16 on GPU, fp32 on CPU; or fp32 / fp16 / bf16
    batch_size: int = 32


@dataclass
class ClipScoreParams:
    min: float | None = None  # keep samples whose cosine similarity is > min; None: score only
    clip_model: str = DEFAULT_CLIP
    text: str = "instruction"  # instruction (placeholders removed) or caption (meta.caption, else instruction)
    allow_download: bool = False
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 32


def _check_common(p, name: str) -> None:
    if p.batch_size < 1:
        raise X2IError(f"{name}: batch_size must be >= 1, got {p.batch_size}")
    if p.precision not in ("auto", "fp32", "fp16", "bf16"):
        raise X2IError(f"{name}: precision must be auto, fp32, fp16 or bf16, got {p.precision!r}")


class _ScoreStep(BatchMapStep):
    """Shared: keep the finite scores above `min`, reject the rest with a reason."""

    column = ""

    def needs(self) -> list[tuple[str, str]]:
        return [("torch", "curation"), ("open_clip", "curation"), ("huggingface_hub", "curation")]

    def _keep(self, sample: Sample, value: float, ctx: Context, provenance: str) -> Sample | None:
        if not math.isfinite(value):
            ctx.reject(sample, f"{self.column}_nan", self.name, f"{self.column} is {value}")
            return None
        setattr(sample, self.column, float(value))
        sample.meta[f"{self.column}_source"] = provenance
        if self.p.min is not None and not value > self.p.min:
            ctx.reject(sample, f"{self.column}_below_min", self.name, f"{value:.4f} <= {self.p.min}")
            return None
        return sample


@register_step("aesthetic")
class AestheticStep(_ScoreStep):
    """LAION's improved aesthetic predictor (an MLP over normalised CLIP ViT-L/14 image embeddings)."""

    name = "aesthetic"
    column = "aesthetic"
    Params = AestheticParams

    def __init__(self, params: AestheticParams):
        _check_common(params, self.name)
        self.p = params
        self.batch_size = params.batch_size
        # Resolved now so a missing file fails at planning time, before any partition runs.
        require_modules("the aesthetic step", self.needs())
        self.clip_dir = str(resolve_clip(params.clip_model, params.allow_download, who="aesthetic step"))
        self.predictor_path = str(resolve_predictor(params.predictor, params.predictor_repo, params.allow_download,
                                                    who="aesthetic step"))
        self.provenance = f"improved-aesthetic-predictor {params.predictor.split('/')[-1]} on {params.clip_model}"

    def models(self):
        device = pick_device(self.p.device)
        clip = load_clip(self.clip_dir, device, pick_precision(self.p.precision, device))
        mlp = load_predictor(self.predictor_path, device)
        want = mlp.layers[0].in_features
        if clip.embed_dim is not None and clip.embed_dim != want:
            raise X2IError(f"aesthetic step: the predictor takes {want}-d embeddings but {self.p.clip_model} "
                           f"gives {clip.embed_dim}-d (the published predictor needs CLIP ViT-L/14)")
        return clip, mlp

    def scores(self, samples: list[Sample]) -> list[float]:
        import torch

        clip, mlp = self.models()
        emb = clip.images([s.output_image.pil() for s in samples])
        with torch.inference_mode():
            return [float(v) for v in mlp(emb.to(next(mlp.parameters()).device)).reshape(-1).cpu()]

    def process_batch(self, samples: list[Sample], ctx: Context) -> list[Sample | None]:
        values = self.scores(samples)
        return [self._keep(s, v, ctx, self.provenance) for s, v in zip(samples, values)]


@register_step("clip_score")
class ClipScoreStep(_ScoreStep):
    """Cosine similarity between the output image and its text, in CLIP space (LAION's `similarity`)."""

    name = "clip_score"
    column = "clip_score"
    Params = ClipScoreParams

    def __init__(self, params: ClipScoreParams):
        _check_common(params, self.name)
        if params.text not in ("instruction", "caption"):
            raise X2IError(f"clip_score: text must be instruction or caption, got {params.text!r}")
        self.p = params
        self.batch_size = params.batch_size
        require_modules("the clip_score step", self.needs())
        self.clip_dir = str(resolve_clip(params.clip_model, params.allow_download, who="clip_score step"))
        self.provenance = f"cosine(image, {params.text}) with {params.clip_model}"

    def text_of(self, sample: Sample) -> str:
        if self.p.text == "caption" and isinstance(sample.meta.get("caption"), str):
            return sample.meta["caption"]
        return remove_placeholders(sample.instruction)

    def scores(self, samples: list[Sample]) -> list[float]:
        device = pick_device(self.p.device)
        clip = load_clip(self.clip_dir, device, pick_precision(self.p.precision, device))
        img = clip.images([s.output_image.pil() for s in samples])
        txt = clip.texts([self.text_of(s) for s in samples])
        return [float(v) for v in (img * txt).sum(dim=-1).cpu()]

    def process_batch(self, samples: list[Sample], ctx: Context) -> list[Sample | None]:
        values = self.scores(samples)
        return [self._keep(s, v, ctx, self.provenance) for s, v in zip(samples, values)]
