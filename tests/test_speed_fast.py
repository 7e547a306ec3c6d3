"""Issue 15's speed options on the CPU at the tiny config: compile mode resolution (default on CUDA,
eager elsewhere) and the refused CUDA-graph modes, the compile cache folder, the regional compile of the
DiT and of the VAE decoder against eager, the FP8 mode's refusal off the GPU and its tolerance (an exact
emulation of the recipe's rounding), the low-memory text encoder, and the bench's variants / 24 GB part."""

from __future__ import annotations

import json
import os

import pytest
import torch
from click.testing import CliRunner

from fademem.bench import speed as sp
from fademem.cli import main
from fademem.pipeline import VideoPipeline
from fademem.pipeline.fast import (
    FP8_MIN_CAPABILITY,
    Fp8Unavailable,
    RegionalCompile,
    apply_fp8,
    check_compile_mode,
    check_fp8,
    enable_compile_cache,
    fp8_filter,
    resolve_compile,
)
from fademem.pipeline.offload import OffloadedTextEncoder
from fademem.wan.model import CausalWanModel, WanConfig

LATENT = (16, 4, 6)
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _setup(**kw):
    return sp.SpeedSetup(**{**dict(config="tiny", latent=LATENT, device="cpu", dtype="float32", warmup=1), **kw})


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CausalWanModel(WanConfig.tiny()).eval().requires_grad_(False)


# -- compile options -------------------------------------------------------------------------------------
def test_compile_is_default_on_cuda_and_eager_elsewhere(monkeypatch):
    import fademem.pipeline.fast as fast

    monkeypatch.setattr(fast, "_has_triton", lambda: True)
    assert resolve_compile("auto", "cpu") == "none" and resolve_compile(None, torch.device("cpu")) == "none"
    assert resolve_compile("auto", "cuda") == "default" and resolve_compile("auto", "cuda:1") == "default"
    assert resolve_compile("none", "cuda") == "none" and resolve_compile("default", "cpu") == "default"
    assert resolve_compile("max-autotune-no-cudagraphs", "cuda") == "max-autotune-no-cudagraphs"
    for mode in ("reduce-overhead", "max-autotune"):
        with pytest.raises(ValueError, match="CUDA-graph trees.*overwrites the previous block's output"):
            check_compile_mode(mode)
    monkeypatch.setattr(fast, "_has_triton", lambda: False)  # CUDA without Triton: eager
    assert resolve_compile("auto", "cuda") == "none" and resolve_compile("default", "cuda") == "default"
    with pytest.raises(ValueError, match="unknown compile mode 'turbo'"):
        resolve_compile("turbo", "cpu")
    with pytest.raises(ValueError, match="resolved mode"):
        RegionalCompile(None, "auto")


