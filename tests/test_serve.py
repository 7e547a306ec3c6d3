"""``fademem serve`` below the browser: the live prompt switch of the shared session, the memory
layout, bad requests over the WebSocket and HTTP, the downloads (a state that ``fademem generate
--resume`` continues) and the command's checks. The browser tests are in test_serve_browser.py."""

from __future__ import annotations

import json
import socket
import threading

import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from starlette.testclient import TestClient  # noqa: E402

from fademem.cli import main  # noqa: E402
from fademem.serve import LiveRunner, embedded_model  # noqa: E402
from fademem.serve.app import BAD_JSON, BUSY, BUSY_CODE, create_app  # noqa: E402
from fademem.serve.memview import Layout, Shadows  # noqa: E402

A = "a large red circle bouncing over a striped blue background , camera pans right and returns after 8 seconds"
B = "a large yellow square standing still over a plain green background , camera is static"


@pytest.fixture(scope="module")
def model():
    return embedded_model()


@pytest.fixture
def client(model, tmp_path):
    runner = LiveRunner(model, A, "fademem", seconds=60, out_dir=tmp_path / "live", buffer_s=30, autostart=False)
    with TestClient(create_app(runner)) as c:
        yield c


def _until(ws, kind, limit=400, chunks=None):
    """The next JSON message of type ``kind`` (frames and other messages skipped; chunk messages
    on the way appended to ``chunks``)."""
    for _ in range(limit):
        msg = ws.receive()
        if msg.get("text") is not None:
            data = json.loads(msg["text"])
            if data["type"] == kind:
                return data
            if data["type"] == "chunk" and chunks is not None:
                chunks.append(data)
    raise AssertionError(f"no {kind} message")


def _chunks(ws, n):
    """The next ``n`` chunk messages, each with its frames (bytes)."""
    out = []
    while len(out) < n:
        meta = _until(ws, "chunk")
        out.append((meta, [ws.receive()["bytes"] for _ in range(meta["frames"])]))
    return out


def in_thread(fn, *args):
    """``fn(*args)`` on a fresh thread, as the server's worker runs the model (torch's intra-op
    threads are per calling thread; a fresh one also fares far better on a busy 2-core machine)."""
    out = []
    t = threading.Thread(target=lambda: out.append(fn(*args)))
    t.start()
    t.join()
    return out[0]


def test_live_switch_is_a_planned_switch(model):
    """GenerationSession.switch_prompt between chunks gives the frames of the same switch planned
    up front; before it the frames are the unswitched video's."""
    pipe = model.build("fademem")

    def run(switch_live=False, planned=()):
        s = pipe.session(A, 9, memory="fademem", latent_shape=model.latent_shape, switches=planned)
        frames = []
        for i in range(3):
            if switch_live and i == 1:
                assert s.switch_prompt(B) == 3
            frames += [c.frames for c in s.step()]
        return torch.cat(frames, dim=1)

    live, planned, plain = in_thread(run, True), in_thread(run, False, [(3, B)]), in_thread(run)
    assert torch.equal(live, planned)
    assert torch.equal(live[:, :3], plain[:, :3]) and not torch.equal(live[:, 3:6], plain[:, 3:6])
    s = pipe.session(A, 6, memory="fademem", latent_shape=model.latent_shape)
    with pytest.raises(ValueError, match="no chunk generated yet"):
        s.switch_prompt(B)
    s.step()
    with pytest.raises(ValueError, match="cannot parse prompt"):
        s.switch_prompt("a dog runs")
    assert s.plan == []


def test_layout_blocks_and_shadows():
    from fademem.memory import Entry

    lay = Layout()
    lay.update(3, [Entry(0.0, 1, 0.0, 0), Entry(1.0, 1, 1.0, 1), Entry(2.0, 1, 2.0, 2)])
    ended = lay.update(6, [Entry(0.0, 1, 0.0, 0), Entry(2.0, 3, 2.0, 1, "merged"), Entry(float("nan"), 1, 9, -1, "x")])
    assert ended == [[0, 3, 1, 1, 1.0, "frame"], [0, 3, 2, 1, 2.0, "frame"]]
    msg = lay.message()
    assert msg["alive"] == [[0, 0, 1, 0.0, 0.0, "frame"], [3, 1, 3, 2.0, 2.0, "merged"]]
    assert msg["loose"] == [[None, 1, 9.0, "x"]]  # NaN never reaches the page (not JSON)
    sh = Shadows("sink:budget=12,sink=3")
    assert [m.spec() for m in sh.memories][0] == "window:budget=12"
    assert "sink" not in [m.name for m in sh.memories]
    for start in range(0, 30, 3):
        sh.insert(start, 3)
    fade = sh.message()[-1]
    assert fade["spec"].startswith("fademem") and len(fade["alive"]) == 12 and fade["step"] == 30


