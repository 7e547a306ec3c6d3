"""Compact summary of benchmarks/issue15_gpu.sh's reports: python3 benchmarks/issue15_summary.py OUT_DIR"""

from __future__ import annotations

import json
import os
import sys


def _load(out: str, name: str):
    path = os.path.join(out, name)
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def _gib(b) -> str:
    return f"{b / 2**30:.2f} GiB" if b is not None else "-"


def _rate(s: dict, width: int) -> str:
    """'<median ms> ms/chunk <fps> fps' of a run's summary."""
    return f"{s['latency_ms_median']:{width}.1f} ms/chunk {s['video_fps']:6.2f} fps"


def summary(out: str) -> list[str]:
    rows = []
    sp = _load(out, "speed.json")
    if sp is None:
        rows.append("speed.json: missing (part 1 failed, see issue15.log)")
    else:
        env = sp.get("environment", {})
        rows.append(f"device {env.get('gpu')}, torch {env.get('torch')}; "
                    f"compile cache {sp.get('compile', {}).get('cache')}")
        rows.append(f"{'variant (fademem:budget=12)':28s} {'ms/chunk':>8s} {'fps':>6s} {'speedup':>7s} "
                    f"{'1st chunk s':>11s} {'warm-up s':>9s} {'fwd rel.L2':>10s} {'ok':>3s} {'peak':>10s}")
        for v in sp.get("variants", []):
            s, cs, fc = v.get("summary") or {}, v.get("cold_start") or {}, v.get("forward_check") or {}
            if not s:
                rows.append(f"{v['variant'][:28]:28s} failed: {v.get('error') or v.get('stopped')}")
                continue
            rows.append(f"{v['variant'][:28]:28s} {s['latency_ms_median']:8.1f} {s['video_fps']:6.2f} "
                        f"{v.get('speedup_vs_first_variant', 1):7.3f} {cs.get('first_chunk_s', float('nan')):11.1f} "
                        f"{cs.get('warmup_s', float('nan')):9.1f} {fc.get('rel_l2_vs_eager', float('nan')):10.2e} "
                        f"{('yes' if fc.get('ok') else 'NO'):>3s} {_gib(v.get('peak_allocated_bytes')):>10s}")
            agree = v.get("agreement_vs_first_variant")
            if agree:
                rows.append(f"{'':28s} latents vs first variant: "
                            + ", ".join(f"{k} {x:.2e}" for k, x in agree.items()))
        low = sp.get("low_memory")
        if low and not low.get("skipped"):
            rows.append(f"24 GB mode ({low['text_encoder']['which']} offloaded, {low['policy']}): "
                        f"{low.get('e2e_fps') or float('nan'):.2f} fps e2e, peak "
                        f"{_gib(low.get('peak_including_encode_bytes'))} with the encode, "
                        f"{_gib(low.get('peak_allocated_bytes'))} generating, meets <= 20 GiB: "
                        f"{low.get('meets_target')}; encode "
                        f"{low['text_encoder']['encode_seconds_including_moves']:.1f} s")
        elif low:
            rows.append(f"24 GB mode: skipped ({low['skipped']})")
        for s in sp.get("skipped", []):
            rows.append(f"skipped: {s}")
    off = _load(out, "official_e2e.json")
    if off is None:
        rows.append("official_e2e.json: missing")
    else:
        for r in off.get("runs", []):
            s = r.get("summary") or {}
            rows.append(f"{r['label'][:60]:60s} " + (_rate(s, 7) if s else f"failed: {r.get('error')}")
                        + (f", first chunk {r['first_chunk_s']:.1f} s" if r.get("first_chunk_s") is not None else ""))
        for k, v in off.get("ratios", {}).items():
            rows.append(f"  {k}: {v:.3f}")
        rows.append(f"  DiT agreement ours vs official (rel. L2): {off.get('dit_agreement_rel_l2')}")
    big = _load(out, "speed14b.json")
    if big is None:
        rows.append("speed14b.json: missing")
    else:
        for r in big.get("policies", []):
            s = r.get("summary") or {}
            got = (f"{_rate(s, 8)}, peak {_gib(r.get('peak_allocated_bytes'))}, visible "
                   f"{r.get('visible_frames_steady')}") if s else f"failed: {r.get('error') or r.get('stopped')}"
            rows.append(f"14B {r['spec']:30s} {got}")
    return rows


if __name__ == "__main__":
    print("\n".join(summary(sys.argv[1] if len(sys.argv) > 1 else ".")))
