"""The training loss of rectified flow as OmniGen uses it: x_t = t * x1 + (1 - t) * x0 with t = 0 pure noise (x0)
and t = 1 data (x1); the model predicts the velocity x1 - x0. Sampling is x2i.model.inference.scheduler."""
from __future__ import annotations

import torch


def sample_timesteps(n: int, generator: torch.Generator | None = None, sampling: str = "logit_normal",
                     mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """Training times. logit_normal (the default, OmniGen's): t = sigmoid(u), u ~ N(mean, std), most weight in
    the middle; mean < 0 moves weight to the noisy end. uniform: t ~ U(0, 1), the weight the Euler sampler's
    evenly spaced steps give every t (the logit-normal leaves t < 0.2, where a 64 px model commits to a shape,
    with 8% of the samples: docs/benchmarks.md "Learning proofs")."""
    if sampling == "uniform":
        return torch.rand(n, generator=generator)
    if sampling != "logit_normal":
        raise ValueError(f"unknown timestep sampling {sampling!r}")
    return torch.sigmoid(torch.randn(n, generator=generator) * std + mean)


def flow_matching_loss(model, cond, x1, t: torch.Tensor | None = None, noise=None,
                       loss_mask=None, generator: torch.Generator | None = None,
                       timesteps: dict | None = None) -> torch.Tensor:
    """Per-sample mean squared velocity error (B,) for clean latents x1: a (B, C, H, W) tensor or a list of
    (C, H_i, W_i) latents of different sizes. `loss_mask` (same form as x1, broadcastable per sample) weights
    latent pixels, e.g. 0 where an edit leaves the image unchanged; the mean is taken over the mask's weight.
    `timesteps`: sample_timesteps' keyword arguments (sampling, mean, std), used when t is drawn here."""
    as_list = not isinstance(x1, torch.Tensor)
    xs = list(x1) if as_list else list(x1.unbind(0))
    if t is None:
        t = sample_timesteps(len(xs), generator, **(timesteps or {})).to(xs[0].device)
    if noise is None:
        noise = [torch.randn(x.shape, generator=generator).to(x.device, x.dtype) for x in xs]
    x0 = list(noise) if not isinstance(noise, torch.Tensor) else list(noise.unbind(0))
    xt = [ti * a + (1 - ti) * b for ti, a, b in zip(t, xs, x0)]
    pred = model(cond, xt if as_list else torch.stack(xt), t)
    pred = pred if as_list else list(pred.unbind(0))
    losses = []
    for i, (p, a, b) in enumerate(zip(pred, xs, x0)):
        err = (p.float() - (a - b).float()) ** 2
        if loss_mask is None:
            losses.append(err.mean())
        else:
            w = loss_mask[i].float().expand_as(err)
            losses.append((err * w).sum() / w.sum().clamp(min=1e-8))
    return torch.stack(losses)
