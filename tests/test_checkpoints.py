"""Checkpoint layouts: tiny random models saved the way each release saves them, loaded back."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from fademem.wan import checkpoints as ck
from fademem.wan.checkpoints import CheckpointError, detect_layout, load_generator, load_lora, load_state_dict_any
from fademem.wan.checkpoints_names import original_to_diffusers
from fademem.wan.model import CausalWanModel


def _preset(name, **kw):
    return ck._preset(name, **kw)


def _tiny_cfg(**kw):
    return _preset("tiny", **kw)


def _model(cfg=None, seed=0) -> CausalWanModel:
    torch.manual_seed(seed)
    m = CausalWanModel(cfg or _tiny_cfg())
    with torch.no_grad():  # zero-initialised parts (head, ...) get random values so every tensor counts
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return m.eval()


def _sd(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(a: dict, b: dict):
    assert set(a) == set(b)
    for k in a:
        assert a[k].shape == b[k].shape, k
        assert torch.equal(a[k].float(), b[k].float()), k


def _inputs(cfg, seed=1):
    g = torch.Generator().manual_seed(seed)
    pt, ph, pw = cfg.patch_size
    x = torch.randn(1, cfg.in_dim, 3 * pt, 4 * ph, 4 * pw, generator=g)
    ctx = torch.randn(1, 7, cfg.text_dim, generator=g)
    return x, ctx


def _out(model, cfg):
    x, ctx = _inputs(cfg)
    with torch.no_grad():
        return _forward(model, x, ctx, cfg)


def _forward(model, x, ctx, cfg):
    t = torch.full((x.shape[0], x.shape[2] // cfg.patch_size[0]), 500.0)
    return model(x, t, ctx)


def _wan_config_json(cfg) -> dict:
    return {
        "_class_name": "WanModel", "_diffusers_version": "0.30.0", "model_type": "t2v",
        "dim": cfg.dim, "ffn_dim": cfg.ffn_dim, "num_heads": cfg.num_heads, "num_layers": cfg.num_layers,
        "in_dim": cfg.in_dim, "out_dim": cfg.out_dim, "text_len": cfg.text_len, "freq_dim": cfg.freq_dim,
        "eps": 1e-6,
    }


def _diffusers_config_json(cfg) -> dict:
    return {
        "_class_name": "WanTransformer3DModel", "_diffusers_version": "0.42.1",
        "patch_size": list(cfg.patch_size), "num_attention_heads": cfg.num_heads,
        "attention_head_dim": cfg.dim // cfg.num_heads, "in_channels": cfg.in_dim, "out_channels": cfg.out_dim,
        "text_dim": cfg.text_dim, "freq_dim": cfg.freq_dim, "ffn_dim": cfg.ffn_dim, "num_layers": cfg.num_layers,
        "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": None,
        "added_kv_proj_dim": None, "rope_max_seq_len": 1024,
    }


def _prefixed(sd, prefix="model."):
    return {prefix + k: v for k, v in sd.items()}


def _fsdp_names(sd):
    """Wrapper components the way FSDP / compile / DDP put them into LongLive's EMA names."""
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if parts[0] == "blocks":  # blocks.N._fsdp_wrapped_module.rest
            parts = parts[:2] + ["_fsdp_wrapped_module", "_orig_mod"] + parts[2:]
        out["module.model._fsdp_wrapped_module." + ".".join(parts)] = v
    return out


@pytest.fixture(scope="module")
def src():
    cfg = _tiny_cfg()
    m = _model(cfg)
    return cfg, m, _sd(m), _out(m, cfg)