def test_bad_requests_get_clear_errors_and_the_server_goes_on(client):
    with client.websocket_connect("/ws") as ws:
        hello = json.loads(ws.receive()["text"])
        assert hello["type"] == "hello" and hello["paused"] and "fademem" in [p["name"] for p in hello["policies"]]
        bad = [({"type": "policy", "policy": "nope"}, "unknown memory policy 'nope'"),
               ({"type": "policy", "policy": "fademem:budget=x"}, "budget must be int"),
               ({"type": "policy", "policy": ""}, "empty memory policy"),
               ({"type": "prompt", "prompt": "   "}, "empty prompt"),
               ({"type": "prompt", "prompt": 7}, "empty prompt"),
               ({"type": "prompt", "prompt": "a dog runs in the park"}, "cannot parse prompt 'a dog runs"),
               ({"type": "explode"}, "unknown request 'explode'")]
        for req, text in bad:
            ws.send_text(json.dumps(req))
            err = _until(ws, "error")
            assert text in err["message"], (req, err)
        ws.send_text("{not json")
        assert _until(ws, "error")["message"] == BAD_JSON
        ws.send_bytes(b"\x00\x01")
        assert _until(ws, "error")["message"] == BAD_JSON
        ws.send_text(json.dumps({"type": "resume"}))  # still serving: the first chunk comes
        (meta, frames), = _chunks(ws, 1)
        assert meta["start"] == 0 and meta["prompt"] == A and meta["mime"] == "image/png"
        assert len(frames) == 3 and all(f.startswith(b"\x89PNG") for f in frames)
        mem = _until(ws, "memory")
        assert mem["memory"]["frames_seen"] == 3 and len(mem["compare"]) == 3


def test_a_second_page_is_refused_until_the_first_leaves(client):
    with client.websocket_connect("/ws") as first:
        assert json.loads(first.receive()["text"])["type"] == "hello"
        with client.websocket_connect("/ws") as second:
            msg = json.loads(second.receive()["text"])
            assert msg == {"type": "error", "what": "connect", "message": BUSY}
            closed = second.receive()
            assert closed["type"] == "websocket.close" and closed["code"] == BUSY_CODE
    with client.websocket_connect("/ws") as again:
        assert json.loads(again.receive()["text"])["type"] == "hello"


def test_downloads_video_and_a_state_generate_resumes(client, tmp_path):
    from fademem.pipeline.state import load_state
    from fademem.pipeline.video_io import count_frames

    r = client.get("/download/video.mp4")
    assert r.status_code == 409 and "no frames generated yet" in r.json()["error"]
    assert client.get("/download/notes.txt").status_code == 404
    with client.websocket_connect("/ws") as ws:
        _until(ws, "hello")
        ws.send_text(json.dumps({"type": "resume"}))
        before = [m for m, _ in _chunks(ws, 1)]
        ws.send_text(json.dumps({"type": "prompt", "prompt": B}))
        at = _until(ws, "switch", chunks=before)["at"]  # sent as the chunk at that frame starts
        ws.send_text(json.dumps({"type": "pause"}))
        assert [m["start"] for m in before] == list(range(0, at, 3)) and {m["prompt"] for m in before} == {A}
        (meta, _), = _chunks(ws, 1)
        assert meta["start"] == at and meta["prompt"] == B and meta["recached"]
        video = client.get("/download/video.mp4")
        state = client.get("/download/state.safetensors")
    assert video.status_code == state.status_code == 200
    assert video.headers["content-type"] == "video/mp4"
    mp4, st = tmp_path / "dl.mp4", tmp_path / "dl.state.safetensors"
    mp4.write_bytes(video.content)
    st.write_bytes(state.content)
    saved = load_state(st)
    frames = saved["video"]["frames"]
    assert count_frames(mp4) == frames >= at + 3 and frames % 3 == 0
    assert saved["cli"]["switches"] == [f"{at}:{B}"] and saved["cli"]["prompt"] == A
    # `fademem generate --resume` continues it: one more chunk, appended to the state's own mp4
    res = CliRunner().invoke(main, ["generate", "--resume", str(st), "--seconds", str((frames + 3) / 8)])
    assert res.exit_code == 0, res.output
    assert count_frames(saved["cli"]["out"]) == frames + 3


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s


@pytest.mark.parametrize("args, text", [
    (["--memory", "nope"], "unknown memory policy 'nope'"),
    (["--memory", "sink:budget=0"], "--memory"),
    (["--seconds", "0"], "positive number of seconds"),
    (["--prompt", " "], "empty prompt"),
    (["--port", "70000"], "70000"),
    (["--buffer", "-1"], "--buffer"),
    (["--lora", "x.safetensors"], "--lora is for a real generator"),
    (["--checkpoint", "x.pt"], "--checkpoint and --wan-dir go together"),
    (["--height", "480"], "--height/--width are for a Wan"),
    (["--weights", "missing.safetensors"], "weights file not found"),
    (["--device", "cuda:7"], "--device"),
    (["--host", "256.1.1.1"], "cannot listen on 256.1.1.1"),
    (["--prompt", "a dog runs"], "cannot parse prompt"),
])
def test_serve_command_refuses_bad_options(args, text, tmp_path):
    res = CliRunner().invoke(main, ["serve", "--port", "0", "--out-dir", str(tmp_path), *args])
    assert res.exit_code == 2, res.output
    assert text in res.output


def test_serve_command_refuses_a_port_in_use(tmp_path):
    s = _free_port()
    s.listen(1)
    try:
        res = CliRunner().invoke(main, ["serve", "--port", str(s.getsockname()[1]), "--out-dir", str(tmp_path)])
    finally:
        s.close()
    assert res.exit_code == 2 and "cannot listen on 127.0.0.1" in res.output
