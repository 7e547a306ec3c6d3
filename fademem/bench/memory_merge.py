"""``fademem bench memory --merge``: one report from several runs of the same benchmark, no model run.

A GPU call is limited in time, so the policies of one comparison are run in separate calls on the same
episodes. ``merge`` loads their reports (memory.json, plain or gzip), checks first that they are the same
benchmark (``SAME_CONFIG``: every config field that defines the episodes, the generation's inputs and the
scoring, the episodes themselves with their lags, the revisit windows) and that a policy present in several
reports scored exactly the same on every episode (kept once, from the first report), then recomputes what
depends on the set of policies exactly as a single run does (``memory_assemble.finish``): each policy's
paired differences against the first unbounded policy, every pair Holm-corrected (``memory_stats.pairwise``
on the revisit-aligned frames, the critic's identity windows, the cut episodes' after-return frames), the
pairs whose intervals exclude 0 and the equal-budget statement. Per-policy summaries depend on nothing
else and are kept as they are. ``merged_from`` lists the inputs."""

from __future__ import annotations

import gzip
import json
import math
import os
from types import SimpleNamespace

import numpy as np

from fademem.bench.memory_assemble import equal_budget
from fademem.bench.memory_stats import compare_policies, revisit_masks

VERSION = 2  # the report version this merges (memory_assemble.assemble)
# config fields that define the episodes, what the model is given and how it is scored: all must agree
SAME_CONFIG = ("seed", "episodes", "episodes_requested", "scenes", "seconds", "opening_seconds", "budget", "weights",
               "weights_info", "model", "model_parameters", "dtype", "codec", "latent_shape", "steps", "shift",
               "schedule", "critic", "long_lag_seconds", "long_lag_frames", "alpha", "episodes_kind", "cut_seconds",
               "cut_frames", "fps", "frame_size", "latent_frames", "opening_frames", "generated_frames",
               "frames_per_chunk", "batches", "psnr_cap_db", "lag_edges_frames")
SAME_TOP = (("episodes", ("episodes",)), ("revisit.window_frames", ("revisit", "window_frames")),
            ("revisit.aligned_frames", ("revisit", "aligned_frames")),
            ("revisit.return_frames", ("revisit", "return_frames")), ("critic.windows", ("critic", "windows")))
SCORE_KEYS = ("psnr", "ssim")


class MergeError(ValueError):
    """Reports that cannot be merged (the message names the report and the field)."""


def load_report(path: str) -> dict:
    """A memory report (memory.json, or gzip-compressed): checked to be one, of ``VERSION``, with at least
    one finished policy."""
    if not os.path.isfile(path):
        raise MergeError(f"--merge: no such file: {path}")
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        rep = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    except (OSError, EOFError, UnicodeDecodeError, ValueError) as exc:
        raise MergeError(f"--merge {path}: not a JSON report ({type(exc).__name__}: {exc})") from None
    if not isinstance(rep, dict) or rep.get("benchmark") != "memory" or not isinstance(rep.get("policies"), list):
        got = rep.get("benchmark") if isinstance(rep, dict) else type(rep).__name__
        raise MergeError(f"--merge {path}: not a `fademem bench memory` report (benchmark: {got!r})")
    if rep.get("version") != VERSION:
        raise MergeError(f"--merge {path}: report version {rep.get('version')!r}, this merges version {VERSION} "
                         "(re-run the benchmark with this code)")
    if not any(r.get("error") is None for r in rep["policies"]):
        raise MergeError(f"--merge {path}: no finished policy in the report (0 of {len(rep['policies'])})")
    return rep


def _short(v, n: int = 160) -> str:
    s = json.dumps(v, sort_keys=True) if not isinstance(v, str) else repr(v)
    return s if len(s) <= n else s[:n] + f"... ({len(s)} characters)"


