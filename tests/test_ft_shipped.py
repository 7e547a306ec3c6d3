"""The FadeMem-FT LoRA shipped in the package (``fademem:budget=12,lora=shipped``, issue 21).

``lora=shipped`` resolves to ``fademem/assets/fademem_ft_lora`` when the policy is built (so the spec names the
directory that ran) and merges into the shipped embedded model exactly as ``lora=<that directory>`` does; the
packaged weights are float16 (committed weights are fp16); bad values are clear errors before any work.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from fademem.cli import main
from fademem.memory import build_memory
from fademem.memory import fademem as fm

SPEC = "fademem:budget=12,lora=shipped"
PROMPT = "a small red circle drifting right over a plain blue background, camera is static"


@pytest.fixture(scope="module")
def bundle():
    from fademem.embedded import load

    b = load()
    b.model.eval().requires_grad_(False)
    return b


def test_shipped_resolves_to_the_packaged_directory():
    d = fm.shipped_lora_dir()
    assert d.is_dir() and d.name == "fademem_ft_lora" and d.parent.name == "assets"
    mem = build_memory(SPEC)
    assert mem.lora == str(d)
    assert mem.spec() == f"fademem:lora={d}"  # the resolved spec names the directory (budget 12 is the default)
    assert build_memory(mem.spec()).spec() == mem.spec() and build_memory(mem).lora == str(d)
    adapter = mem.generator_adapter()
    assert adapter is not None and adapter.lora is None and adapter.source == str(d)
    assert build_memory("fademem:budget=12").generator_adapter() is None


def test_packaged_weights_are_float16_and_config_is_complete():
    d = fm.shipped_lora_dir()
    with safe_open(str(d / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
        dtypes = {f.get_slice(k).get_dtype() for k in keys}
        n = sum(f.get_tensor(k).numel() for k in keys)
    assert dtypes == {"F16"} and n == 589_824
    cfg = json.loads((d / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 16 and cfg["lora_alpha"] == 16.0
    assert not cfg["use_rslora"] and not cfg["use_dora"]
    modules = {k.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] for k in keys}
    assert modules == set(cfg["target_modules"]) and len(keys) == 2 * len(modules)
    rec = cfg["fademem"]
    assert rec["finetune"]["memory"] == "fademem:budget=12" and rec["steps_done_total"] == rec["steps_done"] > 0
    assert rec["seconds_total"] > 0 and rec["finetune"]["device"] == "cuda" and "history" not in rec
    assert (d / "adapter_config.json").stat().st_size < 8_000  # the per-step loss history is not shipped


def test_shipped_merges_like_its_directory(bundle):
    from fademem.pipeline import generator_for_memory

    base = bundle.model
    shipped = generator_for_memory(base, SPEC)
    by_path = generator_for_memory(base, f"fademem:budget=12,lora={fm.shipped_lora_dir()}")
    assert shipped is not base and generator_for_memory(base, "fademem:budget=12") is base
    assert not any("lora_" in n for n, _ in shipped.named_parameters())
    assert all(p.dtype == torch.float32 for p in shipped.parameters())  # fp16 LoRA merged into the fp32 model
    c = bundle.cfg
    x = torch.randn(1, c.channels, 3, c.latent_hw, c.latent_hw, generator=torch.Generator().manual_seed(3))
    states = bundle.text.encode([PROMPT])
    t = torch.full((1, 3), 750.0)
    with torch.no_grad():
        got, same, plain = shipped(x, t, states), by_path(x, t, states), base(x, t, states)
    assert torch.equal(got, same)
    assert (got - plain).abs().max() > 1e-3, (got - plain).abs().max()


def test_shipped_resumes_as_a_finetune_start(bundle):
    """``fademem finetune --resume`` reads the fp16 adapter into its fp32 LoRA parameters."""
    from fademem.pipeline.finetune_lora import add_lora, load_into, read_adapter

    saved, pairs = read_adapter(fm.shipped_lora_dir())
    model = copy.deepcopy(bundle.model)
    params = add_lora(model, list(saved["target_modules"]), int(saved["r"]), float(saved["lora_alpha"]))
    load_into(model, pairs)
    assert all(p.dtype == torch.float32 for p in params)
    own = dict(model.named_parameters())
    name = next(iter(pairs))
    assert torch.equal(own[f"{name}.lora_B.default.weight"], pairs[name]["B"].float())


def test_bad_lora_values_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="lora must be a LoRA directory .* or 'shipped'.*'nonexistent' is none"):
        build_memory("fademem:budget=12,lora=nonexistent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a LoRA adapter directory"):
        build_memory(f"fademem:lora={tmp_path / 'empty'}")
    r = CliRunner().invoke(main, ["generate", "--prompt", PROMPT, "--memory", "fademem:lora=nonexistent",
                                  "--seconds", "1", "--device", "cpu", "--out", str(tmp_path / "v.mp4")])
    assert r.exit_code == 2 and "'nonexistent' is none" in r.output and "Traceback" not in r.output
    monkeypatch.setattr(fm, "shipped_lora_dir", lambda: tmp_path / "not_installed")
    with pytest.raises(ValueError, match="lora=shipped: the packaged FadeMem-FT LoRA is missing"):
        build_memory(SPEC)


def test_bench_memory_takes_the_spec_as_given():
    from fademem.bench.memory import budget_spec, parse_policies

    specs = parse_policies(f"fademem,{SPEC}")
    assert specs == ["fademem", SPEC]
    assert budget_spec(SPEC, 12) == (SPEC, "given spec (taken as is)")


def test_peft_import_is_quiet_after_hf_ready():
    # with the eval extra, peft imports bitsandbytes, whose CPU backend warns about a missing optional Hub
    # kernel on AVX512-BF16 machines: a `--memory ...,lora=shipped` run must not print that to the user
    import subprocess
    import sys

    pytest.importorskip("peft")
    code = "import logging; logging.basicConfig(); from fademem._compat import hf_ready; hf_ready(); import peft"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "kernels-community" not in res.stderr and "gemm_4bit" not in res.stderr, res.stderr
