"""Spectral-decay analysis (`fademem spectrum`, paper Sec. 3.2 / Fig. 2): estimator, horizon rule,
power-law fit, beta mapping, streaming video input, real footage, bad input and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner

from fademem.analysis import spectrum_bands
from fademem.analysis.spectrum import (
    BandLayout,
    LagAccumulator,
    SpectrumParams,
    analyse_frames,
    analyse_videos,
    decorrelation_horizons,
    fit_power_law,
    stable_radius,
    suggest_beta,
)
from fademem.cli import main
from fademem.pipeline import video_io

try:
    from tests.data_clips import require_clip
except ImportError:  # tests/ is not a package: pytest put this folder on sys.path
    from data_clips import require_clip


# ----------------------------------------------------------------------------- synthetic footage


def band_index(h: int, w: int, n_bands: int) -> np.ndarray:
    """The default (log-spaced) band of every rfft2 coefficient (issue 18: bands are log-spaced now)."""
    return spectrum_bands.band_index(h, w, n_bands, "log")


def planted_video(n_frames: int, size: int, periods, n_bands: int, seed: int = 0) -> np.ndarray:
    """(T, H, W) noise whose band r is a moving sum of `periods[r]` white-noise fields, so its
    correlation is exactly max(0, 1 - lag / periods[r]): linear decay, flat from lag periods[r]."""
    rng = np.random.default_rng(seed)
    band = band_index(size, size, n_bands)
    video = np.zeros((n_frames, size, size), np.float32)
    for r, period in enumerate(periods):
        noise = rng.standard_normal((n_frames + period, size, size)).astype(np.float32)
        csum = np.concatenate([np.zeros((1, size, size), np.float32), np.cumsum(noise, axis=0)])
        moving = (csum[period:] - csum[:-period])[:n_frames]
        part = np.fft.irfft2(np.fft.rfft2(moving) * (band == r), s=(size, size))
        video += (part / part.std()).astype(np.float32)
    return video


def nominal_centres(n_bands: int, size: int = 64) -> np.ndarray:
    edges = spectrum_bands.band_edges(n_bands, "log", 2 / size)
    lo = np.where(edges[:-1] > 0, edges[:-1], edges[1] / 2)
    return np.sqrt(lo * edges[1:])


def planted_periods(b: float, t0: float, n_bands: int) -> np.ndarray:
    centres = nominal_centres(n_bands)
    return np.maximum(2, np.round(t0 * (centres / centres[0]) ** (-1 / b))).astype(int)


def write_video(path, frames: np.ndarray, codec: str, fps: int = 25) -> None:
    """Grey (T, H, W) frames -> a near-lossless video file (libx264 crf 0 or ffv1)."""
    lo, hi = np.percentile(frames, [0.1, 99.9])
    u8 = np.clip((frames - lo) / (hi - lo) * 255, 0, 255).round().astype(np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv444p"
        if codec == "libx264":
            stream.options = {"crf": "0", "preset": "ultrafast"}
        for g in u8:
            frame = av.VideoFrame.from_ndarray(np.repeat(g[..., None], 3, axis=2), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def lossless_formats():
    out = []
    if "libx264" in av.codecs_available:
        out.append(("mp4", "libx264"))
    if "ffv1" in av.codecs_available:
        out.append(("mkv", "ffv1"))
    return out or [pytest.param(None, None, marks=pytest.mark.skip(reason="no lossless encoder in PyAV"))]


# ----------------------------------------------------------------------------- estimator


@pytest.mark.parametrize("shape", [(1, 16, 16), (2, 15, 17), (3, 12, 9)])
def test_band_inner_products_match_full_fft(shape):
    """The weighted half-spectrum sums equal the full-FFT inner products, band by band."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2, *shape)).astype(np.float32)
    layout = BandLayout(shape, 4, window="none")
    got = layout.band_sums((layout.transform(x) * layout.transform(y).conj()).real.astype(np.float64))
    fy = np.fft.fftfreq(shape[1])[:, None] / 0.5
    fx = np.fft.fftfreq(shape[2])[None, :] / 0.5
    band = np.ceil(np.hypot(fy, fx) * 4).astype(int) - 1
    prod = (np.fft.fft2(x) * np.fft.fft2(y).conj()).real
    want = [prod[:, band == r].sum() for r in range(4)]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_streaming_matches_brute_force_estimator():
    """Ring-buffer accumulation == the documented estimator computed from all frames at once."""
    rng = np.random.default_rng(1)
    frames = np.cumsum(rng.standard_normal((40, 20, 24)), axis=0).astype(np.float32)
    p = SpectrumParams(bands=3, max_lag=6, channels="raw", window="none", n_boot=0)
    res = analyse_frames(iter(frames), p)
    band = band_index(20, 24, 3)
    spec = np.fft.rfft2(frames - frames.mean(axis=(1, 2), keepdims=True))
    weight = np.full(band.shape, 2.0)  # interior rfft columns stand for a conjugate pair
    weight[:, [0, -1]] = 1.0
    for r in range(3):
        xr = spec[:, band == r] * np.sqrt(weight[band == r])
        for lag in range(7):
            a, b = xr[: len(xr) - lag], xr[lag:]
            cos = (a * b.conj()).real.sum(1) / np.sqrt((abs(a) ** 2).sum(1) * (abs(b) ** 2).sum(1))
            assert res["curves"][r][lag] == pytest.approx(cos.mean(), abs=1e-4)
    assert res["pairs_per_lag"] == [40 - lag for lag in range(7)]


