"""``fademem bench memory --episodes-kind cuts``: episodes with two hard scene cuts (issue 18).

A cut episode plays scene A (prompt A, world seed a), cuts to scene B (another prompt, seed, background
colour and texture) at frame ``c1``, and cuts back to A at frame ``c2``. A *resumes where it left*: A's
world is paused while B plays, so the true frame at ``c2`` is A's frame ``c1`` (the continuation of
A's last frame before the cut) and A's content comes back after ``c2 - c1`` frames of B:

    truth = A.render(c1) ++ B.render(c2 - c1) ++ A.render(T - c2, start=c1)

The true opening (teacher-forced) ends inside B (``c1 < opening < c2``), so the memory holds a cut;
generation continues B under prompt B and the prompt switches back to A at ``c2`` (``switches``, at
chunk boundaries). Both scenes have a static camera and objects that stay in view (still, orbiting,
bouncing): nothing comes back within a scene, only A's content across the two cuts.

Lags (``cut_lags``): ``last_seen(mode="revisit")`` over the concatenated timeline, A's and B's content
being distinct identities; A's return is a revisit onset at ``c2`` with lag ``c2 - c1 + 1`` (last
seen at ``c1 - 1``). Scored: the first ``budget`` frames from ``c2`` (``return_masks``: the benchmark's
revisit-aligned frames, restricted to A's return) and every frame from ``c2`` on (``after_return``).

Note on the cut frame: plain FadeMem's merge schedule depends only on frame positions; at budget 12 it
happens to keep an entry boundary at frame 33 (4 s rounded to chunks), so a cut there is never merged
across by plain FadeMem either and ``adaptive=cut`` cannot differ. Any other chunk frame before 48
is straddled by a plain entry when A returns at frame 96: the default first cut is 3 s (frame 24).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CUT_SECONDS = (3.0, 12.0)  # default cut times (rounded up to whole chunks; see the note below)


@dataclass
class CutEpisode:
    index: int
    prompt: str  # scene A: the initial prompt and the prompt after the return
    world_seed: int
    noise_seed: int
    source: str
    return_frame: int | None  # c2: A comes back
    prompt_b: str = ""
    world_seed_b: int = 0
    cut_frames: tuple[int, int] = (0, 0)  # (c1, c2)

    def switches(self) -> list[tuple[int, str]]:
        c1, c2 = self.cut_frames
        return [(c1, self.prompt_b), (c2, self.prompt)]

    def worlds(self, size: int = 64, fps: float = 8):
        from fademem.embedded.world import World

        return World(self.prompt, self.world_seed, size, fps), World(self.prompt_b, self.world_seed_b, size, fps)

    def segments(self, num_frames: int) -> list[tuple[int, int, int]]:
        """[(world 0=A / 1=B, local start, frames)] in episode order."""
        c1, c2 = self.cut_frames
        return [(0, 0, c1), (1, 0, c2 - c1), (0, c1, num_frames - c2)]

    def render(self, num_frames: int, size: int = 64, fps: float = 8) -> np.ndarray:
        ws = self.worlds(size, fps)
        return np.concatenate([ws[w].render(n, start=s) for w, s, n in self.segments(num_frames) if n > 0])


def cut_pair(seed: int):
    """(scene A, scene B) SceneSpecs: static cameras, 1-2 objects that stay in view, different background
    colours and textures (B's objects avoid A's colours too)."""
    from fademem.embedded.world.grammar import COLOURS, SHAPES, SIZES, TEXTURES, CameraSpec, ObjectSpec, SceneSpec

    rng = np.random.default_rng([int(seed), 18])
    bg_a, bg_b = (str(c) for c in rng.choice(COLOURS, 2, replace=False))
    tex_a, tex_b = (str(t) for t in rng.choice([t for t in TEXTURES if t != "plain"], 2, replace=False))

    def objects(avoid):
        return tuple(ObjectSpec(str(rng.choice(SIZES)), str(rng.choice([c for c in COLOURS if c not in avoid])),
                                str(rng.choice(SHAPES)), str(rng.choice(["still", "orbit", "bounce"])))
                     for _ in range(int(rng.integers(1, 3))))

    a_objs = objects({bg_a, bg_b})
    b_objs = objects({bg_a, bg_b} | {o.colour for o in a_objs})
    return (SceneSpec(a_objs, tex_a, bg_a, CameraSpec("static")), SceneSpec(b_objs, tex_b, bg_b, CameraSpec("static")))


def cut_lags(ep: CutEpisode, num_frames: int, size: int = 64, fps: float = 8) -> np.ndarray:
    """[T] revisit lag over the episode's timeline (``world.last_seen``'s rule, lower median over pixels);
    each world keeps its own record of what was seen when, in episode frames."""
    from fademem.embedded.world.revisit import SeenTracker

    trackers = [SeenTracker(w, "revisit") for w in ep.worlds(size, fps)]
    out = np.empty(num_frames, np.int64)
    mid = (size * size - 1) // 2
    t = 0
    for wi, start, n in ep.segments(num_frames):
        for u in range(start, start + n):
            out[t] = np.partition(trackers[wi].step(u, t).ravel(), mid)[mid]
            t += 1
    return out


def cut_episodes(n: int, seed: int, num_frames: int, opening: int, cuts: tuple[int, int], fps: float = 8,
                 size: int = 64) -> tuple[list[CutEpisode], list[np.ndarray], list[dict]]:
    """(episodes, lags [T] per episode, []): ``n`` cut episodes; episode i: ``cut_pair(seed + i)``, world
    seeds seed + i (A) and seed + i + 1000 (B), noise seed seed + i. ``cuts`` (c1, c2): latent frames,
    whole chunks, with 0 < c1 < opening < c2 < num_frames (ValueError otherwise)."""
    c1, c2 = (int(c) for c in cuts)
    if not 0 < c1 < opening < c2 < num_frames:
        raise ValueError(f"cut frames must satisfy 0 < c1 ({c1}) < opening ({opening}) < c2 ({c2}) < video length "
                         f"({num_frames}): the true opening holds the cut into B, the return to A is generated")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"episodes must be an integer >= 1, got {n!r}")
    episodes, lags = [], []
    for i in range(n):
        s = seed + i
        a, b = cut_pair(s)
        ep = CutEpisode(i, a.to_prompt(), s, s, f"cut_pair({s})", c2, b.to_prompt(), s + 1000, (c1, c2))
        lg = cut_lags(ep, num_frames, size, fps)
        if lg[c2] != c2 - c1 + 1:  # the median pixel at the return must be A's content, last seen at c1 - 1
            raise AssertionError(f"{ep.source}: lag {lg[c2]} at the return (frame {c2}), expected {c2 - c1 + 1}")
        episodes.append(ep)
        lags.append(lg)
    return episodes, lags, []


def return_masks(episodes, lags_all, window: int, opening: int, num_frames: int) -> tuple[list, list]:
    """(revisit-aligned, after-return) masks over the scored frames (``opening`` ..): the first ``window``
    frames from A's return (with a positive lag), and every frame from the return on."""
    aligned, after = [], []
    for ep, lg in zip(episodes, lags_all):
        m = np.zeros(num_frames, bool)
        m[ep.return_frame:ep.return_frame + window] = True
        aligned.append((m & (np.asarray(lg) > 0))[opening:])
        a = np.zeros(num_frames, bool)
        a[ep.return_frame:] = True
        after.append(a[opening:])
    return aligned, after


