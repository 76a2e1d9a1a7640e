"""OmniGen: a Phi-3 decoder over [condition tokens, time token, noisy output-image tokens] that predicts the
rectified-flow velocity of the output image's latents.

The condition is the tokenized instruction with each input image's patch tokens spliced in at its placeholder
span. Attention (OmniGen's mask) is causal, except that an input image's tokens see each other and output tokens
see everything; left padding is never seen.

Because condition tokens never attend to the time token or the output tokens, their keys and values do not
depend on the timestep: `encode_condition` computes them once and every denoising step reuses them. That cache is
exact (tested against the uncached forward): unlike OmniGen's own cache, step 0 is no different from the rest.

Style: DiT's models.py. Parameter names follow the official checkpoint so it loads as is.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from .config import OmniGenConfig
from .layers import Decoder, LongRoPE, StepMask


@dataclass
class Condition:
    """A batch of conditions, one per sample (the processor builds it).

    input_ids: (B, L) token ids, left-padded; an input image's span holds placeholder ids (replaced by its tokens).
    valid: (B, L) bool, False at left padding.
    image_spans: (sample, start, end) per input image, in the order of `pixels` / `latents`.
    pixels: preprocessed input images, each (3, H, W) in [-1, 1]; `latents`: the same images encoded, each
    (C, H/f, W/f) already scaled (see codecs/base.py). The model needs `latents` whenever there are spans.
    """

    input_ids: torch.Tensor
    valid: torch.Tensor
    image_spans: list[tuple[int, int, int]]
    pixels: list[torch.Tensor] = dataclasses.field(default_factory=list)
    latents: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str) -> Condition:
        return dataclasses.replace(
            self, input_ids=self.input_ids.to(device), valid=self.valid.to(device),
            pixels=[p.to(device) for p in self.pixels],
            latents=None if self.latents is None else [x.to(device) for x in self.latents])

    def with_latents(self, latents: list[torch.Tensor]) -> Condition:
        if len(latents) != len(self.image_spans):
            raise ValueError(f"{len(latents)} latents for {len(self.image_spans)} image spans")
        return dataclasses.replace(self, latents=list(latents))


@dataclass
class ConditionCache:
    """Per-layer keys and values of a condition batch, plus what a step needs to line up with them."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    valid: torch.Tensor  # (B, Lc)
    lengths: torch.Tensor  # (B,) real condition tokens per sample
    output_tokens: list[int]  # per sample: the output token count the rotary choice was made for
    padded: bool  # any left padding (decided once here, so steps never wait on the GPU to find out)


def position_ids(valid: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """Positions counting real tokens from 0 (plus `offset` per sample); padding gets the position of its neighbour
    (any value would do: nothing attends to it)."""
    positions = (valid.long().cumsum(1) - 1).clamp(min=0)
    return positions if offset is None else positions + offset[:, None]


def sincos_pos_embed(dim: int, grid: int, base_size: int) -> torch.Tensor:
    """Fixed 2-D sincos embedding of a grid x grid patch grid, (grid * grid, dim); the first half of the channels
    encodes the column, the second half the row (OmniGen / DiT convention)."""
    coords = torch.arange(grid, dtype=torch.float64) / (grid / base_size)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def encode(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1).float()


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos, sin] of (B,) timesteps in [0, 1]; t enters unscaled, as OmniGen trained it."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


class PatchEmbed(nn.Module):
    def __init__(self, config: OmniGenConfig):
        super().__init__()
        p = config.patch_size
        self.proj = nn.Conv2d(config.in_channels, config.hidden_size, kernel_size=p, stride=p, bias=True)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.proj(latents).flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W/p^2, D)


class TimestepEmbedder(nn.Module):
    def __init__(self, config: OmniGenConfig):
        super().__init__()
        self.dim = config.time_embed_dim
        self.mlp = nn.Sequential(nn.Linear(self.dim, config.hidden_size), nn.SiLU(),
                                 nn.Linear(config.hidden_size, config.hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.dim).to(self.mlp[0].weight.dtype))


