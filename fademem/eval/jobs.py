"""The jobs of ``fademem eval run``: prompt file x memory specs x seeds, and each rank's share.

A prompt file is MovieGenBench's format: one prompt per line (blank lines are skipped; the line number
among the kept lines is the prompt index). Jobs are ordered spec, prompt, seed; a job's key hashes
everything that decides its video (prompt and index, spec, seed, length, size, model and checkpoint
hash), so a store never mixes results of different models or settings under one key.

``shard(pending, rank, world)`` gives rank ``r`` the pending jobs ``r, r + world, ...``: the shares
are disjoint and together are exactly the pending list, whatever the counts (no remainder dropped, no
divisibility required).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["Job", "expand_jobs", "read_prompts", "shard", "spec_hashes"]


@dataclass(frozen=True)
class Job:
    prompt_index: int
    prompt: str
    spec: str
    seed: int
    seconds: float
    model: str            # e.g. "wan:<checkpoint name>" or "embedded"
    checkpoint_hash: str
    size: str             # "480x832" (height x width) or the embedded model's frame size

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:32]

    def slug(self) -> str:
        spec = "".join(c if c.isalnum() or c in "=.-" else "_" for c in self.spec)
        return f"{spec}/{self.prompt_index:04d}-seed{self.seed}"


def read_prompts(path) -> list[str]:
    """Non-empty lines of a prompt file; ValueError naming the file when it has none."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"prompt file not found: {p}")
    prompts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompt file {p} has no prompts (one prompt per line, as MovieGenBench's list)")
    return prompts


def expand_jobs(prompts: list[str], specs: list[str], seeds: list[int], *, seconds: float, model: str,
                checkpoint_hash: str | dict[str, str], size: str) -> list[Job]:
    """``checkpoint_hash``: one for every spec, or per spec (``spec_hashes``: a policy's own adapter files)."""
    def ckpt(spec: str) -> str:
        return checkpoint_hash if isinstance(checkpoint_hash, str) else checkpoint_hash[spec]

    return [Job(i, p, spec, int(seed), float(seconds), model, ckpt(spec), size)
            for spec in specs for i, p in enumerate(prompts) for seed in seeds]


def spec_hashes(specs: list[str], checkpoint_hash: str) -> dict[str, str]:
    """Per spec, the hash that keys its jobs: the generator's files, and for a policy that declares its own
    generator adapter (``fademem:lora=DIR``, a compressor's generator LoRA) also that adapter's files, so a
    LoRA retrained in place is never taken for one already scored. Specs without one keep the plain hash."""
    from fademem.eval.store import file_hash
    from fademem.memory import build_memory

    out = {}
    for spec in specs:
        adapter = build_memory(spec).generator_adapter()
        if adapter is None:
            out[spec] = checkpoint_hash
            continue
        src = Path(adapter.source)
        files = sorted(f for f in src.iterdir() if f.is_file()) if src.is_dir() else [src]
        out[spec] = hashlib.sha256(f"{checkpoint_hash}+{file_hash(files)}".encode()).hexdigest()
    return out


def shard(pending: list[Job], rank: int, world: int) -> list[Job]:
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} of world size {world}")
    return pending[rank::world]
