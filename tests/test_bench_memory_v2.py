"""`fademem bench memory` v2: Holm-corrected pairwise intervals, revisit-aligned scoring, episodes that
return within their length, the critic's identity score, v1 weights and a v2 bundle end to end."""

from __future__ import annotations

import json
import math
import types

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy import stats

from fademem.bench import memory as bm
from fademem.bench import memory_critic, memory_stats
from fademem.cli import main
from fademem.embedded.world import BENCHMARK_SCENES, last_seen
from fademem.embedded.world.revisit import revisit_aligned, revisit_onsets, revisit_scene
from fademem.embedded.world.scene import return_cycle
from fademem.metrics import holm, paired_holm, paired_t

pytestmark = pytest.mark.usefixtures("one_thread")
CRITIC = "training/embedded_v2/critic.safetensors"


# -- statistics ------------------------------------------------------------------------------------------
def test_holm_against_a_hand_worked_example():
    # p sorted: 0.005 (<= .05/4 = .0125: reject), 0.01 (<= .05/3 = .0167: reject), 0.03 (> .05/2 = .025: stop)
    h = holm([0.01, 0.04, 0.03, 0.005, math.nan], alpha=0.05)
    assert h.family == 4
    assert h.rejected.tolist() == [True, False, False, True, False]
    # adjusted: 4*.005=.02, 3*.01=.03, max(.03, 2*.03)=.06, max(.06, 1*.04)=.06
    np.testing.assert_allclose(h.adjusted[:4], [0.03, 0.06, 0.06, 0.02])
    assert math.isnan(h.adjusted[4]) and math.isnan(h.level[4])
    # levels: rejected at .05/3 and .05/4; the two not rejected at .05/(4 - 2)
    np.testing.assert_allclose(h.level[:4], [0.05 / 3, 0.025, 0.025, 0.0125])
    assert holm([0.2, 0.5]).rejected.tolist() == [False, False]
    np.testing.assert_allclose(holm([0.2, 0.5]).adjusted, [0.4, 0.5])


def test_paired_intervals_match_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(1.0, 1.0, 9)
    b = a - rng.normal(0.8, 0.5, 9)
    m, lo, hi, p = paired_t(a, b)
    ref = stats.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    assert m == pytest.approx(float(np.mean(a - b)))
    assert (lo, hi) == pytest.approx((ci.low, ci.high)) and p == pytest.approx(ref.pvalue)
    # a family of three comparisons: each interval is scipy's at the level Holm compared it at
    diffs = [a - b, rng.normal(0, 1, 9), rng.normal(0.05, 1, 9)]
    fam = paired_holm(diffs)
    h = holm([stats.ttest_1samp(d, 0).pvalue for d in diffs])
    for d, e, lv, rej, adj in zip(diffs, fam, h.level, h.rejected, h.adjusted):
        c = stats.ttest_1samp(d, 0).confidence_interval(1 - lv)
        assert (e["low"], e["high"]) == pytest.approx((c.low, c.high))
        assert e["excludes_zero"] == bool(rej) == (e["low"] > 0 or e["high"] < 0)
        assert e["p_holm"] == pytest.approx(adj) and e["n"] == 9
    assert fam[0]["excludes_zero"] and fam[0]["level"] == pytest.approx(0.05 / 3)
    assert math.isnan(paired_t([1.0])[1]) and paired_t([2.0, 2.0])[1:] == (2.0, 2.0, 0.0)