class FinalLayer(nn.Module):
    """adaLN: LayerNorm without affine, shift/scale from the timestep embedding, then a linear map to patches."""

    def __init__(self, config: OmniGenConfig):
        super().__init__()
        d, p = config.hidden_size, config.patch_size
        self.norm_final = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.linear = nn.Linear(d, p * p * config.in_channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(self.norm_final(x) * (1 + scale[:, None]) + shift[:, None])


class OmniGen(nn.Module):
    def __init__(self, config: OmniGenConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.x_embedder = PatchEmbed(config)  # noisy output latents
        self.input_x_embedder = PatchEmbed(config)  # condition images
        self.time_token = TimestepEmbedder(config)  # the time token in the sequence
        self.t_embedder = TimestepEmbedder(config)  # conditions the final adaLN layer
        grid = config.pos_embed_max_size
        self.register_buffer("pos_embed", sincos_pos_embed(config.hidden_size, grid, config.pos_embed_base_size)[None],
                             persistent=True)
        self.final_layer = FinalLayer(config)
        self.llm = Decoder(config)
        self.rope = LongRoPE(config)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT-style: xavier linears, normal(0.02) timestep MLPs, zeroed output layer."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for embedder in (self.x_embedder, self.input_x_embedder):
            nn.init.xavier_uniform_(embedder.proj.weight.view(embedder.proj.weight.shape[0], -1))
            nn.init.zeros_(embedder.proj.bias)
        for embedder in (self.time_token, self.t_embedder):
            nn.init.normal_(embedder.mlp[0].weight, std=0.02)
            nn.init.normal_(embedder.mlp[2].weight, std=0.02)
        nn.init.normal_(self.llm.embed_tokens.weight, std=0.02)
        for p in (self.final_layer.adaLN_modulation[-1].weight, self.final_layer.adaLN_modulation[-1].bias,
                  self.final_layer.linear.weight, self.final_layer.linear.bias):
            nn.init.zeros_(p)

    def set_gradient_checkpointing(self, enabled: bool | list[int] = True) -> None:
        """True/False for every decoder layer, or a list of the layer indices to checkpoint."""
        for i, layer in enumerate(self.llm.layers):
            layer.gradient_checkpointing = (i in enabled) if isinstance(enabled, list) else bool(enabled)

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.embed_tokens.weight.dtype

    # ---- embeddings ---------------------------------------------------------------------------------------------

    def cropped_pos_embed(self, h: int, w: int) -> torch.Tensor:
        """The centre (h/p, w/p) window of the sincos grid, flattened row-major: (h*w/p^2, D)."""
        p, grid = self.config.patch_size, self.config.pos_embed_max_size
        gh, gw = h // p, w // p
        if gh > grid or gw > grid:
            raise ValueError(f"latent {h}x{w} is {gh}x{gw} patches, more than the {grid}x{grid} position grid")
        top, left = (grid - gh) // 2, (grid - gw) // 2
        return self.pos_embed.view(grid, grid, -1)[top:top + gh, left:left + gw].reshape(gh * gw, -1)

    def embed_condition(self, cond: Condition) -> torch.Tensor:
        embeds = self.llm.embed_tokens(cond.input_ids)
        if not cond.image_spans:
            return embeds
        if cond.latents is None:
            raise ValueError("the condition has input images but no latents: encode them first (Condition.with_latents)")
        embeds = embeds.clone()
        for (b, start, end), latent in zip(cond.image_spans, cond.latents):
            tokens = self.input_x_embedder(latent[None].to(embeds.dtype))[0]
            tokens = tokens + self.cropped_pos_embed(*latent.shape[-2:]).to(tokens.dtype)
            if tokens.shape[0] != end - start:
                raise ValueError(f"image span {start}:{end} of sample {b} holds {end - start} tokens, "
                                 f"its latent {tuple(latent.shape)} makes {tokens.shape[0]}")
            embeds[b, start:end] = tokens
        return embeds

    def embed_outputs(self, x: torch.Tensor | list[torch.Tensor]):
        """Noisy latents -> (B, N, D) tokens, right-padded with zeros to the longest sample, and (B, N) validity."""
        if isinstance(x, torch.Tensor):
            tokens = self.x_embedder(x.to(self.dtype)) + self.cropped_pos_embed(*x.shape[-2:]).to(self.dtype)
            return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=x.device)
        per_sample = [self.x_embedder(xi[None].to(self.dtype))[0] + self.cropped_pos_embed(*xi.shape[-2:]).to(self.dtype)
                      for xi in x]
        n = max(t.shape[0] for t in per_sample)
        tokens = torch.stack([nn.functional.pad(t, (0, 0, 0, n - t.shape[0])) for t in per_sample])
        valid = torch.stack([torch.arange(n, device=tokens.device) < t.shape[0] for t in per_sample])
        return tokens, valid

    def unpatchify(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(..., h*w/p^2, p*p*C) -> (..., C, h, w)."""
        p, c = self.config.patch_size, self.config.in_channels
        lead = tokens.shape[:-2]
        x = tokens.reshape(*lead, h // p, w // p, p, p, c)
        return torch.einsum("...hwpqc->...chpwq", x).reshape(*lead, c, h, w)

    # ---- forward ------------------------------------------------------------------------------------------------

    def condition_mask(self, cond: Condition) -> torch.Tensor:
        """(B, Lc, Lc) bool: causal, bidirectional within each input image, padding never seen."""
        b, n = cond.input_ids.shape
        device = cond.input_ids.device
        idx = torch.arange(n, device=device)
        image = torch.zeros(b, n, dtype=torch.long, device=device)
        for k, (sample, start, end) in enumerate(cond.image_spans):
            image[sample, start:end] = k + 1
        same_image = (image[:, :, None] == image[:, None, :]) & (image[:, :, None] > 0)
        return (idx[None, :, None] >= idx[None, None, :]) | same_image

    def full_mask(self, cond: Condition, out_valid: torch.Tensor) -> torch.Tensor:
        """(B, 1, L, L) for [condition, time token, output tokens]; a query that would see nothing (padding) sees
        itself, so no row is empty (an empty row turns into NaNs that leak through zero attention weights)."""
        b, lc = cond.input_ids.shape
        n_out = out_valid.shape[1]
        length = lc + 1 + n_out
        mask = torch.zeros(b, length, length, dtype=torch.bool, device=out_valid.device)
        mask[:, :lc, :lc] = self.condition_mask(cond)
        mask[:, lc, : lc + 1] = True  # the time token sees the condition and itself
        mask[:, lc + 1:, :] = True  # output tokens see everything
        key_valid = torch.cat([cond.valid, torch.ones_like(cond.valid[:, :1]), out_valid], dim=1)
        mask &= key_valid[:, None, :]
        mask |= torch.eye(length, dtype=torch.bool, device=mask.device)
        return mask[:, None]

    def forward(self, cond: Condition, x: torch.Tensor | list[torch.Tensor], t: torch.Tensor,
                cache: ConditionCache | None = None) -> torch.Tensor | list[torch.Tensor]:
        """Velocity (data - noise) for noisy latents x at times t (B,) in [0, 1] (0 = noise, 1 = data).

        x is a (B, C, H, W) tensor, or a list of (C, H_i, W_i) latents of different sizes (training); the result
        has the same form. With `cache` (from `encode_condition`), only the time and output tokens are computed.
        """
        out_tokens, out_valid = self.embed_outputs(x)
        b, n_out = out_valid.shape
        t = t.to(out_tokens.device).expand(b) if t.ndim == 0 else t.to(out_tokens.device)
        time_token = self.time_token(t)[:, None]
        if cache is None:
            hidden = torch.cat([self.embed_condition(cond), time_token, out_tokens], dim=1)
            valid = torch.cat([cond.valid, torch.ones_like(cond.valid[:, :1]), out_valid], dim=1)
            cos, sin = self.rope(position_ids(valid), valid.sum(1), hidden.dtype)
            mask = self.full_mask(cond, out_valid)
            hidden, _ = self.llm(hidden, cos, sin, mask)
        else:
            counts = self._output_token_counts(x)
            if counts != cache.output_tokens:
                raise ValueError(f"the cache was built for {cache.output_tokens} output tokens per sample, got {counts}")
            hidden = torch.cat([time_token, out_tokens], dim=1)
            new_valid = torch.cat([torch.ones_like(out_valid[:, :1]), out_valid], dim=1)
            positions = position_ids(new_valid, offset=cache.lengths)
            cos, sin = self.rope(positions, cache.lengths + new_valid.sum(1), hidden.dtype)
            padded = cache.padded or len(set(counts)) > 1
            key_valid = torch.cat([cache.valid, new_valid], dim=1) if padded else None
            mask = StepMask(time_keys=cache.valid.shape[1] + 1, key_valid=key_valid)
            hidden, _ = self.llm(hidden, cos, sin, mask, past=cache.kv)
        out = self.final_layer(hidden[:, -n_out:], self.t_embedder(t))
        if isinstance(x, torch.Tensor):
            return self.unpatchify(out, *x.shape[-2:])
        p2 = self.config.patch_size ** 2
        return [self.unpatchify(o[: xi.shape[-2] * xi.shape[-1] // p2], *xi.shape[-2:]) for o, xi in zip(out, x)]

    def _output_token_counts(self, x) -> list[int]:
        p2 = self.config.patch_size ** 2
        if isinstance(x, torch.Tensor):
            return [x.shape[-2] * x.shape[-1] // p2] * x.shape[0]
        return [xi.shape[-2] * xi.shape[-1] // p2 for xi in x]

    @torch.no_grad()
    def encode_condition(self, cond: Condition, output_tokens: int | list[int]) -> ConditionCache:
        """Keys and values of the condition tokens for every layer, for denoising steps with `output_tokens`
        output tokens per sample (the count decides LongRoPE's short/long choice, as in the uncached forward)."""
        counts = [output_tokens] * len(cond) if isinstance(output_tokens, int) else list(output_tokens)
        hidden = self.embed_condition(cond)
        lengths = cond.valid.sum(1)
        total = lengths + 1 + torch.tensor(counts, device=lengths.device)
        cos, sin = self.rope(position_ids(cond.valid), total, hidden.dtype)
        mask = self.condition_mask(cond) & cond.valid[:, None, :]
        mask |= torch.eye(mask.shape[-1], dtype=torch.bool, device=mask.device)
        _, kv = self.llm(hidden, cos, sin, mask[:, None], keep_kv=True, final_norm=False)
        return ConditionCache(kv=kv, valid=cond.valid, lengths=lengths, output_tokens=counts,
                              padded=not bool(cond.valid.all()))
