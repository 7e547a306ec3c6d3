"""`fademem bench speed` on CPU at the tiny config: JSON keys, plot, FLOP counter against a hand count."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from fademem.bench import speed as sp
from fademem.cli import main
from fademem.model import WanConfig

LATENT = (16, 4, 6)  # 2x3 = 6 tokens per latent frame


def _setup(**kw):
    return sp.SpeedSetup(**{**dict(config="tiny", latent=LATENT, device="cpu", dtype="float32", warmup=1), **kw})


def test_forward_flops_hand_count():
    cfg = WanConfig.tiny()  # dim 64, ffn 128, 4 heads, 2 layers, text_len 16, freq 32, patch (1,2,2)
    assert (cfg.dim, cfg.ffn_dim, cfg.num_layers, cfg.text_len, cfg.freq_dim) == (64, 128, 2, 16, 32)
    lq, lk = 18, 30  # 3 frames of 6 tokens; 2 memory frames + the chunk
    per_layer = (4 * 2 * 18 * 64 * 64  # q, k, v, o          589,824
                 + 4 * 18 * 30 * 64  # QK^T + PV, all heads   138,240
                 + 2 * 2 * 18 * 64 * 64  # cross q, o        294,912
                 + 4 * 18 * 16 * 64  # cross attention         73,728
                 + 2 * 2 * 18 * 64 * 128)  # FFN up + down    589,824
    assert per_layer == 1_686_528
    other = 2 * 18 * 16 * 4 * 64 + 2 * 18 * 64 * 4 * 16 + 3 * 2 * (32 * 64 + 64 * 64 + 64 * 384)
    assert other == 147_456 + 147_456 + 184_320
    f = sp.forward_flops(cfg, lq, lk, frames=3)
    assert f["total"] == 2 * per_layer + other == 3_852_288
    assert f["self_attention"] == 2 * 138_240 and f["ffn"] == 2 * 589_824
    assert sp.chunk_flops(cfg, tokens_per_frame=6, frames_per_chunk=3, memory_frames=2) == 5 * 3_852_288
    assert sp.text_flops(cfg) == 2 * 16 * (32 * 64 + 64 * 64) + 2 * 2 * 2 * 16 * 64 * 64
    # the 1.3B forward of one 3-frame chunk at 480x832 with no memory: ~16 TFLOP
    big = sp.forward_flops(WanConfig.wan_1_3b(), 4680, 4680, 3)["total"]
    assert 15e12 < big < 17.5e12


def test_speed_runs_tiny_on_cpu_and_writes_json(tmp_path):
    run = sp.SpeedRun(setup=_setup(), policies=["full", "sink:budget=3,sink=1", "fademem:budget=4"], seconds=2.0,
                      full_max_frames=6, variants=["eager", "sdpa=math"], variant_seconds=1.5,
                      measure_peak=False, progress=False)
    report = sp.run_speed(run, log=lambda *_: None)
    assert report["setup"]["latent_frames"] == 9 and report["setup"]["chunks"] == 3
    labels = [r["label"] for r in report["policies"]]
    assert labels == ["full", "sink", "fademem"]
    full, sink, fm = report["policies"]
    assert full["frames_run"] == 6 and full["stopped"] and "capped" in full["stopped"]
    assert sink["frames_run"] == 9 and sink["stopped"] is None and sink["error"] is None
    # memory visible to each chunk: 0, then the sink policy's 3-frame budget
    assert [c["memory_frames"] for c in sink["chunks"]] == [0, 3, 3]
    assert [c["memory_frames"] for c in fm["chunks"]] == [0, 3, 4]
    for res in report["policies"]:
        for key in ("spec", "frames_run", "kv_bytes_final", "peak_allocated_bytes", "summary", "chunks",
                    "visible_frames_steady"):
            assert key in res
        for c in res["chunks"]:
            assert {"index", "start", "latency_ms", "wall_ms", "memory_frames", "flops", "kv_bytes"} <= set(c)
            assert c["latency_ms"] > 0
    s = sink["summary"]
    for key in ("latency_ms_median", "video_fps", "latent_fps", "flops_per_chunk_median", "achieved_tflops",
                "fraction_of_peak", "latency_ratio_last_vs_first_quarter"):
        assert key in s
    assert s["video_fps"] == pytest.approx(12e3 / s["latency_ms_median"])
    assert sink["kv_bytes_final"] == 2 * 2 * 3 * 6 * 64 * 4  # k+v, 2 layers, 3 frames, 6 tokens, fp32
    assert [v["variant"] for v in report["variants"]] == ["eager", "sdpa=math"]
    assert "fademem_overhead_over_sink" in report["comparisons"]
    assert report["diffusers_end_to_end"]["skipped"]
    path = tmp_path / "s.json"
    sp.write_json(report, str(path))
    back = json.loads(path.read_text())
    assert set(back) >= {"environment", "setup", "flops", "policies", "variants", "comparisons", "peak_bf16_tflops"}
    png = sp.plot(back, str(tmp_path / "s.png"))
    assert (tmp_path / "s.png").stat().st_size > 1000 and png.endswith(".png")
    assert "fademem" in sp.format_table(back)


def test_cli_bench_speed(tmp_path):
    out = tmp_path / "r" / "speed.json"
    res = CliRunner().invoke(main, ["bench", "speed", "--config", "tiny", "--latent", "16x4x6", "--device", "cpu",
                                    "--dtype", "float32", "--seconds", "1", "--policies", "window:budget=2,memrope",
                                    "--no-peak", "--no-progress", "--warmup", "0", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    assert [r["spec"] for r in rep["policies"]] == ["window:budget=2", "memrope"]
    assert (tmp_path / "r" / "speed.png").exists()
    assert "ms/chunk" in res.output


def test_parse_list_and_variants():
    assert sp.parse_list("full,window:budget=12,sink:budget=12,sink=3,memrope,fademem:budget=12") == [
        "full", "window:budget=12", "sink:budget=12,sink=3", "memrope", "fademem:budget=12"]
    assert sp.parse_list("eager,sdpa=cudnn,compile=default") == ["eager", "sdpa=cudnn", "compile=default"]
    assert sp.frames_for_seconds(60) == 240 and sp.frames_for_seconds(600) == 2400
    v = sp._variant_setup(_setup(), "sdpa=flash+compile=default")
    assert (v.sdpa, v.compile) == ("flash", "default")
    with pytest.raises(ValueError):
        sp._variant_setup(_setup(), "turbo=1")


def test_bad_device_is_reported():
    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    with pytest.raises(RuntimeError):
        sp.run_speed(sp.SpeedRun(setup=_setup(device="cuda"), measure_peak=False), log=lambda *_: None)
