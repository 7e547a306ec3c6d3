"""Procedural video world: prompt grammar, deterministic renderer, revisit ground truth.

    spec = parse_prompt("a small red circle drifting right over a striped green background, "
                        "camera pans right and returns after 8 seconds")
    video = render(spec, seed=0, num_frames=480)          # [T, 64, 64, 3] float32 in [0, 1]
    lags = last_seen(spec, seed=0, num_frames=480)         # [T] frames since the content was last seen
"""

from fademem.embedded.world.grammar import (
    COLOURS,
    GRAMMAR,
    MAX_OBJECTS,
    MAX_PROMPT_WORDS,
    PAD_ID,
    SECONDS,
    SHAPES,
    SIZES,
    TEXTURES,
    VOCABULARY,
    CameraSpec,
    ObjectSpec,
    OccluderSpec,
    SceneSpec,
    detokenize,
    parse_prompt,
    sample_prompt,
    sample_scene,
    tokenize,
)
from fademem.embedded.world.render import World, frame_at, iter_frames, render
from fademem.embedded.world.revisit import BENCHMARK_SCENES, home_return_frames, last_seen, revisit_scene
from fademem.embedded.world.scene import WORLD_WIDTH

__all__ = [
    "BENCHMARK_SCENES", "COLOURS", "GRAMMAR", "MAX_OBJECTS", "MAX_PROMPT_WORDS", "PAD_ID", "SECONDS", "SHAPES",
    "SIZES", "TEXTURES", "VOCABULARY", "WORLD_WIDTH", "CameraSpec", "ObjectSpec", "OccluderSpec", "SceneSpec",
    "World", "detokenize", "frame_at", "home_return_frames", "iter_frames", "last_seen", "parse_prompt",
    "render", "revisit_scene", "sample_prompt", "sample_scene", "tokenize",
]
