"""Where prompts change and how long a video is: prompt switches (``"FRAME:PROMPT"`` /
``"SECONDSs:PROMPT"`` specs, validated and rounded to chunk boundaries), one prompt per batch item,
and the latent-frame count of a video of a given length.

What happens at a switch (new text context, KV-recache of held frames) is the chunk loop's work,
in ``fademem.pipeline.sampler``.
"""

from __future__ import annotations

import logging
import math

log = logging.getLogger(__name__)


def latent_frames_for_seconds(seconds: float, fps: float = 16, temporal_stride: int = 4,
                              frames_per_chunk: int = 3) -> int:
    """Latent frames for a video of ``seconds``: video frames = fps * seconds (rounded up), latent
    frames = ceil((frames + 3) / 4) (the causal VAE turns T latent frames into 4T - 3 video
    frames), rounded up to whole chunks. 60 s at 16 fps: 960 frames -> 241 -> 243 latent frames
    (969 video frames)."""
    if not seconds > 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    frames = math.ceil(fps * seconds - 1e-9)
    latent = math.ceil((frames + temporal_stride - 1) / temporal_stride)
    return frames_per_chunk * math.ceil(latent / frames_per_chunk)



def _as_batch(prompts, batch: int | None = None, what: str = "prompts") -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts] * (batch or 1)
    prompts = [str(p) for p in prompts]
    if not prompts:
        raise ValueError(f"{what}: need at least one prompt")
    if batch is not None and len(prompts) != batch:
        raise ValueError(f"{what}: got {len(prompts)} prompts for a batch of {batch}")
    return prompts


def plan_switches(switches, num_frames: int, frames_per_chunk: int, batch: int) -> list[tuple[int, list[str]]]:
    """Validate ``[(latent_frame, prompt | prompts), ...]``: frames are rounded up to the next chunk
    boundary (as LongLive switches at the first chunk that starts at or after the given frame),
    must stay strictly increasing and inside the video (0 < frame < num_frames)."""
    plan: list[tuple[int, list[str]]] = []
    for item in switches or ():
        try:
            frame, prompt = item
        except (TypeError, ValueError):
            raise ValueError(f"a switch is a (latent_frame, prompt) pair, got {item!r}") from None
        if isinstance(frame, bool) or not isinstance(frame, int | float) or frame != int(frame):
            raise ValueError(f"switch frame must be an integer latent-frame index, got {frame!r}")
        frame = int(frame)
        at = frames_per_chunk * math.ceil(frame / frames_per_chunk)
        if at != frame:
            log.warning("prompt switch at latent frame %d moved to the chunk boundary %d", frame, at)
        if frame <= 0:
            raise ValueError(f"switch at latent frame {frame}: a prompt for frame 0 is the initial prompt")
        if at >= num_frames:
            raise ValueError(f"switch at latent frame {frame} (chunk boundary {at}) is not inside the video "
                             f"of {num_frames} latent frames")
        if plan and at <= plan[-1][0]:
            raise ValueError(f"switch frames must be strictly increasing after rounding to chunk boundaries "
                             f"of {frames_per_chunk}: {plan[-1][0]} then {at} (given {frame})")
        plan.append((at, _as_batch(prompt, batch, what=f"switch at frame {frame}")))
    return plan



def parse_switch(spec: str, fps: float = 16, temporal_stride: int = 4) -> tuple[int, str]:
    """``"FRAME:PROMPT"`` (latent frame) or ``"SECONDSs:PROMPT"`` (e.g. ``"15s:a dog runs"``; video
    frame fps*seconds, which lies in latent frame ceil(frame / 4)) -> (latent_frame, prompt)."""
    head, sep, prompt = spec.partition(":")
    head, prompt = head.strip(), prompt.strip()
    if not sep or not head or not prompt:
        raise ValueError(f"a switch is FRAME:PROMPT (latent frame) or SECONDSs:PROMPT, got {spec!r}")
    try:
        if head.lower().endswith("s"):
            seconds = float(head[:-1])
            if seconds < 0:
                raise ValueError
            return math.ceil(round(fps * seconds, 6) / temporal_stride), prompt
        return int(head), prompt
    except ValueError:
        raise ValueError(f"switch {spec!r}: {head!r} is neither a latent frame index nor seconds like '15s'") from None
