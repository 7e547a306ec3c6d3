"""Learned memory compression (issue 8, after Zhang et al., "Pretraining Frame Preservation in
Autoregressive Video Memory Compression").

* :mod:`.nets` -- the 3D convolutional history encoder (time reduced before space, attention at
  the coarsest level), the noise-as-mask retrieval decoder, latent-space retrieval pretraining.
* :mod:`.kv` -- the per-layer K/V-space compressor the ``compressor`` memory policy runs, its
  retrieval decoder and its files (with the generator LoRA).
* :mod:`.train` -- retrieval pretraining in K/V space on a frozen generator, then LoRA
  fine-tuning of the generator (peft) with the compressor as its memory (``fademem
  train-compressor``), and retrieval-vs-rate evaluation.
"""

from fademem.compressor.nets import CompressorConfig, Encoded, HistoryEncoder, RetrievalDecoder, build, load, parse_channels, parse_rate, pretrain, retrieval_loss, retrieval_metrics, save, sincos, world_histories

__all__ = ["CompressorConfig", "Encoded", "HistoryEncoder", "RetrievalDecoder", "build", "load", "parse_channels",
           "parse_rate", "pretrain", "retrieval_loss", "retrieval_metrics", "save", "sincos", "world_histories"]