def test_ring_buffer_stays_bounded():
    acc = LagAccumulator(SpectrumParams(bands=2, max_lag=5, channels="raw"))
    for frame in np.random.default_rng(2).standard_normal((200, 8, 8)):
        acc.add(frame)
    assert acc.buf.shape[0] == 6 and acc.t == 200


# ----------------------------------------------------------------------------- horizons, fit, beta


@pytest.mark.parametrize(("rule", "t_triangle"), [("slope", 9.55), ("drop", 9.0)])
def test_horizon_rule_statuses(rule, t_triangle):
    lags = np.arange(33)
    triangle = np.maximum(0, 1 - lags / 10)  # flat from lag 10
    curves = np.stack([triangle, np.ones(33), (lags == 0).astype(float), 1 - lags / 64])
    t_star, status = decorrelation_horizons(curves, SpectrumParams(max_lag=32, eps=0.1, rule=rule))
    # slope: 2 (10 - t) / t crosses 0.1 between lags 9 and 10; drop: (10 - t) / 10 = 0.1 at t = 9
    assert t_star[0] == pytest.approx(t_triangle, abs=0.01)
    # issue 18: "static" is now one kind of "too_slow" (censored, no stand-in horizon of L)
    assert status == ["resolved", "too_slow", "too_fast", "too_slow"]
    assert np.isnan(t_star[1:]).all()
    r_star = stable_radius(t_star, np.array([0.1, 0.2, 0.3, 0.4]), 32)
    # issue 18: censored bands no longer enter r*(t) at a stand-in horizon
    assert r_star[0] == pytest.approx(0.1) and np.isnan(r_star[-1])


def test_slope_rule_ignores_late_drift():
    """A fast drop to a plateau followed by a slow drift: the plateau starts the flat regime."""
    lags = np.arange(49)
    curve = np.where(lags < 8, 1 - 0.7 * lags / 8, 0.3 - 0.2 * (lags - 8) / 40)
    t_slope = decorrelation_horizons(curve[None], SpectrumParams(max_lag=48))[0][0]
    t_drop = decorrelation_horizons(curve[None], SpectrumParams(max_lag=48, rule="drop"))[0][0]
    assert 7 < t_slope < 9 and np.isnan(t_drop)  # issue 18: drop rule's t* > censor_frac * L is censored


def test_power_law_fit_recovers_exact_exponent():
    t = np.array([2.0, 4.0, 8.0, 16.0])
    fit = fit_power_law(t, 3.0 * t**-0.7)
    assert fit["b"] == pytest.approx(0.7) and fit["r2"] == pytest.approx(1.0)
    assert fit_power_law(t[:2], t[:2]) is None  # two points: no fit


