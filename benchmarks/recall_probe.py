"""Recall probe: does the embedded model read a returning view from its long memory?

Revisit scenes (the camera pans away and returns after ``--gaps`` seconds), two phases of the return:

* ``panback``: target chunks in the last 1.5 s of the pan back, where a strip of the view was last seen
  long ago (not in the last 12 frames): recall needs a shifted copy of the first visit;
* ``home``: the chunk 0.5 s after the camera is home again, the view of the first visit pixel for pixel.

The model predicts the chunk's clean latents (x0) from the target noised to ``sigma`` (fixed noise), after
the frames each context rule keeps, at their positions; we score PSNR of the decoded prediction against
the true render, on the pixels that need memory (panback; last seen more than 12 frames before) or on
all pixels (home). Context rules: ``full`` (every earlier frame), ``window12`` (the last 12), ``sink3+9``,
``fademem12`` (one frame per FadeMem entry at budget 12, beta 0.3, at the entry's position), each with the
true history and with a *made-up* one (``/madeup``: the frames after the first visit rendered from
another world of the same prompt, another seed, as a history the model made up itself): then the true
view is only in the first visit's frames, and a model that recalls scores ``full/madeup`` far above
``window12/madeup``.

    python benchmarks/recall_probe.py --weights training/embedded_v2/teacher.safetensors --out probe.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


@torch.no_grad()
def probe(weights: str | None, sigmas=(0.9, 0.6), gaps=(8, 16), scenes: int = 8, device: str = "cpu") -> dict:
    from fademem.embedded import load
    from fademem.embedded.train import encode_frames
    from fademem.embedded.world import World, last_seen, revisit_scene
    from fademem.memory.fademem import simulate

    b = load(weights, device=device)
    model, text, codec = b.model.eval(), b.text.eval(), b.codec
    fps, size, home = 8, b.cfg.frame_size, 24
    out: dict = {}
    for gap in gaps:
        cycle = gap + 4
        phases = {"panback": [3 * int((cycle - 1.5) * fps / 3 + k) for k in (0, 1, 2)],
                  "home": [3 * int((cycle + 0.5) * fps / 3)]}
        for s in range(scenes):
            prompt = revisit_scene(1000 + s, gap_seconds=gap).to_prompt()
            T = max(max(v) for v in phases.values()) + 3
            world, alt = World(prompt, 1000 + s, size, fps), World(prompt, 5000 + s, size, fps)
            frames = np.stack([world.frame_at(t) for t in range(T)])
            madeup = np.stack([alt.frame_at(t) if t >= home else frames[t] for t in range(T)])
            _, since = last_seen(prompt, 1000 + s, T, size, fps, per_pixel=True, mode="since")
            ctx = text(text.tokenize([prompt]).to(device))
            for phase, starts in phases.items():
                for start in starts:
                    need = np.stack([since[start + j] > 12 + j for j in range(3)]) if phase == "panback" else \
                        np.ones((3, size, size), bool)
                    if need.mean() < 0.02:
                        continue
                    x0 = encode_frames(codec, torch.from_numpy(frames[start:start + 3])[None].to(device))
                    g = torch.Generator(device=device).manual_seed(start + 7 * s)
                    noise = torch.randn(x0.shape, generator=g, device=device)
                    for sigma in sigmas:
                        xt = (1 - sigma) * x0 + sigma * noise
                        for name, (idx, pos) in _rules(start, simulate).items():
                            for hist, src in (("", frames), ("/madeup", madeup)):
                                pred = _predict(model, codec, ctx, src, idx, pos, xt, sigma, start, device,
                                                (b.cfg.latent_hw // 2) ** 2)
                                err = (pred - frames[start:start + 3]) ** 2
                                key = f"{phase} sigma={sigma:g}"
                                out.setdefault(key, {}).setdefault(name + hist, []).append(
                                    float(10 * np.log10(1 / max(err[need].mean(), 1e-10))))
    return out


def _rules(start: int, simulate) -> dict:
    """{rule: (context frame indices, their positions)} at target ``start``."""
    ent = simulate(budget=12, beta=0.3, steps=start).as_json()
    whole = list(range(start))
    return {"full": (whole, None), "window12": (whole[-12:], None), "sink3+9": ([0, 1, 2] + whole[-9:], None),
            "fademem12": ([min(start - 1, max(0, round(e["mu"]))) for e in ent], [float(e["mu"]) for e in ent])}


def _predict(model, codec, ctx, src, idx, pos, xt, sigma, start, device, tokens):
    """Decoded x0 prediction [3, H, W, 3] of the target at ``sigma`` after frames ``src[idx]`` at ``pos``: one
    Euler step of the flow from ``sigma`` to 0 (``teacher_ode`` with the path [sigma, 0]), in float32."""
    from fademem.embedded.distill import teacher_ode
    from fademem.embedded.train import encode_frames, token_mask

    pos = pos or [float(i) for i in idx]
    z = encode_frames(codec, torch.from_numpy(src[idx])[None].to(device))
    n = len(idx)
    mask = token_mask({"chunks": torch.tensor([i // 3 for i in idx] + [start // 3] * 3)}, n, tokens, device)
    positions = torch.tensor(pos + [float(start + i) for i in range(3)], device=device)
    x0 = teacher_ode(model, torch.cat([z, xt], 2), n, torch.zeros(1, 1, device=device), [sigma, 0.0], ctx,
                     positions, mask, torch.autocast(torch.device(device).type, enabled=False))
    return codec.to_frames(x0).float().clamp(0, 1)[0].cpu().numpy()


def report(res: dict) -> str:
    lines = []
    for key, rules in res.items():
        lines.append(f"{key}: PSNR dB ({'memory pixels' if key.startswith('panback') else 'all pixels'}), "
                     f"n={len(rules['window12'])}; paired difference vs window12 with the same history [95% CI]")
        for name, r in rules.items():
            m = np.asarray(r)
            d = m - np.asarray(rules["window12" + name[name.index("/"):] if "/" in name else "window12"])
            half = 1.96 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
            lines.append(f"  {name:20s} {m.mean():6.2f}   {d.mean():+6.2f} [{d.mean() - half:+.2f}, "
                         f"{d.mean() + half:+.2f}]")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=None, help="an embedded bundle (default: the shipped model)")
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--gaps", default="8,16")
    ap.add_argument("--sigmas", default="0.9,0.6")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None, help="JSON file for the per-example figures")
    a = ap.parse_args()
    res = probe(a.weights, tuple(float(x) for x in a.sigmas.split(",")), tuple(int(x) for x in a.gaps.split(",")),
                a.scenes, a.device)
    print(report(res))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"weights": a.weights, "results": res}, f)


if __name__ == "__main__":
    main()
