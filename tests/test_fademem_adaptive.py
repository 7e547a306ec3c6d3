"""FadeMem's adaptive schedule (``adaptive=cut``) and ``beta_from_spectrum`` (issue 18, second part)."""

from __future__ import annotations

import pytest
import torch

from fademem.analysis.spectrum_fit import suggest_beta
from fademem.memory import build_memory
from fademem.memory.fademem import FadeMemMemory, beta_from_spectrum
from fademem.rope import WanRoPE

HEAD_DIM, TOK, HEADS = 12, 2, 2


def bound(spec: str) -> FadeMemMemory:
    return build_memory(spec).bind(WanRoPE(HEAD_DIM), TOK)


def scenes(n: int, cuts: list[int], seed: int = 0, noise: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, TOK, HEADS, D] keys: one random direction per scene (scene changes at ``cuts``) plus noise."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(len(cuts) + 1, HEAD_DIM, generator=g, dtype=torch.float64)
    scene = torch.tensor([sum(f >= c for c in cuts) for f in range(n)])
    k = dirs[scene][:, None, None, :] + noise * torch.randn(n, TOK, HEADS, HEAD_DIM, generator=g, dtype=torch.float64)
    v = torch.randn(n, TOK, HEADS, HEAD_DIM, generator=g, dtype=torch.float64)
    return k, v


def feed(mem: FadeMemMemory, k, v, start: int = 0, stop: int | None = None, chunk: int = 3) -> None:
    stop = k.shape[0] if stop is None else stop
    for s in range(start, stop, chunk):
        e = min(s + chunk, stop)
        mem.insert(k[s:e].reshape(1, -1, HEADS, HEAD_DIM), v[s:e].reshape(1, -1, HEADS, HEAD_DIM), s)


def spans_cut(mem: FadeMemMemory, cuts: list[int]) -> list[tuple[int, int]]:
    return [(e.first, e.first + e.span - 1) for e in mem.entries() for c in cuts if e.first < c <= e.first + e.span - 1]


def snapshot(mem: FadeMemMemory):
    n = len(mem.schedule.entries)
    k, v = mem.store.frames(n)
    return [vars(e) for e in mem.schedule.entries], k.clone(), v.clone()


@pytest.mark.parametrize("preset", ["paper", "release"])
@pytest.mark.parametrize("budget", [5, 8])
def test_no_merged_entry_spans_the_cut(preset, budget):
    k, v = scenes(40, [13])
    extra = ",positions=absolute" if preset == "release" else ""
    off = bound(f"fademem:budget={budget},preset={preset}{extra}")
    cut = bound(f"fademem:budget={budget},preset={preset}{extra},adaptive=cut,cut_threshold=0.3")
    for n in range(3, 43, 3):
        feed(off, k, v, n - 3, min(n, 40))
        feed(cut, k, v, n - 3, min(n, 40))
        assert spans_cut(cut, [13]) == [], n
        assert len(cut.entries()) <= budget
    assert spans_cut(off, [13]), "the test sequence must make the plain rule merge across the cut"
    assert cut.cut_frames() == [13] and off.cut_frames() == []
    assert sum(e.first == 13 for e in cut.entries()) == 1  # an entry opens the second scene


@pytest.mark.parametrize("preset", ["paper", "release"])
def test_threshold_not_reached_is_identical_to_off(preset):
    k, v = scenes(31, [10, 20], noise=0.3)  # real scene changes, but below a threshold of 1.99
    extra = ",positions=absolute" if preset == "release" else ""
    off = bound(f"fademem:budget=6,preset={preset}{extra}")
    on = bound(f"fademem:budget=6,preset={preset}{extra},adaptive=cut,cut_threshold=1.99")
    for n in range(3, 34, 3):
        feed(off, k, v, n - 3, min(n, 31))
        feed(on, k, v, n - 3, min(n, 31))
        a, b = snapshot(off), snapshot(on)
        assert a[0] == b[0] and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    assert on.cut_frames() == []


@pytest.mark.parametrize("spec", ["fademem:budget=3", "fademem:budget=4,anchor=false",
                                  "fademem:budget=5,preset=release,positions=absolute", "fademem:budget=7"])
def test_budget_holds_when_every_pair_straddles_a_cut(spec):
    k, v = scenes(50, list(range(1, 50)), noise=0.0)  # every frame a new scene
    mem = bound(spec + ",adaptive=cut,cut_threshold=0.05")
    for n in range(3, 52, 3):
        feed(mem, k, v, n - 3, min(n, 50))
        assert len(mem.entries()) <= mem.budget
        assert sum(e.span for e in mem.entries()) == min(n, 50)
    assert mem.cut_frames() == list(range(1, 50))