@pytest.mark.parametrize(
    ("b", "ci", "beta", "beta_ci", "clipped"),
    [(0.25, [0.2, 0.3], 0.5, [0.4, 0.6], False), (0.7, [0.6, 0.8], 0.05, [0.05, 0.05], True),
     (-0.2, None, 1.0, None, True), (0.45, [0.3, 0.6], 0.1, [0.05, 0.4], False)],
)
def test_suggest_beta(b, ci, beta, beta_ci, clipped):
    out = suggest_beta(b, ci, floor=0.05)
    assert out["beta"] == pytest.approx(beta)
    assert out["beta_ci"] == (None if beta_ci is None else pytest.approx(beta_ci))
    assert (out["note"] is not None) == clipped
    assert suggest_beta(None)["beta"] is None


# ----------------------------------------------------------------------------- planted exponent


@pytest.mark.parametrize(("b", "t0", "max_lag", "n_frames"), [(1.0, 40, 80, 320), (0.8, 40, 80, 320)])
def test_synthetic_recovers_planted_exponent(b, t0, max_lag, n_frames):
    # issue 18: 5 log-spaced bands span 32x in f, so the planted periods start longer (t0 = 40)
    periods = planted_periods(b, t0, 5)
    centres = nominal_centres(5)
    b_true = fit_power_law(periods, centres)["b"]  # the exponent of the rounded, planted horizons
    assert abs(b_true - b) < 0.1  # log bands: coarser rounding of the short periods
    res = analyse_frames(planted_video(n_frames, 64, periods, 5),
                         SpectrumParams(bands=5, max_lag=max_lag, channels="raw", n_boot=200))
    assert res["horizon_status"].count("resolved") >= 4
    assert res["b"] == pytest.approx(b, abs=0.15)  # log t* on log f: no attenuation toward 0
    assert res["ci"][0] < b < (res["ci"][1] or math.inf)
    assert res["ci_bootstrap"] is not None and res["ci_bootstrap"][0] < res["b"] < res["ci_bootstrap"][1] + 1e-9
    resolved = [h for h, s in zip(res["horizons"], res["horizon_status"], strict=True) if s == "resolved"]
    assert np.all(np.diff(resolved) < 0)  # higher bands decorrelate sooner


@pytest.mark.parametrize(("ext", "codec"), lossless_formats())
def test_synthetic_video_file_roundtrip(tmp_path, ext, codec):
    periods = planted_periods(1.0, 16, 5)
    path = tmp_path / f"planted.{ext}"
    write_video(path, planted_video(160, 64, periods, 5, seed=3), codec)
    assert video_io.count_frames(path) == 160
    frame = next(video_io.iter_video_frames(path))
    assert frame.shape == (64, 64, 3) and frame.dtype == np.float32 and 0 <= frame.min() <= frame.max() <= 1
    p = SpectrumParams(bands=5, max_lag=36, n_boot=100)
    res = analyse_videos([path], p, progress=False)["videos"][0]
    centres = np.array(res["band_centres"])  # energy-weighted centres (issue 18)
    assert res["b"] == pytest.approx(fit_power_law(periods, centres)["b"], abs=0.25)
    # stride 2 halves every horizon (lags count analysed frames) but keeps b
    res2 = analyse_videos([path], SpectrumParams(bands=5, max_lag=18, n_boot=0), stride=2, progress=False)
    res2 = res2["videos"][0]
    assert res2["frame_step"] == 2 and res2["n_frames"] == 80
    assert res2["horizons"][0] == pytest.approx(res["horizons"][0] / 2, rel=0.25)


def test_max_frames_rule(tmp_path):
    path = tmp_path / "short.mkv"
    write_video(path, planted_video(50, 32, [4, 2], 2), "ffv1")
    assert video_io.effective_stride(50, 1, 20) == 3
    assert len(list(video_io.iter_video_frames(path, max_frames=20))) == 17  # frames 0, 3, ..., 48
    assert len(list(video_io.iter_video_frames(path, max_frames=10))) == 10
    assert next(video_io.iter_video_frames(path, size=(16, 24))).shape == (16, 24, 3)


# ----------------------------------------------------------------------------- real footage


