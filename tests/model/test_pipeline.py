"""Pipeline behaviour (seeds, guidance, sizes, offload) and the training-facing API (loss, padding, checkpointing,
swappable codecs)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="needs the model extra: pip install 'x2i[model]'")
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from x2i.core.errors import X2IError  # noqa: E402
from x2i.model.codecs.pixel import PixelCodec  # noqa: E402
from x2i.model.inference.pipeline import OmniGenPipeline, encode_condition_images  # noqa: E402
from x2i.model.inference.processor import Processor  # noqa: E402
from x2i.model.inference.scheduler import guide  # noqa: E402
from x2i.model.training.loss import flow_matching_loss  # noqa: E402


@pytest.fixture(scope="module")
def pipe(tiny_dir):
    return OmniGenPipeline.from_pretrained(tiny_dir, device="cpu")


def _photo(w=40, h=56, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


SMALL = dict(height=32, width=48, steps=3)


def test_same_seed_same_image_other_seed_other_image(pipe):
    a = pipe("a red circle", seed=7, output_type="tensor", **SMALL)
    b = pipe("a red circle", seed=7, output_type="tensor", **SMALL)
    c = pipe("a red circle", seed=8, output_type="tensor", **SMALL)
    assert a.shape == (1, 3, 32, 48)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


def test_pil_output_and_batch(pipe):
    images = pipe(["a red circle", "<img><|image_1|></img> in blue"], [[], [_photo()]], seed=0, **SMALL)
    assert [im.size for im in images] == [(48, 32), (48, 32)]
    assert all(im.mode == "RGB" for im in images)


def test_guidance_combination():
    g = torch.Generator().manual_seed(0)
    cond, uncond, images_only = (torch.randn(2, 4, 4, 4, generator=g) for _ in range(3))
    torch.testing.assert_close(guide([cond, uncond, images_only], 1.0, 1.0), cond)
    torch.testing.assert_close(guide([cond, uncond, images_only], 0.0, 0.0), uncond)
    torch.testing.assert_close(guide([cond, uncond, images_only], 0.0, 1.0), images_only)
    torch.testing.assert_close(guide([cond, uncond], 1.0, 9.0), cond)
    torch.testing.assert_close(guide([cond, uncond], 3.0, 9.0), uncond + 3 * (cond - uncond))


def test_unit_guidance_runs_one_branch(pipe, monkeypatch):
    calls = []
    forward = type(pipe.model).forward
    monkeypatch.setattr(type(pipe.model), "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    pipe("a <img><|image_1|></img>", [_photo()], seed=0, guidance_scale=1.0, image_guidance_scale=1.0, **SMALL)
    assert len(calls) == SMALL["steps"]
    calls.clear()
    pipe("a <img><|image_1|></img>", [_photo()], seed=0, **SMALL)
    assert len(calls) == 3 * SMALL["steps"]


def test_output_size_must_be_a_multiple_of_16(pipe):
    with pytest.raises(X2IError, match="height 40 is not a positive multiple of 16.*use 32 or 48"):
        pipe("a cat", height=40, width=48, steps=1)


def test_input_image_size_as_output(pipe):
    image = pipe("<img><|image_1|></img> edit", [_photo(70, 50)], use_input_image_size_as_output=True, seed=0,
                 steps=1)[0]
    assert image.size == (64, 48)  # the input image after the size policy (centre crop to multiples of 16)


@pytest.mark.parametrize("mode", ["model", "layers"])
def test_offload_gives_the_same_image(tiny_dir, pipe, mode):
    offloaded = OmniGenPipeline.from_pretrained(tiny_dir, device="cpu", offload=mode)
    kwargs = dict(seed=3, output_type="tensor", **SMALL)
    torch.testing.assert_close(offloaded("a <img><|image_1|></img>", [_photo()], **kwargs),
                               pipe("a <img><|image_1|></img>", [_photo()], **kwargs))


# ---- training-facing API ---------------------------------------------------------------------------------------

def _training_batch(processor, codec, seed=0):
    """Samples with 0, 1 and 2 input images and three different output sizes."""
    instructions = ["a red circle", "<img><|image_1|></img> made blue",
                    "<img><|image_1|></img> next to <img><|image_2|></img>"]
    images = [[], [_photo(32, 48, seed)], [_photo(48, 32, seed + 1), _photo(16, 16, seed + 2)]]
    cond = encode_condition_images(processor(instructions, images), codec)
    g = torch.Generator().manual_seed(seed)
    targets = [torch.randn(codec.latent_channels, h, w, generator=g) for h, w in ((4, 4), (6, 4), (2, 8))]
    return cond, targets


def test_loss_is_batch_invariant_and_backpropagates(tiny_model, processor):
    from x2i.model.codecs.vae import DiffusersVAE
    from x2i.model.testing.tiny import tiny_autoencoder

    codec = DiffusersVAE(tiny_autoencoder())
    cond, targets = _training_batch(processor, codec)
    g = torch.Generator().manual_seed(1)
    t = torch.rand(3, generator=g)
    noise = [torch.randn(x.shape, generator=g) for x in targets]
    tiny_model.train()
    try:
        batch_loss = flow_matching_loss(tiny_model, cond, targets, t=t, noise=noise)
        batch_loss.sum().backward()
        grads = {n: p.grad.clone() for n, p in tiny_model.named_parameters()}
        tiny_model.zero_grad()
        assert batch_loss.shape == (3,) and torch.isfinite(batch_loss).all()
        assert all(g.abs().sum() > 0 for n, g in grads.items() if "input_x_embedder" not in n)
        # Each sample alone gives the same loss: padding in the batch changes nothing.
        for i in range(3):
            alone = processor([["a red circle", "<img><|image_1|></img> made blue",
                                "<img><|image_1|></img> next to <img><|image_2|></img>"][i]],
                              [[p for (b, _, _), p in zip(cond.image_spans, cond.pixels) if b == i]])
            alone = alone.with_latents([x for (b, _, _), x in zip(cond.image_spans, cond.latents) if b == i])
            single = flow_matching_loss(tiny_model, alone, targets[i:i + 1], t=t[i:i + 1], noise=noise[i:i + 1])
            torch.testing.assert_close(single[0], batch_loss[i].detach(), atol=1e-5, rtol=1e-5)
        # Gradient checkpointing recomputes instead of storing: same gradients.
        tiny_model.set_gradient_checkpointing(True)
        flow_matching_loss(tiny_model, cond, targets, t=t, noise=noise).sum().backward()
        for n, p in tiny_model.named_parameters():
            torch.testing.assert_close(p.grad, grads[n], atol=1e-5, rtol=1e-4)
    finally:
        tiny_model.set_gradient_checkpointing(False)
        tiny_model.zero_grad()
        tiny_model.eval()


def test_loss_mask_excludes_pixels(tiny_model, processor):
    cond = processor(["a red circle"])
    g = torch.Generator().manual_seed(2)
    x1, noise, t = torch.randn(1, 4, 4, 4, generator=g), torch.randn(1, 4, 4, 4, generator=g), torch.tensor([0.5])
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    with torch.no_grad():
        base = flow_matching_loss(tiny_model, cond, x1, t=t, noise=noise, loss_mask=mask)
        pred = tiny_model(cond, t * x1 + (1 - t) * noise, t)
        expected = ((pred - (x1 - noise)) ** 2)[..., :2, :].mean()
    torch.testing.assert_close(base[0], expected)


def test_pixel_codec_pipeline_without_pretrained_weights(tokenizer):
    """Issue 6 trains a tiny model with no downloaded weights: a pixel-space codec stands in for the VAE."""
    from x2i.model.modeling.config import preset
    from x2i.model.testing.tiny import random_model

    codec = PixelCodec(factor=2)
    images = torch.rand(1, 3, 16, 24) * 2 - 1
    assert torch.equal(codec.decode(codec.encode(images)), images)
    config = preset("tiny")
    config.in_channels = codec.latent_channels
    model = random_model(config, seed=0)
    processor = Processor(tokenizer, max_input_image_size=64, multiple=codec.downsample * config.patch_size)
    pipe = OmniGenPipeline(model, processor, codec, device="cpu")
    out = pipe("<img><|image_1|></img> again", [_photo(20, 36)], height=16, width=24, steps=2, seed=0,
               output_type="tensor")
    assert out.shape == (1, 3, 16, 24) and torch.isfinite(out).all()


def test_bf16_pipeline(tiny_dir, pipe):
    """What a GPU run uses (bf16 weights, fp32 sampler state), exercised on CPU: close to the fp32 result."""
    half = OmniGenPipeline.from_pretrained(tiny_dir, device="cpu", dtype=torch.bfloat16)
    assert half.model.dtype == torch.bfloat16
    kwargs = dict(seed=3, output_type="latent", **SMALL)
    low = half("a <img><|image_1|></img>", [_photo()], **kwargs)
    full = pipe("a <img><|image_1|></img>", [_photo()], **kwargs)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert (low - full).abs().max() < 0.1 * full.abs().max()