def test_compile_cache_dir_kept_unless_the_user_set_one(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    got = enable_compile_cache()
    assert got == {"dir": str(tmp_path / "xdg" / "fademem" / "torchinductor"), "source": "fademem default"}
    assert os.path.isdir(got["dir"]) and os.environ["TORCHINDUCTOR_CACHE_DIR"] == got["dir"]
    import torch._inductor.config as inductor_config

    assert inductor_config.fx_graph_cache is True
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert enable_compile_cache() == {"dir": str(tmp_path / "mine"), "source": "environment"}


def test_regional_compile_of_dit_and_vae_decoder_matches_eager(model):
    """The compiled regions (traced by dynamo and AOT autograd; the CPU test does not run Inductor) give
    the eager results, through the memory path and the decoder's causal feature cache."""
    from fademem.bench.speed_e2e import build_random_vae

    decoder = build_random_vae("cpu", torch.float32, "tiny", seed=1)

    def run():
        pipe = VideoPipeline(model, sp.RandomText(16, 32, 0), decoder)
        chunks = list(pipe.generate("a", 6, memory="sink:budget=3,sink=1", latent_shape=LATENT, progress=False))
        return torch.cat([c.latents for c in chunks], 2), torch.cat([c.frames for c in chunks], 1)

    lat0, fr0 = run()
    with RegionalCompile(model, "default", decoder=decoder, backend="aot_eager") as rc:
        assert len(rc.modules) == len(model.blocks) + 2  # the blocks, the head, the VAE decoder
        lat1, fr1 = run()
    assert rc.modules == [] and model.blocks[0]._compiled_call_impl is None
    assert sp.rel_l2(lat1, lat0) < 1e-5
    assert (fr1.int() - fr0.int()).abs().max() <= 1


def test_default_compile_falls_back_to_eager_and_restores_dynamo(model):
    """generate's default compile (not asked for) must not stop a run when a region fails to compile:
    dynamo's suppress_errors is on inside the context only; an explicit --compile stays strict."""
    before = torch._dynamo.config.suppress_errors
    with RegionalCompile(model, "default", backend="aot_eager", fallback=True):
        assert torch._dynamo.config.suppress_errors is True
    assert torch._dynamo.config.suppress_errors == before
    with RegionalCompile(model, "default", backend="aot_eager"):
        assert torch._dynamo.config.suppress_errors == before


# -- FP8 -------------------------------------------------------------------------------------------------
def test_fp8_refuses_off_the_gpu_naming_the_problem():
    with pytest.raises(Fp8Unavailable, match=r"needs a CUDA GPU of compute capability >= 8\.9.*the device is cpu"):
        check_fp8("cpu")
    assert FP8_MIN_CAPABILITY == (8, 9)


def test_fp8_converts_exactly_the_block_linears(model):
    names = [n for n, m in model.named_modules() if fp8_filter(m, n)]
    assert len(names) == 10 * len(model.blocks)  # q, k, v, o of both attentions, ffn.0, ffn.2
    assert not any(n.startswith(("head", "text_embedding", "time_")) for n in names)


def test_fp8_keeps_torchao_off_inductors_global_settings(model, monkeypatch):
    """torchao's float8 config by default turns on Inductor's coordinate-descent tuning for the whole
    process (on the H200 it segfaulted Triton's compiler); apply_fp8 asks it not to, and converts only
    the block linears (a stand-in torchao records the call: torchao is a GPU extra)."""
    import sys
    import types

    calls = {}

    class Config:
        def __init__(self, **kw):
            calls["config"] = kw

    def quantize_(m, cfg, filter_fn):
        calls["converted"] = [n for n, sub in m.named_modules() if filter_fn(sub, n)]

    quant = types.SimpleNamespace(Float8DynamicActivationFloat8WeightConfig=Config, PerRow=lambda: "per-row",
                                  quantize_=quantize_)
    monkeypatch.setitem(sys.modules, "torchao", types.ModuleType("torchao"))
    monkeypatch.setitem(sys.modules, "torchao.quantization", quant)
    assert apply_fp8(model) == 10 * len(model.blocks) == len(calls["converted"])
    assert calls["config"] == {"granularity": "per-row", "set_inductor_config": False}


def _fp8_rowwise(x: torch.Tensor) -> torch.Tensor:
    """float8 e4m3 with one scale per row (amax -> 448), back to float32: the recipe's rounding."""
    scale = 448.0 / x.float().abs().amax(dim=-1, keepdim=True).clamp_min(1e-12)
    return (x.float() * scale).clamp(-448, 448).to(torch.float8_e4m3fn).float() / scale


def test_fp8_rounding_stays_within_the_bench_tolerance():
    """Dynamic per-row float8 activations and weights on every block linear (what torchao's
    Float8DynamicActivationFloat8WeightConfig(PerRow) computes, emulated exactly on the CPU): one
    forward stays within the bench's FP8 tolerance of the unconverted model, and far above bf16 noise."""
    torch.manual_seed(0)
    m = CausalWanModel(WanConfig.tiny(dim=128, ffn_dim=256, num_heads=4, num_layers=4)).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(1, 16, 3, *LATENT[1:], generator=g), torch.full((1, 3), 1000.0)
    states = torch.randn(1, 16, 32, generator=g)
    with torch.no_grad():
        ref = m(x, t, m.encode_text(states))
        originals = {}
        for name, lin in [(n, mod) for n, mod in m.named_modules() if fp8_filter(mod, n)]:
            originals[name] = lin.forward
            w = _fp8_rowwise(lin.weight)
            lin.forward = lambda inp, w=w, b=lin.bias: torch.nn.functional.linear(_fp8_rowwise(inp), w, b)
        got = m(x, t, m.encode_text(states))
    err = sp.rel_l2(got, ref)
    assert 1e-3 < err < sp.FORWARD_TOLERANCE["fp8"], err


def _emulated_fp8(model) -> int:
    layers = [(n, m) for n, m in model.named_modules() if fp8_filter(m, n)]
    for _, lin in layers:
        w = _fp8_rowwise(lin.weight)
        lin.forward = lambda inp, w=w, b=lin.bias: torch.nn.functional.linear(_fp8_rowwise(inp), w, b)
    return len(layers)


def test_bench_fp8_paths_with_the_recipe_emulated(monkeypatch):
    """The bench's FP8 bookkeeping (a converted copy for FP8 variants, the conversion time, the
    per-forward check against the unconverted model; --precision fp8 for the whole run) on the CPU,
    with torchao's conversion replaced by the exact emulation above."""
    import fademem.bench.speed_variants as sv

    for mod in (sp, sv):
        monkeypatch.setattr(mod, "check_fp8", lambda device: None)
        monkeypatch.setattr(mod, "apply_fp8", _emulated_fp8)
    run = sp.SpeedRun(setup=_setup(), policies=[], variants=["eager", "fp8", "eager"],
                      variant_policy="sink:budget=3,sink=1", variant_seconds=1.5, measure_peak=False, progress=False)
    eager, fp8, again = sp.run_speed(run, log=lambda *_: None)["variants"]
    assert fp8["precision"] == "fp8" and fp8["cold_start"]["prep_s"] > 0 and eager["cold_start"]["prep_s"] is None
    assert fp8["forward_check"]["ok"] and 1e-3 < fp8["forward_check"]["rel_l2_vs_eager"] < 5e-2
    assert again["forward_check"]["rel_l2_vs_eager"] == 0.0  # the bench model itself was not converted
    assert 0 < fp8["agreement_vs_first_variant"]["chunk_0_rel_l2"] < 0.2
    run = sp.SpeedRun(setup=_setup(precision="fp8"), policies=["window:budget=2"], seconds=0.75, measure_peak=False,
                      progress=False)
    check = sp.run_speed(run, log=lambda *_: None)["precision"]["forward_check"]
    assert check["ok"] and 1e-3 < check["rel_l2_vs_dtype"] < 5e-2


def test_an_interrupted_bench_keeps_the_finished_variants(monkeypatch):
    """A wall-clock limit around the bench (SIGINT, e.g. ``timeout -s INT``) in the middle of a variant: the
    finished variants stay in the report, the interrupted one says where it stopped, later parts skip."""
    import fademem.bench.speed_variants as sv

    real, calls = sv.run_policy, []

    def stuck_on_second(*a, **kw):
        calls.append(kw["label"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(sv, "run_policy", stuck_on_second)
    run = sp.SpeedRun(setup=_setup(), policies=[], variants=["eager", "sdpa=math", "eager"], low_memory=True,
                      variant_policy="window:budget=2", variant_seconds=0.75, measure_peak=False, progress=False)
    report = sp.run_speed(run, log=lambda *_: None)
    done, stopped = report["variants"]
    assert done["summary"] and calls == ["eager", "sdpa=math"]
    assert "interrupted" in stopped["error"] and "stuck_on_second" in stopped["error"]
    assert report["interrupted"].startswith("SIGINT") and report["low_memory"] is None


def test_fp8_and_compile_options_are_refused_up_front(tmp_path):
    r = CliRunner()
    base = ["bench", "speed", "--config", "tiny", "--latent", "16x4x6", "--device", "cpu", "--dtype", "float32",
            "--seconds", "1", "--policies", "window:budget=2", "--no-peak", "--no-plot", "--no-progress",
            "--out", str(tmp_path / "s.json")]
    res = r.invoke(main, base + ["--precision", "fp8"])
    assert res.exit_code == 1 and "--precision fp8 needs a CUDA GPU" in res.output
    assert not (tmp_path / "s.json").exists()
    res = r.invoke(main, base + ["--variants", "eager,fp8+compile", "--variant-seconds", "0.75"])
    assert res.exit_code == 0 and "skipped variant fp8+compile: --precision fp8 needs a CUDA GPU" in res.output
    assert [v["variant"] for v in json.loads((tmp_path / "s.json").read_text())["variants"]] == ["eager"]
    res = r.invoke(main, base + ["--compile", "reduce-overhead"])
    assert res.exit_code == 2 and "CUDA-graph trees" in res.output
    res = r.invoke(main, base + ["--variants", "eager,compile=max-autotune"])
    assert res.exit_code == 1 and "variant 'compile=max-autotune'" in res.output and "CUDA-graph" in res.output
    out = str(tmp_path / "v.mp4")
    wan = ["generate", "--prompt", "a cat", "--checkpoint", str(tmp_path / "none.pt"), "--wan-dir", str(tmp_path),
           "--device", "cpu", "--seconds", "1", "--out", out]
    res = r.invoke(main, wan + ["--precision", "fp8"])
    assert res.exit_code == 2 and "needs a CUDA GPU of compute capability" in res.output
    res = r.invoke(main, wan + ["--compile", "reduce-overhead"])
    assert res.exit_code == 2 and "not supported" in res.output
    emb = ["generate", "--prompt", "a red ball", "--device", "cpu", "--seconds", "1", "--out", out]
    for extra in (["--precision", "fp8"], ["--low-memory"], ["--compile", "default"]):
        res = r.invoke(main, emb + extra)
        assert res.exit_code == 2 and "is for a real generator" in res.output, (extra, res.output)


# -- low memory ------------------------------------------------------------------------------------------
class FakeEncoder:
    text_dim = 32

    def __init__(self):
        self.moves = []

    def to(self, device=None, dtype=None):
        self.moves.append(str(device))
        return self

    def encode(self, prompts):
        assert self.moves[-1] == "cpu"  # the test's "GPU" is the CPU; what matters is the order of moves
        return torch.ones(len(prompts), 4, 32)


def test_offloaded_text_encoder_visits_the_device_only_to_encode():
    enc = FakeEncoder()
    off = OffloadedTextEncoder(enc, "cpu", home="cpu")
    assert enc.moves == ["cpu"] and off.text_dim == 32  # attributes come from the wrapped encoder
    out = off.encode(["a", "b"])
    assert out.shape == (2, 4, 32) and enc.moves == ["cpu", "cpu", "cpu"] and off.encode_calls == 1
    with pytest.raises(TypeError):
        OffloadedTextEncoder(object(), "cpu")


def test_random_umt5_and_the_variants_and_low_memory_parts(tmp_path):
    from fademem.wan.text import random_umt5

    enc = random_umt5("tiny", text_dim=32, max_length=16)
    states = enc.encode(["a red ball", "x"])
    assert states.shape == (2, 16, 32) and (states[1, 2:] == 0).all()  # 'x' + eos, padding zeroed
    with pytest.raises(ValueError, match="UMT5-XXL gives 4096-wide states"):
        random_umt5("xxl", text_dim=32, device="meta")
    v, flags = sp._variant_parts(_setup(), "fp8+compile+e2e")
    assert (v.precision, v.compile, flags["e2e"]) == ("fp8", "default", True)
    with pytest.raises(ValueError, match="reduce-overhead"):
        sp._variant_setup(_setup(), "compile=reduce-overhead")
    v, flags = sp._variant_parts(_setup(), "compile+vae=cl+overlap")
    assert flags == {"e2e": True, "overlap": True, "vae_layout": "channels_last_3d"} and v.compile == "default"
    with pytest.raises(ValueError, match="vae=<layout> takes cl"):
        sp._variant_parts(_setup(), "vae=nhwc")
    run = sp.SpeedRun(setup=_setup(), policies=[], variants=["eager+e2e", "eager", "overlap", "vae=cl"],
                      variant_policy="sink:budget=3,sink=1", variant_seconds=1.5, vae="tiny", low_memory=True,
                      low_memory_seconds=1.5, measure_peak=False,
                      progress=False)
    report = sp.run_speed(run, log=lambda *_: None)
    e2e, dit, overlap, cl = report["variants"]
    assert overlap["overlap_decode"] and overlap["end_to_end_decode"] and cl["vae_layout"] == "channels_last_3d"
    assert overlap["frames_vs_first_e2e_variant"] == {"chunk_0_max_abs_diff": 0, "chunk_1_max_abs_diff": 0}
    assert max(cl["frames_vs_first_e2e_variant"].values()) <= 1  # NDHWC convs: the same frames up to rounding
    assert "frames_vs_first_e2e_variant" not in e2e and dit["vae_layout"] is None
    from fademem.bench.speed_variants import _Decoders

    decs = _Decoders(_setup(), "tiny")
    kernels = [p for p in decs.get("channels_last_3d").vae.decoder.parameters() if p.dim() == 5]
    assert kernels and all(k.is_contiguous(memory_format=torch.channels_last_3d) for k in kernels)
    assert not any(p.is_contiguous(memory_format=torch.channels_last_3d) and not p.is_contiguous()
                   for p in decs.get("contiguous").vae.decoder.parameters())  # the base decoder untouched
    assert e2e["end_to_end_decode"] and not dit["end_to_end_decode"]
    assert e2e["speedup_vs_first_variant"] == 1.0 and dit["speedup_vs_first_variant"] == 1.0  # one baseline each
    for res in (e2e, dit):
        assert res["forward_check"]["ok"] and res["forward_check"]["rel_l2_vs_eager"] == 0.0
        assert res["cold_start"]["first_chunk_s"] > 0 and res["cold_start"]["caches"] is None
    assert dit["agreement_vs_first_variant"] == {"chunk_0_rel_l2": 0.0, "chunk_1_rel_l2": 0.0}
    low = report["low_memory"]
    assert low["text_encoder"]["which"] == "umt5-tiny" and low["text_encoder"]["encode_calls"] == 1
    assert low["e2e_fps"] > 0 and low["run"]["frames_run"] == 6 and low["peak_including_encode_bytes"] is None
    assert report["compile"]["mode"] == "none" and report["precision"]["mode"] == "dtype"
    table = sp.format_table(report)
    assert "low memory (24 GB mode)" in table and "fwd diff 0.0e+00 ok" in table
    sp.write_json(report, str(tmp_path / "s.json"))
    assert json.loads((tmp_path / "s.json").read_text())["low_memory"]["policy"] == "sink:budget=3,sink=1"


def test_generate_low_memory_gives_the_same_video(tmp_path):
    from test_vae_text import TEXT_DIM, Z_DIM, make_wan_dir

    from fademem.pipeline.video_io import iter_video_frames
    from fademem.wan.checkpoints import save_generator

    wan = make_wan_dir(tmp_path / "wan")
    torch.manual_seed(0)
    ckpt = save_generator(CausalWanModel(WanConfig.tiny(in_dim=Z_DIM, out_dim=Z_DIM, text_dim=TEXT_DIM, text_len=512)),
                          tmp_path / "gen.safetensors")
    base = ["generate", "--prompt", "a cat runs", "--seconds", "0.5", "--memory", "sink", "--checkpoint", str(ckpt),
            "--wan-dir", str(wan), "--device", "cpu", "--height", "32", "--width", "48", "--crf", "0"]
    videos = []
    for name, extra in (("plain", ["--compile", "none"]), ("low", ["--low-memory"])):
        res = CliRunner().invoke(main, base + extra + ["--out", str(tmp_path / f"{name}.mp4")])
        assert res.exit_code == 0, res.output + repr(res.exception)
        videos.append(torch.stack([torch.as_tensor(f) for f in iter_video_frames(str(tmp_path / f"{name}.mp4"))]))
    assert "text encoder stays in host memory" in res.output and "compile" not in res.output.lower()
    assert videos[0].shape[0] == 9 and torch.equal(videos[0], videos[1])
