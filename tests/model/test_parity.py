"""Parity with diffusers' OmniGen (the reference implementation we can run on CPU): same random weights, same
inputs, outputs within 1e-5 in fp32. Inputs for diffusers are built by diffusers' own processor and collator."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

pytest.importorskip("torch", reason="needs the model extra: pip install 'x2i[model]'")
import torch  # noqa: E402
from PIL import Image  # noqa: E402

diffusers = pytest.importorskip("diffusers")
from diffusers import OmniGenTransformer2DModel  # noqa: E402
from diffusers.pipelines.omnigen.processor_omnigen import (  # noqa: E402
    OmniGenCollator, OmniGenMultiModalProcessor, crop_image)

from x2i.model.inference.processor import Processor, fit_image  # noqa: E402
from x2i.model.modeling.checkpoint import from_diffusers_state_dict, load_model, model_from_state  # noqa: E402
from x2i.model.modeling.config import preset, to_diffusers_kwargs  # noqa: E402

TOL = dict(atol=1e-5, rtol=1e-5)
CONFIG = preset("tiny")
VAE_FACTOR = 8  # latents are 1/8 of the pixels, 16 pixels per token


@pytest.fixture(scope="module")
def reference():
    """A tiny diffusers transformer with every parameter random (norms included), and ours converted from it."""
    torch.manual_seed(0)
    ref = OmniGenTransformer2DModel(**to_diffusers_kwargs(CONFIG)).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if "norm" in name and p.ndim == 1:
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(noise / math.sqrt(p[0].numel() if p.ndim > 1 else 10))
    ours = model_from_state(CONFIG, from_diffusers_state_dict(ref.state_dict()))
    return ref, ours


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_dir):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(tiny_dir / "tokenizer.json"), bos_token="<s>")


def test_processor_matches_diffusers(tokenizer, hf_tokenizer):
    ours = Processor(tokenizer, max_input_image_size=64)
    theirs = OmniGenMultiModalProcessor(hf_tokenizer, max_image_size=64)
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((70, 45), (33, 100))]
    cases = [
        ("a red circle on a blue background", []),
        ("The cat is in <img><|image_1|></img>. A cat sleeps.", photos[:1]),
        ("<img><|image_1|></img><img><|image_2|></img> side by side", photos),
        ("put <img><|image_1|></img> left of <img><|image_2|></img>", photos),
    ]
    for text, images in cases:
        pixels = [ours.prepare_image(im) for im in images]
        ids, spans = ours.tokenize(text, pixels)
        expected = theirs.process_multi_modal_prompt(text, [theirs.process_image(im) for im in images] or None)
        assert ids == list(expected["input_ids"]), text
        assert [list(s) for s in spans] == (expected["image_sizes"] or []), text
        for mine, ref in zip(pixels, expected["pixel_values"] or []):
            torch.testing.assert_close(mine, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", [(70, 45), (1000, 30), (9, 40), (300, 300), (2100, 1100)])
def test_image_policy_matches_omnigen(size):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    mine, ref = fit_image(image, 256), crop_image(image, 256)
    assert mine.size == ref.size and mine.width % 16 == 0 and mine.height % 16 == 0
    assert np.array_equal(np.asarray(mine), np.asarray(ref))


def _reference_inputs(processor, prompts, latents_per_sample, out_hw):
    """diffusers' inputs (padded ids, OmniGen mask, position ids, spans) for the same prompts."""
    mllm = []
    for text, latents in zip(prompts, latents_per_sample):
        pixels = [torch.zeros(3, h * VAE_FACTOR, w * VAE_FACTOR) for _, h, w in (x.shape for x in latents)]
        ids, spans = processor.tokenize(text, pixels)
        mllm.append({"input_ids": ids, "pixel_values": pixels or None, "image_sizes": [list(s) for s in spans]})
    collator = OmniGenCollator(pad_token_id=CONFIG.pad_token_id, hidden_size=CONFIG.hidden_size)
    target = [[out_hw[0] * VAE_FACTOR, out_hw[1] * VAE_FACTOR]] * len(prompts)
    ids, positions, mask, _, _, sizes = collator.process_mllm_input(mllm, target)
    return dict(input_ids=ids, position_ids=positions, attention_mask=mask, input_image_sizes=sizes,
                input_img_latents=[x[None] for lat in latents_per_sample for x in lat])