# ------------------------------------------------------------------------------------------ formats
def test_save_generator_round_trip(tmp_path, src):
    cfg, m, sd, out = src
    f = ck.save_generator(m, tmp_path / "gen.safetensors")
    assert detect_layout(f) == "wan-original"
    loaded = load_generator(f)  # config from the file's metadata
    _assert_same(_sd(loaded), sd)
    assert torch.equal(_out(loaded, cfg), out)
    d = ck.save_generator(m, tmp_path / "wan_dir")
    assert d.name == "diffusion_pytorch_model.safetensors" and (tmp_path / "wan_dir" / "config.json").is_file()
    _assert_same(_sd(load_generator(tmp_path / "wan_dir")), sd)


def test_wan_original_dir_single_and_sharded(tmp_path, src):
    cfg, m, sd, out = src
    single = tmp_path / "single"
    single.mkdir()
    save_file(sd, str(single / "diffusion_pytorch_model.safetensors"))
    (single / "config.json").write_text(json.dumps(_wan_config_json(cfg)))
    assert detect_layout(single) == "wan-original"
    got, layout = load_state_dict_any(single)
    assert layout == "wan-original"
    _assert_same(got, sd)
    # the weights file alone (config.json beside it is picked up)
    assert detect_layout(single / "diffusion_pytorch_model.safetensors") == "wan-original"

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    keys = sorted(sd)
    parts = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    weight_map = {}
    for i, part in enumerate(parts):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
        save_file({k: sd[k] for k in part}, str(sharded / name))
        weight_map.update({k: name for k in part})
    (sharded / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    (sharded / "config.json").write_text(json.dumps(_wan_config_json(cfg)))
    assert detect_layout(sharded) == "wan-original"
    loaded = load_generator(sharded)
    _assert_same(_sd(loaded), sd)
    assert torch.equal(_out(loaded, cfg), out)
    assert detect_layout(sharded / "diffusion_pytorch_model.safetensors.index.json") == "wan-original"


def test_diffusers_layouts(tmp_path, src):
    cfg, m, sd, out = src
    dsd = original_to_diffusers(sd)
    assert set(dsd) != set(sd)
    tdir = tmp_path / "pipe" / "transformer"
    tdir.mkdir(parents=True)
    save_file(dict(dsd), str(tdir / "diffusion_pytorch_model.safetensors"))
    (tdir / "config.json").write_text(json.dumps(_diffusers_config_json(cfg)))
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    for p in (tmp_path / "pipe", tdir):
        assert detect_layout(p) == "wan-diffusers"
        got, layout = load_state_dict_any(p)
        assert layout == "wan-diffusers"
        _assert_same(got, sd)
    loaded = load_generator(tmp_path / "pipe")
    assert loaded_cfg(loaded).num_heads == cfg.num_heads
    assert torch.equal(_out(loaded, cfg), out)


def loaded_cfg(model):
    return ck._model_config(model)


def test_real_diffusers_transformer_dir(tmp_path):
    """A WanTransformer3DModel saved by diffusers itself: its names and config.json map onto ours."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    dm = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4,
                               out_channels=4, text_dim=24, freq_dim=32, ffn_dim=48, num_layers=2)
    dm.save_pretrained(tmp_path / "dm")
    assert detect_layout(tmp_path / "dm") == "wan-diffusers"
    model = load_generator(tmp_path / "dm")
    cfg = loaded_cfg(model)
    assert (cfg.dim, cfg.num_heads, cfg.ffn_dim, cfg.num_layers, cfg.in_dim, cfg.out_dim, cfg.text_dim,
            cfg.freq_dim, tuple(cfg.patch_size)) == (32, 2, 48, 2, 4, 4, 24, 32, (1, 2, 2))
    ours = model.state_dict()
    theirs = {k: v for k, v in dm.state_dict().items()}
    back = original_to_diffusers(ours)
    for k, v in back.items():
        assert torch.equal(v, theirs[k]), k


def test_self_forcing_causvid_longlive(tmp_path, src):
    cfg, m, sd, out = src
    ema = _sd(_model(cfg, seed=5))
    critic = {"model.blocks.0.self_attn.q.weight": torch.randn(3, 3)}

    sf = tmp_path / "self_forcing_dmd.pt"
    gan_branch = {"_cls_pred_branch.1.weight": torch.randn(4, 4)}  # Self-Forcing GAN variant's extra head
    torch.save({"generator": _prefixed(sd), "critic": critic, "generator_ema": {**_prefixed(ema), **gan_branch}}, sf)
    assert detect_layout(sf) == "self-forcing"
    got, layout = load_state_dict_any(sf)  # Self-Forcing's documented inference uses the EMA weights
    assert layout == "self-forcing"
    _assert_same(got, ema)
    _assert_same(load_state_dict_any(sf, use_ema=False)[0], sd)

    cv = tmp_path / "causvid.pt"
    torch.save({"generator": _prefixed(sd)}, cv)
    assert detect_layout(cv) == "causvid"
    loaded = load_generator(cv, config=cfg)
    assert torch.equal(_out(loaded, cfg), out)
    with pytest.raises(CheckpointError, match="generator_ema"):
        load_state_dict_any(cv, use_ema=True)

    ll = tmp_path / "longlive_base.pt"
    torch.save({"generator": _prefixed(sd), "generator_ema": _fsdp_names(ema)}, ll)
    assert detect_layout(ll) == "longlive"
    _assert_same(load_state_dict_any(ll)[0], sd)  # LongLive's inference configs: use_ema false
    _assert_same(load_state_dict_any(ll, use_ema=True)[0], ema)  # FSDP / compile / DDP names stripped

    raw = tmp_path / "raw.pt"
    torch.save({"_orig_mod." + k: v for k, v in sd.items()}, raw)
    assert detect_layout(raw) == "raw-state-dict"
    _assert_same(load_state_dict_any(raw)[0], sd)
    rawd = tmp_path / "raw_diffusers.pt"
    torch.save({"model": dict(original_to_diffusers(sd))}, rawd)
    assert detect_layout(rawd) == "raw-state-dict"
    _assert_same(load_state_dict_any(rawd)[0], sd)


def test_dtype_and_inferred_config(tmp_path, src):
    cfg, m, sd, out = src
    f = tmp_path / "bf16.pt"
    torch.save({"generator": _prefixed({k: v.to(torch.bfloat16) for k, v in sd.items()})}, f)
    loaded = load_generator(f, dtype=torch.bfloat16, config=cfg)
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    assert not any(p.requires_grad for p in loaded.parameters())
    # width / depth / ffn / text / freq / in / out all come from the shapes
    got = ck.infer_config(sd)
    for field in ("dim", "num_layers", "ffn_dim", "text_dim", "freq_dim", "in_dim", "out_dim", "num_heads"):
        assert getattr(got, field) == getattr(cfg, field), field


def test_assign_keeps_the_loaded_tensors(src):
    """Parameters are the state dict's tensors themselves (no second copy of the weights)."""
    cfg, m, sd, out = src
    loaded = dict(sd)
    model = ck._build_and_fill(cfg, loaded, "mem", "raw-state-dict", strict=True)
    for name, p in model.named_parameters():
        assert p.data_ptr() == loaded[name].data_ptr(), name
    assert torch.equal(_out(model, cfg), out)


def test_presets_give_heads_and_suggest_config():
    for name, heads in (("wan_1_3b", 12), ("wan_14b", 40)):
        with torch.device("meta"):
            meta = CausalWanModel(_preset(name))
        assert ck.infer_config(meta.state_dict()).num_heads == heads
    with torch.device("meta"):
        small = CausalWanModel(_preset("wan_1_3b"))
        big = CausalWanModel(_preset("wan_14b"))
    with pytest.raises(CheckpointError) as e:
        ck._check_against_model(small, big.state_dict(), "x.pt", "longlive", strict=True)
    msg = str(e.value)
    assert "patch_embedding.weight" in msg and "[5120" in msg and "[1536" in msg
    assert "dim 5120" in msg and "14B" in msg


# ------------------------------------------------------------------------------------------ LoRA
def _block_linears(model):
    return sorted(n for n, mod in model.named_modules() if n.startswith("blocks.") and isinstance(mod, nn.Linear))


def _make_lora(cfg, rank, seed=3):
    """peft LoRA over every Linear inside the blocks (LongLive's target set), random A and B."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    base = _model(cfg, seed=11)
    peft_model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=rank, target_modules=_block_linears(base)))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    state = get_peft_model_state_dict(peft_model)
    return state


def _closed_form(sd, state, scale):
    want = {k: v.clone() for k, v in sd.items()}
    for k, a in state.items():
        if ".lora_A." not in k:
            continue
        mod = k.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        b = state[k.replace("lora_A", "lora_B")]
        want[mod + ".weight"] = want[mod + ".weight"] + scale * (b @ a)
    return want


def test_longlive_base_plus_lora_equals_closed_form(tmp_path, src):
    cfg, m, sd, out = src
    rank = 4
    state = _make_lora(cfg, rank)
    assert all(k.startswith("base_model.model.blocks.") for k in state)
    assert len(state) == 2 * len(_block_linears(m))
    base = tmp_path / "longlive_base.pt"
    torch.save({"generator": _prefixed(sd), "generator_ema": _fsdp_names(sd)}, base)
    lora = tmp_path / "lora.pt"
    torch.save({"generator_lora": state}, lora)
    assert detect_layout(lora) == "lora"

    merged = load_generator(base, lora=lora, config=cfg)
    want = _closed_form(sd, state, 1.0)  # rank == alpha -> scale 1
    got = _sd(merged)
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-6)
    assert not any("lora" in k or "base_layer" in k for k in got)

    # the same LoRA left unmerged in peft gives the same output
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    ref = _model(cfg)
    ref.load_state_dict(sd)
    ref = get_peft_model(ref, LoraConfig(r=rank, lora_alpha=rank, target_modules=_block_linears(ref)))
    set_peft_model_state_dict(ref, state)
    with torch.no_grad():
        x, ctx = _inputs(cfg)
        torch.testing.assert_close(_forward(merged, x, ctx, cfg), _forward(ref.base_model.model, x, ctx, cfg),
                                   rtol=1e-5, atol=1e-5)

    # bare peft state, alpha given as an argument: scale alpha / r
    bare = tmp_path / "bare_lora.pt"
    torch.save(state, bare)
    m2 = load_generator(base, lora=bare, config=cfg, lora_alpha=2 * rank)
    want2 = _closed_form(sd, state, 2.0)
    for k, v in _sd(m2).items():
        torch.testing.assert_close(v, want2[k], rtol=1e-6, atol=1e-6)


def test_peft_adapter_dir_alpha_from_config(tmp_path, src):
    cfg, m, sd, out = src
    rank = 2
    state = _make_lora(cfg, rank, seed=9)
    d = tmp_path / "adapter"
    d.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(d / "adapter_model.safetensors"))
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": 1.0}))
    assert detect_layout(d) == "lora"
    model = _model(cfg)
    model.load_state_dict(sd)
    merged = load_lora(model, d)
    want = _closed_form(sd, state, 1.0 / rank)
    for k, v in _sd(merged).items():
        torch.testing.assert_close(v, want[k], rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------ errors
def test_not_a_checkpoint(tmp_path):
    txt = tmp_path / "notes.pt"
    txt.write_text("hello, this is not a checkpoint\n")
    for fn in (detect_layout, load_state_dict_any, load_generator):
        with pytest.raises(CheckpointError, match="not a checkpoint"):
            fn(txt)
    with pytest.raises(CheckpointError, match="no such file"):
        detect_layout(tmp_path / "missing.pt")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no Wan weights"):
        detect_layout(empty)
    trunc = tmp_path / "trunc.pt"
    good = tmp_path / "good.pt"
    torch.save({"generator": {"model.patch_embedding.weight": torch.zeros(4, 4)}}, good)
    trunc.write_bytes(good.read_bytes()[:60])
    with pytest.raises(CheckpointError):
        load_state_dict_any(trunc)
    other = tmp_path / "other.pt"
    torch.save({"optimizer": {"lr": 1.0}}, other)
    with pytest.raises(CheckpointError, match="unknown layout"):
        detect_layout(other)


class _Custom:  # a pickled class: not loadable with weights_only=True
    pass


def test_pickle_needing_more_than_weights(tmp_path):
    f = tmp_path / "pickled.pt"
    torch.save({"generator": {"x": torch.zeros(1)}, "args": _Custom()}, f)
    with pytest.raises(CheckpointError, match="weights_only"):
        detect_layout(f)


def test_missing_and_unexpected_keys(tmp_path, src):
    cfg, m, sd, out = src
    broken = dict(sd)
    gone = "blocks.1.cross_attn.k.weight"
    del broken[gone]
    broken["blocks.0.extra.weight"] = torch.zeros(2)
    f = tmp_path / "broken.pt"
    torch.save({"generator": _prefixed(broken)}, f)
    with pytest.raises(CheckpointError) as e:
        load_generator(f, config=cfg)
    msg = str(e.value)
    assert gone in msg and "blocks.0.extra.weight" in msg and "1 missing" in msg and "1 unexpected" in msg
    assert str(f) in msg and "causvid" in msg and "strict=False" in msg
    with pytest.warns(UserWarning, match=gone):
        loaded = load_generator(f, config=cfg, strict=False)
    got = _sd(loaded)
    for k in sd:
        if k != gone:
            assert torch.equal(got[k], sd[k]), k


def test_wrong_shape(tmp_path, src):
    cfg, m, sd, out = src
    bad = dict(sd)
    k = "blocks.0.ffn.0.weight"
    bad[k] = torch.zeros(bad[k].shape[0] + 1, bad[k].shape[1])
    f = tmp_path / "bad.pt"
    torch.save({"generator": _prefixed(bad)}, f)
    with pytest.raises(CheckpointError) as e:
        load_generator(f, config=cfg)
    msg = str(e.value)
    assert k in msg and str(list(bad[k].shape)) in msg and str(list(sd[k].shape)) in msg
    # a whole different model size: the suggestion names what the checkpoint has
    other_cfg = _tiny_cfg(dim=cfg.dim * 2, num_heads=cfg.num_heads)
    f2 = tmp_path / "wide.pt"
    torch.save({"generator": _prefixed(_sd(_model(other_cfg)))}, f2)
    with pytest.raises(CheckpointError, match=f"checkpoint has dim {cfg.dim * 2}"):
        load_generator(f2, config=cfg)
    assert ck._model_config(load_generator(f2)).dim == cfg.dim * 2  # inferred when no config is given


def test_lora_for_another_model(tmp_path, src):
    cfg, m, sd, out = src
    wide = _tiny_cfg(dim=cfg.dim * 2, num_heads=cfg.num_heads)
    f = tmp_path / "wide_lora.pt"
    torch.save({"generator_lora": _make_lora(wide, 2)}, f)
    model = _model(cfg)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_lora(model, f)
    deep = _tiny_cfg(num_layers=cfg.num_layers + 1)
    f2 = tmp_path / "deep_lora.pt"
    torch.save(_make_lora(deep, 2), f2)
    with pytest.raises(CheckpointError, match=f"blocks.{cfg.num_layers}"):
        load_lora(_model(cfg), f2)
    base = tmp_path / "base.pt"
    torch.save({"generator": _prefixed(sd)}, base)
    with pytest.raises(CheckpointError, match="LoRA adapter"):
        load_generator(f)
    with pytest.raises(CheckpointError, match="not a LoRA"):
        load_lora(_model(cfg), base)
