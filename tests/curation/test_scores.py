"""Aesthetic and CLIP scores with random-weight models saved in the real layouts (open_clip hf-hub folder, the
improved aesthetic predictor's .pth); weights found via path / X2I_CURATION_DIR / HF cache, or a clear message."""
from __future__ import annotations

import json
import math

import pytest
import torch

from helpers_curate import cli, rows, validate
from x2i.curation.models import (CLIP_CONFIG, DEFAULT_PREDICTOR, MissingWeights, load_clip, load_predictor,
                                 resolve_clip, resolve_predictor)
from x2i.curation.random_weights import save_random_clip, save_random_predictor
from x2i.curation.scores import AestheticParams, AestheticStep, ClipScoreParams, ClipScoreStep
from x2i.core.errors import X2IError
from x2i.core.imageio import load
from x2i.core.sample import Sample
from x2i.engine.steps import Context

REPO = "timm/vit_large_patch14_clip_224.openai"
EMBEDDED = {"scenes": 8, "per_shard": 4, "size": 400, "photos": False}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("curation-weights")
    save_random_clip(root / REPO)
    save_random_predictor(root / DEFAULT_PREDICTOR, 768)
    return root


@pytest.fixture(autouse=True)
def _env(weights, tmp_path, monkeypatch):
    monkeypatch.setenv("X2I_CURATION_DIR", str(weights))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("X2I_CACHE", str(tmp_path / "cache"))


def samples(n: int) -> list[Sample]:
    from realformat import scene_jpeg

    return [Sample("text_to_image", f"A picture number {i} of coloured shapes.", load(scene_jpeg(i, 96, 80)),
                   source="t", source_key=str(i)) for i in range(n)]


def test_missing_weights_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.delenv("X2I_CURATION_DIR")
    result = cli("build", "--task", "text-to-image-scored", "-o", str(tmp_path / "o"), "-q")
    assert result.exit_code == 2
    line, = result.stderr.strip().splitlines()
    for needle in (CLIP_CONFIG, "open_clip_model.safetensors", "X2I_CURATION_DIR", str(tmp_path / "hf"),
                   "huggingface-cli download " + REPO):
        assert needle in line, needle
    with pytest.raises(MissingWeights, match="sac\\+logos\\+ava1-l14-linearMSE.pth.*github.com"):
        resolve_predictor(DEFAULT_PREDICTOR, "some/repo")


def test_weights_found_in_the_hf_cache_layout(tmp_path, weights, monkeypatch):
    monkeypatch.delenv("X2I_CURATION_DIR")
    repo_dir = tmp_path / "hf" / ("models--" + REPO.replace("/", "--"))
    snap = repo_dir / "snapshots" / "0123abcd"
    save_random_clip(snap)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text("0123abcd")
    assert resolve_clip("hf-hub:" + REPO) == snap
    assert resolve_clip(str(weights / REPO)) == weights / REPO  # an explicit folder wins
    with pytest.raises(MissingWeights):
        resolve_clip(str(tmp_path / "nowhere"))


def test_batched_scores_equal_one_by_one():
    batch = AestheticStep(AestheticParams(batch_size=8))
    single = AestheticStep(AestheticParams(batch_size=1))
    a = [s.aesthetic for s in batch.run(samples(6), Context())]
    b = [s.aesthetic for s in single.run(samples(6), Context())]
    assert len(a) == 6 and a == pytest.approx(b, abs=1e-4)
    assert len({round(v, 6) for v in a}) > 1  # different images, different scores


def test_scores_match_the_models_directly(weights):
    s = samples(2)
    out = list(AestheticStep(AestheticParams()).run(s, Context()))
    clip = load_clip(str(weights / REPO), "cpu", "fp32")
    mlp = load_predictor(str(weights / DEFAULT_PREDICTOR), "cpu")
    with torch.inference_mode():
        emb = clip.images([x.output_image.pil() for x in s])
        assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)  # the predictor eats unit vectors
        want = mlp(emb).reshape(-1).tolist()
    assert [x.aesthetic for x in out] == pytest.approx(want, abs=1e-5)
    clip_out = list(ClipScoreStep(ClipScoreParams()).run(samples(2), Context()))
    txt = clip.texts([x.instruction for x in s])
    assert [x.clip_score for x in clip_out] == pytest.approx((emb * txt).sum(-1).tolist(), abs=1e-5)
    assert all(-1.0 <= x.clip_score <= 1.0 for x in clip_out)


def test_nan_scores_and_thresholds_are_counted(monkeypatch):
    step = AestheticStep(AestheticParams(min=0.0))
    monkeypatch.setattr(step, "scores", lambda batch: [float("nan"), -1.0, 2.0][: len(batch)])
    ctx = Context()
    kept = list(step.run(samples(3), ctx))
    assert [s.source_key for s in kept] == ["2"]
    assert ctx.reject_counts == {"aesthetic_nan": 1, "aesthetic_below_min": 1}


def test_a_corrupt_image_only_sinks_itself():
    batch = samples(4)
    good = load(batch[1].output_image.data)
    batch[1].output_image = type(good)(b"\xff\xd8\xff" + b"\0" * 50, good.width, good.height, "JPEG")
    ctx = Context()
    kept = list(AestheticStep(AestheticParams(batch_size=4)).run(batch, ctx))
    assert [s.source_key for s in kept] == ["0", "2", "3"]
    assert sum(ctx.reject_counts.values()) == 1


def test_wrong_checkpoint_layouts_are_refused(tmp_path, weights):
    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(1, 768)}, bad)
    with pytest.raises(X2IError, match="layers.0.weight"):
        load_predictor(str(bad), "cpu")
    small = save_random_predictor(tmp_path / "p512.pth", 512)
    step = AestheticStep(AestheticParams(predictor=str(small)))
    with pytest.raises(X2IError, match="512-d embeddings"):
        step.models()


def test_scored_recipe_end_to_end(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
name: scored
builder: text_to_image
source: {{format: laion, options: {{embedded: {json.dumps(EMBEDDED)}}}}}
steps:
  - {{name: dedup}}
  - {{name: aesthetic, batch_size: 4}}
  - {{name: clip_score, batch_size: 4, min: -1.0}}
""")
    out = tmp_path / "out"
    result = cli("build", "--recipe", str(recipe), "-o", str(out), "-q")
    assert result.exit_code == 0, result.output
    manifest = validate(out)
    got = rows(out)
    assert got and all(math.isfinite(r["aesthetic"]) and math.isfinite(r["clip_score"]) for r in got)
    meta = json.loads(got[0]["meta"])
    assert meta["aesthetic_source"].startswith("improved-aesthetic-predictor")
    assert meta["clip_score_source"].startswith("cosine(image, instruction)")
    s = manifest["scores"]["text_to_image"]
    assert s["aesthetic"]["count"] == s["clip_score"]["count"] == manifest["rows"]
    assert s["aesthetic"]["max"] < 4.75  # random weights: proof the column holds our score, not LAION's


def test_half_precision_towers_get_inputs_in_their_dtype(weights):
    """open_clip's low precision keeps some parameters (class embedding, logit scale) in fp32; the pixels must
    take the convolutions' dtype, not the first parameter's (on the H200 an fp16 tower got fp32 pixels)."""
    clip = load_clip(str(weights / REPO), "cpu", "bf16")
    assert next(clip.model.parameters()).dtype == torch.float32  # what made the old choice wrong
    assert clip.dtype == torch.bfloat16
    emb = clip.images([x.output_image.pil() for x in samples(2)])
    assert emb.dtype == torch.float32 and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-3)
