"""The embedded generator: a small causal Wan DiT of our own, its procedural world and its training.

``fademem.embedded.load()`` gives the shipped bundle (DiT, text encoder, codec); a pipeline over it
is ``fademem.pipeline.embedded_pipeline()`` (the pipeline layer sits above the generators).
"""

from fademem.embedded.bundle import (
    ASSET,
    EmbeddedBundle,
    EmbeddedConfig,
    PixelCodec,
    SamplingSchedule,
    WordTextEncoder,
    build,
    default_path,
    latent_shape,
    load,
    opening,
    save,
)

__all__ = ["ASSET", "EmbeddedBundle", "EmbeddedConfig", "PixelCodec", "SamplingSchedule", "WordTextEncoder", "build",
           "default_path", "latent_shape", "load", "opening", "save"]


def __getattr__(name: str):
    if name == "pipeline":
        raise AttributeError("fademem.embedded.pipeline moved to fademem.pipeline.embedded_pipeline (the embedded "
                             "generator sits below the pipeline layer)")
    raise AttributeError(f"module 'fademem.embedded' has no attribute {name!r}")
