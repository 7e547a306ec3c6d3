"""The real generator: the causal Wan2.1 DiT (tiny / 1.3B / 14B configs), its checkpoint layouts and
names, LoRA merging, the flow-matching sampling schedule, and adapters for UMT5 and the Wan VAE."""

from fademem.wan.checkpoints import load_generator, save_generator
from fademem.wan.model import CausalWanModel, WanConfig

__all__ = ["CausalWanModel", "WanConfig", "load_generator", "save_generator"]