def test_revisit_aligned_binning_of_a_hand_made_lag_sequence():
    lags = np.array([0, 0, 0, 5, 5, 5, 5, 5, 0, 0, 20, 20, 20, 20, 3, 3])
    assert revisit_onsets(lags) == [3, 10, 14]
    assert revisit_onsets(lags, start=4) == [10, 14]
    m = revisit_aligned(lags, window=2)
    assert np.flatnonzero(m).tolist() == [3, 4, 10, 11, 14, 15]
    # the benchmark's masks are over the scored frames (after the opening); onsets in the opening do not count
    (mask,) = memory_stats.revisit_masks([lags], window=2, opening=4)
    assert np.flatnonzero(mask).tolist() == [6, 7, 10, 11]  # frames 10, 11, 14, 15
    psnr = np.arange(16, dtype=float)
    ep = [{"psnr": psnr.tolist(), "ssim": (psnr / 100).tolist()}]
    s = memory_stats.summarise(ep, [lags], long_lag=16, masks=[revisit_aligned(lags, 2)])
    b = s["psnr_by_lag"]  # bins [0,1) [1,8) [8,16) [16,32) ...: lag 5 -> 3, 4; lag 3 -> 14, 15; lag 20 -> 10, 11
    assert b["n_frames"][:4] == [0, 4, 0, 2] and s["n_frames"] == 6
    assert b["mean"][1] == pytest.approx((3 + 4 + 14 + 15) / 4) and b["mean"][3] == pytest.approx(10.5)
    assert s["psnr_long"][0] == pytest.approx(10.5)  # lag >= 16: frames 10, 11 only (not the whole run to 13)
    # pairwise over three policies sharing episodes: b is a + 1 on every aligned frame
    eps = {k: [{"psnr": (psnr + off + 0.1 * e * (k == "c")).tolist()} for e in range(3)]
           for k, off in (("a", 0.0), ("b", 1.0), ("c", 0.0))}
    pw = memory_stats.pairwise(list(eps.items()), "psnr", [lags] * 3, 16, masks=[revisit_aligned(lags, 2)] * 3)
    assert [(e["a"], e["b"]) for e in pw["overall"]] == [("a", "b"), ("a", "c"), ("b", "c")]
    ab = pw["overall"][0]
    assert ab["mean"] == pytest.approx(-1.0) and ab["excludes_zero"] and ab["n"] == 3
    assert len(pw["by_lag"]) == len(bm.LAG_EDGES) - 1 and pw["by_lag"][0][0]["n"] == 0
    assert memory_stats.excluding_zero(pw["overall"])[0] == "a - b"


# -- episodes --------------------------------------------------------------------------------------------
def test_every_episode_returns_within_its_length():
    eps, lags, skipped = bm.revisit_episodes(20, seed=0, scenes=None, num_frames=320, opening=48)
    assert len(eps) == len(lags) == 20
    assert sorted(sk["scene"] for sk in skipped) == [5, 6, 7, 9]  # 64 s gap, objects leaving, no revisit
    used = [int(e.source[len("benchmark["):-1]) for e in eps if e.source.startswith("benchmark")]
    assert used == [k for k in range(len(BENCHMARK_SCENES)) if k not in (5, 6, 7, 9)]
    for e, lg in zip(eps, lags):
        on = revisit_onsets(lg, start=48)
        assert on and e.return_frame == on[0] and 48 <= e.return_frame < 320, e.source
        assert e.noise_seed == e.index
    # random scenes are built to come home within the video, and they do
    for s in range(12):
        spec = revisit_scene(s, within_seconds=7.5)
        assert return_cycle(spec.camera) <= 7.5
        assert revisit_onsets(last_seen(spec, s, 60, mode="revisit"), start=12)
    assert revisit_scene(3, within_seconds=1e9) == revisit_scene(3)  # unrestricted: the same scene
    with pytest.raises(ValueError, match="benchmark scene 5"):
        bm.revisit_episodes(1, 0, [5], 320, 48)
    with pytest.raises(ValueError, match="no revisit gap returns within"):
        bm.revisit_episodes(2, 0, [], 40, 12)


def test_critic_windows_follow_the_onsets():
    lags = np.zeros(120, int)
    lags[50:60], lags[60:70], lags[100:] = 16, 70, 30
    w = memory_critic.critic_windows(lags, opening=24, num_frames=120, span=31, budget=12)
    assert w == [{"start": 50, "onset": 50, "lag": 70}, {"start": 89, "onset": 100, "lag": 30}]
    assert memory_critic.critic_windows(lags, opening=100, num_frames=120, span=31, budget=12) == []


