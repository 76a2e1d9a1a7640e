"""The Phi-3 decoder OmniGen runs its whole sequence through, written out plainly (no transformers classes:
their Phi-3 internals change across versions, which is why OmniGen pins an old transformers).

Module and parameter names follow the official checkpoint (`llm.layers.{i}.self_attn.qkv_proj`, ...), so the
official `model.safetensors` loads without renaming.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import OmniGenConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in fp32 whatever the weights' dtype, as Phi-3 does.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class LongRoPE(nn.Module):
    """Phi-3's rotary embedding with LongRoPE ("su") scaling.

    Frequencies are theta^(-2i/d) divided by a per-frequency factor: the short factors for a sequence that fits
    in `original_max_position_embeddings`, the long ones beyond. cos and sin are both multiplied by
    sqrt(1 + ln(max/original_max) / ln(original_max)). The short/long choice is made per sample from its real
    length (`use_long`), so batching never changes a sample's result; for one sample it is exactly Phi-3's
    `max(position_ids) + 1 > original_max_position_embeddings`.
    """

    def __init__(self, config: OmniGenConfig):
        super().__init__()
        self.head_dim, self.theta = config.head_dim, config.rope_theta
        half = config.head_dim // 2
        self.short_factor = list(config.rope_short_factor or [1.0] * half)
        self.long_factor = list(config.rope_long_factor or [1.0] * half)
        self.original_max = config.original_max_position_embeddings
        self.scale = config.rope_scale
        short, long = self._inverse_frequencies()
        self.register_buffer("inv_freq_short", short, persistent=False)
        self.register_buffer("inv_freq_long", long, persistent=False)

    def _inverse_frequencies(self) -> tuple[torch.Tensor, torch.Tensor]:
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device="cpu").float() / self.head_dim
        return tuple(1.0 / (torch.tensor(f, dtype=torch.float32, device="cpu") * self.theta ** exponents)
                     for f in (self.short_factor, self.long_factor))

    def _apply(self, fn, recurse=True):
        # Follow the model to its device but never to its dtype: rebuilt in fp32 after any move or cast.
        super()._apply(fn, recurse)
        device = self.inv_freq_short.device
        if device.type != "meta":
            self.inv_freq_short, self.inv_freq_long = (x.to(device) for x in self._inverse_frequencies())
        return self

    def forward(self, positions: torch.Tensor, lengths: torch.Tensor,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (B, L) and each sample's real sequence length (B,) -> cos, sin (B, 1, L, head_dim) in dtype."""
        # Angles in fp32 whatever the weights' dtype (bf16 loses precision on long contexts), then cast once
        # for all layers, as Phi-3 does.
        use_long = (lengths > self.original_max)[:, None]
        inv_freq = torch.where(use_long, self.inv_freq_long, self.inv_freq_short)  # (B, d/2)
        freqs = positions.float()[:, :, None] * inv_freq[:, None, :]
        emb = torch.cat([freqs, freqs], dim=-1)[:, None]
        return (emb.cos() * self.scale).to(dtype), (emb.sin() * self.scale).to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)


@dataclass
class StepMask:
    """The attention pattern of a cached denoising step, whose queries are [time token, output tokens] and whose
    keys are [cached condition, time token, output tokens]: the time token sees the first `time_keys` keys
    (condition + itself), output tokens see every key. `key_valid` (B, Lk) marks real keys; None when the batch
    has no padding, which lets both attention calls run without a mask (flash kernels on GPU)."""

    time_keys: int
    key_valid: torch.Tensor | None = None


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | StepMask | None) -> torch.Tensor:
    """q (B, H, Lq, d), k/v (B, KV, Lk, d); mask: a boolean (B, 1, Lq, Lk) tensor (True = may attend), a
    StepMask, or None (everything visible)."""
    gqa = k.shape[1] != q.shape[1]
    if not isinstance(mask, StepMask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    valid = None if mask.key_valid is None else mask.key_valid[:, None, None, :]
    n = mask.time_keys
    time = F.scaled_dot_product_attention(q[:, :, :1], k[:, :, :n], v[:, :, :n],
                                          attn_mask=None if valid is None else valid[..., :n], enable_gqa=gqa)
    outputs = F.scaled_dot_product_attention(q[:, :, 1:], k, v, attn_mask=valid, enable_gqa=gqa)
    return torch.cat([time, outputs], dim=2)


class Attention(nn.Module):
    def __init__(self, config: OmniGenConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        qkv_out = (config.num_heads + 2 * config.num_kv_heads) * config.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, qkv_out, bias=False)
        self.o_proj = nn.Linear(config.num_heads * config.head_dim, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask,
                past: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Returns the output and this call's own (rotated) keys and values, for a cache."""
        b, n, _ = x.shape
        q, k, v = self.qkv_proj(x).split(
            [self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, self.num_kv_heads * self.head_dim],
            dim=-1)
        q = rotate(q.view(b, n, -1, self.head_dim).transpose(1, 2), cos, sin)
        k = rotate(k.view(b, n, -1, self.head_dim).transpose(1, 2), cos, sin)
        v = v.view(b, n, -1, self.head_dim).transpose(1, 2)
        new_kv = (k, v)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        out = attend(q, k, v, mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1)), new_kv


class MLP(nn.Module):
    """SwiGLU with gate and up projections fused in one matrix (gate first)."""

    def __init__(self, config: OmniGenConfig):
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(up * F.silu(gate))


class DecoderLayer(nn.Module):
    def __init__(self, config: OmniGenConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)
        # Recompute this layer's activations in the backward pass instead of storing them (training only).
        self.gradient_checkpointing = False

    def forward(self, x, cos, sin, mask, past=None):
        attn, new_kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, past)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), new_kv


class Decoder(nn.Module):
    """Embeddings, layers and final norm: the `llm.*` part of the checkpoint."""

    def __init__(self, config: OmniGenConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(config) for _ in range(config.num_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, mask, past: list | None = None, keep_kv: bool = False, final_norm: bool = True):
        """Runs every layer. `past`: per-layer cached (k, v) to prepend; `keep_kv`: also return each layer's
        new (k, v)."""
        kvs = []
        for i, layer in enumerate(self.layers):
            layer_past = None if past is None else past[i]
            if layer.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x, kv = checkpoint(layer, x, cos, sin, mask, layer_past, use_reentrant=False)
            else:
                x, kv = layer(x, cos, sin, mask, layer_past)
            if keep_kv:
                kvs.append(kv)
        return (self.norm(x) if final_norm else x), (kvs if keep_kv else None)
