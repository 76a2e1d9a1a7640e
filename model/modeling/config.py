"""Model configuration: one dataclass, named size presets, and readers for the three config.json flavours
(ours, the official OmniGen-v1 Phi-3 config, diffusers' OmniGenTransformer2DModel config)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

# Our own config.json carries this marker so a directory's layout can be recognised without guessing.
FORMAT_MARKER = "x2i-omnigen"
# Not architecture: the image size (height, width) a trained model was trained at, written by training/export.py
# next to the fields below and read by the pipeline as its default output size.
DEFAULT_SIZE_KEY = "default_image_size"


@dataclass
class OmniGenConfig:
    # Phi-3 decoder.
    hidden_size: int = 3072
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    intermediate_size: int = 8192
    vocab_size: int = 32064
    pad_token_id: int = 32000
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # LongRoPE ("su"): per-frequency divisors for short and long contexts (head_dim // 2 values each); None
    # means plain RoPE. The long ones are used when a sample's sequence is longer than
    # original_max_position_embeddings.
    rope_short_factor: list[float] | None = None
    rope_long_factor: list[float] | None = None
    max_position_embeddings: int = 131072
    original_max_position_embeddings: int = 4096
    # Image side.
    in_channels: int = 4
    patch_size: int = 2
    pos_embed_max_size: int = 192  # the sincos grid is pos_embed_max_size^2 patches, centre-cropped per image
    pos_embed_base_size: int = 64
    time_embed_dim: int = 256  # sinusoidal frequency embedding size fed to both timestep MLPs

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def rope_scale(self) -> float:
        """LongRoPE's magnitude factor applied to both cos and sin (1 when there is no extension)."""
        scale = self.max_position_embeddings / self.original_max_position_embeddings
        if self.rope_short_factor is None or scale <= 1.0:
            return 1.0
        return math.sqrt(1 + math.log(scale) / math.log(self.original_max_position_embeddings))

    def validate(self) -> None:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(f"hidden_size {self.hidden_size}, heads {self.num_heads}, kv heads "
                             f"{self.num_kv_heads} do not divide evenly")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")
        if (self.rope_short_factor is None) != (self.rope_long_factor is None):
            raise ValueError("give both rope_short_factor and rope_long_factor, or neither")
        for name in ("rope_short_factor", "rope_long_factor"):
            factors = getattr(self, name)
            if factors is not None and len(factors) != self.head_dim // 2:
                raise ValueError(f"{name} has {len(factors)} values, expected head_dim // 2 = {self.head_dim // 2}")

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT_MARKER, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OmniGenConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - {"format", DEFAULT_SIZE_KEY})
        if unknown:
            raise ValueError(f"unknown config keys {unknown}")
        config = cls(**{k: v for k, v in data.items() if k in known})
        config.validate()
        return config


def _factors(n: int, long: bool) -> list[float]:
    """Smooth stand-in LongRoPE factors for presets used with random weights (a real checkpoint's config.json
    always supplies its own): short ~1, long rising from ~1 to ~64 like Phi-3-128k's."""
    if not long:
        return [1.0 + 0.5 * (i / max(1, n - 1)) ** 4 for i in range(n)]
    return [1.0 + 63.0 * (i / max(1, n - 1)) ** 2 for i in range(n)]


def build_config(**kw: Any) -> OmniGenConfig:
    """A validated config; LongRoPE factors filled with smooth stand-ins when not given."""
    config = OmniGenConfig(**kw)
    if config.rope_short_factor is None:
        half = config.head_dim // 2
        config.rope_short_factor, config.rope_long_factor = _factors(half, False), _factors(half, True)
    config.validate()
    return config


PRESETS: dict[str, dict[str, Any]] = {
    # Tests and CPU training: LongRoPE switches to its long factors past 64 tokens so both paths get exercised.
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4, intermediate_size=128, vocab_size=512,
                 pad_token_id=0, max_position_embeddings=1024, original_max_position_embeddings=64,
                 pos_embed_max_size=32, pos_embed_base_size=16, time_embed_dim=32),
    # CPU benchmark: big enough that matrix products dominate, small enough to time in seconds.
    "small": dict(hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=8, intermediate_size=768,
                  vocab_size=512, pad_token_id=0, max_position_embeddings=8192, original_max_position_embeddings=512,
                  pos_embed_max_size=64, pos_embed_base_size=32),
    # The real OmniGen-v1 shape (3.8B): Phi-3-mini-128k decoder.
    "omnigen-v1": dict(),
}


def preset(name: str) -> OmniGenConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return build_config(**PRESETS[name])


