"""``fademem eval score`` and ``report`` end to end, and the errors every ``eval`` command gives before
any model loads: missing weight files, an empty prompt file, a bad dimension, missing videos."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fademem.cli import main

try:
    from tests.test_eval_models import eval_weights, synthetic_frames, write_video  # noqa: F401 - fixture
except ImportError:  # pragma: no cover - run from tests/
    from test_eval_models import eval_weights, synthetic_frames, write_video  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def test_score_a_video_shorter_than_one_clip(tmp_path, eval_weights):  # noqa: F811
    """10 frames at 8 fps: less than one 2 s clip, so VBench-Long scores the whole video as one clip and
    has no clip-to-clip score; the table and the JSON say so."""
    video = write_video(tmp_path / "short.mp4", synthetic_frames(10, 128, 128), fps=8)
    out = tmp_path / "scores.json"
    res = CliRunner().invoke(main, ["eval", "score", str(video), "--weights-dir", str(eval_weights), "--device", "cpu",
                                    "--dimensions", "subject_consistency,motion_smoothness,imaging_quality",
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    v = data["videos"][0]
    assert v["clip_ranges"] == [[0, 10]] and v["frames"] == 10
    assert v["clip2clip"] == {"subject_consistency": None}
    assert 0 < v["scores"]["subject_consistency"] <= 1 and 0 < v["scores"]["motion_smoothness"] <= 1
    assert v["scores"]["imaging_quality"] == pytest.approx(v["clips"]["imaging_quality"][0] / 100)
    assert "| **all** |" in res.output and "Subject" in res.output


def test_score_errors_come_before_any_work(tmp_path, eval_weights):  # noqa: F811
    video = write_video(tmp_path / "v.mp4", synthetic_frames(4, 128, 128), fps=8)
    run = lambda *args: CliRunner().invoke(main, ["eval", "score", *args])
    res = run(str(video), "--weights-dir", str(tmp_path))
    assert res.exit_code == 2 and "dino_vitbase16_pretrain.pth" in res.output and "amt-s.pth" in res.output
    assert "Traceback" not in res.output
    res = run(str(tmp_path / "nope.mp4"), "--weights-dir", str(eval_weights))
    assert res.exit_code == 2 and "nope.mp4" in res.output
    res = run(str(video), "--weights-dir", str(eval_weights), "--dimensions", "colour")
    assert res.exit_code == 2 and "unknown dimension(s) colour" in res.output
    small = write_video(tmp_path / "small.mp4", synthetic_frames(4, 64, 64), fps=8)
    res = run(str(small), "--weights-dir", str(eval_weights), "--dimensions", "dynamic_degree", "--device", "cpu")
    assert res.exit_code == 1 and "at least 128 x 128 pixels" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("content", ["", "\n  \n\n"])
def test_run_refuses_an_empty_prompt_file(tmp_path, eval_weights, content):  # noqa: F811
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(content)
    res = CliRunner().invoke(main, ["eval", "run", "--prompts", str(prompts), "--memory", "fademem:budget=3",
                                    "--store", str(tmp_path / "s.sqlite"), "--weights-dir", str(eval_weights),
                                    "--dimensions", "subject_consistency", "--device", "cpu"])
    assert res.exit_code == 2 and "has no prompts" in res.output, res.output
    assert not (tmp_path / "s.sqlite").exists()


def test_run_refuses_bad_options_before_loading(tmp_path, eval_weights):  # noqa: F811
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    base = ["eval", "run", "--prompts", str(prompts), "--store", str(tmp_path / "s.sqlite"), "--device", "cpu"]
    res = CliRunner().invoke(main, [*base, "--memory", "nosuch:budget=3", "--weights-dir", str(eval_weights)])
    assert res.exit_code == 2 and "unknown memory policy 'nosuch'" in res.output
    res = CliRunner().invoke(main, [*base, "--memory", "fademem:budget=3", "--weights-dir", str(tmp_path)])
    assert res.exit_code == 2 and "missing weight file" in res.output
    res = CliRunner().invoke(main, [*base, "--memory", "fademem:budget=3"])
    assert res.exit_code == 2 and "nothing to score" in res.output
    res = CliRunner().invoke(main, [*base, "--memory", "fademem:budget=3", "--seeds", "x", "--critic", "c.pt"])
    assert res.exit_code == 2 and "--seeds" in res.output


def test_report_table_and_plots(tmp_path):
    """Paper layout from a store: methods x dimensions in %, Avg. with dynamic degree at half weight,
    best bold, clip-pooled means; a beta sweep gets its plot."""
    from fademem.eval.report import write_report
    from fademem.eval.store import ResultStore

    store = ResultStore(tmp_path / "r.sqlite")
    dims = {"subject_consistency": 0.9, "background_consistency": 0.9, "motion_smoothness": 0.9,
            "dynamic_degree": 0.4, "aesthetic_quality": 0.5, "imaging_quality": 0.6}
    for i, (spec, bump, clips) in enumerate([("fademem:budget=12,beta=0.3", 0.02, 30), ("fademem:budget=12,beta=0.5",
                                                                                        0.0, 30),
                                             ("fademem:budget=12,beta=0.5", 0.04, 10)]):
        store.write({"key": f"k{i}", "prompt_index": i, "prompt": "p", "spec": spec, "seed": 0, "seconds": 60.0,
                     "model": "embedded", "checkpoint_hash": "ab" * 32, "fademem_version": "0.1.0", "video": "v.mp4",
                     "frames": 960, "fps": 16.0, "clips": clips, "scores": {d: v + bump for d, v in dims.items()},
                     "details": {}, "rank": 0, "gen_seconds": 1.0, "score_seconds": 1.0})
    res = write_report(store.rows(), tmp_path / "out")
    m = res["methods"]
    b5 = m["fademem:budget=12,beta=0.5"]
    assert b5["subject_consistency"] == pytest.approx(0.9 + 0.04 * 10 / 40)  # pooled over clips
    s = {d: 0.92 for d in dims}
    s["dynamic_degree"], s["aesthetic_quality"], s["imaging_quality"] = 0.42, 0.52, 0.62
    assert m["fademem:budget=12,beta=0.3"]["avg"] == pytest.approx(
        (0.92 * 3 + 0.52 + 0.62 + 0.5 * 0.42) / 5.5)
    md = res["markdown"]
    assert "| Method | Subject | Background | Motion smooth. | Dynamic | Aesthetic | Imaging | Avg. |" in md
    assert "**92.00**" in md and "| `fademem:budget=12,beta=0.5` | 91.00 |" in md
    assert {f.name for f in res["files"]} == {"report.md", "report.json", "dimensions.png", "score_vs_beta.png"}


def test_store_shards_merge_and_ignore_sqlite_side_files(tmp_path):
    """Rows written to rank shards count as done before they are merged; SQLite's own journal files
    next to a shard are never read as shards; merging moves every row once and removes the shards."""
    from fademem.eval.jobs import expand_jobs, shard
    from fademem.eval.store import ResultStore

    store = ResultStore(tmp_path / "r.sqlite")
    jobs = expand_jobs([f"p{i}" for i in range(5)], ["a", "b"], [0, 1], seconds=1.0, model="m",
                       checkpoint_hash="h", size="8x8")
    assert len({j.key for j in jobs}) == 20
    for world in (1, 2, 3, 7, 25):
        parts = [shard(jobs, r, world) for r in range(world)]
        assert sorted(k for p in parts for k in (j.key for j in p)) == sorted(j.key for j in jobs)
    row = dict(prompt_index=0, prompt="p", spec="a", seed=0, seconds=1.0, model="m", checkpoint_hash="h",
               fademem_version="0", video="v", frames=1, fps=1.0, clips=1, scores={"x": 1.0}, details={}, rank=0,
               gen_seconds=0.0, score_seconds=0.0)
    store.write({**row, "key": jobs[0].key}, rank=0)
    store.write({**row, "key": jobs[1].key}, rank=1)
    store.write({**row, "key": jobs[2].key})
    (tmp_path / "r.sqlite.rank1-journal").write_bytes(b"")  # what SQLite leaves beside a shard mid-write
    assert store.done_keys() == {jobs[0].key, jobs[1].key, jobs[2].key}
    assert store.merge_shards() == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.sqlite", "r.sqlite.rank1-journal"]
    assert [r["scores"] for r in store.rows()] == [{"x": 1.0}] * 3
