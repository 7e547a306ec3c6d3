"""The spectrum of the embedded model's world, in pixels and in the latent space its DiT and memory see
(issue 18: "the paper measures in latent space"; the data a ``fademem:beta=...`` for the embedded model
would be chosen from).

    python benchmarks/spectrum_world.py --clips 6 --seconds 60 --out docs/results/spectrum_world

Renders ``--clips`` true videos of random prompts of the world's grammar (seeded), writes them as
near-lossless files, and runs ``fademem spectrum``'s analysis (``analyse_videos``) on them twice: luma
pixels, and the v2 autoencoder's latents (``--codec``). Prints per-clip and pooled b with intervals and
verdicts, the suggested beta where one is supported, and writes ``<out>.json`` and ``<out>.txt``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_clip(path: Path, frames: np.ndarray, fps: int) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv444p"
        for f in (frames * 255).round().astype(np.uint8):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())


def line(name: str, res: dict) -> str:
    b, ci = res.get("b"), res.get("ci") or [None, None]
    beta = (res.get("beta") or {}).get("beta")
    fmt = (lambda x: "  n/a" if x is None or not np.isfinite(x) else f"{x:5.2f}")
    return (f"{name:<34} b {fmt(b)}  [{fmt(ci[0])}, {fmt(ci[1])}]  verdict {res.get('verdict', '?'):<5} "
            f"suggested beta {fmt(beta)}  ({res.get('reason', '')})")


def main() -> None:
    from fademem.analysis.spectrum import SpectrumParams, analyse_videos
    from fademem.embedded.world import World, sample_prompt

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-lag", type=int, default=64, help="frames (8 fps: 64 = 8 s)")
    ap.add_argument("--bands", type=int, default=6)
    ap.add_argument("--n-boot", type=int, default=300)
    ap.add_argument("--codec", default=str(ROOT / "training" / "embedded_v2" / "autoencoder.safetensors"))
    ap.add_argument("--out", default="docs/results/spectrum_world")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    fps, n = 8, int(round(args.seconds * 8))
    params = SpectrumParams(bands=args.bands, max_lag=args.max_lag, n_boot=args.n_boot, seed=args.seed)
    lines, report = [], {"clips": []}
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for i in range(args.clips):
            prompt = sample_prompt(rng)
            path = Path(d) / f"world_{i}.mkv"
            write_clip(path, World(prompt, int(rng.integers(1 << 31)), 64, fps).render(n), fps)
            paths.append(path)
            report["clips"].append({"file": path.name, "prompt": prompt})
            lines.append(f"clip {i}: {prompt}")
        for space, kw in (("pixels (luma)", {}), ("autoencoder latents", {"codec": args.codec})):
            rep = analyse_videos(paths, params, progress=False, **kw)
            lines.append(f"\n== {space}: {args.clips} clips x {args.seconds:g} s at {fps} fps, max lag "
                         f"{args.max_lag / fps:g} s, {args.bands} bands")
            for res in rep["videos"]:
                lines.append(line(res["name"], res))
            if rep["pooled"] is not None:
                lines.append(line(f"pooled by clip ({args.clips})", rep["pooled"]))
            report[space] = {"videos": [{k: r.get(k) for k in ("name", "b", "ci", "verdict", "reason", "beta")}
                                        for r in rep["videos"]],
                             "pooled": {k: rep["pooled"].get(k) for k in ("b", "ci", "verdict", "reason", "beta",
                                                                           "n_clips")} if rep["pooled"] else None}
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".txt").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {out.with_suffix('.txt')} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
