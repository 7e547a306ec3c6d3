"""`fademem bench memory`: metrics aggregation, lag binning, equal budgets, teacher forcing, CLI smoke run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fademem import embedded
from fademem.bench import memory as bm
from fademem.cli import main
from fademem.embedded import EmbeddedConfig
from fademem.memory import build_memory
from fademem.pipeline import VideoPipeline

PROMPT = ("a large red circle standing still over a dotted green background, "
          "camera pans right and returns after 2 seconds")


@pytest.fixture(scope="module")
def tiny_bundle():
    torch.manual_seed(0)
    cfg = EmbeddedConfig()
    return embedded.build(cfg, cfg.dit_config(dim=32, layers=1, heads=2, ffn=64))


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory, tiny_bundle):
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    embedded.save(tiny_bundle, path)
    return str(path)


# -- metrics -----------------------------------------------------------------------------------
def test_identical_frames_give_the_cap_and_shifted_frames_lower():
    rng = np.random.default_rng(0)
    truth = rng.random((5, 64, 64, 3))
    p, s = bm.frame_metrics(truth, truth)
    assert np.all(p == bm.PSNR_CAP_DB) and np.allclose(s, 1.0)  # capped, never inf
    p2, s2 = bm.frame_metrics(np.roll(truth, 3, axis=2), truth)
    assert np.all(np.isfinite(p2)) and np.all(p2 < 20) and np.all(s2 < 0.5)
    noisy = np.clip(truth + 0.01 * rng.standard_normal(truth.shape), 0, 1)
    p3, _ = bm.frame_metrics(noisy, truth)
    assert np.all(p2 < p3) and np.all(p3 < bm.PSNR_CAP_DB)
    # the summary of identical episodes is finite (the cap), with a zero-width interval
    eps = [{"psnr": p.tolist(), "ssim": s.tolist()}, {"psnr": p.tolist(), "ssim": s.tolist()}]
    lags = [np.zeros(5, int), np.zeros(5, int)]
    summ = bm.summarise(eps, lags, long_lag=64)
    assert summ["psnr"] == pytest.approx([100.0, 100.0, 100.0])
    assert math.isnan(summ["psnr_long"][0]) and summ["n_long_episodes"] == 0


def test_lag_binning_of_a_known_pattern():
    # frames with lags 0, 0, 5, 5, 20, 100, 300 in both episodes; episode 2 is 2 dB better everywhere
    lags = np.array([0, 0, 5, 5, 20, 100, 300])
    e1 = np.array([30.0, 32.0, 20.0, 22.0, 15.0, 12.0, 10.0])
    eps = [{"psnr": e1.tolist(), "ssim": (e1 / 100).tolist()}, {"psnr": (e1 + 2).tolist(), "ssim": (e1 / 100).tolist()}]
    summ = bm.summarise(eps, [lags, lags], long_lag=64)
    b = summ["psnr_by_lag"]
    # bins [0,1) [1,8) [8,16) [16,32) [32,64) [64,128) [128,256) [256,inf)
    assert b["n_frames"] == [4, 4, 0, 2, 0, 2, 0, 2]
    assert b["n_episodes"] == [2, 2, 0, 2, 0, 2, 0, 2]
    assert b["mean"][0] == pytest.approx(32.0) and b["mean"][1] == pytest.approx(22.0)
    assert b["mean"][3] == pytest.approx(16.0) and b["mean"][5] == pytest.approx(13.0)
    assert b["mean"][7] == pytest.approx(11.0) and math.isnan(b["mean"][2])
    lo, hi = b["low"][0], b["high"][0]  # episode means 31 and 33: t interval with 1 dof
    assert lo < 31 < 33 < hi and (lo + hi) / 2 == pytest.approx(32.0)
    # long lags (>= 64 frames): lags 100 and 300 -> means 11 and 13
    assert summ["psnr_long"][0] == pytest.approx(12.0) and summ["n_long_episodes"] == 2
    assert summ["psnr"][0] == pytest.approx(e1.mean() + 1)
    # paired against a reference 2 dB worse in episode 1 only
    ref = [{"psnr": (e1 - 2).tolist(), "ssim": (e1 / 100).tolist()}, eps[1]]
    d = bm.paired(eps, ref, [lags, lags], long_lag=64)
    assert d["psnr"][0] == pytest.approx(1.0) and d["ssim"][0] == pytest.approx(0.0)


def test_bin_labels_state_seconds_at_8_fps():
    labels = bm.bin_labels(bm.LAG_EDGES, 8)
    assert labels[0] == "[0,1) fr\n[0,0.125) s"
    assert labels[5] == "[64,128) fr\n[8,16) s" and labels[-1] == "[256,inf) fr\n[32,inf) s"


# -- budgets and options ---------------------------------------------------------------------------
def test_equal_budget_specs():
    assert bm.budget_spec("window", 12)[0] == "window:budget=12"
    assert bm.budget_spec("sink", 12)[0] == "sink:budget=12,sink=3"
    assert bm.budget_spec("fademem", 12)[0] == "fademem:budget=12"
    assert bm.budget_spec("full", 12)[0] == "full"
    spec, note = bm.budget_spec("memrope", 12)
    assert spec == "memrope:recent=7" and build_memory(spec).budget == 12 and "recent 7" in note
    assert build_memory(bm.budget_spec("memrope", 9)[0]).budget == 9  # = the default layout
    assert bm.budget_spec("window:budget=6", 12)[0] == "window:budget=6"  # specs with knobs run as given
    assert bm.parse_policies("full,sink:budget=12,sink=3,fademem") == ["full", "sink:budget=12,sink=3", "fademem"]
    from fademem.memory import REGISTRY

    if "deepforcing" in REGISTRY:  # a policy registered later: its budget knob is set generically
        spec, note = bm.budget_spec("deepforcing", 12)
        assert spec.startswith("deepforcing:budget=12") and build_memory(spec).budget == 12


def test_watched_stack_measures_the_visible_history(tiny_bundle):
    b = tiny_bundle
    pipe = VideoPipeline(b.model, b.text, None)
    shape = (b.cfg.channels, b.cfg.latent_hw, b.cfg.latent_hw)
    for spec, want in (("window:budget=6", 6), ("full", 9), ("sink:budget=4,sink=1", 4)):
        stack, seen = bm.watched_stack(spec, b.model.config.num_layers)
        list(pipe.generate(PROMPT, 12, memory=stack, latent_shape=shape, progress=False))
        assert seen[0] == want, spec


def test_unknown_policy_and_bad_episodes_are_clear_errors(tiny_weights, tmp_path):
    with pytest.raises(ValueError, match="unknown memory policy 'nope'"):
        bm.validate(bm.MemoryRun(policies=["full", "nope"]))
    with pytest.raises(ValueError, match="unknown knob"):
        bm.validate(bm.MemoryRun(policies=["window:size=3"]))
    with pytest.raises(ValueError, match="episodes must be an integer >= 1"):
        bm.validate(bm.MemoryRun(episodes=0))
    with pytest.raises(ValueError, match="opening-seconds"):
        bm.validate(bm.MemoryRun(seconds=4, opening_seconds=6))
    runner = CliRunner()
    r = runner.invoke(main, ["bench", "memory", "--policies", "full,bogus", "--weights", tiny_weights,
                             "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "unknown memory policy 'bogus'" in r.output
    r = runner.invoke(main, ["bench", "memory", "--episodes", "0", "--weights", tiny_weights,
                             "--out", str(tmp_path / "y")])
    assert r.exit_code != 0 and "--episodes must be an integer >= 1" in r.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_episodes_cycle_benchmark_scenes_then_revisit_scenes():
    from fademem.embedded.world import BENCHMARK_SCENES, parse_prompt

    eps = bm.make_episodes(15, seed=100)
    assert [e.prompt for e in eps[:13]] == [p for p, _ in BENCHMARK_SCENES]
    assert [e.world_seed for e in eps[:13]] == [s for _, s in BENCHMARK_SCENES]
    assert eps[13].source == "revisit_scene(113)" and eps[13].noise_seed == 113
    assert parse_prompt(eps[14].prompt).camera.move == "return"
    sel = bm.make_episodes(3, scenes=[3, 5])
    assert [e.source for e in sel] == ["benchmark[3]", "benchmark[5]", "revisit_scene(2)"]


# -- teacher forcing -------------------------------------------------------------------------------
def test_pipeline_prefix_is_teacher_forced_and_keeps_the_noise(tiny_bundle):
    b = tiny_bundle
    pipe = VideoPipeline(b.model, b.text, b.codec)
    shape = (b.cfg.channels, b.cfg.latent_hw, b.cfg.latent_hw)
    free = torch.cat([c.latents for c in pipe.generate([PROMPT, PROMPT], 12, memory="window:budget=6", seed=3,
                                                       latent_shape=shape, progress=False)], dim=2)
    # the model's own first 6 frames as prefix reproduce the unforced video exactly (same noise after it)
    again = torch.cat([c.latents for c in pipe.generate([PROMPT, PROMPT], 12, memory="window:budget=6", seed=3,
                                                        latent_shape=shape, progress=False, prefix=free[:, :, :6])],
                      dim=2)
    torch.testing.assert_close(again, free, rtol=0, atol=1e-6)
    # another prefix is returned verbatim and changes what follows (it went into the memory)
    other = torch.rand(2, *shape[:1], 6, *shape[1:]) * 2 - 1
    chunks = list(pipe.generate([PROMPT, PROMPT], 12, memory="window:budget=6", seed=3, latent_shape=shape,
                                progress=False, prefix=other))
    assert torch.equal(torch.cat([c.latents for c in chunks[:2]], dim=2), other)
    assert pipe.memory.frames_seen == 12
    assert not torch.allclose(chunks[2].latents, free[:, :, 6:9])
    with pytest.raises(ValueError, match="multiple of frames_per_chunk"):
        pipe.generate(PROMPT, 12, latent_shape=shape, prefix=other[:1, :, :4])
    with pytest.raises(ValueError, match="prefix must be"):
        pipe.generate(PROMPT, 12, latent_shape=shape, prefix=other)  # batch 2 prefix for a batch of 1


def test_teacher_forced_opening_is_the_truth(tiny_bundle):
    """The pipeline with the codec-encoded true opening yields exactly the true frames before the opening ends."""
    from fademem.embedded.world import World

    b = tiny_bundle
    truth = torch.from_numpy(World(PROMPT, 0, 64, 8).render(12))
    pipe = VideoPipeline(b.model, b.text, b.codec)
    z = b.codec.encode(truth[None])
    shape = (b.cfg.channels, b.cfg.latent_hw, b.cfg.latent_hw)
    chunks = list(pipe.generate(PROMPT, 12, memory="fademem:budget=6", latent_shape=shape, progress=False,
                                prefix=z[:, :, :6]))
    video = b.codec.to_frames(torch.cat([c.latents for c in chunks], dim=2))[0]
    torch.testing.assert_close(video[:6], truth[:6], rtol=0, atol=1e-5)
    assert (video[6:] - truth[6:]).abs().max() > 0.05  # the rest is generated (random model)


# -- CLI smoke run ---------------------------------------------------------------------------------
def test_cli_smoke_run_writes_json_png_and_one_row_per_policy(tiny_weights, tmp_path):
    out = tmp_path / "bench"
    policies = ["full", "window", "sink", "memrope", "fademem", "window:budget=6"]
    r = CliRunner().invoke(main, ["bench", "memory", "--weights", tiny_weights, "--episodes", "2", "--seconds", "7.5",
                                  "--opening-seconds", "1.5", "--policies", ",".join(policies), "--out", str(out),
                                  "--no-progress", "--scenes", "0,1"])  # v2: scenes that return in 7.5 s
    assert r.exit_code == 0, r.output
    report = json.loads((out / "memory.json").read_text())
    assert (out / "memory.png").stat().st_size > 1000 and (out / "memory.txt").exists()
    assert set(report) >= {"benchmark", "environment", "config", "equal_budget", "episodes", "policies", "elapsed_s"}
    cfg = report["config"]
    assert cfg["latent_frames"] == 60 and cfg["opening_frames"] == 12 and cfg["generated_frames"] == 48
    assert cfg["lag_edges_frames"][-1] is None and cfg["lag_edges_seconds"][1] == 0.125
    specs = [p["spec"] for p in report["policies"]]
    assert specs == ["full", "window:budget=12", "sink:budget=12,sink=3", "memrope:recent=7", "fademem:budget=12",
                     "window:budget=6"]
    assert [e["source"] for e in report["episodes"]] == ["benchmark[0]", "benchmark[1]"]
    assert all(len(e["lags"]) == 60 for e in report["episodes"])
    for p in report["policies"]:
        assert p["error"] is None
        assert p["opening_max_abs_error"] < 1e-5  # the opening is the truth
        assert len(p["episodes"]) == 2 and all(len(e["psnr"]) == 48 == len(e["ssim"]) for e in p["episodes"])
        s = p["summary"]
        assert set(s) >= {"psnr", "ssim", "psnr_long", "ssim_long", "psnr_by_lag", "ssim_by_lag"}
        assert len(s["psnr_by_lag"]["mean"]) == len(bm.LAG_EDGES) - 1
        if p["spec"] != "full":
            assert "paired_vs_full" in p
    vis = report["equal_budget"]["visible_history_frames"]
    assert vis == {"window:budget=12": 12, "sink:budget=12,sink=3": 12, "memrope:recent=7": 12,
                   "fademem:budget=12": 12, "window:budget=6": 6}
    assert report["equal_budget"]["unmatched"] == {"window:budget=6": 6}
    assert "12 history latent frames" in report["equal_budget"]["statement"]
    # the printed table: a header and one row per policy
    lines = r.output[r.output.index("policy "):].splitlines()
    assert [ln.split()[0] for ln in lines[1:1 + len(policies)]] == specs