def from_phi3_config(data: dict[str, Any], pos_embed_max_size: int = 192) -> OmniGenConfig:
    """The official OmniGen-v1 config.json is a transformers Phi3Config; patch size, channels and the pos-embed
    grid are constructor defaults of the official model, not stored there."""
    scaling = data.get("rope_scaling") or {}
    if scaling and scaling.get("type", scaling.get("rope_type")) not in ("su", "longrope"):
        raise ValueError(f"unsupported rope_scaling type {scaling.get('type', scaling.get('rope_type'))!r}")
    config = OmniGenConfig(
        hidden_size=data["hidden_size"], num_layers=data["num_hidden_layers"],
        num_heads=data["num_attention_heads"],
        num_kv_heads=data.get("num_key_value_heads") or data["num_attention_heads"],
        intermediate_size=data["intermediate_size"], vocab_size=data["vocab_size"],
        pad_token_id=data.get("pad_token_id") if data.get("pad_token_id") is not None else 32000,
        rms_norm_eps=data.get("rms_norm_eps", 1e-5), rope_theta=float(data.get("rope_theta", 10000.0)),
        rope_short_factor=scaling.get("short_factor"), rope_long_factor=scaling.get("long_factor"),
        max_position_embeddings=data.get("max_position_embeddings", 131072),
        original_max_position_embeddings=data.get("original_max_position_embeddings",
                                                  data.get("max_position_embeddings", 4096)),
        pos_embed_max_size=pos_embed_max_size)
    config.validate()
    return config


def to_phi3_config(config: OmniGenConfig) -> dict[str, Any]:
    """The official layout's config.json (what OmniGen's `Phi3Config.from_pretrained` reads)."""
    data: dict[str, Any] = {
        "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_act": "silu",
        "hidden_size": config.hidden_size, "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
        "intermediate_size": config.intermediate_size, "vocab_size": config.vocab_size,
        "pad_token_id": config.pad_token_id, "rms_norm_eps": config.rms_norm_eps, "rope_theta": config.rope_theta,
        "max_position_embeddings": config.max_position_embeddings,
        "original_max_position_embeddings": config.original_max_position_embeddings,
        "rope_scaling": None, "torch_dtype": "float32",
    }
    if config.rope_short_factor is not None:
        data["rope_scaling"] = {"type": "su", "short_factor": list(config.rope_short_factor),
                                "long_factor": list(config.rope_long_factor)}
    return data


def from_diffusers_config(data: dict[str, Any]) -> OmniGenConfig:
    scaling = data.get("rope_scaling") or {}
    config = OmniGenConfig(
        hidden_size=data.get("hidden_size", 3072), num_layers=data.get("num_layers", 32),
        num_heads=data.get("num_attention_heads", 32), num_kv_heads=data.get("num_key_value_heads", 32),
        intermediate_size=data.get("intermediate_size", 8192), vocab_size=data.get("vocab_size", 32064),
        pad_token_id=data.get("pad_token_id", 32000), rms_norm_eps=data.get("rms_norm_eps", 1e-5),
        rope_theta=float(data.get("rope_base", 10000)),
        rope_short_factor=scaling.get("short_factor"), rope_long_factor=scaling.get("long_factor"),
        max_position_embeddings=data.get("max_position_embeddings", 131072),
        original_max_position_embeddings=data.get("original_max_position_embeddings", 4096),
        in_channels=data.get("in_channels", 4), patch_size=data.get("patch_size", 2),
        pos_embed_max_size=data.get("pos_embed_max_size", 192), time_embed_dim=data.get("time_step_dim", 256))
    config.validate()
    return config


def to_diffusers_kwargs(config: OmniGenConfig) -> dict[str, Any]:
    """Constructor arguments of diffusers' OmniGenTransformer2DModel with the same shape. diffusers builds its
    pos_embed with base_size 64 whatever ours is: the buffer is in the state dict, so load it from ours."""
    if config.rope_short_factor is None:
        raise ValueError("diffusers' OmniGen requires LongRoPE factors")
    return dict(in_channels=config.in_channels, patch_size=config.patch_size, hidden_size=config.hidden_size,
                rms_norm_eps=config.rms_norm_eps, num_attention_heads=config.num_heads,
                num_key_value_heads=config.num_kv_heads, intermediate_size=config.intermediate_size,
                num_layers=config.num_layers, pad_token_id=config.pad_token_id, vocab_size=config.vocab_size,
                max_position_embeddings=config.max_position_embeddings,
                original_max_position_embeddings=config.original_max_position_embeddings,
                rope_base=int(config.rope_theta),
                rope_scaling={"short_factor": list(config.rope_short_factor),
                              "long_factor": list(config.rope_long_factor)},
                pos_embed_max_size=config.pos_embed_max_size, time_step_dim=config.time_embed_dim)


__all__ = ["OmniGenConfig", "PRESETS", "preset", "from_phi3_config", "to_phi3_config", "from_diffusers_config",
           "to_diffusers_kwargs", "FORMAT_MARKER", "DEFAULT_SIZE_KEY"]
