"""Random-weight curation models saved in the exact layouts of the real ones (tests and benchmarks).

- `save_random_clip(folder, ...)`: an open_clip model in the `hf-hub:` layout (`open_clip_config.json` with
  `model_cfg` + `preprocess_cfg`, and `open_clip_model.safetensors`), loadable by `ClipModel` exactly like a
  downloaded one. `TINY_CLIP` is a 1-layer model with ViT-L/14's 768-d embedding (fast, predictor-compatible);
  `model_cfg_of("ViT-B-32")` gives the real ViT-B/32 architecture for throughput benchmarks.
- `save_random_predictor(path, input_size)`: the improved aesthetic predictor's state dict (`layers.{0,2,4,6,7}`)
  saved with `torch.save`, as `sac+logos+ava1-l14-linearMSE.pth` is.
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

OPENAI_PREPROCESS = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
                     "interpolation": "bicubic", "resize_mode": "shortest"}

TINY_CLIP = {
    "embed_dim": 768,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


def model_cfg_of(name: str) -> dict:
    """open_clip's built-in architecture config (e.g. ViT-B-32, ViT-L-14)."""
    from open_clip.factory import get_model_config

    cfg = get_model_config(name)
    if cfg is None:
        raise ValueError(f"open_clip has no built-in config {name!r}")
    return copy.deepcopy(cfg)


def save_random_clip(folder: str | Path, model_cfg: dict | None = None, seed: int = 0) -> Path:
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = copy.deepcopy(model_cfg or TINY_CLIP)
    size = cfg["vision_cfg"]["image_size"]
    preprocess = {**OPENAI_PREPROCESS, "size": [size, size] if isinstance(size, int) else list(size)}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess},
                                                             indent=2))
    torch.manual_seed(seed)
    logging.disable(logging.WARNING)  # open_clip warns that the folder has no weights yet: we are writing them
    try:
        model = open_clip.create_model(f"local-dir:{folder}", load_weights=False)
    finally:
        logging.disable(logging.NOTSET)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder


def save_random_predictor(path: str | Path, input_size: int = 768, seed: int = 0) -> Path:
    import torch

    from x2i.curation.models import aesthetic_mlp

    torch.manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(aesthetic_mlp(input_size).state_dict(), path)
    return path
