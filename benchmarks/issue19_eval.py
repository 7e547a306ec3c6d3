"""Issue 19 on one GPU, driven by ``benchmarks/issue19_gpu.sh`` (subcommands setup, run, score, summary):
``fademem eval run`` throughput (60 s videos, 1.3B config, random weights in real checkpoint layouts) and
scoring throughput per VBench-Long dimension (the six models at their published sizes, random weights).
``ISSUE19_TINY=1``: the tests' tiny models, for a CPU check. Without PyAV (the GPU machine has none; or
``ISSUE19_NO_AV=1``) videos are written and read with OpenCV's mp4v codec, which the JSON records."""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
TINY = os.environ.get("ISSUE19_TINY") == "1"
if os.environ.get("ISSUE19_NO_AV") == "1":  # act as the GPU machine's image, which has no PyAV
    sys.modules["av"] = None
PROMPTS = ["a cat runs on the beach", "a red ball jumps over the fence in snow"]
SPEC = "fademem:budget=12"


def _dump(path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=1, default=float))


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def _have_av() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


class Cv2Writer:
    """Stands in for VideoWriter without PyAV: OpenCV's mp4v encoder (not H.264 crf 18)."""

    def __init__(self, path, fps: float = 16, crf: int = 18, **_):
        self.path, self.fps, self._w, self.frames_written = os.fspath(path), fps, None, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self._w is not None:
            self._w.release()

    def write(self, frames) -> None:
        import cv2

        frames = np.asarray(frames)
        frames = frames[None] if frames.ndim == 3 else frames
        if self._w is None:
            h, w = frames.shape[1:3]
            self._w = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*"mp4v"), float(self.fps), (w, h))
        for f in frames:
            self._w.write(np.ascontiguousarray(f[..., ::-1]))
        self.frames_written += len(frames)


def mp4_writer() -> str:
    """Patch VideoWriter when PyAV is missing; returns which writer eval run uses."""
    if _have_av():
        return "PyAV libx264 crf 18 (fademem's VideoWriter)"
    import fademem.pipeline.video_io as vio

    vio.VideoWriter = Cv2Writer
    return "OpenCV mp4v (PyAV absent: not the H.264 crf 18 that eval run writes)"


def read_video(path) -> tuple[np.ndarray, float]:
    if _have_av():
        from fademem.eval.scorer import read_frames

        return read_frames(path)
    import cv2

    cap = cv2.VideoCapture(os.fspath(path))
    fps, frames = cap.get(cv2.CAP_PROP_FPS), []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f[..., ::-1])
    cap.release()
    return np.ascontiguousarray(np.stack(frames)), float(fps)


def _clip_state(embed, v_layers, v_width, patch, t_width, t_heads, t_layers):
    import open_clip as oc

    model = oc.model.CLIP(embed, vision_cfg=oc.model.CLIPVisionCfg(layers=v_layers, width=v_width, patch_size=patch,
                                                                    image_size=224),
                          text_cfg=oc.model.CLIPTextCfg(context_length=77, vocab_size=49408, width=t_width,
                                                        heads=t_heads, layers=t_layers), quick_gelu=True)
    return model.state_dict()


def make_real_weights(root: Path) -> dict:
    """The seven files of the six dimensions at their published sizes, random, in the published formats."""
    from torch import nn

    from fademem.eval._deps import require
    from fademem.eval.amt import AMTS
    from fademem.eval.weights import WEIGHTS
    from tests.test_eval_models import raft_original_state, save_torchscript

    paths = {k: root / w.vbench_path for k, w in WEIGHTS.items()}
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    vt = require("timm.models.vision_transformer")
    torch.manual_seed(0)
    dino = vt.VisionTransformer(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, num_classes=0)
    torch.save(dino.state_dict(), paths["dino"])
    save_torchscript(_clip_state(512, 12, 768, 32, 512, 8, 12), paths["clip_b32"])   # OpenAI ViT-B/32
    save_torchscript(_clip_state(768, 24, 1024, 14, 768, 12, 12), paths["clip_l14"])  # OpenAI ViT-L/14
    torch.save(nn.Linear(768, 1).state_dict(), paths["aesthetic"])
    musiq = require("pyiqa.archs.musiq_arch").MUSIQ(pretrained=False)  # SPAQ: 14 layers, width 384, 1 output
    torch.save(musiq.state_dict(), paths["musiq"])
    torch.save(raft_original_state(4), paths["raft"])
    torch.save({"state_dict": AMTS().state_dict()}, paths["amt"])
    return {k: p.stat().st_size for k, p in paths.items()}


