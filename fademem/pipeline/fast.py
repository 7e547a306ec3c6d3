"""Speed options of a generation: regional ``torch.compile`` of the DiT and the VAE decoder (on by
default on CUDA), torch's on-disk compile caches, and an FP8 mode for the DiT's linear layers.

* ``resolve_compile(mode, device)``: ``"auto"`` (the default of ``fademem generate`` and
  ``fademem bench speed``) is ``"default"`` on CUDA and ``"none"`` (eager) elsewhere.
  ``"reduce-overhead"`` and ``"max-autotune"`` are refused with the reason (``check_compile_mode``).
* ``enable_compile_cache()``: Inductor's FX-graph and kernel caches in a fademem folder under
  ``~/.cache`` (``$TORCHINDUCTOR_CACHE_DIR`` wins when the user set it), so a second run reuses the
  compiled kernels instead of compiling again.
* ``RegionalCompile(model, mode, decoder=)``: compiles every transformer block and the head (the
  memory attention stays eager; see the class), and the Wan VAE decoder when a decoder is given.
* ``fast_decode(mode, device)`` / ``decoder_channels_last(decoder)`` / ``apply_fast_decode(pipe)``: with a
  compile mode on CUDA (the default there), ``fademem generate`` also keeps the Wan VAE decoder's conv3d
  weights in ``torch.channels_last_3d`` (cuDNN then picks its NDHWC conv3d kernels) and decodes each
  chunk on a side CUDA stream beside the next chunk's DiT (``VideoPipeline.overlap_decode``). On one
  H200 (1.3B, bf16, 480x832, fademem:budget=12, end to end) ``fademem bench speed`` measured 550 ms
  per chunk compiled, 543 with the overlap and 499 with both (medians, the overlap's drained last chunk
  left out).
* ``check_fp8(device)`` / ``apply_fp8(model)``: torchao's float8 recipe (dynamic per-row float8
  activations and weights, ``Float8DynamicActivationFloat8WeightConfig``) on every ``nn.Linear``
  inside the transformer blocks. It needs a CUDA GPU of compute capability >= 8.9 (Ada, Hopper or
  newer) and torchao; ``check_fp8`` says which is missing before any long work starts.
"""

from __future__ import annotations

import os

import torch

COMPILE_MODES = ("auto", "none", "default", "max-autotune-no-cudagraphs")
_CUDAGRAPH_REASON = (
    "captures CUDA graphs (CUDA-graph trees) inside each compiled region; the regional compile shares one "
    "compiled graph between all transformer blocks, so each block's replay writes its outputs into the same "
    "static buffers and overwrites the previous block's output while the residual stream and the memory "
    "attention (which runs eagerly between the compiled regions) still read it. Use compile 'default' or "
    "'max-autotune-no-cudagraphs', optionally with fademem's own CUDA-graph replay of whole denoising "
    "forwards (the bench's 'graph' variant)")
REMOVED_COMPILE_MODES = {"reduce-overhead": _CUDAGRAPH_REASON, "max-autotune": _CUDAGRAPH_REASON}
PRECISIONS = ("dtype", "fp8")
FP8_MIN_CAPABILITY = (8, 9)
FP8_RECIPE = "torchao Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), blocks' nn.Linear layers"
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def check_compile_mode(mode: str) -> str:
    """``mode`` when it is one of ``COMPILE_MODES``; ValueError naming the choices (and, for the removed
    CUDA-graph modes, why they are not offered)."""
    if mode in REMOVED_COMPILE_MODES:
        raise ValueError(f"compile mode {mode!r} is not supported: it {REMOVED_COMPILE_MODES[mode]}")
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; choose from {', '.join(COMPILE_MODES)}")
    return mode


def _has_triton() -> bool:
    try:
        from torch.utils._triton import has_triton
    except ImportError:  # pragma: no cover - torch without the helper
        return False
    return bool(has_triton())


def resolve_compile(mode: str | None, device: str | torch.device) -> str:
    """The compile mode to run: ``auto`` (or None) is ``default`` on CUDA (where Triton, Inductor's GPU
    code generator, is installed) and ``none`` elsewhere."""
    mode = check_compile_mode(mode or "auto")
    if mode != "auto":
        return mode
    return "default" if torch.device(device).type == "cuda" and _has_triton() else "none"


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fademem", "torchinductor")


