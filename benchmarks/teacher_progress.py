"""Teacher progress: a held-out flow-matching validation loss of several checkpoints of one teacher, paired.

The same fixed batches (``fademem.embedded.train_data.WorldBatches`` from a seed training never used: every
teacher lease ran ``seed=0``, streams ``[0, worker]``; here ``[--seed, 0]``), the same noise, context noise,
context blur and noise levels for every checkpoint, so differences between checkpoints are the weights' alone.
The loss is the trainer's v loss (``fademem.embedded.train.batch_loss`` with ``loss="v"``): the flow
``noise - x0`` of the target chunk after its memory-shaped context, unweighted (object weight off), no text
dropout, at fixed levels of the teacher's own sampling schedule rather than random draws, averaged per batch;
grouped by the batch's kind: a video's text-only first chunk, a chunk after ordinary context, a revisit
(returning view). Also the same error on the target pixels the world's objects cover (a few % of the pixels,
where the teacher's shapes are wrong). Each checkpoint minus the previous and minus the first, with paired 95%
t intervals over batches.

    python benchmarks/teacher_progress.py --weights /tmp/teachers/{59b86f9,b0be5b7}.safetensors \
        --labels 59b86f9,b0be5b7 --batches 8 --batch 4 --out docs/results/teacher_progress_cpu.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

GROUPS = {"first": "first chunk (text only)", "context": "context", "revisit": "revisit"}
LEVELS = 4  # noise levels per target, spread evenly over the schedule's steps (sigma 1 included)


def group_of(kind: str) -> str:
    if kind == "none":
        return "first"
    return "revisit" if kind.startswith("revisit-") else "context"


def data_config(batches: int, batch: int, seed: int):
    """The data stream of the validation batches: the trainer's defaults (those of every teacher lease) except the
    seed, and shares of first chunks and revisits that fill the three groups about equally (training drew ~6%
    first chunks); a small, quickly refreshed world pool so that batches share few worlds."""
    from fademem.embedded.train import TrainConfig

    return TrainConfig(batch=batch, seed=seed, workers=0, pool=max(8, 2 * batch), refresh=batch, revisit_p=1 / 3,
                       first_chunk_p=0.5)


def draw_batches(ecfg, batches: int, batch: int, seed: int) -> list[dict]:
    """``batches`` batches of each group, in stream order (the surplus of a full group is skipped)."""
    from fademem.embedded.train_data import WorldBatches

    cfg = data_config(batches, batch, seed)
    got = {g: [] for g in GROUPS}
    for b in WorldBatches(cfg, ecfg):
        g = group_of(b["kind"])
        if len(got[g]) < batches:
            got[g].append(b)
        if all(len(v) == batches for v in got.values()):
            return [b for g in GROUPS for b in got[g]]
    raise AssertionError("WorldBatches is endless")


def schedule_levels(schedule, n: int = LEVELS) -> list[float]:
    from fademem.wan.sampling import FlowSchedule

    sig = FlowSchedule(schedule.steps, schedule.shift).sigmas
    return [float(sig[i]) for i in np.linspace(0, len(sig) - 1, n).round().astype(int)]


def _codec_key(codec) -> str:
    """Checkpoints of one run share a frozen codec: its latents are encoded once."""
    from fademem.wan.fingerprint import weights_digest

    return weights_digest(codec) if isinstance(codec, torch.nn.Module) else "pixel"


def _inputs(batches: list[dict], seed: int, degrade_p: float, context_noise: float) -> list[dict]:
    """Per batch, the trainer's random draws made once: the context blur (pixels), the context noise level, the
    noise (drawn at latent size later, from this batch's own generator)."""
    from fademem.embedded.train import degrade

    out = []
    for i, b in enumerate(batches):
        gen = torch.Generator().manual_seed(seed * 100_003 + i)
        n_ctx = b["n_ctx"]
        frames = b["video"].float() / 255.0
        frames = degrade(frames, n_ctx, degrade_p, gen)
        ctx_sig = context_noise * torch.rand(frames.shape[0], 1, generator=gen)
        out.append({"frames": frames, "ctx_sig": ctx_sig, "noise_seed": int(torch.randint(1 << 62, (1,),
                                                                                          generator=gen))})
    return out


@torch.no_grad()
def batch_errors(bundle, batch: dict, z: torch.Tensor, ctx_sig: torch.Tensor, noise: torch.Tensor,
                 levels: list[float], device) -> tuple[list[float], list[float]]:
    """(v-loss per level, the same on object pixels per level) of one batch: the target chunk at every level in
    one forward (``target_copies``' layout: the context computed once, each copy seeing it and itself).
    z: clean latents [B, C, F, h, w]; noise: [B, C, n_ctx + 3 * levels, h, w]."""
    from fademem.embedded.train import object_weights, token_mask
    from fademem.embedded.train_data import CHUNK

    n_ctx, k = batch["n_ctx"], len(levels)
    x0 = z[:, :, n_ctx:]
    x_in = torch.cat([z[:, :, :n_ctx], x0.repeat(1, 1, k, 1, 1)], dim=2)
    b, f = x_in.shape[0], x_in.shape[2]
    sig_f = torch.zeros(b, f, device=device)
    sig_f[:, :n_ctx] = ctx_sig
    sig_f[:, n_ctx:] = torch.tensor(levels, device=device).repeat_interleave(CHUNK)
    s5 = sig_f[:, None, :, None, None]
    xt = (1 - s5) * x_in + s5 * noise
    mask = token_mask(batch, n_ctx, (z.shape[-1] // 2) ** 2, device, k)
    pos = batch["positions"]
    positions = torch.cat([pos[:n_ctx], pos[n_ctx:].repeat(k)]).to(device)
    v = bundle.model(xt, sig_f * 1000, bundle.text(batch["ids"].to(device)), positions=positions,
                     attn_mask=mask)[:, :, n_ctx:].float()
    err = (v - (noise[:, :, n_ctx:] - x_in[:, :, n_ctx:])).pow(2)  # [B, C, 3k, h, w]
    err = err.unflatten(2, (k, CHUNK))  # [B, C, k, 3, h, w]
    w = object_weights(batch["objects"].to(device), z.shape[-1])[:, :, None]  # [B, 1, 1, 3, h, w]: coverage share
    obj = (err * w).sum((0, 1, 3, 4, 5)) / (w.sum() * err.shape[1]).clamp_min(1e-12)
    return err.mean((0, 1, 3, 4, 5)).tolist(), obj.tolist()


def _load(path: str, device):
    from fademem.embedded.bundle import load

    try:  # progress() checked that every file exists, before the slow part
        b = load(path, device=device)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    if b.schedule.kind != "flow-matching" or b.schedule.update != "ode":
        raise SystemExit(f"error: {path} is {b.schedule.describe()}; the probe needs a flow-matching teacher "
                         "(fademem.embedded.train with sample_steps > 4)")
    b.model.eval()
    b.text.eval()
    return b


def progress(weights: list[str], labels: list[str] | None = None, batches: int = 8, batch: int = 4,
             seed: int = 1009, device: str = "cpu", log=print) -> dict:
    """Per checkpoint, per batch (in group order: ``batches`` of each group), the v loss per level and on object
    pixels; with the batches' kinds, sizes and context lengths."""
    from fademem.embedded.train import encode_frames

    if batches < 2:
        raise SystemExit(f"error: --batches must be >= 2 (paired t intervals over batches), got {batches}")
    if batch < 1:
        raise SystemExit(f"error: --batch must be >= 1, got {batch}")
    if not weights:
        raise SystemExit("error: give at least one --weights file")
    labels = labels or [Path(w).stem for w in weights]
    if len(labels) != len(weights):
        raise SystemExit(f"error: {len(labels)} labels for {len(weights)} weights files")
    for w in weights:  # fail before the slow part
        if not Path(w).is_file():
            raise SystemExit(f"error: weights file not found: {w}")
    first = _load(weights[0], device)
    ecfg, levels = first.cfg, schedule_levels(first.schedule)
    t0 = time.time()
    data = draw_batches(ecfg, batches, batch, seed)
    cfg = data_config(batches, batch, seed)
    inputs = _inputs(data, seed, cfg.degrade_p, cfg.context_noise)
    log(f"{len(data)} batches drawn in {time.time() - t0:.0f}s; levels {[round(s, 3) for s in levels]}")
    latents: dict[str, list[torch.Tensor]] = {}
    res = {"levels": levels, "seed": seed, "batch": batch, "batches_per_group": batches,
           "kinds": [b["kind"] for b in data], "groups": [group_of(b["kind"]) for b in data],
           "examples": [int(b["video"].shape[0]) for b in data], "n_ctx": [int(b["n_ctx"]) for b in data],
           "checkpoints": []}
    for path, label in zip(weights, labels):
        t1 = time.time()
        bundle = first if path == weights[0] else _load(path, device)
        if (bundle.cfg.channels, bundle.cfg.latent_hw) != (ecfg.channels, ecfg.latent_hw) or \
                schedule_levels(bundle.schedule) != levels:
            raise SystemExit(f"error: {path} has other latents or another schedule than {weights[0]}: not the same "
                             "teacher's checkpoints")
        key = _codec_key(bundle.codec)
        if key not in latents:
            codec = bundle.codec.to(device) if isinstance(bundle.codec, torch.nn.Module) else bundle.codec
            latents[key] = [encode_frames(codec, i["frames"].to(device), 16) for i in inputs]
        loss, obj = [], []
        for b, i, z in zip(data, inputs, latents[key]):
            shape = (z.shape[0], z.shape[1], b["n_ctx"] + 3 * len(levels), *z.shape[3:])
            noise = torch.randn(shape, generator=torch.Generator().manual_seed(i["noise_seed"])).to(device)
            lv, ov = batch_errors(bundle, b, z, i["ctx_sig"].to(device), noise, levels, device)
            loss.append(lv)
            obj.append(ov)
        res["checkpoints"].append({"weights": path, "label": label, "steps_done": bundle.info.get("steps_done"),
                                   "train": {k: bundle.info.get("train", {}).get(k) for k in
                                             ("object_weight", "revisit_p", "first_chunk_p", "text_dropout")},
                                   "loss": loss, "object_loss": obj, "seconds": round(time.time() - t1, 1)})
        log(f"{label}: {time.time() - t1:.0f}s, mean loss {np.mean(loss):.4f}")
    return res


def summary(res: dict) -> dict:
    """Per checkpoint and group: mean loss (levels averaged per batch), and the paired differences (t, 95%) to the
    previous and the first checkpoint; the same for the object-pixel loss."""
    from fademem.metrics import paired_t

    groups = np.asarray(res["groups"])
    sel = {g: groups == g for g in GROUPS} | {"all": np.ones(len(groups), bool)}
    out = []
    for i, c in enumerate(res["checkpoints"]):
        row = {"label": c["label"], "steps_done": c["steps_done"]}
        for metric in ("loss", "object_loss"):
            per = np.asarray(c[metric]).mean(1)
            row[metric] = {g: float(per[m].mean()) for g, m in sel.items()}
            for ref, name in ((i - 1, "minus_previous"), (0, "minus_first")):
                if i == 0 or (name == "minus_first" and i == 1):
                    continue
                other = np.asarray(res["checkpoints"][ref][metric]).mean(1)
                row.setdefault(name, {})[metric] = {
                    g: dict(zip(("mean", "low", "high", "p"), paired_t(per[m], other[m]))) for g, m in sel.items()}
                row[name]["vs"] = res["checkpoints"][ref]["label"]
        out.append(row)
    return {"rows": out}


def report(res: dict, summ: dict | None = None) -> str:
    summ = summ or summary(res)
    cols = list(GROUPS) + ["all"]
    n = res["batches_per_group"]
    head = "".join(f"{GROUPS.get(g, g):>27s}" for g in cols)
    lines = [f"teacher held-out v loss (flow-matching, unweighted), {n} batches per group x ~{res['batch']} examples, "
             f"seed {res['seed']}, levels {', '.join(f'{s:.3f}' for s in res['levels'])} (mean per batch); "
             "paired 95% t intervals over batches"]
    for metric, title in (("loss", "all target pixels"), ("object_loss", "object pixels only")):
        lines += ["", f"{title}:", f"  {'checkpoint':24s}{head}"]
        for r in summ["rows"]:
            name = f"{r['label']} ({r['steps_done']} st.)" if r["steps_done"] is not None else r["label"]
            lines.append(f"  {name:24s}" + "".join(f"{r[metric][g]:27.4f}" for g in cols))
        for name in ("minus_previous", "minus_first"):
            for r in summ["rows"]:
                if name not in r:
                    continue
                d = r[name][metric]
                cells = "".join(f"{d[g]['mean']:+9.4f} [{d[g]['low']:+.4f},{d[g]['high']:+.4f}]".rjust(27)
                                for g in cols)
                lines.append(f"  {r['label'] + ' - ' + r[name]['vs']:24s}{cells}")
    lines.append("")
    lines.append("steps_done is the checkpoint's last lease, not its total (training/embedded_v2/README.md)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", nargs="+", required=True, help="checkpoints of one flow-matching teacher, in order")
    ap.add_argument("--labels", default=None, help="comma-separated names of the checkpoints (e.g. their commits)")
    ap.add_argument("--batches", type=int, default=8, help="batches per group (>= 2)")
    ap.add_argument("--batch", type=int, default=4, help="examples per batch (revisit batches with long contexts "
                                                         "have fewer, as in training)")
    ap.add_argument("--seed", type=int, default=1009, help="validation stream (training used 0)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None, help="JSON file; a .txt with the table is written next to it")
    a = ap.parse_args()
    if a.batches < 2:
        ap.error("--batches must be >= 2 (paired t intervals over batches)")
    labels = a.labels.split(",") if a.labels else None
    t0 = time.time()
    res = progress(a.weights, labels, a.batches, a.batch, a.seed, a.device)
    res["wall_s"] = round(time.time() - t0, 1)
    res["torch_threads"] = torch.get_num_threads()
    summ = summary(res)
    text = report(res, summ)
    print(text)
    if a.out:
        out = Path(a.out)
        out.write_text(json.dumps({"results": res, "summary": summ}, indent=1))
        out.with_suffix(".txt").write_text(text + f"\n\nwall time {res['wall_s']} s, {res['torch_threads']} "
                                           f"thread(s), device {a.device}\n")


if __name__ == "__main__":
    main()
