"""Episodes for ``fademem finetune``: a *contiguous* history of world frames, then the target chunk.

``fademem.embedded.train_data.WorldBatches`` gives memory-*shaped* contexts (a rule picks a few earlier
frames); the fine-tune instead runs the real memory over every history frame (``fademem.pipeline.finetune``),
so it needs the whole history. ``EpisodeBatches`` is a ``WorldBatches`` with that one change: its worlds
(``random_world``), its revisit worlds (``_revisit_world``: a camera that pans away and returns, the history
after the first departure sometimes another seed's world) and its batch layout (``_assemble``: uint8 video,
prompt ids, n_ctx = history frames) are the training data's own. Each batch is one history length:
``max_history`` frames for ordinary episodes (a random stretch of the world's endless video), the return
time for revisit episodes (``revisit_target``: the target on the way back or just home).
"""

from __future__ import annotations

import numpy as np

from fademem.embedded.train_data import CHUNK, WorldBatches, random_world, revisit_target
from fademem.embedded.world.scene import HOME_HOLD, RETURN_SPEED


def revisit_min_frames(fps: int) -> int:
    """The shortest history that holds a return of the shortest revisit gap (2 s at home, a 2 s gap, the pan
    back, 1 s): shorter histories get no revisit episodes (``revisit_target``'s own bound)."""
    return int(np.ceil((2 + 1.0 / RETURN_SPEED + HOME_HOLD + 1) * fps))


class EpisodeBatches(WorldBatches):
    """Endless episode batches: ``{"video": uint8 [B, n_ctx + 3, S, S, 3], "ids", "n_ctx", "kind", ...}``
    (``cfg``: a ``TrainConfig`` whose ``max_history`` is the history length, a multiple of 3)."""

    def __iter__(self):
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, 0xF17E])
        revisit = cfg.revisit_p > 0 and cfg.max_history >= revisit_min_frames(self.fps)
        while True:
            if revisit and rng.random() < cfg.revisit_p:
                yield self._revisit_episode(rng)
                continue
            n = cfg.max_history
            examples, ids = [], []
            for _ in range(cfg.batch):
                world, tok = random_world(rng, self.size, self.fps, self.text_len)
                offset = int(rng.integers(0, 4 * n + 1))  # any stretch of the (endless) video
                examples.append([(world, offset + t) for t in range(n + CHUNK)])
                ids.append(tok)
            yield self._assemble(examples, ids, list(range(n)), n, [float(t) for t in range(n + CHUNK)], "episode")

    def _revisit_episode(self, rng: np.random.Generator) -> dict:
        """One revisit batch: one gap and target start for the batch (as ``WorldBatches``' revisit batches), a
        fresh pair of worlds per example; the target chunk is always the true world's."""
        cfg = self.cfg
        gap, start, home = revisit_target(rng, self.fps, cfg.max_history)
        start = min(start, cfg.max_history)
        examples, ids = [], []
        for _ in range(cfg.batch):
            world, alt, tok = self._revisit_world(rng, gap)
            swap = rng.random() < cfg.revisit_swap_p  # the history after the first departure: another world's
            examples.append([(alt if swap and home <= t < start else world, t) for t in range(start + CHUNK)])
            ids.append(tok)
        return self._assemble(examples, ids, list(range(start)), start, [float(t) for t in range(start + CHUNK)],
                              f"revisit-{gap}s")
