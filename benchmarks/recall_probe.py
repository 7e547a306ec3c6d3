"""Recall probe: does the embedded model read a returning view from its long memory?

For revisit scenes (the camera pans away and returns after ``--gaps`` seconds), the target chunk is taken on
the way back, where part of the view was last seen long ago (not in the last 12 frames). The model predicts
the chunk's clean latents (x0) from the target noised to ``sigma`` (fixed noise), after the true frames
chosen by each context rule at their positions; we score PSNR of the decoded prediction against the true
render on the pixels that need memory (last seen more than 12 frames before) and on all pixels.

Context rules: ``full`` (every earlier frame), ``window12`` (the last 12), ``sink3+9``, ``fademem12``
(one frame per FadeMem entry at budget 12, beta 0.3, at the entry's position), and ``full-madeup``: every
frame, but those after the first visit rendered from another world of the same prompt (another seed), as a
history the model made up itself. A model that recalls scores ``full`` well above ``window12`` on the
memory pixels, and ``full-madeup`` as well as ``full``.

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
    from fademem.embedded.train import encode_frames, token_mask
    from fademem.embedded.world import World, last_seen, revisit_scene
    from fademem.memory.fademem import simulate

    b = load(weights, device=device)
    model, text, codec = b.model.eval(), b.text.eval(), b.codec
    fps, size, home = 8, b.cfg.frame_size, 24
    out: dict = {}
    for gap in gaps:
        for s in range(scenes):
            prompt = revisit_scene(1000 + s, gap_seconds=gap).to_prompt()
            cycle = gap + 4
            starts = [3 * int((cycle - 1.5) * fps / 3 + k) for k in (0, 1, 2)]  # the last 1.5 s of the pan back
            T = starts[-1] + 3
            world, alt = World(prompt, 1000 + s, size, fps), World(prompt, 5000 + s, size, fps)
            frames = np.stack([world.frame_at(t) for t in range(T)])
            madeup = np.stack([alt.frame_at(t) if t >= home else frames[t] for t in range(T)])
            _, since = last_seen(prompt, 1000 + s, T, size, fps, per_pixel=True, mode="since")
            ctx = text(text.tokenize([prompt]).to(device))
            for start in starts:
                need = np.stack([since[start + j] > 12 + j for j in range(3)])
                if need.mean() < 0.02:
                    continue
                ent = simulate(budget=12, beta=0.3, steps=start).as_json()
                rules = {"full": (frames, list(range(start)), None),
                         "window12": (frames, list(range(start - 12, start)), None),
                         "sink3+9": (frames, [0, 1, 2] + list(range(start - 9, start)), None),
                         "fademem12": (frames, [min(start - 1, max(0, round(e["mu"]))) for e in ent],
                                       [float(e["mu"]) for e in ent]),
                         "full-madeup": (madeup, list(range(start)), None)}
                x0 = encode_frames(codec, torch.from_numpy(frames[start:start + 3])[None].to(device))
                g = torch.Generator(device=device).manual_seed(start + 7 * s)
                noise = torch.randn(x0.shape, generator=g, device=device)
                for sigma in sigmas:
                    xt = (1 - sigma) * x0 + sigma * noise
                    for name, (src, idx, pos) in rules.items():
                        pos = pos or [float(i) for i in idx]
                        z = encode_frames(codec, torch.from_numpy(src[idx])[None].to(device))
                        n = len(idx)
                        sig = torch.zeros(1, n + 3, device=device)
                        sig[:, n:] = sigma
                        chunks = torch.tensor([i // 3 for i in idx] + [start // 3] * 3)
                        mask = token_mask({"chunks": chunks}, n, (b.cfg.latent_hw // 2) ** 2, device)
                        positions = torch.tensor(pos + [float(start + i) for i in range(3)], device=device)
                        v = model(torch.cat([z, xt], 2), sig * 1000, ctx, positions=positions, attn_mask=mask)
                        pred = xt - sigma * v[:, :, n:].float()
                        img = codec.to_frames(pred).float().clamp(0, 1)[0].cpu().numpy()
                        err = (img - frames[start:start + 3]) ** 2
                        row = out.setdefault(f"sigma={sigma:g}", {}).setdefault(name, {"memory": [], "all": []})
                        row["memory"].append(float(10 * np.log10(1 / max(err[need].mean(), 1e-10))))
                        row["all"].append(float(10 * np.log10(1 / max(err.mean(), 1e-10))))
    return out


def report(res: dict) -> str:
    lines = []
    for key, rules in res.items():
        base = np.asarray(rules["window12"]["memory"])
        lines.append(f"{key}: PSNR dB on memory pixels (all pixels), n={len(base)}; paired difference vs window12")
        for name, r in rules.items():
            m, a = np.asarray(r["memory"]), np.asarray(r["all"])
            d = m - base
            half = 1.96 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
            lines.append(f"  {name:12s} {m.mean():6.2f} ({a.mean():6.2f})   {d.mean():+6.2f} [{d.mean() - half:+.2f}, "
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
