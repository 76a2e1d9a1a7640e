"""Sampling for rectified flow as OmniGen uses it: x_t = t * x1 + (1 - t) * x0 with t = 0 pure noise and t = 1 data;
the model predicts the velocity x1 - x0, integrated with Euler steps over linspace(0, 1, steps + 1).

`FlowMatchEulerScheduler` has diffusers' shape (set_timesteps, timesteps, step), so a sampling loop reads like
diffusers' and another scheduler could take its place:

    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        sample = scheduler.step(velocity(sample, t), t, sample)

Unlike diffusers' FlowMatchEulerDiscreteScheduler, time runs upward (0 noise -> 1 data, OmniGen's convention) and
t is the model's input as is (no x1000). The training side (times, loss) is in x2i.model.training.loss.
"""
from __future__ import annotations

import torch


class FlowMatchEulerScheduler:
    def __init__(self):
        self.sigmas: torch.Tensor | None = None  # the steps + 1 time points, 0 ... 1
        self.timesteps: torch.Tensor | None = None  # the steps times the model is evaluated at
        self.step_index = 0

    @property
    def num_inference_steps(self) -> int:
        return 0 if self.timesteps is None else len(self.timesteps)

    def set_timesteps(self, num_inference_steps: int) -> None:
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
        self.sigmas = torch.linspace(0, 1, num_inference_steps + 1)
        self.timesteps = self.sigmas[:-1]
        self.step_index = 0

    def step(self, velocity: torch.Tensor, t: float | torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The sample one Euler step later: sample + (t_next - t) * velocity. Steps are taken in order; `t` must be
        the current timestep (checked, so a skipped or repeated step cannot pass unnoticed)."""
        if self.sigmas is None:
            raise RuntimeError("call set_timesteps before step")
        i = self.step_index
        if i >= self.num_inference_steps:
            raise RuntimeError(f"all {self.num_inference_steps} steps were taken; call set_timesteps again")
        if float(t) != float(self.sigmas[i]):
            raise ValueError(f"step {i} is at t = {float(self.sigmas[i])}, got t = {float(t)}")
        self.step_index = i + 1
        # The step size as a Python float, like the loop this replaced: bit-identical samples.
        return sample + float(self.sigmas[i + 1] - self.sigmas[i]) * velocity


def guide(preds: list[torch.Tensor], guidance_scale: float, image_guidance_scale: float) -> torch.Tensor:
    """Combine branch velocities [cond, uncond(, images_only)]:
    uncond + img_s * (images_only - uncond) + s * (cond - images_only), or uncond + s * (cond - uncond)."""
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        cond, uncond = preds
        return uncond + guidance_scale * (cond - uncond)
    cond, uncond, images_only = preds
    return uncond + image_guidance_scale * (images_only - uncond) + guidance_scale * (cond - images_only)
