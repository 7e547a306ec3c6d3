"""The low-memory (24 GB) mode: the text encoder lives on the CPU and visits the GPU only to encode.

Wan's UMT5-XXL encoder is 5.7 B parameters (11.4 GB in bf16), four times the 1.3 B DiT. A
generation encodes its prompts once, at the start (``GenerationSession`` encodes the initial prompt
and every switch's prompt before the first chunk), so the encoder is dead weight on the GPU for the
rest of the run. ``OffloadedTextEncoder`` keeps it in host memory, moves it to the GPU for each
``encode`` call and back afterwards (releasing the cached blocks), as CausVid / LongLive users do
on 24 GB cards (LongLive's ``low_memory`` inference). The peak GPU memory of a run is then the
larger of (encoder + DiT + VAE) while encoding and (DiT + memory + VAE + activations) while
generating, instead of their sum.
"""

from __future__ import annotations

import torch


class OffloadedTextEncoder:
    """Wraps a text encoder with ``encode(prompts)`` and ``to(device)`` (``fademem.wan.text.UMT5TextEncoder``);
    the encoder is kept on ``home`` (the CPU) and moved to ``device`` only while encoding. Other
    attributes (``tokenize``, ``text_dim``, ...) are the wrapped encoder's."""

    def __init__(self, encoder, device: str | torch.device, home: str | torch.device = "cpu"):
        if not callable(getattr(encoder, "encode", None)) or not callable(getattr(encoder, "to", None)):
            raise TypeError("the offloaded text encoder needs encode(prompts) and to(device)")
        self.encoder, self.device, self.home = encoder, torch.device(device), torch.device(home)
        self.encoder.to(self.home)
        self.encode_calls = 0
        self.encode_seconds = 0.0

    def __getattr__(self, name):  # only called for names the wrapper does not have
        if name == "encoder":
            raise AttributeError(name)
        return getattr(self.encoder, name)

    @torch.no_grad()
    def encode(self, prompts) -> torch.Tensor:
        import time

        t0 = time.perf_counter()
        self.encoder.to(self.device)
        try:
            out = self.encoder.encode(prompts)
        finally:
            self.encoder.to(self.home)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        self.encode_calls += 1
        self.encode_seconds += time.perf_counter() - t0
        return out.to(self.device)
