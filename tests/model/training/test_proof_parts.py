"""The parts of the learning proof that need no training: the shapes checker (validated on real renders), the
patch-PCA codec and the tokenizer fitted to a mix."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="needs the model extra: pip install 'x2i[model]'")
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from x2i.model.codecs.patch_pca import PatchPCACodec  # noqa: E402
from x2i.model.testing.shapes_check import accuracy, check, parse_prompt  # noqa: E402
from x2i.model.training.codec import sample_images  # noqa: E402
from x2i.model.training.mix import load_mix  # noqa: E402
from x2i.shapes.world import COLORS, SHAPES, make_scene  # noqa: E402

from train_helpers import write_mix  # noqa: E402


def test_checker_reads_real_renders_and_rejects_what_is_not_there():
    verdicts = []
    for i in range(60):
        scene = make_scene(i, 11, 64, 64, max_shapes=1)
        verdicts.append(check(scene.render(), scene.caption()[0]))
    acc = accuracy(verdicts)
    assert acc["color"] == 1.0 and acc["shape"] >= 0.95, acc
    assert {v.want_shape for v in verdicts} == set(SHAPES)
    # No shape: no colour, no class. A wrong prompt: wrong on both.
    blank = Image.new("RGB", (64, 64), (200, 195, 205))
    v = check(blank, "A small red circle on a plain background.")
    assert v.color is None and v.shape is None and not v.color_ok
    scene = make_scene(0, 11, 64, 64, max_shapes=1)
    shape = scene.shapes[0]
    other_color = next(c for c in COLORS if c != shape.color)
    other_shape = next(s for s in SHAPES if s != shape.kind)
    v = check(scene.render(), f"A large {other_color} {other_shape} on a plain background.")
    assert not v.color_ok and not v.shape_ok and v.color == shape.color
    assert parse_prompt("A medium orange star on a striped background.") == ("medium", "orange", "star")
    with pytest.raises(ValueError):
        parse_prompt("A picture of nothing.")


def test_checker_is_at_chance_on_noise():
    rng = np.random.default_rng(0)
    verdicts = []
    for i in range(48):
        noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
        color, shape = list(COLORS)[i % 6], SHAPES[i % 4]
        verdicts.append(check(noise, f"A small {color} {shape} on a plain background."))
    assert accuracy(verdicts)["color"] < 0.4


def test_patch_pca_codec_round_trip(datasets, tmp_path):
    mix = load_mix(write_mix(tmp_path / "m.yaml", [{"path": str(datasets["a"])}]))
    images = sample_images(mix, (32, 32), 64)
    assert images.shape == (64, 3, 32, 32)
    codec = PatchPCACodec.fit(images, factor=4, components=12)
    z = codec.encode(images)
    assert z.shape == (64, 12, 8, 8)
    assert z.std(dim=(0, 2, 3)).sub(1).abs().max() < 0.05  # whitened: unit variance per channel
    rec = codec.decode(z)
    assert ((rec - images) ** 2).mean() < 0.05 * images.var()  # 12 of 48 dimensions keep >95% of the variance
    loaded = PatchPCACodec.load(codec.save(tmp_path / "codec"))
    assert torch.equal(loaded.encode(images), z) and loaded.fingerprint() == codec.fingerprint()
    # A trained model folder keeps it in vae/: the loader `x2i generate` uses must read it too.
    from x2i.model.codecs import load_codec as load_vae

    assert torch.equal(load_vae(tmp_path / "codec").encode(images), z)
    plain = PatchPCACodec.fit(images, factor=4, components=12, whiten=False)
    stds = plain.encode(images).std(dim=(0, 2, 3))
    assert stds[0] > 3 * stds[-1]  # strong components stay strong


def test_tokenizer_fitted_to_the_mix(datasets, tmp_path):
    from x2i.model.training.fit_tokenizer import fit_tokenizer, mix_instructions
    from x2i.model.inference.processor import Processor
    from x2i.model.inference.tokenizer import build_tiny_tokenizer

    mix = load_mix(write_mix(tmp_path / "m.yaml", [{"path": str(datasets["a"])}, {"path": str(datasets["b"])}]))
    fitted = fit_tokenizer(mix_instructions(mix), tmp_path / "tok", 512)
    tiny = build_tiny_tokenizer(tmp_path / "tiny")
    caption = "A small orange circle on a plain background."
    words = fitted.tokenizer.encode(caption, add_special_tokens=False).tokens
    assert len(words) <= 10 and "Ġorange" in words
    fitted_ids, _ = Processor(fitted).tokenize(caption, [])
    tiny_ids, _ = Processor(tiny).tokenize(caption, [])
    assert fitted_ids[0] == fitted.bos_id and len(fitted_ids) < 0.6 * len(tiny_ids)
    ids, spans = Processor(fitted, multiple=16).tokenize("<img><|image_1|></img> Make the red star blue.",
                                                         [torch.zeros(3, 32, 32)])
    assert spans == [(spans[0][0], spans[0][0] + 4)]


@pytest.mark.parametrize("proof", ["text", "reference", "edit"])
def test_proof_mixes_give_every_output_token_its_own_position(proof):
    # The proofs' 8 x 8 output grid must see a position signal a small model can use: with the tiny preset's
    # 32 x 32 table (base 16) only 7% of the embedding varied across the 64 tokens and the named place was not
    # learned (docs/benchmarks.md "Training").
    from x2i.model.modeling.config import PRESETS, build_config
    from x2i.model.modeling.transformer import sincos_pos_embed
    from x2i.model.training.config import resolve_train_config

    c = resolve_train_config(mix=f"proof_{proof}", run_dir="unused")
    m = build_config(**{**PRESETS[c.model.preset], **c.model.overrides})
    grid, side = m.pos_embed_max_size, 64 // c.codec.pca_factor
    table = sincos_pos_embed(m.hidden_size, grid, m.pos_embed_base_size).view(grid, grid, -1)
    top = (grid - side) // 2
    w = table[top:top + side, top:top + side].reshape(side * side, -1)
    assert w.var(0).sum() / (w ** 2).sum(1).mean() > 0.3
    unit = torch.nn.functional.normalize(w, dim=1)
    assert (unit @ unit.T - 2 * torch.eye(side * side)).max() < 0.9  # no two tokens nearly alike


def test_timestep_sampling_default_is_omnigens_and_uniform_covers_the_ends():
    # The default must draw exactly what it always drew (sigmoid of one randn per sample, same generator use),
    # so existing runs reproduce; uniform puts ~20% of the times below 0.2, where the logit-normal puts ~8%.
    from x2i.core.config import ConfigError
    from x2i.model.training.config import load_train_config
    from x2i.model.training.loss import sample_timesteps

    c = load_train_config(base={"mix": "m"})
    assert (c.timesteps.sampling, c.timesteps.mean, c.timesteps.std) == ("logit_normal", 0.0, 1.0)
    old = torch.sigmoid(torch.randn(4000, generator=torch.Generator().manual_seed(3)))
    new = sample_timesteps(4000, torch.Generator().manual_seed(3), **vars(c.timesteps))
    assert torch.equal(old, new)
    assert 0.05 < (new < 0.2).float().mean() < 0.11
    uni = sample_timesteps(4000, torch.Generator().manual_seed(3), sampling="uniform")
    assert 0.17 < (uni < 0.2).float().mean() < 0.23 and 0 <= uni.min() and uni.max() <= 1
    shifted = sample_timesteps(4000, torch.Generator().manual_seed(3), mean=-0.5)
    assert (shifted < 0.2).float().mean() > (new < 0.2).float().mean()
    with pytest.raises(ConfigError):
        load_train_config(base={"mix": "m", "timesteps": {"sampling": "cosine"}})
    with pytest.raises(ConfigError):
        load_train_config(base={"mix": "m", "timesteps": {"shift": 1.0}})  # strict keys
    with pytest.raises(ConfigError):
        load_train_config(base={"mix": "m", "timesteps": {"std": 0.0}})
