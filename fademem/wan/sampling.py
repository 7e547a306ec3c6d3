"""The few-step flow-matching schedule of Self-Forcing / LongLive / FadeMem.

Flow matching interpolates ``x_t = (1 - sigma) * x0 + sigma * noise`` with ``sigma = t / 1000``
and the network predicts the flow ``v = noise - x0``, so ``x0 = x_t - sigma * v``.

The distilled generators sample with four steps, nominally ``t = 1000, 750, 500, 250``, warped
through the shifted schedule used in training (shift 5, 1000 training steps)::

    sigma  = t / 1000
    sigma' = shift * sigma / (1 + (shift - 1) * sigma)        t' = 1000 * sigma'

which gives ``[1000, 937.5, 833.33, 625]``. This equals LongLive's ``warp_denoising_step``
(its scheduler: ``sigmas = linspace(1, 0, 1001)[:-1]`` shifted, ``timesteps = 1000 * sigmas``,
indexed at ``1000 - t``) up to float32 rounding. Between steps the prediction is re-noised to
the next level with fresh noise: ``x = (1 - sigma_next) * x0 + sigma_next * noise``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

DEFAULT_STEPS = (1000, 750, 500, 250)
DEFAULT_SHIFT = 5.0
NUM_TRAIN_TIMESTEPS = 1000


def shift_sigma(sigma: float, shift: float) -> float:
    """The shifted noise level ``shift * sigma / (1 + (shift - 1) * sigma)``."""
    if not 0.0 <= sigma <= 1.0:
        raise ValueError(f"sigma must lie in [0, 1], got {sigma}")
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def warp_timesteps(steps: Sequence[float] = DEFAULT_STEPS, shift: float = DEFAULT_SHIFT,
                   num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> tuple[float, ...]:
    """Warp nominal timesteps through the shifted schedule: (1000, 750, 500, 250) -> (1000, 937.5, 833.3, 625)."""
    steps = tuple(float(s) for s in steps)
    if not steps:
        raise ValueError("need at least one denoising step")
    for s in steps:
        if not 0.0 < s <= num_train_timesteps:
            raise ValueError(f"timesteps must lie in (0, {num_train_timesteps}], got {s} "
                             "(the final t=0 pass is the cache-writing pass, not a denoising step)")
    if any(b >= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"timesteps must be strictly decreasing, got {steps}")
    return tuple(num_train_timesteps * shift_sigma(s / num_train_timesteps, shift) for s in steps)


@dataclass(frozen=True)
class FlowSchedule:
    """Warped timesteps and their noise levels, plus the two update rules of the sampler."""

    steps: tuple[float, ...] = DEFAULT_STEPS
    shift: float = DEFAULT_SHIFT
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
    timesteps: tuple[float, ...] = field(init=False, default=())  # the warped values fed to the model

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(float(s) for s in self.steps))
        object.__setattr__(self, "timesteps", warp_timesteps(self.steps, self.shift, self.num_train_timesteps))

    @property
    def sigmas(self) -> tuple[float, ...]:
        return tuple(t / self.num_train_timesteps for t in self.timesteps)

    def __len__(self) -> int:
        return len(self.timesteps)

    def sigma(self, t: float) -> float:
        """Noise level of a (warped) timestep: t / num_train_timesteps."""
        return float(t) / self.num_train_timesteps

    @staticmethod
    def x0_from_flow(x_t: torch.Tensor, v: torch.Tensor, sigma: float) -> torch.Tensor:
        """x0 = x_t - sigma * v, computed in float32 (at least), returned in x_t's dtype."""
        work = torch.promote_types(x_t.dtype, torch.float32)
        return (x_t.to(work) - sigma * v.to(work)).to(x_t.dtype)

    @staticmethod
    def euler_step(x_t: torch.Tensor, v: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
        """The deterministic flow-ODE step ``x_t + (sigma_next - sigma) * v`` (float32 at least)."""
        work = torch.promote_types(x_t.dtype, torch.float32)
        return (x_t.to(work) + (sigma_next - sigma) * v.to(work)).to(x_t.dtype)

    @staticmethod
    def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        """(1 - sigma) * x0 + sigma * noise, in float32 (at least), returned in x0's dtype."""
        work = torch.promote_types(x0.dtype, torch.float32)
        return ((1.0 - sigma) * x0.to(work) + sigma * noise.to(work)).to(x0.dtype)