def _first_difference(a, b, where: str) -> tuple[str, object, object] | None:
    """The first place two JSON values differ: (path, value in a, value in b), or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if k not in a or k not in b:
                return f"{where}.{k}", a.get(k, "<absent>"), b.get(k, "<absent>")
            d = _first_difference(a[k], b[k], f"{where}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where} (length)", len(a), len(b)
        for i, (x, y) in enumerate(zip(a, b)):
            d = _first_difference(x, y, f"{where}[{i}]")
            if d:
                return d
        return None
    return None if a == b else (where, a, b)


def _get(rep: dict, keys: tuple[str, ...]):
    for k in keys:
        rep = rep.get(k) if isinstance(rep, dict) else None
    return rep


def check_same_benchmark(reports: list[tuple[str, dict]]) -> None:
    """Every report against the first: the config fields of ``SAME_CONFIG`` and the episodes (prompts, seeds,
    lags), revisit windows and critic windows. Raises MergeError naming the first differing field."""
    p0, r0 = reports[0]
    for p, r in reports[1:]:
        for key in SAME_CONFIG:
            a, b = r0["config"].get(key, "<absent>"), r["config"].get(key, "<absent>")
            d = _first_difference(a, b, f"config.{key}")
            if d:
                raise MergeError(f"not the same benchmark: {d[0]} is {_short(d[1])} in {p0} but {_short(d[2])} in "
                                 f"{p}")
        for name, keys in SAME_TOP:
            d = _first_difference(_get(r0, keys), _get(r, keys), name)
            if d:
                raise MergeError(f"not the same benchmark: {d[0]} is {_short(d[1])} in {p0} but {_short(d[2])} in "
                                 f"{p}")


def _values(ep: dict) -> dict[str, np.ndarray]:
    out = {k: np.asarray([np.nan if v is None else v for v in ep[k]], np.float64) for k in SCORE_KEYS}
    if "identity" in ep:
        out["identity"] = np.asarray([np.nan if v is None else v for v in ep["identity"]["identity"]], np.float64)
    return out


def score_difference(a: dict, b: dict) -> tuple[float, str] | None:
    """None when two results of one policy scored identically on every episode, else (the largest absolute
    difference, where)."""
    if len(a["episodes"]) != len(b["episodes"]):
        return math.inf, f"{len(a['episodes'])} vs {len(b['episodes'])} episodes"
    worst: tuple[float, str] | None = None
    for i, (ea, eb) in enumerate(zip(a["episodes"], b["episodes"])):
        if ea == eb:
            continue
        va, vb = _values(ea), _values(eb)
        for k in sorted(set(va) | set(vb)):
            if k not in va or k not in vb or va[k].shape != vb[k].shape:
                return math.inf, f"episode {i} {k}: present in one only or of another length"
            same = (va[k] == vb[k]) | (np.isnan(va[k]) & np.isnan(vb[k]))
            if not same.all():
                d = float(np.nanmax(np.where(same, 0.0, np.abs(va[k] - vb[k]))))
                d = math.inf if math.isnan(d) else d
                if worst is None or d > worst[0]:
                    worst = (d, f"episode {i} {k}")
        if worst is None:  # the values agree, something else (index, critic windows) does not
            d = _first_difference(ea, eb, f"episode {i}")
            return math.inf, f"{d[0]}: {_short(d[1], 60)} vs {_short(d[2], 60)}"
    return worst


def merge_policies(reports: list[tuple[str, dict]]) -> tuple[list[dict], list[dict]]:
    """(policies, not run): the finished policies of every report in order of first appearance, a policy in
    several reports checked to be identical and kept from the first; a failed policy only when no report
    finished it (once); the inputs' policies_not_run that no report ran."""
    kept: dict[str, tuple[str, dict]] = {}
    failed: dict[str, dict] = {}
    for path, rep in reports:
        for r in rep["policies"]:
            spec = r["spec"]
            if r.get("error") is not None:
                failed.setdefault(spec, r)
                continue
            if spec in kept:
                diff = score_difference(kept[spec][1], r)
                if diff is not None:
                    raise MergeError(f"policy {spec!r} is in {kept[spec][0]} and {path} with different per-episode "
                                     f"scores: largest difference {diff[0]:.6g} ({diff[1]}); a policy must reproduce "
                                     "exactly to be merged (rename it or leave one report out)")
                continue
            kept[spec] = (path, r)
    out = [dict(r) for _, r in kept.values()] + [dict(r) for s, r in failed.items() if s not in kept]
    done = {r["spec"] for r in out}
    not_run: list[dict] = []
    for _, rep in reports:
        for nr in rep.get("policies_not_run") or []:
            if nr["spec"] not in done:
                not_run.append(nr)
                done.add(nr["spec"])
    return out, not_run