def setup(args) -> None:
    from fademem.wan.checkpoints import save_generator
    from fademem.wan.model import CausalWanModel, WanConfig
    from tests.test_vae_text import TEXT_DIM, WORDS, Z_DIM, make_tokenizer, make_umt5, make_vae

    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    info, t = {"tiny": TINY, "device": dev}, time.perf_counter()
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    if TINY:
        from tests.test_eval_models import make_weights

        make_weights(root / "weights")
    else:
        info["weight_file_bytes"] = make_real_weights(root / "weights")
    info["weights_s"] = time.perf_counter() - t
    t = time.perf_counter()
    wan = root / "wan"
    make_tokenizer(wan / "tokenizer")
    if TINY:
        make_umt5(wan / "text_encoder")
        make_vae(wan / "vae")
        cfg = WanConfig.tiny(in_dim=Z_DIM, out_dim=Z_DIM, text_dim=TEXT_DIM, text_len=512)
    else:
        from diffusers import AutoencoderKLWan
        from transformers import UMT5Config, UMT5EncoderModel

        from fademem.wan.text import UMT5_XXL

        layers = int(os.environ.get("ISSUE19_TEXT_LAYERS", "2"))
        ucfg = UMT5Config(**{**UMT5_XXL, "vocab_size": len(WORDS), "num_layers": layers})
        torch.manual_seed(0)
        with torch.device(dev):
            enc = UMT5EncoderModel(ucfg).to(torch.bfloat16)
        enc.save_pretrained(str(wan / "text_encoder"))
        info["text_encoder"] = {"layers": layers, "of": UMT5_XXL["num_layers"], "vocab": len(WORDS),
                                "params": sum(p.numel() for p in enc.parameters())}
        del enc
        torch.manual_seed(0)
        AutoencoderKLWan().eval().save_pretrained(str(wan / "vae"))  # diffusers' defaults = the Wan2.1 VAE
        cfg = WanConfig.wan_1_3b()
    info["wan_dir_s"] = time.perf_counter() - t
    t = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(dev):
        gen = CausalWanModel(cfg)
    gen = gen.to(torch.float32 if TINY else torch.bfloat16)
    info["dit"] = {"config": "tiny" if TINY else "wan_1_3b", "params": sum(p.numel() for p in gen.parameters())}
    save_generator(gen, root / "gen.safetensors")
    del gen
    info["dit_s"] = time.perf_counter() - t
    _dump(root / "setup.json", info)
    print(json.dumps(info, default=float))


def run(args) -> None:
    from fademem.cli import main

    root = Path(args.root)
    writer = mp4_writer()
    _dump(root / "run_meta.json", {"mp4_writer": writer, "started": time.time()})
    cli = ["eval", "run", "--prompts", str(root / "prompts.txt"), "--memory", SPEC, "--seeds", "0",
           "--seconds", str(args.seconds), "--store", str(root / "store.sqlite"), "--videos", str(root / "videos"),
           "--weights-dir", str(root / "weights"), "--checkpoint", str(root / "gen.safetensors"),
           "--wan-dir", str(root / "wan"), "--height", str(args.height), "--width", str(args.width),
           "--dtype", args.dtype, "--device", args.device, "--no-progress"]
    print("fademem " + " ".join(cli), flush=True)
    t = time.perf_counter()
    try:
        main.main(args=cli, prog_name="fademem", standalone_mode=False)
        status = "finished"
    except KeyboardInterrupt:
        status = "stopped (time limit)"
    _dump(root / "run_meta.json", {"mp4_writer": writer, "wall_s": time.perf_counter() - t, "status": status,
                                   "command": "fademem " + " ".join(cli)})
    print(f"eval run {status} after {time.perf_counter() - t:.1f} s", flush=True)


def score(args) -> None:
    from fademem.eval.scorer import Scorer
    from fademem.eval.weights import DIMENSIONS

    root, t_end = Path(args.root), time.monotonic() + args.time_budget
    out = {"dimensions": {}, "skipped": []}
    videos = [v for v in sorted(glob.glob(str(root / "videos" / "**" / "*.mp4"), recursive=True))
              if not v.endswith(".part.mp4")]
    t = time.perf_counter()
    if videos:
        frames, fps = read_video(videos[0])
        out["source"] = videos[0]
    else:  # eval run made no video in time: the tests' synthetic scene at the same size and length
        from tests.test_eval_models import synthetic_frames

        n = int(round(16 * args.seconds)) + 9
        frames, fps = synthetic_frames(n, args.height, args.width), 16.0
        out["source"] = "synthetic frames (no generated video)"
    out.update(decode_s=time.perf_counter() - t, frames=int(len(frames)), fps=fps, size=list(frames.shape[1:3]))
    print(f"scoring {out['source']}: {len(frames)} frames {frames.shape[1]}x{frames.shape[2]} at {fps} fps "
          f"(read in {out['decode_s']:.1f} s)", flush=True)
    import fademem.pipeline.video_io as vio

    writer = mp4_writer()
    with vio.VideoWriter(str(root / "reencode.mp4"), fps=fps, crf=18) as w:
        out["mp4_write"] = {"writer": writer, "seconds": _timed(lambda: w.write(frames))[1]}
    print(f"mp4 write ({writer}): {out['mp4_write']['seconds']:.1f} s", flush=True)
    warm = frames[: int(2 * fps) + 1]
    for d in DIMENSIONS:
        if time.monotonic() > t_end:
            out["skipped"].append(d)
            continue
        try:
            sc, t_load = _timed(lambda: Scorer(root / "weights", (d,), args.device).load())
            _, t_warm = _timed(lambda: sc.score_frames(warm, fps))
            res, t_score = _timed(lambda: sc.score_frames(frames, fps))
        except KeyboardInterrupt:
            out["skipped"].append(f"{d} (stopped)")
            break
        out["dimensions"][d] = {"load_s": t_load, "warmup_2s_clip_s": t_warm, "score_s": t_score,
                                "clips": len(res.clip_ranges), "value": res.scores.get(d)}
        if torch.cuda.is_available():
            out["dimensions"][d]["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        print(f"  {d}: load {t_load:.1f} s, 2 s warm-up {t_warm:.1f} s, {len(frames)} frames {t_score:.1f} s",
              flush=True)
        sc = None  # free the model before the next one
        _dump(root / "score.json", out)
    out["total_score_s"] = sum(v["score_s"] for v in out["dimensions"].values())
    _dump(root / "score.json", out)


