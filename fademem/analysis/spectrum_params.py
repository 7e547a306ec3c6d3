"""Parameters of the spectral-decay analysis (``fademem spectrum``); the steps they steer are
described in ``fademem.analysis.spectrum``."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SpectrumParams:
    bands: int = 8
    band_scale: str = "log"  # log | linear: band edges in rho = |f| / f_Nyquist
    rho_min: float | None = None  # log bands: lowest edge; None -> 2 / min(H, W), the lowest non-DC ring
    max_lag: int = 32
    channels: str = "luma"  # luma | rgb | raw (frames already (C, H, W) or (H, W))
    window: str = "hann"  # hann | none
    rule: str = "slope"  # slope | drop: horizon rule, see `flatness`
    eps: float = 0.1
    lookahead: float = 0.5  # slope rule: local slope measured over [lag, (1 + lookahead) lag]
    min_drop: float = 0.05
    censor_frac: float = 0.5
    block: int | None = None  # bootstrap block length in frames; None -> ceil(censor_frac * max_lag)
    n_boot: int = 1000
    level: float = 0.95
    ci: str = "bootstrap"  # bootstrap | ols: which interval the summary / beta use
    seed: int = 0
    beta_floor: float = 0.05
    min_points: int = 4  # resolved bands a fit needs before it can be called a power law
    min_r2: float = 0.8  # r^2 below this: "weak" (below min_r2 / 2 ... see spectrum_stats.verdict)
    eps_grid: tuple = (0.05, 0.1, 0.2)  # sensitivity grid: every rule x these eps

    def validate(self) -> SpectrumParams:
        if self.bands < 2:
            raise ValueError(f"bands must be >= 2, got {self.bands}")
        if self.max_lag < 2:
            raise ValueError(f"max_lag must be >= 2, got {self.max_lag}")
        if self.channels not in ("luma", "rgb", "raw"):
            raise ValueError(f"channels must be luma, rgb or raw, got {self.channels!r}")
        if self.window not in ("hann", "none"):
            raise ValueError(f"window must be hann or none, got {self.window!r}")
        if self.band_scale not in ("log", "linear"):
            raise ValueError(f"band_scale must be log or linear, got {self.band_scale!r}")
        if self.rho_min is not None and not 0 < self.rho_min < 1:
            raise ValueError(f"rho_min must be in (0, 1), got {self.rho_min}")
        if self.rule not in ("slope", "drop"):
            raise ValueError(f"rule must be slope or drop, got {self.rule!r}")
        if self.lookahead <= 0:
            raise ValueError(f"lookahead must be > 0, got {self.lookahead}")
        if not 0 < self.eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {self.eps}")
        if not 0 < self.censor_frac <= 1:
            raise ValueError(f"censor_frac must be in (0, 1], got {self.censor_frac}")
        if self.block is not None and self.block < 1:
            raise ValueError(f"block must be >= 1, got {self.block}")
        if not 0 < self.level < 1:
            raise ValueError(f"level must be in (0, 1), got {self.level}")
        if self.ci not in ("bootstrap", "ols"):
            raise ValueError(f"ci must be bootstrap or ols, got {self.ci!r}")
        if not 0 < self.beta_floor <= 1:
            raise ValueError(f"beta_floor must be in (0, 1], got {self.beta_floor}")
        return self

    @property
    def block_len(self) -> int:
        return self.block or max(1, math.ceil(self.censor_frac * self.max_lag))