def recompute(report: dict) -> dict:
    """What depends on the set of policies, as ``memory_assemble.finish`` computes it: ``paired_vs_full``
    against the first unbounded policy, the pairwise Holm comparisons, ``equal_budget``."""
    cfg = report["config"]
    opening, budget, long_lag, alpha = cfg["opening_frames"], cfg["budget"], cfg["long_lag_frames"], cfg["alpha"]
    lags_all = [np.asarray(ep["lags"], np.int64) for ep in report["episodes"]]
    lags = [lg[opening:] for lg in lags_all]
    extra_masks = None
    if cfg.get("episodes_kind") == "cuts":
        from fademem.bench.memory_cuts import return_masks

        eps = [SimpleNamespace(return_frame=ep["return_frame"]) for ep in report["episodes"]]
        masks, after = return_masks(eps, lags_all, budget, opening, cfg["latent_frames"])
        extra_masks = {"after_return": after}
    else:
        masks = revisit_masks(lags_all, budget, opening)
    got = [int(m.sum()) for m in masks]
    if got != report["revisit"]["aligned_frames"]:  # the masks the run scored with, rebuilt from its lags
        raise MergeError(f"the revisit-aligned frames rebuilt from the episodes' lags ({got}) differ from the "
                         f"report's ({report['revisit']['aligned_frames']})")
    results = report["policies"]
    pw = compare_policies(results, lags, long_lag, masks, alpha, extra_masks, bool(cfg.get("critic")))
    report["pairwise"] = pw
    report["equal_budget"] = equal_budget(results, budget, cfg["fps"])
    return report


def merge(paths: list[str]) -> dict:
    """The merged report of the memory reports at ``paths`` (see the module docstring)."""
    if not paths:
        raise MergeError("--merge: no report given")
    reports = [(p, load_report(p)) for p in paths]
    check_same_benchmark(reports)
    policies, not_run = merge_policies(reports)
    check_identity_windows(policies)
    first = reports[0][1]
    rep = {k: v for k, v in first.items() if k not in ("policies", "pairwise", "equal_budget")}
    rep["config"] = {**first["config"], "policies": [r["requested"] for r in policies]}
    rep["policies"] = policies
    rep["elapsed_s"] = float(sum(r.get("elapsed_s") or 0.0 for _, r in reports))
    rep.update({"partial": False, "policies_finished": [r["spec"] for r in policies if r["error"] is None],
                "policies_not_run": not_run, "interrupted": None})
    rep["merged_from"] = [{"path": p, "policies": [x["spec"] for x in r["policies"]],
                           "finished": [x["spec"] for x in r["policies"] if x.get("error") is None],
                           "device": r["config"].get("device"), "gpu": (r.get("environment") or {}).get("gpu"),
                           "elapsed_s": r.get("elapsed_s"), "partial": r.get("partial"),
                           "interrupted": r.get("interrupted")} for p, r in reports]
    return recompute(rep)


def check_identity_windows(policies: list[dict]) -> None:
    """With the critic, every finished policy must have been scored on the same windows (their lags)."""
    ok = [r for r in policies if r["error"] is None]
    if not ok or "identity" not in ok[0]["episodes"][0]:
        return
    ref = [e["identity"]["lags"] for e in ok[0]["episodes"]]
    for r in ok[1:]:
        if [e.get("identity", {}).get("lags") for e in r["episodes"]] != ref:
            raise MergeError(f"policy {r['spec']!r}: critic windows differ from {ok[0]['spec']!r}'s")


def header(report: dict) -> str:
    """The line the merged table starts with."""
    return "Merged (no model run) from: " + "; ".join(
        f"{m['path']} ({', '.join(m['finished'])})" for m in report["merged_from"])
