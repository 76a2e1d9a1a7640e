"""Model commands: generate."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from x2i.cli.common import user_errors
from x2i.core.errors import X2IError


@user_errors
def generate_command(
    prompt: str = typer.Option(..., "--prompt", "-p", help="Instruction; refer to input images as <img><|image_1|></img>, <img><|image_2|></img>, ..."),
    out: Path = typer.Option(..., "--out", "-o", help="Output image file (.png, .jpg, ...)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Checkpoint directory or Hugging Face repo id (default: $X2I_OMNIGEN_DIR, then Shitao/OmniGen-v1 in the HF cache)."),
    input_image: list[Path] = typer.Option([], "--input-image", "-i", help="Input image, in placeholder order (repeatable)."),
    steps: int = typer.Option(50, "--steps", min=1, help="Euler steps."),
    guidance: float = typer.Option(2.5, "--guidance", help="Text guidance scale."),
    image_guidance: float = typer.Option(1.6, "--image-guidance", help="Image guidance scale (with input images)."),
    height: Optional[int] = typer.Option(None, "--height", help="Output height in pixels (a multiple of 16; default: the size the model was trained at, else 1024)."),
    width: Optional[int] = typer.Option(None, "--width", help="Output width in pixels (a multiple of 16; default: the size the model was trained at, else 1024)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (same seed, same image)."),
    negative_prompt: Optional[str] = typer.Option(None, "--negative-prompt", help="Replaces OmniGen's default negative prompt."),
    max_input_image_size: int = typer.Option(1024, "--max-input-image-size", help="Input images are scaled so their longer side is at most this."),
    input_size_as_output: bool = typer.Option(False, "--input-size-as-output", help="Output the size of the first input image (editing)."),
    device: Optional[str] = typer.Option(None, "--device", help="cuda, cuda:1, cpu (default: cuda when available)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="bf16, fp16 or fp32 (default: bf16 on GPU, fp32 on CPU)."),
    offload: str = typer.Option("none", "--offload", help="none, model (transformer and VAE take turns on the GPU) or layers (decoder layers streamed from CPU)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Recompute the condition tokens at every step (slower; for checking)."),
) -> None:
    """Generate an image with the reference OmniGen model."""
    from x2i.model.inference.pipeline import OmniGenPipeline
    from x2i.model.inference.processor import DEFAULT_NEGATIVE_PROMPT

    torch_dtype = _dtype(dtype)
    if not out.parent.is_dir():
        raise X2IError(f"output folder {out.parent} does not exist")
    pipe = OmniGenPipeline.from_pretrained(model, device=device, dtype=torch_dtype, offload=offload)
    with _StepBar() as progress:
        images = pipe(prompt, [str(p) for p in input_image], height=height, width=width, steps=steps,
                      guidance_scale=guidance, image_guidance_scale=image_guidance, seed=seed,
                      negative_prompt=negative_prompt if negative_prompt is not None else DEFAULT_NEGATIVE_PROMPT,
                      max_input_image_size=max_input_image_size, use_input_image_size_as_output=input_size_as_output,
                      use_cache=not no_cache, progress=progress)
    try:
        images[0].save(out)
    except (OSError, ValueError) as exc:
        raise X2IError(f"cannot write {out}: {exc}") from None
    typer.echo(f"wrote {out} ({images[0].width}x{images[0].height})")


def _dtype(name: str | None):
    """--dtype as a torch dtype (None: the pipeline's default for the device)."""
    import torch

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name is not None and name not in dtypes:
        raise X2IError(f"--dtype must be one of {sorted(dtypes)}, got {name!r}")
    return dtypes[name] if name else None


class _StepBar:
    """A denoising progress bar, created at the first step so input errors are not preceded by a bar."""

    def __init__(self):
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="denoising", unit="step", leave=False)
        self.bar.update(1)

    def __enter__(self) -> "_StepBar":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_command)
