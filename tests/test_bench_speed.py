"""`fademem bench speed` on CPU at the tiny config: JSON keys, plot, FLOP counter against a hand count."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from fademem.bench import speed as sp
from fademem.cli import main
from fademem.wan.model import WanConfig

LATENT = (16, 4, 6)  # 2x3 = 6 tokens per latent frame

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


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
    assert report["end_to_end"] is None and report["long_runs"] is None and report["skipped"] == []
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


def test_public_names_stay_importable_from_speed():
    from fademem.bench import flops, speed_device, speed_report

    assert sp.forward_flops is flops.forward_flops and sp.ChunkTimer is speed_device.ChunkTimer
    assert sp.format_table is speed_report.format_table and sp.plot is speed_report.plot
    for name in sp.__all__:
        assert hasattr(sp, name), name


def test_timed_chunks_plan():
    # 600 s = 800 chunks: the first 40, then 4 chunks every 60 s (chunk 80, 160, ...), and the end
    got = sp.timed_chunks(800, 3, 60.0, 4, first=40)
    assert got[:40] == list(range(40)) and got[40:44] == [80, 81, 82, 83]
    assert got[-8:] == [720, 721, 722, 723, 796, 797, 798, 799] and len(got) == 40 + 9 * 4 + 4
    assert sp.timed_chunks(5, 3, 60.0, 4) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        sp.timed_chunks(10, 3, 0.0, 4)


def test_timed_mode_long_runs_e2e_and_graph_variant(tmp_path):
    run = sp.SpeedRun(setup=_setup(), policies=["window:budget=3"], seconds=1.5, long_policies=["fademem:budget=4"],
                      long_seconds=12.0, timed_every_s=6.0, timed_window=2, timed_first=3,
                      e2e_policies=["fademem:budget=4", "sink:budget=3,sink=1"], e2e_seconds=2.25, vae="tiny",
                      variants=["eager", "graph"], variant_policy="sink:budget=3,sink=1", variant_seconds=3.0,
                      measure_peak=False, progress=False)
    report = sp.run_speed(run, log=lambda *_: None)
    # the sweep runs in the timed mode too when timed_every_s is given
    (win,) = report["policies"]
    assert win["timed_mode"]["timed_chunks"] == [0, 1]
    (long,) = report["long_runs"]["policies"]
    tm = long["timed_mode"]
    # 12 s = 16 chunks: first 3, windows at 6 s (chunk 8, 9), and the last 2
    assert tm["timed_chunks"] == [0, 1, 2, 8, 9, 14, 15] and tm["cache_only_chunks_count"] == 9
    assert "cache-writing forward" in tm["note"] and tm["cache_pass_ms_mean"] > 0
    untimed = [c for c in long["chunks"] if not c["timed"]]
    assert len(long["chunks"]) == 16 and all("latency_ms" not in c for c in untimed)
    assert [c["memory_frames"] for c in long["chunks"]][-1] == 4 and long["frames_run"] == 48
    assert [(w["first_chunk"], w["last_chunk"]) for w in long["windows"]] == [(0, 2), (8, 9), (14, 15)]
    assert long["flatness"]["latency_ratio_last_vs_first"] > 0 and long["summary_first_minute"]["steady_chunks"] == 6
    # end to end: overlap on and off for the first policy, identical frames; DiT fps beside e2e fps
    e2e = report["end_to_end"]
    assert e2e["vae"]["config"]["z_dim"] == 16 and e2e["decode_ms_per_chunk"] > 0
    assert [(r["label"].split()[0], r["overlap_decode"]) for r in e2e["runs"]] == [
        ("fademem:budget=4", False), ("fademem:budget=4", True), ("sink:budget=3,sink=1", False)]
    assert e2e["overlap_agreement"] == {"chunks": [1, 2], "latents_equal": True, "latents_rel_l2": 0.0,
                                        "frames_max_abs_diff": 0}
    rows = {r["spec"]: r for r in e2e["side_by_side"]}
    assert rows["fademem:budget=4"]["dit_fps"] == long["summary"]["video_fps"]
    assert rows["fademem:budget=4"]["e2e_fps"] and rows["fademem:budget=4"]["e2e_overlap_fps"]
    assert rows["sink:budget=3,sink=1"]["dit_fps"] is None and rows["sink:budget=3,sink=1"]["e2e_fps"]
    # the static-buffer path of the CUDA graph variant gives the eager latents exactly
    eager, graph = report["variants"]
    assert graph["cuda_graph"]["static"] > 0 and graph["agreement_vs_first_variant"] == {
        "chunk_0_rel_l2": 0.0, "chunk_3_rel_l2": 0.0}
    table = sp.format_table(report)
    assert "long runs" in table and "overlap vs sequential decode: frames max |diff| 0" in table
    sp.write_json(report, str(tmp_path / "s.json"))
    sp.plot(report, str(tmp_path / "s.png"))
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_time_budget_forecast_and_deadline():
    import time

    b = sp._Budget(time.perf_counter(), 10.0)
    assert b.fits(1000)  # nothing measured yet: the run's own deadline guards it
    b.learn({"summary": {"wall_ms_median": 1000.0}, "timed_mode": {"cache_pass_ms_mean": 200.0}})
    assert b.forecast(2, 10) == pytest.approx(4.0) and b.fits(2, 10) and not b.fits(20)
    assert not b.fits(2, 0, extra_s=b.COMPILE_ALLOWANCE_S)
    # a run past its deadline stops before its first chunk and says so
    model = sp.build_model(_setup())
    res = sp.run_policy(model, "sink:budget=3,sink=1", 9, _setup(), deadline=time.perf_counter() - 1)
    assert res["frames_run"] == 0 and "time budget" in res["stopped"] and res["summary"] == {}


def test_host_bytes_are_recorded_when_a_memory_has_them():
    class M:
        def __init__(self, n):
            self.n = n

        def host_nbytes(self):
            return self.n

    assert sp._host_bytes([M(3), M(4)]) == 7 and sp._host_bytes([object()]) is None
