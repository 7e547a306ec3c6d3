"""The chunk loop and everything around it: sampling with a memory (``sampler``), prompt switches
(``switches``), streaming/overlapped decode (``decode``), CUDA graphs (``cuda_graph``), video files
(``output``, ``video_io``), and assembling a pipeline for a generator (``build``)."""

from fademem.pipeline.build import check_adapter_base, embedded_pipeline, generator_for_memory, load_wan_pipeline
from fademem.pipeline.sampler import Chunk, Decoder, NonFiniteError, TextEncoder, VideoPipeline, initial_noise
from fademem.pipeline.switches import latent_frames_for_seconds, parse_switch, plan_switches

__all__ = ["Chunk", "Decoder", "NonFiniteError", "TextEncoder", "VideoPipeline", "check_adapter_base",
           "embedded_pipeline", "generator_for_memory", "initial_noise", "latent_frames_for_seconds",
           "load_wan_pipeline", "parse_switch", "plan_switches"]