def enable_compile_cache() -> dict:
    """Keep torch's compile caches between runs: Inductor's FX-graph cache (and the Triton kernels it
    stores beside it) in ``$TORCHINDUCTOR_CACHE_DIR``, set to ``~/.cache/fademem/torchinductor``
    unless the user set it. Returns {"dir", "source"} for reports."""
    source = "environment"
    if not os.environ.get(CACHE_ENV):
        os.environ[CACHE_ENV] = default_cache_dir()
        source = "fademem default"
    try:
        os.makedirs(os.environ[CACHE_ENV], exist_ok=True)
    except OSError:  # an unwritable home: a temporary folder (caches for this machine's session only)
        import tempfile

        os.environ[CACHE_ENV] = os.path.join(tempfile.gettempdir(), "fademem-torchinductor")
        os.makedirs(os.environ[CACHE_ENV], exist_ok=True)
        source = "temporary (the default folder is not writable)"
    try:
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True
    except (ImportError, AttributeError):  # pragma: no cover - very old or stripped torch
        pass
    return {"dir": os.environ[CACHE_ENV], "source": source}


class RegionalCompile:
    """torch.compile every transformer block and the head, and the VAE decoder when ``decoder`` (a
    ``fademem.wan.vae.WanVAEDecoder``) is given, leaving the model's code untouched.

    A block's dense parts (modulation, norms, q/k/v projections, output projection, gated
    residuals, cross-attention, FFN) take tensors only; the memory attention (RoPE table, the
    policy's view, SDPA, memory writes) is a ``torch.compiler.disable``-d call inside the block,
    so each block compiles into two graphs (before and after attention) that are shared by all
    blocks and every forward: the shapes of the dense parts do not depend on the memory size,
    and nothing per forward is guarded on. The decoder runs one latent frame at a time with its
    causal feature cache; it compiles into one graph for the first frame of a video and one for
    every later frame. ``mode='none'`` does nothing; ``backend`` is for tests ('aot_eager').
    ``fallback=True`` (what ``fademem generate`` uses when compilation was not asked for but is the
    default): a region that fails to compile runs eagerly with a warning instead of stopping the run.
    Leaving the context undoes the compilation (and resets dynamo).
    """

    def __init__(self, model, mode: str = "default", decoder=None, backend: str = "inductor", fallback: bool = False):
        self.model, self.mode, self.decoder, self.backend = model, check_compile_mode(mode), decoder, backend
        self.fallback, self._suppress = fallback, None
        if self.mode == "auto":
            raise ValueError("RegionalCompile needs a resolved mode: call resolve_compile(mode, device) first")
        self.modules: list[torch.nn.Module] = []

    def _targets(self) -> list[torch.nn.Module]:
        subs = [*self.model.blocks, self.model.head]
        vae = getattr(self.decoder, "vae", None)
        if vae is not None and getattr(vae, "decoder", None) is not None:
            subs.append(vae.decoder)
        return subs

    def __enter__(self):
        if self.mode == "none":
            return self
        kw = {"backend": self.backend} | ({} if self.mode == "default" else {"mode": self.mode})
        if self.fallback:
            self._suppress = torch._dynamo.config.suppress_errors
            torch._dynamo.config.suppress_errors = True
        for sub in self._targets():
            sub.compile(dynamic=False, **kw)
            self.modules.append(sub)
        return self

    def __exit__(self, *exc):
        for sub in self.modules:
            sub._compiled_call_impl = None  # undo nn.Module.compile()
        self.modules.clear()
        if self._suppress is not None:
            torch._dynamo.config.suppress_errors, self._suppress = self._suppress, None
        if self.mode != "none":
            torch._dynamo.reset()
        return False


# -- the decode -----------------------------------------------------------------------------------------
def fast_decode(mode: str, device: str | torch.device) -> bool:
    """Whether a generation decodes the fast way (channels-last decoder, overlapped on a side stream):
    a compile mode other than 'none' (resolved, see ``resolve_compile``) on a CUDA device; never off CUDA."""
    return mode not in ("none", "auto") and torch.device(device).type == "cuda"


