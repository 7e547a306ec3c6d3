"""The time budget of ``fademem bench speed --time-budget``."""

from __future__ import annotations

import math
import time


class _Budget:
    """The time budget: a deadline for every run, and a forecast that skips a part that would not
    fit. Forecasts use the chunk costs measured so far (none yet: the part runs, and its deadline
    stops it if needed)."""

    COMPILE_ALLOWANCE_S = 75.0  # torch.compile of the blocks + warm-up, measured ~40-70 s at 1.3B
    VAE_ALLOWANCE_S = 10.0  # building the VAE and its warm-up decode

    def __init__(self, t_start: float, seconds: float | None):
        self.t_start, self.seconds = t_start, seconds
        self.full_ms: float | None = None  # wall ms of a timed DiT chunk
        self.cache_ms: float | None = None  # wall ms of a cache-only chunk
        self.e2e_extra_ms: float | None = None  # decode ms per chunk on top of the DiT

    @property
    def deadline(self) -> float | None:
        return None if self.seconds is None else self.t_start + self.seconds

    def left(self) -> float:
        return math.inf if self.seconds is None else self.t_start + self.seconds - time.perf_counter()

    def forecast(self, timed: int, untimed: int = 0, extra_s: float = 0.0, e2e: bool = False) -> float | None:
        if self.full_ms is None:
            return None
        per = self.full_ms + (self.e2e_extra_ms or 0.0 if e2e else 0.0)
        return (timed * per + untimed * (self.cache_ms or self.full_ms / 5)) / 1e3 + extra_s

    def fits(self, *args, **kw) -> bool:
        f = self.forecast(*args, **kw)
        return f is None or f <= self.left()

    def learn(self, res: dict) -> None:
        s = res.get("summary") or {}
        if s and self.full_ms is None and not res.get("end_to_end"):
            self.full_ms = s["wall_ms_median"]
        tm = res.get("timed_mode") or {}
        if tm.get("cache_pass_ms_mean") and self.cache_ms is None:
            self.cache_ms = tm["cache_pass_ms_mean"]
