"""Processor: template, placeholder spans, padding, image size policy, guidance branches, bad input."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="needs the model extra: pip install 'x2i[model]'")
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from x2i.core.errors import X2IError  # noqa: E402
from x2i.model.inference.processor import DEFAULT_NEGATIVE_PROMPT, TEMPLATE_PREFIX, fit_image  # noqa: E402


def _image(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _text(tokenizer, ids):
    return tokenizer.tokenizer.decode(ids, skip_special_tokens=False)


def test_template_and_image_spans(processor, tokenizer):
    images = [processor.prepare_image(_image(48, 32)), processor.prepare_image(_image(16, 64))]
    ids, spans = processor.tokenize("A <img><|image_1|></img> and <img><|image_2|></img>.", images)
    assert ids[0] == tokenizer.bos_id and ids.count(tokenizer.bos_id) == 1
    assert [end - start for start, end in spans] == [3 * 2, 1 * 4]  # one token per 16x16 pixels
    text = _text(tokenizer, [i for k, i in enumerate(ids) if not any(s <= k < e for s, e in spans)])
    assert text.startswith("<s>" + TEMPLATE_PREFIX + "A <img></img> and <img></img>.")
    assert text.endswith("<|end|>\n<|assistant|>\n<|diffusion|>")
    assert _text(tokenizer, ids[:spans[0][0]]).endswith("<img>")
    assert _text(tokenizer, ids[spans[0][1]:]).startswith("</img>")


def test_batch_is_left_padded_with_shifted_spans(processor):
    cond = processor(["short <img><|image_1|></img>", "a much longer instruction without images at all"],
                     [[_image(32, 32)], []])
    short, long = cond.valid.sum(1).tolist()
    assert short < long == cond.input_ids.shape[1]
    pad = long - short
    assert not cond.valid[0, :pad].any() and cond.valid[0, pad:].all()
    assert (cond.input_ids[0, :pad] == processor.pad_token_id).all()
    (sample, start, end), = cond.image_spans
    alone = processor(["short <img><|image_1|></img>"], [[_image(32, 32)]])
    assert sample == 0 and (start - pad, end - pad) == alone.image_spans[0][1:]
    assert torch.equal(cond.input_ids[0, pad:], alone.input_ids[0])
    assert len(cond.pixels) == 1 and cond.pixels[0].shape == (3, 32, 32)


@pytest.mark.parametrize("size, max_side", [((1000, 700), 512), ((10, 40), 512), ((2100, 1100), 256),
                                            ((333, 517), 1024)])
def test_image_policy(size, max_side):
    out = fit_image(_image(*size), max_side)
    assert out.width % 16 == 0 and out.height % 16 == 0
    assert max(out.size) <= max(max_side, 16) and min(out.size) >= 16
    aspect_in, aspect_out = size[0] / size[1], out.width / out.height
    assert abs(np.log(aspect_in / aspect_out)) < 0.25  # resized, centre-cropped, not distorted


def test_pixels_are_normalised(processor):
    pixels = processor.prepare_image(Image.new("RGB", (32, 32), (0, 255, 128)))
    assert pixels.shape == (3, 32, 32)
    assert torch.allclose(pixels[:, 0, 0], torch.tensor([-1.0, 1.0, 128 / 127.5 - 1]), atol=1e-6)


@pytest.mark.parametrize("text, n_images, message", [
    ("two <img><|image_1|></img> <img><|image_2|></img>", 1, "placeholder"),
    ("no placeholder", 1, "placeholder"),
    ("<img><|image_2|></img> first", 1, "expected 1..1"),
    ("<img><|image_1|></img> stray <img>", 1, "stray"),
    ("<img><|image_1|></img><img><|image_1|></img>", 1, "more than once"),
])
def test_placeholders_must_match_images(processor, text, n_images, message):
    with pytest.raises(X2IError, match=message):
        processor([text], [[_image(32, 32)] * n_images])


def test_image_cap(processor):
    text = " ".join(f"<img><|image_{k}|></img>" for k in range(1, 5))
    with pytest.raises(X2IError, match="cap of 3"):
        processor([text], [[_image(32, 32)] * 4])


def test_missing_image_file(processor, tmp_path):
    with pytest.raises(X2IError, match="not found"):
        processor(["<img><|image_1|></img>"], [[tmp_path / "nope.png"]])


def test_cfg_branches(processor):
    batch = processor.cfg_batch(["edit <img><|image_1|></img> now", "just text"], [[_image(32, 48)], []])
    cond, uncond, images_only = batch.cond, batch.uncond, batch.images_only
    assert len(cond.image_spans) == 1 and len(cond.pixels) == 1
    # Negative branch: the negative prompt, no images, for every sample.
    negative = processor([DEFAULT_NEGATIVE_PROMPT])
    assert uncond.image_spans == [] and uncond.pixels == []
    for b in range(2):
        assert torch.equal(uncond.input_ids[b][uncond.valid[b]], negative.input_ids[0])
    # Images-only branch: the placeholders alone with the same pixels; the negative prompt without images.
    assert torch.equal(images_only.input_ids[0][images_only.valid[0]],
                       processor(["<img><|image_1|></img>"], [[_image(32, 48)]]).input_ids[0])
    assert torch.equal(images_only.input_ids[1][images_only.valid[1]], negative.input_ids[0])
    assert images_only.pixels[0] is cond.pixels[0]
    assert batch.branches() == [cond, uncond, images_only]


def test_no_images_branch_without_images(processor):
    assert processor.cfg_batch(["text only"]).images_only is None
    batch = processor.cfg_batch(["<img><|image_1|></img>"], [[_image(32, 32)]], use_image_guidance=False)
    assert batch.images_only is None and len(batch.branches()) == 2