def decoder_channels_last(decoder) -> int:
    """Put the 5-d weights (the conv3d kernels) of the VAE decoder in ``torch.channels_last_3d``, in place;
    returns how many weights that is. ``decoder``: a ``fademem.wan.vae.WanVAEDecoder`` (its ``vae.decoder``
    is converted), or the decoder module itself.

    Why: with NCDHW (contiguous) weights cuDNN runs the Wan decoder's 3x3x3 causal convs with NCDHW kernels
    plus layout transposes; with NDHWC weights it picks its channels-last conv3d kernels and the
    activations stay NDHWC from conv to conv. The values are the same up to kernel rounding; on an H200 end
    to end it took a compiled chunk from ~543 to ~499 ms with the overlap.
    The other weights (norm scales, biases, the 1x1x1 post-quant conv outside the decoder) are left alone."""
    vae = getattr(decoder, "vae", None)
    module = getattr(vae, "decoder", None) if vae is not None else decoder
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"expected a WanVAEDecoder or a decoder module, got {type(decoder).__name__}")
    count = 0
    for p in module.parameters():
        if p.dim() == 5:
            p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
            count += 1
    return count


def apply_fast_decode(pipe) -> str:
    """The fast decode of ``fademem generate`` on a pipeline with a VAE decoder: its conv3d weights in
    channels_last_3d and ``pipe.overlap_decode`` on (the frames are the same as decoded in place). Returns
    the line to print."""
    n = decoder_channels_last(pipe.decoder)
    pipe.overlap_decode = True
    return (f"decode: VAE decoder in channels_last_3d ({n} conv3d weights), each chunk decoded on a side CUDA "
            "stream beside the next chunk's DiT; --compile none decodes in place")


# -- FP8 ------------------------------------------------------------------------------------------------
class Fp8Unavailable(RuntimeError):
    """The FP8 mode cannot run here (no suitable GPU, or no torchao)."""


def check_fp8(device: str | torch.device) -> None:
    """Raise ``Fp8Unavailable`` naming the problem unless the FP8 mode can run on ``device``: a CUDA GPU
    of compute capability >= 8.9 and an importable torchao with the float8 inference config."""
    dev = torch.device(device)
    need = f"{FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]}"
    if dev.type != "cuda":
        raise Fp8Unavailable(f"--precision fp8 needs a CUDA GPU of compute capability >= {need} (float8 matmuls, "
                             f"torch._scaled_mm); the device is {dev}. Use the default precision off the GPU.")
    if not torch.cuda.is_available():
        raise Fp8Unavailable("--precision fp8 needs a CUDA GPU, and torch sees none")
    cap = torch.cuda.get_device_capability(dev)
    if tuple(cap) < FP8_MIN_CAPABILITY:
        name = torch.cuda.get_device_name(dev)
        raise Fp8Unavailable(f"--precision fp8 needs compute capability >= {need} (Ada, Hopper or newer); "
                             f"{name} has {cap[0]}.{cap[1]}")
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow  # noqa: F401
    except ImportError as exc:
        raise Fp8Unavailable(f"--precision fp8 needs torchao (pip install 'torchao>=0.17', the fp8 extra of "
                             f"fademem): {exc}") from None


def fp8_filter(module: torch.nn.Module, fqn: str) -> bool:
    """Which layers the FP8 mode converts: the ``nn.Linear`` layers inside the transformer blocks (q/k/v/o
    of both attentions, the FFN). The time and text embeddings run in float32 from their weights
    (``mlp32``) and the 64-wide output head is left as it is."""
    return isinstance(module, torch.nn.Linear) and fqn.startswith("blocks.")


def apply_fp8(model: torch.nn.Module) -> int:
    """Convert the model's block Linear layers in place to torchao float8 (dynamic per-row scales for
    activations and weights); returns how many were converted. Call ``check_fp8`` first."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    count = sum(fp8_filter(m, n) for n, m in model.named_modules())
    # set_inductor_config=False: torchao's default turns on Inductor's coordinate-descent tuning for the
    # whole process (every later compile, the VAE decoder's too); on the H200 with torch 2.11 that tuning
    # segfaulted in Triton's compiler on the fp8 block kernels, and before that spent minutes per graph
    cfg = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)
    quantize_(model, cfg, filter_fn=fp8_filter)
    return count
