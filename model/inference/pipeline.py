"""Generation: instruction (+ input images) -> image, with classifier-free and image guidance.

Speed comes from the condition cache: the instruction and input-image tokens are run through the decoder once per
guidance branch (`OmniGen.encode_condition`); each of the `steps` Euler steps then computes only the time token and
the output tokens. The branches run as separate calls, so none is padded to another's length (the negative prompt
is short, an input image is thousands of tokens) and LongRoPE decides per branch, as in OmniGen's default.
"""
from __future__ import annotations

import secrets
from pathlib import Path
from typing import Callable

import torch

from x2i.core.errors import X2IError

from ..codecs import load_codec
from ..codecs.base import ImageCodec, from_model_latents, to_model_latents
from ..modeling.checkpoint import default_image_size, detect_layout, load_model, resolve_model_dir
from ..modeling.transformer import Condition, OmniGen
from .processor import DEFAULT_NEGATIVE_PROMPT, Processor, to_pil
from .scheduler import FlowMatchEulerScheduler, guide
from .tokenizer import TextTokenizer

OFFLOAD_MODES = ("none", "model", "layers")
DEFAULT_SIZE = (1024, 1024)  # OmniGen-v1's; a folder `x2i train` wrote records its own (default_image_size)


@torch.no_grad()
def encode_condition_images(cond: Condition, codec: ImageCodec) -> Condition:
    """The condition with each input image encoded to model latents (one codec call per image: sizes differ).
    No gradients: the codec is frozen while the model trains."""
    return cond.with_latents([to_model_latents(codec, p[None])[0] for p in cond.pixels])


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class OmniGenPipeline:
    """`default_size` (height, width): the output size when a call gives none. `scheduler`: the sampler
    (FlowMatchEulerScheduler by default)."""

    def __init__(self, model: OmniGen, processor: Processor, codec: ImageCodec, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None, offload: str = "none",
                 default_size: tuple[int, int] | None = None, scheduler: FlowMatchEulerScheduler | None = None):
        if offload not in OFFLOAD_MODES:
            raise X2IError(f"offload must be one of {OFFLOAD_MODES}, got {offload!r}")
        self.default_size = tuple(default_size) if default_size is not None else DEFAULT_SIZE
        self.scheduler = scheduler or FlowMatchEulerScheduler()
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.model, self.processor, self.codec, self.offload = model.eval(), processor, codec, offload
        self.model.to(dtype=self.dtype)
        if offload == "none":
            self.model.to(self.device)
            self.codec.to(self.device)
        elif offload == "layers":
            self._stream_layers()

    @classmethod
    def from_pretrained(cls, spec: str | Path | None = None, device=None, dtype: torch.dtype | None = None,
                        offload: str = "none", max_input_images: int = 8) -> OmniGenPipeline:
        """Load from a local directory, $X2I_OMNIGEN_DIR or the Hugging Face cache (any of the three layouts,
        including the folders `x2i train` writes): the one way a checkpoint folder becomes a pipeline."""
        root = resolve_model_dir(spec)
        layout = detect_layout(root)
        device = torch.device(device) if device is not None else default_device()
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        model = load_model(root, dtype=dtype)
        codec = load_codec(layout.vae_dir)
        multiple = codec.downsample * model.config.patch_size
        processor = Processor(TextTokenizer.from_dir(layout.tokenizer_dir), max_input_images=max_input_images,
                              multiple=multiple, pad_token_id=model.config.pad_token_id)
        return cls(model, processor, codec, device=device, dtype=dtype, offload=offload,
                   default_size=default_image_size(layout))

    def _stream_layers(self) -> None:
        """Everything on the device except the decoder layers, each moved in just before it runs and out after."""
        def load(module, args):  # hooks must return None, or they replace the arguments / output
            module.to(self.device)

        def unload(module, args, output):
            module.to("cpu")

        self.model.to(self.device)
        for layer in self.model.llm.layers:
            layer.to("cpu")
            layer.register_forward_pre_hook(load)
            layer.register_forward_hook(unload)
        self.codec.to(self.device)

    def _place(self, module, active: bool) -> None:
        if self.offload == "model":
            module.to(self.device if active else "cpu")
            if not active and self.device.type == "cuda":
                torch.cuda.empty_cache()

    @property
    def multiple(self) -> int:
        return self.processor.multiple

    def check_size(self, height: int, width: int) -> None:
        m = self.multiple
        for name, value in (("height", height), ("width", width)):
            if value <= 0 or value % m:
                lower, upper = max(m, value - value % m), value - value % m + m
                raise X2IError(f"{name} {value} is not a positive multiple of {m} (codec factor "
                               f"{self.codec.downsample} x patch {self.model.config.patch_size}): use {lower} or {upper}")
        grid = self.model.config.pos_embed_max_size * m
        if max(height, width) > grid:
            raise X2IError(f"{height}x{width} is larger than the model's position grid allows ({grid} px a side): "
                           "ask for a smaller image (--height, --width)")

    @torch.no_grad()
    def __call__(self, prompts: str | list[str], input_images: list | None = None, *, height: int | None = None,
                 width: int | None = None, steps: int = 50, guidance_scale: float = 2.5, image_guidance_scale: float = 1.6,
                 negative_prompt: str = DEFAULT_NEGATIVE_PROMPT, seed: int | None = None,
                 max_input_image_size: int = 1024, use_input_image_size_as_output: bool = False,
                 use_cache: bool = True, output_type: str = "pil",
                 progress: Callable[[int, int], None] | None = None):
        """Generate one image per prompt. `input_images`: for one prompt a list of images (PIL or paths), for a
        list of prompts a list of such lists. output_type: "pil", "tensor" ((B, 3, H, W) in [-1, 1]) or "latent".
        height / width default to `default_size` (the size a trained model was trained at, else 1024)."""
        if isinstance(prompts, str):
            prompts, input_images = [prompts], [input_images or []]
        input_images = input_images or [[] for _ in prompts]
        if steps < 1:
            raise X2IError(f"steps must be at least 1, got {steps}")
        if output_type not in ("pil", "tensor", "latent"):
            raise X2IError(f"output_type must be pil, tensor or latent, got {output_type!r}")
        self.processor.max_input_image_size = max_input_image_size
        batch = self.processor.cfg_batch(prompts, input_images, negative_prompt, use_image_guidance=True)
        if use_input_image_size_as_output:
            if not batch.cond.pixels:
                raise X2IError("use_input_image_size_as_output needs an input image")
            height, width = batch.cond.pixels[0].shape[-2:]
        height = height if height is not None else self.default_size[0]
        width = width if width is not None else self.default_size[1]
        self.check_size(height, width)

        branches = batch.branches()
        if guidance_scale == 1.0 and (batch.images_only is None or image_guidance_scale == 1.0):
            branches = branches[:1]  # the guided velocity is exactly the conditional one
        if batch.cond.pixels:
            self._place(self.codec, True)
            latents = encode_condition_images(batch.cond.to(self.device), self.codec).latents
            latents = [x.to(self.dtype) for x in latents]
            branches = [b.to(self.device).with_latents(latents if b.image_spans else []) for b in branches]
            self._place(self.codec, False)
        else:
            branches = [b.to(self.device) for b in branches]

        f = self.codec.downsample
        shape = (len(prompts), self.codec.latent_channels, height // f, width // f)
        # No seed: a fresh one from the OS, leaving torch's global generator alone.
        generator = torch.Generator().manual_seed(seed if seed is not None else secrets.randbits(63))
        z = torch.randn(shape, generator=generator).to(self.device)  # drawn on CPU: same noise on any device

        self._place(self.model, True)
        n_out = (height // self.multiple) * (width // self.multiple)
        caches = [self.model.encode_condition(b, n_out) if use_cache else None for b in branches]
        self.scheduler.set_timesteps(steps)
        for i, timestep in enumerate(self.scheduler.timesteps):
            t = torch.full((len(prompts),), float(timestep), device=self.device)
            preds = [self.model(b, z.to(self.dtype), t, cache=c).float() for b, c in zip(branches, caches)]
            z = self.scheduler.step(guide(preds, guidance_scale, image_guidance_scale), timestep, z)
            if progress is not None:
                progress(i + 1, steps)
        del caches
        self._place(self.model, False)

        if output_type == "latent":
            return z
        self._place(self.codec, True)
        images = from_model_latents(self.codec, z).float()
        self._place(self.codec, False)
        return images if output_type == "tensor" else to_pil(images)

    generate = __call__


def load_trained(directory: str | Path, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None) -> OmniGenPipeline:
    """A model folder `x2i train` wrote, on CPU in fp32 unless told otherwise (OmniGenPipeline.from_pretrained)."""
    return OmniGenPipeline.from_pretrained(directory, device=device, dtype=dtype or torch.float32)
