"""The condition cache is exact: a cached step equals the uncached forward, at every step including the first."""
from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="needs the model extra: pip install 'x2i[model]'")
import torch  # noqa: E402

TOL = dict(atol=1e-5, rtol=1e-5)


def _cond(processor, prompts, image_sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    pixels = [[torch.zeros(3, h * 8, w * 8) for h, w in sizes] for sizes in image_sizes]
    latents = [torch.randn(4, h, w, generator=g) for sizes in image_sizes for h, w in sizes]
    return processor(prompts, pixels).with_latents(latents)


CASES = {
    "text_only": (["a red circle"], [[]], (4, 4)),
    "two_images": (["<img><|image_1|></img> beside <img><|image_2|></img>"], [[(4, 4), (2, 6)]], (2, 4)),
    "padded_batch": (["<img><|image_1|></img> small", "a longer prompt with <img><|image_1|></img> in it", "no image"],
                     [[(2, 4)], [(4, 6)], []], (4, 4)),
    # The condition alone fits the short factors; with the output tokens the sequence needs the long ones. The
    # cache must make the choice on the whole length, as the uncached forward does.
    "long_factors_from_outputs": (["a cat <img><|image_1|></img>"], [[(4, 4)]], (8, 8)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cached_steps_equal_uncached(case, tiny_model, processor):
    prompts, image_sizes, out_hw = CASES[case]
    cond = _cond(processor, prompts, image_sizes)
    n_out = out_hw[0] * out_hw[1] // 4
    cache = tiny_model.encode_condition(cond, n_out)
    kept = [(k.clone(), v.clone()) for k, v in cache.kv]
    if case == "long_factors_from_outputs":
        limit = tiny_model.config.original_max_position_embeddings
        assert int(cond.valid.sum()) + 1 < limit < int(cond.valid.sum()) + 1 + n_out
    g = torch.Generator().manual_seed(1)
    for t in (0.0, 0.37, 0.9):  # one cache, reused across steps
        x = torch.randn(len(prompts), 4, *out_hw, generator=g)
        times = torch.full((len(prompts),), t)
        with torch.no_grad():
            torch.testing.assert_close(tiny_model(cond, x, times, cache=cache), tiny_model(cond, x, times), **TOL)
    assert all(torch.equal(k, k0) and torch.equal(v, v0) for (k, v), (k0, v0) in zip(cache.kv, kept))


def test_cache_with_outputs_of_different_sizes(tiny_model, processor):
    cond = _cond(processor, ["<img><|image_1|></img> one", "two"], [[(4, 4)], []])
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(4, 4, 6, generator=g), torch.randn(4, 2, 2, generator=g)]
    t = torch.tensor([0.2, 0.7])
    cache = tiny_model.encode_condition(cond, [6, 1])
    with torch.no_grad():
        for got, want in zip(tiny_model(cond, xs, t, cache=cache), tiny_model(cond, xs, t)):
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, **TOL)


def test_cache_rejects_other_output_size(tiny_model, processor):
    cond = _cond(processor, ["a cat"], [[]])
    cache = tiny_model.encode_condition(cond, 4)
    with pytest.raises(ValueError, match="output tokens"):
        tiny_model(cond, torch.randn(1, 4, 4, 6), torch.zeros(1), cache=cache)


def test_pipeline_cached_equals_uncached(tiny_dir):
    from PIL import Image

    from x2i.model.inference.pipeline import OmniGenPipeline

    pipe = OmniGenPipeline.from_pretrained(tiny_dir, device="cpu")
    image = Image.new("RGB", (40, 56), (30, 200, 90))
    kwargs = dict(height=32, width=48, steps=3, seed=4, output_type="latent")
    cached = pipe("a <img><|image_1|></img> square", [image], **kwargs)
    uncached = pipe("a <img><|image_1|></img> square", [image], use_cache=False, **kwargs)
    torch.testing.assert_close(cached, uncached, **TOL)
