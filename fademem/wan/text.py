"""Text encoder adapter: transformers' UMT5 encoder, as Wan2.1 uses it.

Wan (and Self-Forcing / LongLive / FadeMem) encode a prompt with the UMT5-XXL encoder at a fixed
length of 512 tokens and set the hidden states of padding positions to zero; the DiT then sees
all 512 positions. This adapter loads the Diffusers layout of a Wan2.1 repository::

    <wan-dir>/text_encoder/   config.json + weights   (UMT5EncoderModel)
    <wan-dir>/tokenizer/      tokenizer files         (AutoTokenizer)

Any object with ``encode(prompts: list[str]) -> Tensor [B, L, text_dim]`` satisfies the
pipeline's ``TextEncoder`` protocol; this is the one for real Wan checkpoints.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

import torch

MAX_LENGTH = 512


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning: fix mojibake (if ``ftfy`` is installed), unescape HTML twice,
    collapse whitespace."""
    try:
        import ftfy
    except ImportError:  # optional; only matters for broken unicode
        pass
    else:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def _resolve(root: Path, sub: str) -> Path:
    """``root/sub`` when it exists, else ``root`` itself when it looks like that component."""
    if (root / sub / "config.json").is_file() or (root / sub).is_dir():
        return root / sub
    return root


class UMT5TextEncoder:
    """UMT5 encoder + tokenizer: ``encode(prompts) -> [B, 512, d_model]`` with padding zeroed."""

    def __init__(self, model, tokenizer, max_length: int = MAX_LENGTH, clean: bool = True):
        if max_length <= 0:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.clean = clean

    @property
    def text_dim(self) -> int:
        return int(self.model.config.d_model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device=None, dtype=None) -> UMT5TextEncoder:
        self.model.to(device=device, dtype=dtype)
        return self

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, max_length: int = MAX_LENGTH) -> UMT5TextEncoder:
        """Load from a Wan2.1 Diffusers directory (``<dir>/text_encoder`` + ``<dir>/tokenizer``).

        ``path`` may also be a directory holding both the encoder's config/weights and the
        tokenizer files directly.
        """
        from fademem._compat import hf_ready

        hf_ready()  # torchvision's CPU/CUDA wheel clash (see fademem._compat)
        from transformers import AutoTokenizer, UMT5EncoderModel

        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"text encoder directory not found: {root}")
        enc_dir = _resolve(root, "text_encoder")
        tok_dir = _resolve(root, "tokenizer")
        if not (enc_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"no UMT5 text encoder in {root}: expected {root / 'text_encoder' / 'config.json'} "
                "(the Wan2.1 Diffusers layout, e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers)")
        weights = [p for p in enc_dir.iterdir() if p.suffix in (".safetensors", ".bin")
                   or p.name.endswith(".index.json")]
        if not weights:
            raise FileNotFoundError(f"no text encoder weights (*.safetensors / *.bin) in {enc_dir}")
        tok_files = ("tokenizer.json", "tokenizer_config.json", "spiece.model")
        if not any((tok_dir / f).is_file() for f in tok_files):
            raise FileNotFoundError(
                f"no tokenizer in {root}: expected one of {', '.join(tok_files)} in {root / 'tokenizer'}")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
        except Exception as exc:  # transformers raises many types here
            raise ValueError(f"cannot load the tokenizer from {tok_dir}: {exc}") from exc
        try:
            model = UMT5EncoderModel.from_pretrained(str(enc_dir), dtype=dtype)
        except Exception as exc:
            raise ValueError(f"cannot load a UMT5 encoder from {enc_dir}: {exc}") from exc
        return cls(model.to(device), tokenizer, max_length=max_length)

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), each [B, max_length] (padded, truncated)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise ValueError("need at least one prompt")
        if self.clean:
            prompts = [clean_prompt(p) for p in prompts]
        tok = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                             add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        return tok["input_ids"], tok["attention_mask"]

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Hidden states [B, max_length, d_model] with padding positions set to zero."""
        ids, mask = self.tokenize(prompts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden * mask.unsqueeze(-1).to(hidden.dtype)


# -- random weights at the real size (benchmarks) ----------------------------------------------------------
# google/umt5-xxl as Wan2.1 uses it (encoder only): 5.68 B parameters, 11.4 GB in bf16.
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, relative_attention_max_distance=128,
                feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, tie_word_embeddings=False)
UMT5_TINY = dict(vocab_size=300, d_kv=4, d_ff=32, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                 relative_attention_max_distance=16, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
                 tie_word_embeddings=False)


class ByteTokenizer:
    """A stand-in tokenizer with the call signature ``UMT5TextEncoder.tokenize`` uses: UTF-8 bytes
    (shifted past pad 0, eos 1, unk 2) then eos, padded to ``max_length``. For random-weight encoders
    only, where the tokens' meaning does not matter but their count and the padding mask do."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __call__(self, prompts, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                 add_special_tokens=True, return_attention_mask=True, return_tensors="pt"):
        ids = torch.zeros(len(prompts), max_length, dtype=torch.long)
        mask = torch.zeros(len(prompts), max_length, dtype=torch.long)
        for i, p in enumerate(prompts):
            toks = [min(b + 3, self.vocab_size - 1) for b in p.encode("utf-8")][:max_length - 1] + [1]
            ids[i, :len(toks)] = torch.tensor(toks)
            mask[i, :len(toks)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def random_umt5(size: str = "xxl", text_dim: int | None = None, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.bfloat16, seed: int = 0, max_length: int = MAX_LENGTH) -> UMT5TextEncoder:
    """A ``UMT5TextEncoder`` with random weights: ``size`` 'xxl' (Wan2.1's UMT5-XXL encoder at its real
    size, built directly on ``device`` in ``dtype``) or 'tiny' (width ``text_dim``, tests), with the
    ``ByteTokenizer``. The compute and memory are the real encoder's; the states mean nothing."""
    from fademem._compat import hf_ready

    hf_ready()  # torchvision's CPU/CUDA wheel clash (see fademem._compat)
    from transformers import UMT5Config, UMT5EncoderModel

    if size not in ("xxl", "tiny"):
        raise ValueError(f"unknown UMT5 size {size!r}: 'xxl' or 'tiny'")
    kw = dict(UMT5_XXL) if size == "xxl" else {**UMT5_TINY, "d_model": text_dim or 16}
    if size == "xxl" and text_dim not in (None, kw["d_model"]):
        raise ValueError(f"UMT5-XXL gives {kw['d_model']}-wide states, the DiT expects {text_dim}")
    cfg = UMT5Config(**kw)
    torch.manual_seed(seed)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in the target dtype: no float32 copy of 5.7 B parameters
    try:
        with torch.device(device):
            model = UMT5EncoderModel(cfg)
    finally:
        torch.set_default_dtype(prev)
    return UMT5TextEncoder(model.to(device=device, dtype=dtype), ByteTokenizer(cfg.vocab_size), max_length=max_length)
