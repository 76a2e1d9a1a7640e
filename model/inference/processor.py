"""Instructions and input images -> model conditions (token ids with image spans, padding masks, pixels).

OmniGen's prompt template wraps the instruction; each `<img><|image_k|></img>` placeholder (parsed by the shared
x2i.core.prompt module) becomes `<img>` + one placeholder id per patch token of image k + `</img>`. Text around
placeholders is tokenized piece by piece, as OmniGen does (its model was trained on exactly that tokenization):
the pieces are "template + text up to <img>", "</img> + text up to the next <img>", ..., and only the first keeps
its BOS.

Input images follow OmniGen's inference policy: halve (box filter) while the short side is at least twice
`max_input_image_size`, scale (bicubic) so the long side fits it, scale up so the short side is at least
`multiple`, then centre-crop both sides down to a multiple of `multiple` (16 = VAE factor 8 x patch 2).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image

from x2i.core import prompt as prompt_format
from x2i.core.errors import X2IError

from ..modeling.transformer import Condition
from .tokenizer import TextTokenizer

TEMPLATE_PREFIX = "<|user|>\nGenerate an image according to the following instructions\n"
TEMPLATE_SUFFIX = "<|end|>\n<|assistant|>\n<|diffusion|>"
DEFAULT_NEGATIVE_PROMPT = (
    "low quality, jpeg artifacts, ugly, duplicate, morbid, mutilated, extra fingers, mutated hands, poorly drawn "
    "hands, poorly drawn face, mutation, deformed, blurry, dehydrated, bad anatomy, bad proportions, extra limbs, "
    "cloned face, disfigured, gross proportions, malformed limbs, missing arms, missing legs, extra arms, extra legs, "
    "fused fingers, too many fingers.")

ImageInput = Union[Image.Image, str, Path]


def fit_image(image: Image.Image, max_side: int, multiple: int = 16) -> Image.Image:
    """OmniGen's input-image size policy (see the module docstring)."""
    image = image.convert("RGB")
    while min(image.size) >= 2 * max_side:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.Resampling.BOX)
    if max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.Resampling.BICUBIC)
    if min(image.size) < multiple:
        scale = multiple / min(image.size)
        image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.Resampling.BICUBIC)
    w, h = image.size
    left, top = (w % multiple) // 2, (h % multiple) // 2
    return image.crop((left, top, left + w - w % multiple, top + h - h % multiple))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL images (rounded, clamped)."""
    array = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in array]


def load_image(image: ImageInput) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    path = Path(image)
    if not path.is_file():
        raise X2IError(f"input image {path} not found")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError as exc:
        raise X2IError(f"input image {path}: cannot read it as an image ({exc})") from None


@dataclass
class CFGBatch:
    """The guidance branches of one generation batch. `images_only` is None when no sample has input images."""

    cond: Condition
    uncond: Condition
    images_only: Condition | None

    def branches(self) -> list[Condition]:
        return [c for c in (self.cond, self.uncond, self.images_only) if c is not None]


class Processor:
    def __init__(self, tokenizer: TextTokenizer, max_input_image_size: int = 1024, max_input_images: int = 8,
                 multiple: int = 16, pad_token_id: int = 0):
        self.tokenizer = tokenizer
        self.max_input_image_size = max_input_image_size
        self.max_input_images = max_input_images
        self.multiple = multiple  # pixels per output token side: codec downsample x patch size
        self.pad_token_id = pad_token_id

    def prepare_image(self, image: ImageInput) -> torch.Tensor:
        return to_tensor(fit_image(load_image(image), self.max_input_image_size, self.multiple))

    def tokenize(self, instruction: str, images: list[torch.Tensor]) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of one templated instruction and the (start, end) span of each image's tokens."""
        n = len(images)
        if n > self.max_input_images:
            raise X2IError(f"{n} input images, more than the cap of {self.max_input_images} (max_input_images)")
        try:
            prompt_format.check(instruction, n)
        except prompt_format.PromptError as exc:
            raise X2IError(f"instruction {instruction[:60]!r}: {exc}") from None
        chunks, order, current = [], [], TEMPLATE_PREFIX
        for piece in prompt_format.split(instruction):
            if isinstance(piece, str):
                current += piece
            else:
                chunks.append(current + "<img>")
                order.append(piece)
                current = "</img>"
        chunks.append(current + TEMPLATE_SUFFIX)
        ids, spans = [], []
        bos = self.tokenizer.bos_id
        for i, chunk in enumerate(chunks):
            chunk_ids = self.tokenizer.encode(chunk)
            if i > 0 and bos is not None and chunk_ids and chunk_ids[0] == bos:
                chunk_ids = chunk_ids[1:]
            ids.extend(chunk_ids)
            if i < len(order):
                image = images[order[i] - 1]
                count = (image.shape[-2] // self.multiple) * (image.shape[-1] // self.multiple)
                spans.append((len(ids), len(ids) + count))
                ids.extend([0] * count)
        return ids, spans

    def __call__(self, instructions: list[str], input_images: list[list[ImageInput]] | None = None) -> Condition:
        """One condition batch: left-padded ids, padding mask, image spans and preprocessed pixels."""
        if isinstance(instructions, str):
            raise TypeError("instructions must be a list of strings (one per sample)")
        input_images = input_images or [[] for _ in instructions]
        if len(input_images) != len(instructions):
            raise X2IError(f"{len(instructions)} instructions but {len(input_images)} input image lists")
        pixels_per_sample = [[im if isinstance(im, torch.Tensor) else self.prepare_image(im) for im in images or []]
                             for images in input_images]
        tokenized = [self.tokenize(text, pixels) for text, pixels in zip(instructions, pixels_per_sample)]
        length = max(len(ids) for ids, _ in tokenized)
        input_ids = torch.full((len(tokenized), length), self.pad_token_id, dtype=torch.long)
        valid = torch.zeros((len(tokenized), length), dtype=torch.bool)
        spans, pixels = [], []
        for b, ((ids, sample_spans), sample_pixels) in enumerate(zip(tokenized, pixels_per_sample)):
            pad = length - len(ids)
            input_ids[b, pad:] = torch.tensor(ids, dtype=torch.long)
            valid[b, pad:] = True
            spans.extend((b, start + pad, end + pad) for start, end in sample_spans)
            pixels.extend(sample_pixels)  # placeholders number images in order of appearance
        return Condition(input_ids=input_ids, valid=valid, image_spans=spans, pixels=pixels)

    def cfg_batch(self, instructions: list[str], input_images: list[list[ImageInput]] | None = None,
                  negative_prompt: str = DEFAULT_NEGATIVE_PROMPT, use_image_guidance: bool = True) -> CFGBatch:
        """OmniGen's three guidance branches: the instruction with its images; the negative prompt without images;
        the images alone (their placeholders joined by spaces; the negative prompt for a sample without images)."""
        input_images = input_images or [[] for _ in instructions]
        if len(input_images) != len(instructions):
            raise X2IError(f"{len(instructions)} instructions but {len(input_images)} input image lists")
        pixels = [[im if isinstance(im, torch.Tensor) else self.prepare_image(im) for im in images or []]
                  for images in input_images]
        cond = self(instructions, pixels)
        uncond = self([negative_prompt] * len(instructions))
        images_only = None
        if use_image_guidance and any(pixels):
            texts = [" ".join(prompt_format.placeholder(k + 1) for k in range(len(p))) if p else negative_prompt
                     for p in pixels]
            images_only = self(texts, pixels)
        return CFGBatch(cond=cond, uncond=uncond, images_only=images_only)
