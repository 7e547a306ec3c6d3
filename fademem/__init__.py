"""fademem: bounded KV memories for long-horizon autoregressive video diffusion."""

__version__ = "0.1.0"
