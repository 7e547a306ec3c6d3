"""The results store of ``fademem eval run``: one SQLite file, resumable, safe to kill.

Every finished job (one video of one prompt under one memory spec and seed) is one row, written in one
transaction after its video file is complete: the job's key, prompt, spec, seed, length, the model and
its checkpoint hash, the fademem version, the video path, its scores (JSON) and timings. A rerun skips
every key already stored, so a killed run loses at most the videos in progress.

Under torchrun each rank writes its own shard file (``<store>.rank<r>``) while it works, so no two
processes ever write one file; rank 0 folds the shards into the store at the end, and at the start of
a rerun (a killed run leaves its shards behind; their rows count as done).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = ["COLUMNS", "ResultStore", "file_hash"]

COLUMNS = ("key", "prompt_index", "prompt", "spec", "seed", "seconds", "model", "checkpoint_hash",
           "fademem_version", "video", "frames", "fps", "clips", "scores", "details", "rank", "gen_seconds",
           "score_seconds", "finished")
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, prompt_index INTEGER, prompt TEXT, spec TEXT, "
    "seed INTEGER, seconds REAL, model TEXT, checkpoint_hash TEXT, fademem_version TEXT, video TEXT, "
    "frames INTEGER, fps REAL, clips INTEGER, scores TEXT, details TEXT, rank INTEGER, gen_seconds REAL, "
    "score_seconds REAL, finished REAL)"
)


def file_hash(paths: Iterable, chunk: int = 1 << 24) -> str:
    """sha256 over the bytes of ``paths`` in order (checkpoint, then LoRA files)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()


def _connect(path) -> sqlite3.Connection:
    con = sqlite3.connect(str(path), timeout=60)
    con.execute(_SCHEMA)
    return con


class ResultStore:
    """``ResultStore(path)``; ``shard(rank)`` is the file a rank writes under torchrun."""

    def __init__(self, path):
        self.path = Path(path)
        if self.path.is_dir():
            raise ValueError(f"results store {self.path} is a directory; give a file path, e.g. results.sqlite")
        if not self.path.parent.is_dir():
            raise ValueError(f"cannot create the results store {self.path}: {self.path.parent} does not exist")

    def shard_path(self, rank: int) -> Path:
        return self.path.with_name(f"{self.path.name}.rank{rank}")

    def _files(self) -> list[Path]:
        files = [self.path] if self.path.exists() else []
        shards = [Path(p) for p in sorted(glob.glob(glob.escape(str(self.path)) + ".rank*"))]
        # only the shards themselves: never SQLite's own -journal / -wal files beside them
        return files + [p for p in shards if re.fullmatch(r"\.rank\d+", p.name[len(self.path.name):])]

    def done_keys(self) -> set[str]:
        keys: set[str] = set()
        for f in self._files():
            with _connect(f) as con:
                keys |= {k for (k,) in con.execute("SELECT key FROM results")}
        return keys

    def count(self) -> int:
        return len(self.done_keys())

    def write(self, row: dict, rank: int | None = None) -> None:
        """Store one finished job (``rank``: write to that rank's shard)."""
        row = dict(row)
        row.setdefault("finished", time.time())
        for k in ("scores", "details"):
            if not isinstance(row.get(k), str):
                row[k] = json.dumps(row.get(k), sort_keys=True)
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise ValueError(f"result row lacks {missing}")
        target = self.path if rank is None else self.shard_path(rank)
        con = _connect(target)
        try:
            with con:
                con.execute(f"INSERT OR REPLACE INTO results ({', '.join(COLUMNS)}) VALUES "
                            f"({', '.join('?' * len(COLUMNS))})", [row[c] for c in COLUMNS])
        finally:
            con.close()

    def merge_shards(self) -> int:
        """Fold every shard into the store and delete it; returns the rows moved."""
        moved = 0
        shards = [f for f in self._files() if f != self.path]
        if not shards:
            return 0
        con = _connect(self.path)
        try:
            for shard in shards:
                with con:
                    con.execute("ATTACH DATABASE ? AS shard", (str(shard),))
                    moved += con.execute("INSERT OR IGNORE INTO results SELECT * FROM shard.results").rowcount
                con.execute("DETACH DATABASE shard")
                os.remove(shard)
        finally:
            con.close()
        return moved

    def rows(self) -> list[dict]:
        out = []
        for f in self._files():
            con = _connect(f)
            try:
                con.row_factory = sqlite3.Row
                for r in con.execute("SELECT * FROM results ORDER BY spec, prompt_index, seed"):
                    d = dict(r)
                    d["scores"], d["details"] = json.loads(d["scores"] or "null"), json.loads(d["details"] or "null")
                    out.append(d)
            finally:
                con.close()
        return out
