"""The configuration of the causal Wan2.1 DiT: widths, depth, patching and the 1.3B / 14B / tiny presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class WanConfig:
    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_len: int = 512
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        for name in ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_dim",
                     "freq_dim", "text_len"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"WanConfig.{name} must be positive, got {getattr(self, name)}")
        if self.dim % self.num_heads:
            raise ValueError(f"WanConfig: dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(f"WanConfig: head_dim {self.head_dim} must be even and >= 6 for 3D RoPE")
        if self.freq_dim % 2:
            raise ValueError(f"WanConfig: freq_dim must be even, got {self.freq_dim}")
        if len(self.patch_size) != 3 or min(self.patch_size) <= 0:
            raise ValueError(f"WanConfig: patch_size must be three positive ints, got {self.patch_size}")
        if self.patch_size[0] != 1:
            raise ValueError("WanConfig: the causal model works frame by frame; temporal patch must be 1")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @classmethod
    def wan_1_3b(cls, **overrides) -> WanConfig:
        return cls(**{**dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30), **overrides})

    @classmethod
    def wan_14b(cls, **overrides) -> WanConfig:
        return cls(**{**dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40), **overrides})

    @classmethod
    def tiny(cls, **overrides) -> WanConfig:
        """A few-thousand-parameter model with the real architecture, for tests."""
        base = dict(dim=64, ffn_dim=128, num_heads=4, num_layers=2, text_dim=32, freq_dim=32, text_len=16)
        return cls(**{**base, **overrides})

    def replace(self, **changes) -> WanConfig:
        return dataclasses.replace(self, **changes)