# -- end to end ------------------------------------------------------------------------------------------
def test_end_to_end_with_the_shipped_weights_and_the_critic():
    run = bm.MemoryRun(policies=["full", "window:budget=6"], episodes=2, budget=6, seconds=6, opening_seconds=1.5,
                       scenes=[0], critic=CRITIC, progress=False)
    rep = bm.run_memory(run, log=lambda *a: None)
    cfg = rep["config"]
    assert cfg["latent_frames"] == 48 and cfg["opening_frames"] == 12 and cfg["codec"] == "autoencoder"
    assert cfg["steps"] == [1000.0, 750.0, 500.0, 250.0] and cfg["schedule_from"] == "the model file"
    assert [e["source"] for e in rep["episodes"]] == ["benchmark[0]", "revisit_scene(1, within_seconds=6)"]
    assert all(e["return_frame"] is not None for e in rep["episodes"]) and rep["revisit"]["aligned_frames"][0] > 0
    assert 30 < rep["codec_ceiling"]["summary"]["psnr"][0] < 100  # the v2 autoencoder: near, not exact
    for p in rep["policies"]:
        assert p["error"] is None and p["opening_max_abs_error"] < 1e-5
        assert p["revisit"]["n_frames"] == sum(rep["revisit"]["aligned_frames"])
        assert 0 <= p["identity"]["identity"][0] <= 1 and p["identity"]["n_windows"] >= 1
    assert rep["equal_budget"]["visible_history_frames"] == {"window:budget=6": 6}
    pw = rep["pairwise"]
    assert pw["pairs"] == [["full", "window:budget=6"]] and set(pw) >= {"psnr", "ssim", "identity", "excluding_zero"}
    assert pw["psnr"]["overall"][0]["n"] == 2 and rep["critic"]["truth"]["identity"][0] > 0.5
    table = bm.format_table(rep)
    assert "Pairwise a - b at lag >= 8 s" in table and "full - window:budget=6" in table


@pytest.fixture()
def v2_weights(tmp_path):
    import dataclasses

    import fademem.embedded.autoencoder as ae
    from fademem.embedded.bundle import EmbeddedConfig, SamplingSchedule, build, save

    torch.manual_seed(0)
    codec = ae.LatentCodec(ae.AutoencoderConfig(enc_channels=(8, 8), enc_blocks=(1, 1), dec_channels=(8, 8),
                                                dec_blocks=(1, 1), groups=4)).eval().requires_grad_(False)
    dit = dataclasses.replace(EmbeddedConfig().dit_config(dim=32, layers=1, heads=2, ffn=64), in_dim=codec.channels,
                              out_dim=codec.channels)
    path = tmp_path / "v2.safetensors"
    save(build(EmbeddedConfig(), dit, codec=codec, schedule=SamplingSchedule.uniform(2, 3.0)), path,
         dtype=torch.float32)
    return types.SimpleNamespace(path=str(path), channels=codec.channels)


def test_end_to_end_with_a_v2_bundle_uses_its_schedule(v2_weights, tmp_path):
    out = tmp_path / "v2"
    args = ["bench", "memory", "--weights", v2_weights.path, "--episodes", "3", "--seconds", "7.5",
            "--opening-seconds", "1.5", "--policies", "full,window", "--budget", "6", "--scenes", "0",
            "--out", str(out), "--no-progress"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "memory.json").read_text())
    cfg = rep["config"]
    assert cfg["codec"] == "autoencoder" and cfg["latent_shape"] == [v2_weights.channels, 16, 16]
    assert cfg["steps"] == [1000.0, 500.0] and cfg["shift"] == 3.0 and cfg["steps_requested"] is None
    assert rep["critic"]["path"] is None and "skipped" in rep["critic"]["note"]
    assert len(rep["episodes"]) == 3 and all(e["return_frame"] for e in rep["episodes"])
    for p in rep["policies"]:
        assert p["error"] is None and "identity" not in p
        assert p["opening_max_abs_error"] < 1e-4  # the opening is the codec's reconstruction of the truth
        assert all(len(e["psnr"]) == 48 for e in p["episodes"])
    assert len(rep["pairwise"]["psnr"]["by_lag"]) == len(bm.LAG_EDGES) - 1
    assert (out / "memory.png").stat().st_size > 1000
    # an explicit --steps that contradicts the file fails clearly; one that agrees runs
    bad = CliRunner().invoke(main, [*args[:-3], "--out", str(tmp_path / "bad"), "--steps", "1000,750,500,250"])
    assert bad.exit_code != 0 and "trained for" in bad.output and "1000, 500" in bad.output
