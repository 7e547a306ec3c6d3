"""Guidance probe: how a flow-matching teacher continues true frames at each classifier-free guidance.

Held-out panning episodes (``fademem bench fidelity``'s continuation draws, another seed): ``--context``
true frames ending at the last frame of a 6 s opening, then one chunk (3 frames) from pure noise by the
teacher's own ODE (``fademem.embedded.distill.teacher_ode``) at each guidance, the same noise for all.
Scores: PSNR of the decoded chunk against the true render, and its paired difference to freezing the last
true frame and to the last guidance listed. What a student distilled with that guidance after context frames
(``fademem train --stage distill --context-guidance``) learns to continue.

    python benchmarks/guidance_probe.py --weights training/embedded_v2/teacher.safetensors --episodes 12 \
        --out docs/results/teacher_guidance_continuation_cpu.json
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

OPENING = 48  # frames: the bench's 6 s opening at 8 fps


def _psnr(a: torch.Tensor, t: torch.Tensor) -> list[float]:
    """PSNR of each episode's chunk [N, F, H, W, 3] in [0, 1], the MSE over all its frames."""
    from fademem.metrics import psnr

    return psnr(a.flatten(1, 2), t.flatten(1, 2)).tolist()


@torch.no_grad()
def probe(weights: str, guidances=(1.0, 1.5, 3.0), episodes: int = 12, context: int = 9, seed: int = 7,
          device: str = "cpu") -> dict:
    from fademem.bench.fidelity import continuation_episodes
    from fademem.embedded import load
    from fademem.embedded.distill import ode_path, teacher_ode, teacher_sigmas
    from fademem.embedded.train import encode_frames, token_mask
    from fademem.embedded.world import World

    b = load(weights, device=device)
    if b.schedule.update != "ode":
        raise SystemExit(f"error: {weights} is {b.schedule.describe()}; the probe needs a flow-matching teacher")
    if context % 3 or not 3 <= context <= OPENING:
        raise SystemExit(f"error: --context must be a multiple of 3 in [3, {OPENING}], got {context}")
    model, text, codec = b.model.eval(), b.text.eval(), b.codec
    eps = continuation_episodes(episodes, seed, OPENING, 3, b.cfg.frame_size, b.cfg.fps)
    size, fps = b.cfg.frame_size, b.cfg.fps
    vids = [World(e["prompt"], e["world_seed"], size, fps).render(context + 3, start=OPENING - context) for e in eps]
    x = torch.from_numpy(np.stack(vids)).float().to(device)
    z = encode_frames(codec, x)
    ctx = text(text.tokenize([e["prompt"] for e in eps]).to(device))
    chunks = torch.tensor([i // 3 for i in range(context)] + [context // 3] * 3)
    mask = token_mask({"chunks": chunks}, context, (b.cfg.latent_hw // 2) ** 2, device)
    pos = torch.arange(OPENING - context, OPENING + 3, dtype=torch.float32, device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if str(device).startswith("cuda") else torch.autocast(
        "cpu", enabled=False)
    truth = x[:, context:]
    out = {"prompts": [e["prompt"] for e in eps], "freeze": _psnr(x[:, context - 1:context].expand_as(truth), truth)}
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(0)).to(device)
    for g in guidances:
        xt = z.clone()
        xt[:, :, context:] = noise[:, :, context:]
        x0 = teacher_ode(model, xt, context, torch.zeros(len(eps), 1, device=device),
                         ode_path(1.0, teacher_sigmas(b.schedule)), ctx, pos, mask, amp, g)
        zz = z.clone()
        zz[:, :, context:] = x0
        out[f"guidance {g:g}"] = _psnr(codec.decode(zz)[:, context:].float() / 255, truth)  # decode: uint8
    return out


def report(res: dict) -> str:
    keys = [k for k in res if k.startswith("guidance ")]
    n = len(res["freeze"])
    lines = [f"teacher continuation, one chunk after true frames, {n} panning episodes (PSNR dB; paired 95% "
             f"normal intervals)", f"  freeze the last true frame  {np.mean(res['freeze']):6.2f}"]
    for k in keys:
        row = f"  {k:27s}  {np.mean(res[k]):6.2f}"
        for ref, name in (("freeze", "freeze"), (keys[-1], keys[-1])):
            if ref == k:
                continue
            d = np.asarray(res[k]) - np.asarray(res[ref])
            half = 1.96 * d.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan")
            row += f"   - {name}: {d.mean():+.2f} [{d.mean() - half:+.2f}, {d.mean() + half:+.2f}]"
        lines.append(row)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, help="a flow-matching teacher bundle")
    ap.add_argument("--guidances", default="1,1.5,3")
    ap.add_argument("--episodes", type=int, default=12)
    ap.add_argument("--context", type=int, default=9, help="true frames before the chunk (a multiple of 3)")
    ap.add_argument("--seed", type=int, default=7, help="episode draw (the bench itself uses 0)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None, help="JSON file for the per-episode figures")
    a = ap.parse_args()
    if a.episodes < 1:
        ap.error("--episodes must be >= 1")
    try:
        guidances = tuple(float(g) for g in a.guidances.split(","))
    except ValueError:
        ap.error(f"--guidances: comma-separated numbers, got {a.guidances!r}")
    res = probe(a.weights, guidances, a.episodes, a.context, a.seed, a.device)
    print(report(res))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"weights": a.weights, "context": a.context, "seed": a.seed, "results": res}, f, indent=1)


if __name__ == "__main__":
    main()
