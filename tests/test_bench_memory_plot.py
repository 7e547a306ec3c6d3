"""``bench memory``'s plot: CI bands stay in the metric's range, few-episode bins draw none, and the legend
is whole (below the axes, nothing cut at the figure's edge)."""

from __future__ import annotations

import math

import numpy as np

from fademem.bench.memory_report import MIN_BAND_EPISODES, band, plot, y_limits

CFG = {"psnr_cap_db": 100.0}


def test_band_clips_to_valid_range_and_skips_few_episodes():
    b = {"mean": [0.58, 0.83, None], "low": [-2.6, 0.65, None], "high": [3.8, 1.02, None],
         "n_episodes": [2, 8, 0]}
    low, high = band(b, "identity", CFG)
    assert MIN_BAND_EPISODES == 3 and np.isnan(low[0]) and np.isnan(high[0])  # n=2: no band
    assert low[1] == 0.65 and high[1] == 1.0  # clipped to [0, 1]
    low, high = band({"low": [90.0], "high": [140.0], "n_episodes": [10]}, "psnr", CFG)
    assert high[0] == 100.0  # PSNR at most its cap


def test_y_limits_not_swamped_by_one_wide_band():
    means = [np.array([15.0, 17.0, 25.0])]
    lo, hi = y_limits("psnr", CFG, means, [np.array([14.0, -40.0, 20.0]), np.array([16.0, 99.0, 30.0])])
    assert 0 < lo < 15 and 25 < hi < 35
    assert y_limits("identity", CFG, [np.array([0.5, 0.8])], []) == (-0.04, 1.04)


def _by_lag(mean, low, high, n):
    return {"mean": mean, "low": low, "high": high, "n_episodes": n, "n_frames": n}


def test_plot_writes_png_with_whole_legend(tmp_path, monkeypatch):
    import matplotlib.figure

    nb = 3
    res = {"label": "deepforcing", "spec": "deepforcing:budget=12,cache=12,sink=3,a_very_long_option=1",
           "visible_history_frames_max": 12, "unbounded": False, "error": None}
    quality = {"psnr_by_lag": _by_lag([None, 16.0, 20.0], [None, 15.0, 18.0], [None, 17.0, 22.0], [0, 10, 7]),
               "ssim_by_lag": _by_lag([None, 0.4, 0.6], [None, 0.3, 0.5], [None, 0.5, 0.7], [0, 10, 7])}
    res.update(summary=quality, revisit=quality,
               identity={"identity_by_lag": _by_lag([None, 0.58, 0.8], [None, -2.6, 0.6], [None, 3.8, 1.1],
                                                    [0, 2, 7])})
    report = {"config": {"lag_edges_frames": [0, 8, 64, None], "fps": 8, "latent_frames": 480,
                         "opening_frames": 48, "budget": 12, "psnr_cap_db": 100.0},
              "episodes": [0] * nb, "policies": [res]}
    saved = {}
    orig = matplotlib.figure.Figure.savefig

    def spy(self, path, **kw):
        saved["kw"] = kw
        saved["legend"] = [t.get_text() for t in self.legends[0].get_texts()]
        saved["ylim"] = [ax.get_ylim() for ax in self.axes]
        return orig(self, path, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    out = plot(report, str(tmp_path / "memory.png"))
    assert (tmp_path / "memory.png").stat().st_size > 1000 and out.endswith("memory.png")
    assert saved["kw"].get("bbox_inches") == "tight"
    assert any(res["spec"] in t for t in saved["legend"])  # the long label whole
    lo, hi = saved["ylim"][2]  # identity panel: [0, 1], not the n=2 interval [-2.6, 3.8]
    assert -0.1 < lo < 0 and 1 < hi < 1.1 and not math.isnan(lo)