def group_switches(episodes, group) -> list | None:
    """The prompt switches of a batch of episodes (None for episodes without cuts); the cut frames agree."""
    if not hasattr(episodes[group[0]], "switches"):
        return None
    plans = [episodes[i].switches() for i in group]
    return [(plans[0][k][0], [p[k][1] for p in plans]) for k in range(len(plans[0]))]


def table_rows(report: dict) -> list[str]:
    """The cut section of memory.txt: PSNR/SSIM on every frame after the return, and its paired differences."""
    from fademem.bench.memory_report import _fmt_ci

    ok = [r for r in report["policies"] if not r.get("error") and "after_return" in r]
    if not ok:
        return []
    cuts = report["config"].get("cut_frames")
    rows = ["", f"Cuts (A, cut at frame {cuts[0]} to B, cut back to A at frame {cuts[1]}): every generated frame from "
                "the return on, against A's truth, mean over episodes [95% CI]",
            f"{'policy':26s} {'frames':>6s} {'PSNR dB':>22s} {'SSIM':>24s}"]
    for r in ok:
        s = r["after_return"]
        rows.append(f"{r['spec'][:26]:26s} {s['n_frames']:6d} {_fmt_ci(s['psnr']):>22s} {_fmt_ci(s['ssim'], 4):>24s}")
    pw = (report.get("pairwise") or {}).get("after_return")
    if pw:
        rows.append(f"Paired a - b, all frames after the return (Holm-corrected {1 - report['pairwise']['alpha']:.0%} "
                    "intervals; * excludes 0):")
        for e in pw["psnr"]["overall"]:
            star = "*" if e["excludes_zero"] else " "
            ci = _fmt_ci((e["mean"], e["low"], e["high"]))
            rows.append(f"  {(e['a'][:21] + ' - ' + e['b'][:20]):44s} dPSNR {ci:>22s}{star} n={e['n']}")
    return rows
