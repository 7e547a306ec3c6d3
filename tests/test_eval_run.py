"""``fademem eval run`` over the embedded model: sharded with ``torchrun --nproc_per_node 2`` on gloo
(the union of the ranks' jobs is exactly the job list, the results those of one process), killed
mid-run and resumed (nothing lost, nothing redone), every row carrying spec, seed, checkpoint hash and
fademem version.

Three prompts x one spec x one seed: an odd count, so the ranks get 2 and 1 jobs. 2 s videos, scored on
subject consistency (small random DINO) and by a small random world critic.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

try:
    from tests.test_eval_models import eval_weights, make_critic  # noqa: F401 - fixture
except ImportError:  # pragma: no cover - run from tests/
    from test_eval_models import eval_weights, make_critic  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
SPEC = "fademem:budget=3"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, eval_weights):  # noqa: F811
    from fademem.embedded.world import sample_prompt

    tmp = tmp_path_factory.mktemp("eval_run")
    prompts = tmp / "prompts.txt"
    rng = np.random.default_rng(7)
    prompts.write_text("".join(sample_prompt(rng) + "\n\n" for _ in range(3)))  # blank lines are skipped
    critic = make_critic(tmp / "critic.safetensors")
    return tmp, prompts, critic, eval_weights


def _args(setup, store: Path) -> list[str]:
    tmp, prompts, critic, weights = setup
    return ["eval", "run", "--prompts", str(prompts), "--memory", SPEC, "--seeds", "0", "--seconds", "2",
            "--store", str(store), "--weights-dir", str(weights), "--dimensions", "subject_consistency",
            "--critic", str(critic), "--device", "cpu", "--no-progress"]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def _rows(store: Path) -> dict[str, dict]:
    from fademem.eval.store import ResultStore

    rows = ResultStore(store).rows()
    assert len({r["key"] for r in rows}) == len(rows)
    return {r["key"]: r for r in rows}


@pytest.fixture(scope="module")
def torchrun_store(setup):
    store = setup[0] / "sharded.sqlite"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "fademem.cli", *_args(setup, store)]
    res = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return store, res.stderr


def test_torchrun_shards_exactly(setup, torchrun_store):
    import fademem
    from fademem.eval.jobs import expand_jobs, read_prompts, shard

    store, log = torchrun_store
    assert "[rank 0/2] 3 jobs, 0 already stored, 3 to run, 2 on this rank" in log
    assert "[rank 1/2] 3 jobs, 0 already stored, 3 to run, 1 on this rank" in log
    assert "[rank 1] 1/1" in log and "overall" in log and "ETA" in log
    rows = _rows(store)
    assert not list(store.parent.glob(store.name + ".rank*"))  # shards folded in by rank 0
    any_row = next(iter(rows.values()))
    jobs = expand_jobs(read_prompts(setup[1]), [SPEC], [0], seconds=2.0, model="embedded",
                       checkpoint_hash=any_row["checkpoint_hash"], size="64x64")
    assert set(rows) == {j.key for j in jobs}
    for rank in (0, 1):
        assert {r["key"] for r in rows.values() if r["rank"] == rank} == {j.key for j in shard(jobs, rank, 2)}
    for r in rows.values():
        assert r["spec"] == SPEC and r["seed"] == 0 and r["fademem_version"] == fademem.__version__
        assert len(r["checkpoint_hash"]) == 64 and Path(r["video"]).is_file() and r["frames"] == 18
        assert 0 < r["scores"]["subject_consistency"] <= 1 and r["scores"]["critic_fidelity"] is not None


def test_kill_and_resume_loses_nothing_and_matches_torchrun(setup, torchrun_store):
    """A single process killed (SIGKILL) after its first stored video; the rerun runs only the rest. The
    scores equal the sharded run's, job for job."""
    store = setup[0] / "single.sqlite"
    cmd = [sys.executable, "-m", "fademem.cli", *_args(setup, store)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if store.exists() and len(_rows(store)) >= 1:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    before = _rows(store)
    assert 1 <= len(before) < 3
    res = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"3 jobs, {len(before)} already stored, {3 - len(before)} to run" in res.stderr
    after = _rows(store)
    assert set(after) == set(_rows(torchrun_store[0])) and len(after) == 3
    for key, row in before.items():
        assert after[key]["finished"] == row["finished"]  # not redone
    sharded = _rows(torchrun_store[0])
    for key, row in after.items():
        assert row["scores"] == sharded[key]["scores"], key
        assert row["details"]["vbench"]["clips"] == sharded[key]["details"]["vbench"]["clips"]