def _read(path):
    return json.loads(Path(path).read_text()) if Path(path).is_file() else None


def summary(args) -> None:
    root = Path(args.root)
    res = {"issue": 19, "tiny": TINY, "spec": SPEC, "seconds": args.seconds, "size": f"{args.height}x{args.width}",
           "setup": _read(root / "setup.json"), "run": _read(root / "run_meta.json"),
           "score": _read(root / "score.json"), "cli_score_wall_s": None}
    if torch.cuda.is_available():
        res["gpu"] = torch.cuda.get_device_name(0)
    if (root / "cli_score_wall.txt").is_file():
        res["cli_score_wall_s"] = float((root / "cli_score_wall.txt").read_text().split()[0])
    rows = []
    if (root / "store.sqlite").is_file():
        from fademem.eval.store import ResultStore

        rows = sorted(ResultStore(root / "store.sqlite").rows(), key=lambda r: r["finished"])
    res["videos"] = [{"prompt": r["prompt"], "frames": r["frames"], "gen_s": r["gen_seconds"],
                      "write_and_score_s": r["score_seconds"], "scores": r["scores"]} for r in rows]
    lines = [f"issue 19 {'(TINY)' if TINY else ''} on {res.get('gpu', 'cpu')}: {SPEC}, {args.seconds} s, "
             f"{res['size']}"]
    if rows:
        last = res["videos"][-1]
        per_video = last["gen_s"] + last["write_and_score_s"]
        res["per_video"] = {"from": "last video stored (steady)", "gen_s": last["gen_s"],
                            "write_and_score_s": last["write_and_score_s"], "total_s": per_video,
                            "videos_per_hour_per_gpu": 3600.0 / per_video,
                            "videos_per_hour_generation_only": 3600.0 / last["gen_s"]}
        for i, v in enumerate(res["videos"]):
            lines.append(f"video {i + 1}: {v['frames']} frames, generation {v['gen_s']:.1f} s, mp4 write + six "
                         f"dimensions {v['write_and_score_s']:.1f} s")
        p = res["per_video"]
        lines.append(f"=> {p['total_s']:.1f} s per {args.seconds:g} s video: {p['videos_per_hour_per_gpu']:.1f} "
                     f"videos/hour/GPU (generation alone {p['videos_per_hour_generation_only']:.1f})")
    else:
        lines.append("eval run stored no video")
    sc = res["score"]
    if sc and sc["dimensions"]:
        lines.append(f"scoring {sc['frames']} frames ({sc['source']}), seconds per video per dimension:")
        for d, v in sc["dimensions"].items():
            lines.append(f"  {d:24s} {v['score_s']:7.1f} s  (load {v['load_s']:.1f} s)")
        tot = sum(v["score_s"] for v in sc["dimensions"].values())
        lines.append(f"  {'total':24s} {tot:7.1f} s  (+ mp4 write {sc['mp4_write']['seconds']:.1f} s)"
                     + (f"; skipped {sc['skipped']}" if sc["skipped"] else ""))
    if res["cli_score_wall_s"] is not None:
        lines.append(f"fademem eval score (CLI, all six, loads + decode included): {res['cli_score_wall_s']:.1f} s")
    res["text"] = lines
    _dump(args.out, res)
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cmd", choices=["setup", "run", "score", "summary"])
    ap.add_argument("--root", required=True)
    for name, typ, default in (("--seconds", float, 60.0), ("--height", int, 480), ("--width", int, 832),
                               ("--dtype", str, "bfloat16")):
        ap.add_argument(name, type=typ, default=default)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--time-budget", type=float, default=1e9)
    ap.add_argument("--out", default="issue19.json")
    args = ap.parse_args()
    {"setup": setup, "run": run, "score": score, "summary": summary}[args.cmd](args)


if __name__ == "__main__":
    main()