def test_real_clip_frequency_dependent_decay():
    """Paper Fig. 2 on real footage: low bands stay correlated longer than high bands."""
    res = analyse_videos([require_clip("bikes.mp4")], SpectrumParams(bands=6, max_lag=24, n_boot=100),
                         size=64, progress=False)["videos"][0]
    curves = np.array(res["curves"])
    assert np.all(curves[:, 0] == pytest.approx(1.0))
    assert curves[0, 8] > curves[-1, 8] + 0.2
    h = np.array(res["horizons"])  # issue 18: censored bands have no horizon (NaN)
    resolved = h[np.isfinite(h)]
    assert len(resolved) >= 3 and resolved.max() > 2 * resolved.min()
    assert res["verdict"] in ("supported", "weak", "none")  # issue 18: bikes at 64 px need not support one
    assert res["n_frames_total"] == 250 and res["fps"] == pytest.approx(25)


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs(tmp_path):
    p = SpectrumParams(bands=4, max_lag=8, n_boot=0)
    with pytest.raises(ValueError, match="not found"):
        analyse_videos([tmp_path / "missing.mp4"], p)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(ValueError, match="cannot read .*junk.mp4"):
        analyse_videos([junk], p)
    short = tmp_path / "short.mkv"
    write_video(short, planted_video(6, 32, [3, 2], 2), "ffv1")
    with pytest.raises(ValueError, match=r"only 6 frames .*max_lag \+ 1 = 9"):
        analyse_videos([short], p, progress=False)
    with pytest.raises(ValueError, match="single frame"):
        analyse_videos([short], p, stride=10, progress=False)
    with pytest.raises(ValueError, match="single frame"):
        analyse_frames(np.zeros((1, 16, 16)), p)
    with pytest.raises(ValueError, match="bands must be >= 2"):
        SpectrumParams(bands=1).validate()
    with pytest.raises(ValueError, match="too small for 16 bands"):
        analyse_frames(np.zeros((20, 4, 4)), SpectrumParams(bands=16, max_lag=4))
    with pytest.raises(ValueError, match="shape"):
        analyse_frames([np.zeros((8, 8))] * 3 + [np.zeros((8, 9))] * 3, SpectrumParams(bands=2, max_lag=2))
    with pytest.raises(ValueError, match="no video given"):
        analyse_videos([], p)


