"""A LoRA merges only into the base model it was trained on (``fademem.wan.fingerprint``).

The digest of a DiT's weights is stable for the same weights (copies, dtypes the weights round-trip through,
a peft-injected model) and changes when a sampled weight does; the shipped FT LoRA and the shipped compressor's
generator LoRA record the shipped embedded model's digest, merge into it, and are refused, with an error naming
the file and the command to retrain, for a model with other weights; LoRAs without a record merge anywhere.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from fademem.memory import fademem as fm
from fademem.memory.compressor_net import default_path
from fademem.pipeline import check_adapter_base, generator_for_memory
from fademem.wan.fingerprint import MERGED_ATTR, weights_digest
from fademem.wan.lora import load_lora

pytestmark = pytest.mark.usefixtures("one_thread")
FT = "fademem:budget=12,lora=shipped"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    from fademem.embedded import load

    return load().model


@pytest.fixture(scope="module")
def other(model):
    """The shipped model after a little training: every weight moved by ~1e-3."""
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1e-3 * torch.randn(p.shape, generator=g))
    return m


def test_digest_is_stable_for_the_same_weights(model):
    d = weights_digest(model)
    assert d.startswith("w1:") and len(d) == 19 and weights_digest(model) == d
    assert weights_digest(copy.deepcopy(model)) == d == weights_digest(model.state_dict())
    # the shipped weights are float16: held in bfloat16 or float16 they give the same digest
    assert weights_digest(copy.deepcopy(model).to(torch.bfloat16)) == d
    assert weights_digest(copy.deepcopy(model).to(torch.float16)) == d
    # a LoRA injected (not merged) for training: the base's names and weights, hence its digest
    from fademem.pipeline.finetune_lora import add_lora, lora_targets

    injected = copy.deepcopy(model)
    add_lora(injected, lora_targets(injected, ("self_attn.q",)), 4, 4.0)
    assert weights_digest(injected) == d


def test_digest_changes_with_the_weights(model, other):
    d = weights_digest(model)
    assert weights_digest(other) != d
    one = copy.deepcopy(model)
    with torch.no_grad():  # one weight (the first of a tensor is always sampled)
        one.blocks[3].ffn[0].weight.view(-1)[0] += 0.05
    assert weights_digest(one) != d


def test_shipped_records_are_the_shipped_model(model):
    d = weights_digest(model)
    cfg = json.loads((fm.shipped_lora_dir() / "adapter_config.json").read_text())
    assert cfg["fademem"]["base_digest"] == d
    with safe_open(str(default_path()), "pt") as f:
        assert json.loads(f.metadata()["lora"])["base_digest"] == d


def test_shipped_loras_merge_into_the_shipped_model(model):
    ft = generator_for_memory(model, FT)
    comp = generator_for_memory(model, "compressor")
    assert ft is not model and comp is not model and not hasattr(model, MERGED_ATTR)
    # a second LoRA of the same base fits a model the first one was merged into (--lora DIR + compressor)
    both = generator_for_memory(ft, "compressor")
    assert getattr(both, MERGED_ATTR) == weights_digest(model) != weights_digest(both)
    check_adapter_base(model, FT)
    check_adapter_base(model, "compressor")
    check_adapter_base(model, "fademem")  # no adapter: nothing to check


def test_shipped_loras_refuse_another_base(model, other):
    d = fm.shipped_lora_dir()
    for merge in (lambda: generator_for_memory(other, FT), lambda: load_lora(copy.deepcopy(other), d),
                  lambda: check_adapter_base(other, FT)):
        with pytest.raises(ValueError, match="trained on a different base model") as e:
            merge()
        msg = str(e.value)
        assert str(d) in msg and "fademem finetune --weights" in msg and weights_digest(model) in msg
    for merge in (lambda: generator_for_memory(other, "compressor"), lambda: check_adapter_base(other, "compressor")):
        with pytest.raises(ValueError, match="trained on a different base model") as e:
            merge()
        assert str(default_path()) in str(e.value) and "fademem train-compressor --weights" in str(e.value)
    # experts can still merge it
    assert load_lora(copy.deepcopy(other), d, check_base_model=False) is not None


def test_loras_without_a_record_merge_anywhere(other, tmp_path):
    from fademem.compressor import kv as KV

    d = tmp_path / "ft"
    shutil.copytree(fm.shipped_lora_dir(), d)
    cfg = json.loads((d / "adapter_config.json").read_text())
    del cfg["fademem"]["base_digest"]
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    assert generator_for_memory(other, f"fademem:lora={d}") is not other
    f = KV.load(default_path())
    path = tmp_path / "c.safetensors"
    KV.save(path, f.compressor, lora=f.lora, lora_info=replace(f.lora_info, base_digest=None))
    assert generator_for_memory(other, f"compressor:weights={path}") is not other


def test_bench_memory_refuses_before_any_episode(model, other, monkeypatch):
    """`fademem bench memory` checks every policy's LoRA against the model up front, not at the policy's turn."""
    from fademem import embedded
    from fademem.bench import memory as bench_memory

    shipped = embedded.load()
    monkeypatch.setattr(embedded, "load", lambda *a, **k: replace(shipped, model=other))
    monkeypatch.setattr(bench_memory, "_pipelines", lambda *a: pytest.fail("the benchmark went on"))
    with pytest.raises(ValueError, match="trained on a different base model"):
        bench_memory.run_memory(bench_memory.MemoryRun(policies=["window", FT], episodes=1, seconds=2.0,
                                                       opening_seconds=1.0, progress=False), log=lambda *_: None)


def test_eval_run_refuses_before_any_video(other, tmp_path):
    """``fademem eval run`` on a model the FT LoRA was not trained on: a clean error before any job runs."""
    from click.testing import CliRunner
    from safetensors.torch import save_file

    from fademem.cli import main
    from fademem.embedded import default_path as shipped

    weights = tmp_path / "other.safetensors"  # the shipped file with the moved DiT weights
    with safe_open(str(shipped()), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    moved = {f"dit.{k}": v for k, v in other.state_dict().items()}
    assert set(moved) <= set(tensors)
    save_file({k: moved.get(k, v).to(v.dtype).contiguous() for k, v in tensors.items()}, str(weights), metadata=meta)
    (tmp_path / "prompts.txt").write_text(
        "a large red circle bouncing over a striped blue background , camera pans right and returns after 8 seconds\n")
    res = CliRunner().invoke(main, ["eval", "run", "--prompts", str(tmp_path / "prompts.txt"), "--memory", FT,
                                    "--seeds", "0", "--seconds", "0.5", "--store", str(tmp_path / "s.sqlite"),
                                    "--videos", str(tmp_path / "videos"), "--embedded-weights", str(weights),
                                    "--critic", str(ROOT / "training/embedded_v2/critic.safetensors"),
                                    "--device", "cpu", "--no-progress"])
    assert res.exit_code != 0 and "trained on a different base model" in res.output, res.output
    assert "jobs" not in res.output  # refused before the jobs were even listed, not at the spec's first video
