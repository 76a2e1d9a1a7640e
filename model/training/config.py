"""The training configuration: typed dataclasses, loaded strictly from YAML (x2i.core.config) and overridable with
`--set a.b=value`. The resolved configuration is written to `<run>/config.yaml` at the start of every run."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from x2i.core.config import ConfigError, apply_sets, from_dict, read_yaml, set_dotted, to_dict

from ..modeling.config import PRESETS
from .loader import LoaderConfig


@dataclass
class ModelConfig:
    preset: str = "tiny"  # shape of a fresh model: tiny | small | omnigen-v1 (ignored with `init`)
    init: str | None = None  # checkpoint folder to start from (ours, official or diffusers layout)
    overrides: dict[str, Any] = field(default_factory=dict)  # OmniGenConfig fields over the preset (fresh)
    # tokenizer folder; default: the checkpoint's, or a tiny one built locally; "fit": a BPE fitted to the mix's
    # instructions (fresh models; fit_tokenizer.py)
    tokenizer: str | None = None
    gradient_checkpointing: bool = False


@dataclass
class CodecConfig:
    # auto: the checkpoint's codec with `init` (vae/ or codec.json), else pixel. pca: a patch-PCA codec
    # (patch_pca.py) fitted on the mix at the start of the run (or loaded from `path`).
    kind: Literal["auto", "pixel", "vae", "pca"] = "auto"
    path: str | None = None  # kind vae: a diffusers AutoencoderKL folder; kind pca: a fitted codec folder
    pixel_factor: int = 2  # pixel codec: space-to-depth factor (latent channels 3 x factor^2)
    pixel_scaling: float = 1.0  # pixel codec: latents = pixels in [-1, 1] x this
    pca_factor: int = 8  # pca codec: patch side (downsampling)
    pca_components: int = 24  # pca codec: latent channels
    pca_images: int = 2000  # pca codec: images of the mix it is fitted on
    pca_whiten: bool = True  # pca codec: unit variance per component (else one common scale)


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 100  # linear warmup from 0
    schedule: Literal["constant", "cosine"] = "constant"  # after warmup
    min_lr_ratio: float = 0.1  # cosine floor, as a fraction of lr
    grad_clip: float = 1.0  # max global gradient norm (0: off)
    grad_accum: int = 1  # batches per optimizer step


@dataclass
class LoRAConfig:
    rank: int = 0  # 0: train every weight; >= 1: LoRA on the attention projections only
    alpha: float | None = None  # default: rank (scale 1)
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["qkv_proj", "o_proj"])
    extra_trainable: list[str] = field(default_factory=list)  # modules trained in full alongside, e.g. final_layer
    merge_on_export: bool = True  # final/ holds the merged model as well as the adapter


@dataclass
class TimestepConfig:
    # Training times t (t = 0 noise, 1 data). logit_normal: t = sigmoid(N(mean, std)), OmniGen's (mean 0, std 1);
    # uniform: t ~ U(0, 1), as evenly as the Euler sampler visits them (mean / std unused).
    sampling: Literal["logit_normal", "uniform"] = "logit_normal"
    mean: float = 0.0
    std: float = 1.0


@dataclass
class EMAConfig:
    decay: float = 0.0  # 0: no EMA; e.g. 0.999
    every: int = 1  # update every N optimizer steps
    start_step: int = 0  # copy the weights at this step, average from then on


@dataclass
class DistConfig:
    strategy: Literal["auto", "none", "ddp", "fsdp"] = "auto"  # auto: ddp under torchrun, else none
    backend: str | None = None  # default: nccl on GPU, gloo on CPU


@dataclass
class TrainConfig:
    mix: str  # mix YAML (or the name of a shipped mix)
    run_dir: str = "runs/train"
    seed: int = 0
    steps: int = 1000  # optimizer steps
    device: str | None = None  # default: cuda when available
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    edit_loss_weight: float = 5.0  # loss weight of changed latent pixels of image_edit rows (others: 1)
    log_every: int = 10
    save_every: int = 500
    keep_checkpoints: int = 2
    tensorboard: bool = True
    progress: bool = True
    export: bool = True  # write final/ (and final-ema/) when the run ends
    model: ModelConfig = field(default_factory=ModelConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    timesteps: TimestepConfig = field(default_factory=TimestepConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`, merging nested mappings key by key."""
    out = dict(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_train_config(path: str | Path | None = None, base: dict[str, Any] | None = None,
                      overrides: list[str] | None = None, where: str | None = None) -> TrainConfig:
    """`base` (e.g. from CLI options), then the YAML file over it, then `key=value` overrides over both.
    `where` names the configuration in errors (default: `path`, else "train config")."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        data = deep_merge(data, read_yaml(path))
    where = where or (str(path) if path is not None else "train config")
    try:
        apply_sets(data, overrides or [])
        config = from_dict(TrainConfig, data)
    except ConfigError as exc:
        raise exc.in_file(where) from None
    _check(config)
    return config


def resolve_train_config(mix: str | None = None, config: str | Path | None = None,
                         options: dict[str, Any] | None = None, overrides: list[str] | None = None,
                         run_dir: str | Path | None = None, progress: bool | None = None) -> TrainConfig:
    """The configuration `x2i train` runs with. Precedence, lowest first: the mix's own `train:` settings, the
    `config` file, `mix`, `options` (dotted key -> value, e.g. from --lr; None: not given), `run_dir` and
    `progress`, then the `overrides` (`key=value` strings from --set). The run folder defaults to
    runs/<mix name>. Checked completely (presets included) before anything is created."""
    from .mix import find_mix_file, load_mix_config

    data = read_yaml(config) if config is not None else {}
    if mix is not None:
        data["mix"] = mix
    if "mix" not in data:
        raise ConfigError("give --mix (or `mix:` in --config)")
    data = deep_merge(load_mix_config(data["mix"]).train, data)
    for key, value in (options or {}).items():
        if value is not None:
            set_dotted(data, key, value, parse=False)  # typed option values, not YAML text
    if run_dir is not None:
        data["run_dir"] = str(run_dir)
    elif "run_dir" not in data:
        data["run_dir"] = str(Path("runs") / find_mix_file(data["mix"]).stem.removeprefix("mix_"))
    if progress is not None:
        data["progress"] = progress
    return load_train_config(None, base=data, overrides=overrides,
                             where=str(config) if config is not None else None)


def _check(c: TrainConfig) -> None:
    problems = []
    if c.steps < 1:
        problems.append(f"steps must be >= 1, got {c.steps}")
    if c.loader.batch_size < 1:
        problems.append(f"loader.batch_size must be >= 1, got {c.loader.batch_size}")
    if c.optim.grad_accum < 1:
        problems.append(f"optim.grad_accum must be >= 1, got {c.optim.grad_accum}")
    if not 0.0 <= c.ema.decay < 1.0:
        problems.append(f"ema.decay must be in [0, 1), got {c.ema.decay}")
    if c.timesteps.std <= 0:
        problems.append(f"timesteps.std must be > 0, got {c.timesteps.std}")
    if c.edit_loss_weight <= 0:
        problems.append(f"edit_loss_weight must be > 0, got {c.edit_loss_weight}")
    d = c.loader.dropout
    if min(d.both, d.text, d.images) < 0 or d.both + d.text + d.images > 1:
        problems.append("loader.dropout probabilities must be >= 0 and sum to at most 1")
    if c.save_every < 1 or c.log_every < 1:
        problems.append("save_every and log_every must be >= 1")
    if c.model.init is None and c.model.preset not in PRESETS:  # checked here: before a run folder exists
        problems.append(f"unknown model preset {c.model.preset!r} (--model / model.preset); "
                        f"presets: {', '.join(sorted(PRESETS))}")
    if problems:
        raise ConfigError("; ".join(problems))
