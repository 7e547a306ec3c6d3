"""Learned memory compression (issue 8, after Zhang et al., "Pretraining Frame Preservation in
Autoregressive Video Memory Compression").

Training code. What the ``compressor`` memory policy runs at inference (the history encoder trunk,
the per-layer K/V compressor, reading its files and the generator LoRA in them) lives in the
memory layer, :mod:`fademem.memory.compressor_net`; the modules here build on it and re-export it.

* :mod:`.nets` -- the noise-as-mask retrieval decoder and latent-space retrieval pretraining of
  the 3D convolutional history encoder (time reduced before space, attention at the coarsest level).
* :mod:`.kv` -- the K/V-space retrieval decoder and the compressor files: saving, and loading with
  the decoder (with the generator LoRA).
* :mod:`.views` -- the generator's K/V of a history and the memory views the policy would hold.
* :mod:`.train` -- retrieval pretraining in K/V space on a frozen generator, then LoRA
  fine-tuning of the generator (peft) with the compressor as its memory (``fademem
  train-compressor``), and retrieval-vs-rate evaluation.
"""

from fademem.compressor.nets import (
           CompressorConfig,
           Encoded,
           HistoryEncoder,
           RetrievalDecoder,
           build,
           load,
           parse_channels,
           parse_rate,
           pretrain,
           retrieval_loss,
           retrieval_metrics,
           save,
           sincos,
           world_histories,
)

__all__ = ["CompressorConfig", "Encoded", "HistoryEncoder", "RetrievalDecoder", "build", "load", "parse_channels",
           "parse_rate", "pretrain", "retrieval_loss", "retrieval_metrics", "save", "sincos", "world_histories"]
