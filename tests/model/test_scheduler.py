"""The flow-matching Euler scheduler: diffusers-style set_timesteps / step, bit-identical to the inline Euler loop
the pipeline ran before it (times from linspace(0, 1, steps + 1), the step size as a Python float)."""
from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="needs the model extra: pip install 'x2i[model]'")
import torch  # noqa: E402

from x2i.model.inference.scheduler import FlowMatchEulerScheduler  # noqa: E402


def velocity(z: torch.Tensor, t: float) -> torch.Tensor:
    return torch.sin(3 * z + t) - 0.5 * z


@pytest.mark.parametrize("steps", [1, 2, 7, 50])
def test_bit_identical_to_the_inline_euler_loop(steps):
    z0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(steps))
    expected = z0.clone()
    times = torch.linspace(0, 1, steps + 1)
    for i in range(steps):
        expected = expected + float(times[i + 1] - times[i]) * velocity(expected, float(times[i]))
    scheduler = FlowMatchEulerScheduler()
    scheduler.set_timesteps(steps)
    z = z0.clone()
    for t in scheduler.timesteps:
        z = scheduler.step(velocity(z, float(t)), t, z)
    assert scheduler.num_inference_steps == steps and len(scheduler.timesteps) == steps
    assert float(scheduler.timesteps[0]) == 0.0
    assert torch.equal(z, expected)


def test_steps_are_taken_in_order():
    scheduler = FlowMatchEulerScheduler()
    z = torch.zeros(1)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        scheduler.step(z, 0.0, z)
    scheduler.set_timesteps(2)
    with pytest.raises(ValueError, match="step 0 is at t = 0.0"):
        scheduler.step(z, 0.5, z)
    for t in scheduler.timesteps:
        z = scheduler.step(torch.ones(1), t, z)
    assert torch.equal(z, torch.ones(1))
    with pytest.raises(RuntimeError, match="all 2 steps"):
        scheduler.step(z, 1.0, z)
    with pytest.raises(ValueError):
        scheduler.set_timesteps(0)
