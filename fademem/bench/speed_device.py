"""Device helpers of ``fademem bench speed``: timing, the measured matmul peak, SDPA backend
selection, regional torch.compile (``fademem.pipeline.fast``), the CUDA sync audit and the environment record."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time

import torch

from fademem.pipeline.fast import RegionalCompile  # noqa: F401 (re-exported; it lives with the pipeline)

SDPA_BACKENDS = ("auto", "cudnn", "flash", "efficient", "math")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ChunkTimer:
    """CUDA events on a GPU (device timeline), perf_counter elsewhere; both in milliseconds."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def start(self) -> None:
        self.t0 = time.perf_counter()
        if self.cuda:
            self.e0 = torch.cuda.Event(enable_timing=True)
            self.e1 = torch.cuda.Event(enable_timing=True)
            self.e0.record()

    def stop(self) -> tuple[float, float]:
        """(device ms, host wall ms), synchronising on the end event."""
        if self.cuda:
            self.e1.record()
            self.e1.synchronize()
            wall = (time.perf_counter() - self.t0) * 1e3
            return float(self.e0.elapsed_time(self.e1)), wall
        wall = (time.perf_counter() - self.t0) * 1e3
        return wall, wall


def measure_matmul_peak(device: torch.device, n: int = 8192, iters: int = 20, dtype=torch.bfloat16) -> float | None:
    """Median bf16 matrix-product rate in TFLOP/s on random data (None off CUDA)."""
    if device.type != "cuda":
        return None
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    for _ in range(3):
        torch.mm(a, b)
    times = []
    for _ in range(iters):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        torch.mm(a, b)
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1) / 1e3)
    del a, b
    return 2 * n**3 / statistics.median(times) / 1e12


def sdpa_context(backend: str):
    """Restrict torch SDPA to one backend ('auto' = torch's own choice)."""
    if backend == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    table = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    if backend not in table:
        raise ValueError(f"unknown SDPA backend {backend!r}; choose from {', '.join(SDPA_BACKENDS)}")
    return sdpa_kernel([table[backend]])


def _count_syncs(fn):
    """(fn(), number of synchronising CUDA calls it made) under ``set_sync_debug_mode("warn")``;
    the timed chunk includes the debugger's small host overhead."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            out = fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return out, sum("synchroniz" in str(w.message) for w in caught)


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
           "cuda": torch.version.cuda, "hostname_cpus": os.cpu_count()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(gpu=p.name, gpu_memory_bytes=p.total_memory, sm_count=p.multi_processor_count,
                   cudnn=torch.backends.cudnn.version())
    try:
        from fademem._compat import hf_ready

        hf_ready()  # torchvision's CPU/CUDA wheel clash (see fademem._compat)
        import diffusers  # noqa: F401

        env["diffusers"] = diffusers.__version__
    except ImportError:
        env["diffusers"] = None
    return env