def _ours(ours, processor, prompts, latents_per_sample, x, t):
    pixels = [[torch.zeros(3, h * VAE_FACTOR, w * VAE_FACTOR) for _, h, w in (l.shape for l in lat)]
              for lat in latents_per_sample]
    cond = processor(prompts, pixels).with_latents([x for lat in latents_per_sample for x in lat])
    with torch.no_grad():
        return ours(cond, x, t), cond


def _theirs(ref, processor, prompts, latents_per_sample, x, t):
    with torch.no_grad():
        inputs = _reference_inputs(processor, prompts, latents_per_sample, x.shape[-2:])
        return ref(hidden_states=x, timestep=t, return_dict=False, **inputs)[0], inputs


def _latents(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(CONFIG.in_channels, h, w, generator=g) for h, w in shapes]


CASES = {
    "text_only": (["a red circle"], [[]], (4, 6)),
    "one_image": (["a red <img><|image_1|></img> circle"], [_latents((4, 6))], (4, 4)),
    "two_images": (["<img><|image_1|></img> and <img><|image_2|></img>"], [_latents((4, 4), (2, 6), seed=1)], (2, 4)),
    # Same token count, different shapes: a real batch, no padding, each image with its own pos-embed crop.
    "two_resolutions_batch": (["<img><|image_1|></img> x", "<img><|image_1|></img> x"],
                              [_latents((4, 8), seed=2), _latents((8, 4), seed=3)], (4, 4)),
    # Past original_max_position_embeddings (64): LongRoPE's long factors.
    "long_factors": (["a long <img><|image_1|></img> circle"], [_latents((12, 12), seed=4)], (8, 8)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_matches_diffusers(case, reference, processor):
    ref, ours = reference
    prompts, latents, out_hw = CASES[case]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(len(prompts), CONFIG.in_channels, *out_hw, generator=g)
    t = torch.rand(len(prompts), generator=g)
    mine, _ = _ours(ours, processor, prompts, latents, x, t)
    theirs, inputs = _theirs(ref, processor, prompts, latents, x, t)
    longest = int(inputs["position_ids"].max()) + 1
    assert (longest > CONFIG.original_max_position_embeddings) == (case == "long_factors")
    torch.testing.assert_close(mine, theirs, **TOL)


def test_padded_batch_matches_diffusers_per_sample(reference, processor):
    """Different input resolutions and prompt lengths in one left-padded batch, one sample short enough for the
    short factors and one long enough for the long ones. diffusers takes the rotary angles of sample 0 for the
    whole batch, so each sample is compared with diffusers run on it alone (what OmniGen computes)."""
    ref, ours = reference
    prompts = ["<img><|image_1|></img> small", "a much longer prompt with <img><|image_1|></img> in it"]
    latents = [_latents((2, 4), seed=6), _latents((8, 10), seed=7)]
    g = torch.Generator().manual_seed(8)
    x, t = torch.randn(2, CONFIG.in_channels, 4, 4, generator=g), torch.rand(2, generator=g)
    mine, cond = _ours(ours, processor, prompts, latents, x, t)
    assert not bool(cond.valid[0].all())  # sample 0 is padded
    lengths = []
    for i in range(2):
        theirs, inputs = _theirs(ref, processor, prompts[i:i + 1], latents[i:i + 1], x[i:i + 1], t[i:i + 1])
        lengths.append(int(inputs["position_ids"].max()) + 1)
        torch.testing.assert_close(mine[i:i + 1], theirs, **TOL)
    assert lengths[0] <= CONFIG.original_max_position_embeddings < lengths[1]


# Official OmniGen-v1 checkpoint keys (DESIGN.md section 6).
OFFICIAL_KEYS = [r"x_embedder\.proj\.(weight|bias)", r"input_x_embedder\.proj\.(weight|bias)",
                 r"(time_token|t_embedder)\.mlp\.[02]\.(weight|bias)", r"pos_embed",
                 r"final_layer\.adaLN_modulation\.1\.(weight|bias)", r"final_layer\.linear\.(weight|bias)",
                 r"llm\.embed_tokens\.weight", r"llm\.layers\.\d+\.self_attn\.(qkv_proj|o_proj)\.weight",
                 r"llm\.layers\.\d+\.mlp\.(gate_up_proj|down_proj)\.weight",
                 r"llm\.layers\.\d+\.(input|post_attention)_layernorm\.weight", r"llm\.norm\.weight"]


def test_official_layout_checkpoint_loads(reference, processor, tmp_path):
    """A checkpoint written the way OmniGen-v1 ships: a Phi-3 config.json and model.safetensors with llm.* keys."""
    from safetensors.torch import save_file

    ref, _ = reference
    state = from_diffusers_state_dict(ref.state_dict())
    assert all(any(re.fullmatch(p, k) for p in OFFICIAL_KEYS) for k in state)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    phi3 = {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_size": CONFIG.hidden_size,
            "intermediate_size": CONFIG.intermediate_size, "num_hidden_layers": CONFIG.num_layers,
            "num_attention_heads": CONFIG.num_heads, "num_key_value_heads": CONFIG.num_kv_heads,
            "vocab_size": CONFIG.vocab_size, "pad_token_id": CONFIG.pad_token_id, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "max_position_embeddings": CONFIG.max_position_embeddings,
            "original_max_position_embeddings": CONFIG.original_max_position_embeddings,
            "rope_scaling": {"type": "su", "short_factor": CONFIG.rope_short_factor,
                             "long_factor": CONFIG.rope_long_factor}, "torch_dtype": "float32"}
    (tmp_path / "config.json").write_text(json.dumps(phi3))
    loaded = load_model(tmp_path)
    assert loaded.config.pos_embed_max_size == CONFIG.pos_embed_max_size
    assert loaded.config.time_embed_dim == CONFIG.time_embed_dim
    prompts, latents, out_hw = CASES["long_factors"]
    x, t = torch.randn(1, CONFIG.in_channels, *out_hw), torch.rand(1)
    mine, _ = _ours(loaded, processor, prompts, latents, x, t)
    theirs, _ = _theirs(ref, processor, prompts, latents, x, t)
    torch.testing.assert_close(mine, theirs, **TOL)


def test_diffusers_layout_checkpoint_loads(tmp_path, tiny_model, processor):
    from x2i.model.testing.tiny import make_tiny_checkpoint

    root = make_tiny_checkpoint(tmp_path / "ckpt", layout="diffusers", model=tiny_model)
    assert (root / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = load_model(root)
    expected_state = tiny_model.state_dict()
    assert all(torch.equal(v, expected_state[k]) for k, v in loaded.state_dict().items())
    prompts, latents, out_hw = CASES["two_images"]
    x, t = torch.randn(1, CONFIG.in_channels, *out_hw), torch.rand(1)
    mine, _ = _ours(loaded, processor, prompts, latents, x, t)
    expected, _ = _ours(tiny_model, processor, prompts, latents, x, t)
    torch.testing.assert_close(mine, expected, **TOL)


def test_pos_embed_matches_diffusers():
    """Our sincos grid is computed independently of diffusers'; with base size 64 the two agree."""
    from x2i.model.modeling.transformer import sincos_pos_embed

    ref = OmniGenTransformer2DModel(**to_diffusers_kwargs(CONFIG)).patch_embedding.pos_embed[0]
    torch.testing.assert_close(sincos_pos_embed(CONFIG.hidden_size, CONFIG.pos_embed_max_size, 64), ref,
                               atol=1e-6, rtol=0)


def test_mask_and_positions_match_omnigen_collator(reference, processor):
    """OmniGen's attention mask and position ids (built by diffusers' copy of OmniGen's collator) equal the ones
    our model derives from the padding mask, for every real token of a left-padded batch."""
    from x2i.model.modeling.transformer import position_ids

    _, ours = reference
    prompts = ["<img><|image_1|></img> small", "a longer prompt: <img><|image_1|></img> and <img><|image_2|></img>"]
    latents = [_latents((2, 4)), _latents((4, 4), (2, 6), seed=1)]
    out_hw = (4, 6)
    pixels = [[torch.zeros(3, h * VAE_FACTOR, w * VAE_FACTOR) for _, h, w in (l.shape for l in lat)] for lat in latents]
    cond = processor(prompts, pixels)
    n_out = out_hw[0] * out_hw[1] // 4
    out_valid = torch.ones(2, n_out, dtype=torch.bool)
    valid = torch.cat([cond.valid, torch.ones(2, 1, dtype=torch.bool), out_valid], dim=1)
    reference_inputs = _reference_inputs(processor, prompts, latents, out_hw)
    expected_mask = reference_inputs["attention_mask"].bool()
    mask = ours.full_mask(cond, out_valid)[:, 0]
    assert mask.shape == expected_mask.shape
    for b in range(2):
        real = valid[b]
        assert torch.equal(mask[b][real], expected_mask[b][real])  # rows of real tokens (padding rows differ)
        assert torch.equal(position_ids(valid)[b][real], reference_inputs["position_ids"][b][real])
    assert not bool(cond.valid[0].all())