def test_cli_bad_inputs(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["spectrum", str(tmp_path / "nope.mp4"), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "nope.mp4" in res.output
    short = tmp_path / "short.mkv"
    write_video(short, planted_video(6, 32, [3, 2], 2), "ffv1")
    res = runner.invoke(main, ["spectrum", str(short), "--out", str(tmp_path), "--max-lag", "8"])
    assert res.exit_code == 1 and "short.mkv" in res.output and "max_lag + 1" in res.output
    res = runner.invoke(main, ["spectrum", str(short), "--out", str(tmp_path), "--bands", "1"])
    assert res.exit_code == 1 and "bands must be >= 2" in res.output
    res = runner.invoke(main, ["spectrum", str(short), "--out", str(tmp_path), "--size", "0x5"])
    assert res.exit_code == 2 and "--size" in res.output


# ----------------------------------------------------------------------------- CLI end to end


def test_cli_end_to_end_real_clips(tmp_path):
    clips = [require_clip("carphone_pristine.mp4"), require_clip("bikes.mp4")]
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["spectrum", *map(str, clips), "--out", str(out), "--size", "64",
                                    "--max-lag", "16", "--bands", "6", "--n-boot", "100", "--max-frames", "120",
                                    "--suggest-beta", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "suggested beta" in res.output and "pooled (2 videos)" in res.output
    assert sorted(p.name for p in out.glob("*.png")) == ["00_carphone_pristine.png", "01_bikes.png", "pooled.png"]
    assert all(p.stat().st_size > 10_000 for p in out.glob("*.png"))
    report = json.loads((out / "spectrum.json").read_text())
    assert report["params"]["max_lag"] == 16 and report["params"]["bands"] == 6
    assert len(report["videos"]) == 2 and report["videos"][1]["frame_step"] == 3  # 250 frames -> <= 120
    for res in report["videos"]:
        assert len(res["curves"]) == 6 and len(res["curves"][0]) == 17
        assert len(res["horizons"]) == 6 and len(res["r_star"]) == 16
        assert {"b", "ci", "ci_ols", "ci_bootstrap", "beta", "verdict", "sensitivity"} <= res.keys()
    # issue 18: pooled by clip (one slope, an intercept per clip), not by summing frame pairs
    assert report["pooled"]["n_clips"] == 2 and {"b", "ci", "verdict", "sensitivity", "beta"} <= report["pooled"].keys()
    assert sum(v["n_frames"] for v in report["videos"]) == 120 + 84


@pytest.mark.slow  # importing diffusers dominates
def test_cli_wan_vae_latents(tmp_path):
    """--vae-dir: a tiny random AutoencoderKLWan, frames encoded one by one, normalised latents."""
    diffusers = pytest.importorskip("diffusers")
    import torch

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1,
                                     temperal_downsample=[False], latents_mean=[0.1] * 4, latents_std=[2.0] * 4)
    vae.save_pretrained(tmp_path / "vae")
    video = tmp_path / "planted.mkv"
    write_video(video, planted_video(40, 32, [8, 4, 2], 3, seed=5), "ffv1")
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["spectrum", str(video), "--out", str(out), "--vae-dir", str(tmp_path / "vae"),
                                    "--bands", "3", "--max-lag", "8", "--n-boot", "20", "--no-progress"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "spectrum.json").read_text())
    assert report["params"]["channels"] == "raw" and report["params"]["vae_dir"].endswith("vae")
    curves = np.array(report["videos"][0]["curves"])
    assert curves.shape == (3, 9) and np.all(np.abs(curves) <= 1 + 1e-5) and not math.isnan(curves.sum())


V2 = Path(__file__).resolve().parents[1] / "training" / "embedded_v2"


def test_cli_embedded_codec_latents(tmp_path):
    """--codec: the world's true frames analysed in the embedded autoencoder's latent space, the latents
    exactly the codec's own encoding of the decoded frames."""
    import torch

    from fademem.analysis.spectrum import codec_latents, load_frame_codec
    from fademem.embedded.world import World

    prompt = "a large red circle bouncing over a striped blue background , camera steadily keeps panning right"
    frames = World(prompt, 1, 64, 8).render(40)
    video = tmp_path / "world.mkv"
    with av.open(str(video), "w") as container:  # RGB frames, near-lossless
        stream = container.add_stream("ffv1", rate=8)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv444p"
        for f in (frames * 255).round().astype(np.uint8):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["spectrum", str(video), "--out", str(out), "--codec",
                                    str(V2 / "autoencoder.safetensors"), "--bands", "3", "--max-lag", "8",
                                    "--n-boot", "20", "--no-progress"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "spectrum.json").read_text())
    assert report["params"]["channels"] == "raw" and report["params"]["codec"].endswith("autoencoder.safetensors")
    assert report["params"]["size"] == 64
    curves = np.array(report["videos"][0]["curves"])
    assert curves.shape == (3, 9) and np.all(np.abs(curves) <= 1 + 1e-5) and not math.isnan(curves.sum())
    codec = load_frame_codec(V2 / "autoencoder.safetensors")
    got = np.stack(list(codec_latents(iter(frames[:5]), codec, batch=2)))
    want = codec.encode(torch.from_numpy(frames[None, :5])).float()[0].permute(1, 0, 2, 3).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)  # batched convolutions: float32 rounding only
    assert got.shape == (5, codec.channels, 16, 16)


@pytest.mark.parametrize("args, message", [
    (["--codec", str(V2 / "critic.safetensors")], "neither an embedded autoencoder file nor"),
    (["--codec", str(V2 / "autoencoder.safetensors"), "--size", "32"], "takes 64x64 frames"),
    (["--codec", str(V2 / "autoencoder.safetensors"), "--vae-dir", "."], "not both"),
])
def test_cli_codec_errors(tmp_path, args, message):
    video = tmp_path / "v.mkv"
    write_video(video, planted_video(20, 32, [8, 4], 3, seed=1), "ffv1")
    res = CliRunner().invoke(main, ["spectrum", str(video), "--out", str(tmp_path / "o"), "--max-lag", "4",
                                    "--bands", "2", "--n-boot", "0", "--no-progress", *args])
    assert res.exit_code != 0 and message in res.output, res.output
    assert "Traceback" not in res.output
