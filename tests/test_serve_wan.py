"""``fademem serve`` with a causal Wan checkpoint (a tiny random DiT, UMT5 and VAE in the real layouts, on
the CPU): frames of the requested size arrive, a prompt switch takes effect at the next chunk with the
KV-recache, and the state download resumes with ``fademem generate --resume``."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from starlette.testclient import TestClient  # noqa: E402

from fademem.cli import main  # noqa: E402
from fademem.serve import LiveRunner  # noqa: E402
from fademem.serve.app import create_app  # noqa: E402
from fademem.serve.models import wan_model  # noqa: E402

try:
    from tests.test_eval_wan import wan  # noqa: F401 - fixture
    from tests.test_serve import _chunks, _until
except ImportError:  # pragma: no cover - run from tests/
    from test_eval_wan import wan  # noqa: F401
    from test_serve import _chunks, _until


def test_wan_page_streams_switches_and_its_state_resumes(wan, tmp_path):  # noqa: F811
    from PIL import Image

    from fademem.pipeline.state import load_state
    from fademem.pipeline.video_io import count_frames

    ckpt, wan_dir = wan
    model = wan_model(ckpt, wan_dir, device="cpu", dtype="float32", height=32, width=48)
    runner = LiveRunner(model, "a cat runs", "sink", seconds=30, out_dir=tmp_path / "live", buffer_s=30,
                        autostart=False)
    with TestClient(create_app(runner)) as client, client.websocket_connect("/ws") as ws:
        _until(ws, "hello")
        ws.send_text(json.dumps({"type": "resume"}))
        (meta, frames), = _chunks(ws, 1)
        assert meta["start"] == 0 and meta["frames"] == 9 == len(frames)  # the first Wan chunk: 4 * 3 - 3 frames
        img = np.asarray(Image.open(io.BytesIO(frames[0])))
        assert img.shape == (32, 48, 3)
        ws.send_text(json.dumps({"type": "prompt", "prompt": "a dog sleeps"}))
        at = _until(ws, "switch")["at"]
        ws.send_text(json.dumps({"type": "pause"}))
        while True:
            (meta, frames), = _chunks(ws, 1)
            if meta["start"] >= at:
                break
        assert meta["start"] == at and meta["prompt"] == "a dog sleeps" and meta["recached"]
        assert meta["frames"] == 12 == len(frames)  # later chunks: 4 video frames per latent frame
        state = client.get("/download/state.safetensors")
    assert state.status_code == 200
    st = tmp_path / "dl.state.safetensors"
    st.write_bytes(state.content)
    saved = load_state(st)
    assert count_frames(saved["cli"]["out"]) == saved["video"]["frames"] >= 9 + 12  # past the switch
    assert saved["cli"]["switches"] == [f"{at}:a dog sleeps"] and saved["cli"]["kind"] == "wan"
    from fademem.pipeline import latent_frames_for_seconds

    res = CliRunner().invoke(main, ["generate", "--resume", str(st), "--seconds", "3"])
    assert res.exit_code == 0, res.output
    assert count_frames(saved["cli"]["out"]) == 4 * latent_frames_for_seconds(3) - 3  # continued to 3 s


def test_wan_page_merges_the_adapter_a_policy_declares(wan, tmp_path):  # noqa: F811
    """A policy that brings its own generator adapter (FadeMem-FT's ``lora=DIR``) runs on the Wan page with it
    merged, as ``generate`` runs it; a plain policy runs the loaded generator; the merged copy is kept."""
    import copy

    import torch

    from fademem.pipeline.finetune_lora import add_lora, lora_targets, save_lora
    from fademem.wan.lora import load_lora

    ckpt, wan_dir = wan
    model = wan_model(ckpt, wan_dir, device="cpu", dtype="float32", height=32, width=48)
    plain = model.build("fademem:budget=6")
    assert plain is model.build("sink") and plain.model is model.build("window").model
    trained = copy.deepcopy(plain.model)
    params = add_lora(trained, lora_targets(trained, ["self_attn.q", "self_attn.v"]), 4, 4.0)
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.05)  # a LoRA that changes the generator (peft starts B at zero)
    save_lora(trained, tmp_path / "ft", 4, 4.0, lora_targets(plain.model, ["self_attn.q", "self_attn.v"]))
    spec = f"fademem:budget=6,lora={tmp_path / 'ft'}"
    ft = model.build(spec)
    assert ft is not plain and ft.model is not plain.model and model.build(spec) is ft
    assert ft.decoder is plain.decoder and ft.text_encoder is plain.text_encoder
    want = load_lora(copy.deepcopy(plain.model), tmp_path / "ft")
    sd, ref = ft.model.state_dict(), want.state_dict()
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in sd)
    assert any(not torch.equal(sd[k], plain.model.state_dict()[k]) for k in sd)
