"""Contact sheet of one prompt: generated frames every ``--every`` seconds (top row) above the world's
TRUE render of the same prompt and seed (bottom row), each labelled with its time. The README's demo
picture comes from this script:

    python benchmarks/contact_sheet.py --prompt "a large red circle bouncing over a striped blue background ,
        camera pans right and returns after 8 seconds" --seconds 20 --out docs/demo_sheet.png

Text only (no true opening): the model draws everything from the prompt. ``--weights`` defaults to the
shipped bundle; the pipeline samples with the bundle's own schedule (``embedded_pipeline(bundle)``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import numpy as np
import torch

DEMO_PROMPT = ("a large red circle bouncing over a striped blue background , camera pans right and returns "
               "after 8 seconds")


def whole_chunks(seconds: float, fps: float) -> int:
    """Latent frames covering ``seconds``, rounded up to whole 3-frame chunks."""
    return 3 * math.ceil(round(seconds * fps, 6) / 3)


def generate_frames(bundle, prompt: str, seconds: float, seed: int, memory: str) -> np.ndarray:
    """uint8 [T, H, W, 3] generated from the prompt alone, noise from ``seed``."""
    from fademem import embedded
    from fademem.pipeline import embedded_pipeline, generator_for_memory

    num_frames = whole_chunks(seconds, bundle.cfg.fps)
    model = generator_for_memory(bundle.model, memory)
    pipe = embedded_pipeline(dataclasses.replace(bundle, model=model))
    chunks = [c.frames[0] for c in pipe.generate(prompt, num_frames, memory=memory, seed=seed,
                                                  latent_shape=embedded.latent_shape(bundle.cfg), progress=False)]
    return torch.cat(chunks).cpu().numpy()


def true_frames(prompt: str, seed: int, num_frames: int, size: int, fps: int) -> np.ndarray:
    from fademem.embedded.world import World

    return (World(prompt, seed, size, fps).render(num_frames) * 255 + 0.5).astype(np.uint8)


def sheet(generated: np.ndarray, truth: np.ndarray, fps: float, every: float, title: str, out: str | Path,
          scale: int = 3) -> str:
    """Two rows (generated, true) of frames at t = 0, every, 2 every, ... and the last frame; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(generated)
    idx = sorted({min(n - 1, int(round(k * every * fps))) for k in range(int((n - 1) / fps / every) + 1)} | {n - 1})
    size = generated.shape[1] * scale / 100
    fig, axes = plt.subplots(2, len(idx), figsize=(len(idx) * size + 0.8, 2 * size + 1.0), squeeze=False)
    for j, t in enumerate(idx):
        for i, (row, frames) in enumerate((("generated", generated), ("true render", truth))):
            ax = axes[i, j]
            ax.imshow(frames[t], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{t / fps:.1f} s", fontsize=9)
            if j == 0:
                ax.set_ylabel(row, fontsize=9)
    fig.suptitle(title, fontsize=8, wrap=True)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return str(out)


def main(argv=None) -> str:
    from fademem import embedded

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=None, help="Embedded-model bundle (default: the shipped one).")
    ap.add_argument("--prompt", default=DEMO_PROMPT)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=0, help="The world's seed and the sampler's noise seed.")
    ap.add_argument("--memory", default="fademem", help="Memory policy spec.")
    ap.add_argument("--every", type=float, default=2.0, help="Seconds between frames on the sheet.")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="docs/contact_sheet.png")
    ap.add_argument("--guidance", type=float, default=None,
                    help="A flow-matching teacher's own rollout (full context) with this classifier-free guidance, "
                         "instead of the pipeline (fademem.embedded.distill.teacher_rollout).")
    ap.add_argument("--context-guidance", type=float, default=None,
                    help="With --guidance: the guidance of the chunks after the first (default: --guidance).")
    args = ap.parse_args(argv)
    if args.context_guidance is not None and args.guidance is None:
        ap.error("--context-guidance goes with --guidance (a teacher's rollout)")
    if not args.seconds > 0 or not args.every > 0:
        ap.error("--seconds and --every must be positive")
    from fademem.embedded.world import parse_prompt
    from fademem.memory import build_memory

    try:
        parse_prompt(args.prompt)
        build_memory(args.memory)
    except ValueError as exc:
        ap.error(str(exc))
    bundle = embedded.load(args.weights, device=args.device)
    if args.guidance is not None:
        from fademem.embedded.distill import teacher_rollout

        if bundle.schedule.update != "ode":
            ap.error(f"--guidance previews a flow-matching teacher; {args.weights} is {bundle.schedule.describe()}")
        num_frames = whole_chunks(args.seconds, bundle.cfg.fps)
        gen = teacher_rollout(bundle, args.prompt, num_frames, guidance=args.guidance, seed=args.seed,
                              device=args.device, context_guidance=args.context_guidance).numpy()
        after = "" if args.context_guidance is None else f", {args.context_guidance:g} after the first chunk"
        args.memory = f"full (teacher rollout, guidance {args.guidance:g}{after})"
    else:
        gen = generate_frames(bundle, args.prompt, args.seconds, args.seed, args.memory)
    truth = true_frames(args.prompt, args.seed, len(gen), bundle.cfg.frame_size, bundle.cfg.fps)
    name = Path(args.weights).name if args.weights else "shipped model"
    title = (f"{args.prompt}\n{name}, memory {args.memory}, seed {args.seed}: top generated (text only), "
             "bottom the world's true render")
    path = sheet(gen, truth, bundle.cfg.fps, args.every, title, args.out)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