@pytest.mark.parametrize("chunk", [1, 2, 3, 4])
def test_in_flight_cuts_give_the_same_schedule_as_cuts_known_up_front(chunk):
    """A cut read lazily (the chosen pair's flag in flight) decides like one known in advance."""
    cuts = [4, 5, 9, 13, 14, 22]
    k, v = scenes(30, cuts)
    mem = bound("fademem:budget=4,adaptive=cut,cut_threshold=0.3")
    feed(mem, k, v, chunk=chunk)
    ref = FadeMemMemory(budget=4).new_schedule()
    ref.add_cuts(cuts)
    for f in range(30):
        ref.add(f)
    assert [vars(e) for e in mem.schedule.entries] == [vars(e) for e in ref.entries]
    assert mem.cut_frames() == cuts


def test_state_round_trip_resumes_exactly():
    k, v = scenes(36, [9, 24])  # the cut at 9 is the first frame after the save: needs the saved mean key
    spec = "fademem:budget=6,adaptive=cut,cut_threshold=0.3"
    whole, first = bound(spec), bound(spec)
    feed(whole, k, v)
    feed(first, k, v, 0, 9)
    state = first.state_dict()
    assert "cut_prev" in state
    resumed = bound(spec)
    resumed.load_state_dict(state)
    feed(resumed, k, v, 9, 36)
    a, b = snapshot(whole), snapshot(resumed)
    assert a[0] == b[0] and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    assert whole.cut_frames() == resumed.cut_frames() == [9, 24]
    assert spans_cut(resumed, [9, 24]) == []
    with pytest.raises(ValueError, match="saved from memory"):
        bound("fademem:budget=6").load_state_dict(state)


def test_default_state_has_no_cut_entry():
    k, v = scenes(9, [4])
    mem = bound("fademem:budget=6")
    feed(mem, k, v)
    assert "cut_prev" not in mem.state_dict() and mem.schedule.cuts == []


@pytest.mark.parametrize("spec", ["fademem:adaptive=cut,cut_threshold=0.3", "fademem:adaptive=cut,cut_threshold=0.25",
                                  "fademem:budget=9,beta=0.5,adaptive=cut"])
def test_spec_round_trip(spec):
    mem = build_memory(spec)
    assert mem.adaptive == "cut"
    again = build_memory(mem.spec())
    assert again.knobs() == mem.knobs() and again.spec() == mem.spec()
    assert build_memory("fademem").adaptive == "off" and build_memory("fademem").spec() == "fademem"


@pytest.mark.parametrize("spec, match", [("fademem:adaptive=maybe", "adaptive"),
                                         ("fademem:adaptive=cut,cut_threshold=3", "cut_threshold"),
                                         ("fademem:cut_threshold=-0.1", "cut_threshold")])
def test_bad_adaptive_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        build_memory(spec)


# -- beta_from_spectrum ----------------------------------------------------------------------------
def result(b: float | None, verdict: str = "supported", reason: str = "6 points, r^2 = 0.95") -> dict:
    return {"b": b, "verdict": verdict, "reason": reason, "beta": suggest_beta(b, [b - 0.05, b + 0.05]
                                                                             if b is not None else None,
                                                                             0.05, verdict)}


def test_beta_from_spectrum_reads_the_pooled_suggestion():
    report = {"params": {}, "videos": [result(0.3), result(0.4)], "pooled": result(0.35)}
    assert beta_from_spectrum(report) == pytest.approx(0.3)
    assert beta_from_spectrum(result(0.2)) == pytest.approx(0.6)  # one clip's (or a pool's) result
    assert beta_from_spectrum(result(0.2, "weak", "r^2 = 0.6")) == pytest.approx(0.6)
    assert build_memory(f"fademem:beta={beta_from_spectrum(report)}").beta == pytest.approx(0.3)


@pytest.mark.parametrize("report, match", [
    ({"videos": [], "pooled": None}, "no pooled result"),
    ({"pooled": result(0.3, "none", "horizons do not shorten")}, "verdict is 'none'.*horizons do not shorten"),
    ({"pooled": result(0.6)}, "saturated"),
    ({"pooled": result(None)}, "no beta"),
    ({"pooled": {"verdict": "supported", "reason": ""}}, "no suggested beta"),
    ({"pooled": {"b": 0.3, "beta": {"beta": 0.4}}}, "no 'verdict'"),
    ({"pooled": {"verdict": "supported", "beta": {"beta": 1.5, "saturated": False}}}, r"\(0, 1\]"),
])
def test_beta_from_spectrum_refuses(report, match):
    with pytest.raises(ValueError, match=match):
        beta_from_spectrum(report)
