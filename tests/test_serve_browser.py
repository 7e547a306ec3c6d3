"""The live page in a real headless browser (Playwright driving the distribution's Chromium, which
.ci/run installs): the page loads, frames arrive, a prompt switch changes the frames from the next
chunk boundary on (exactly the frames of that switch planned up front), bad input is reported,
a second page is refused, the downloads work, a new policy starts a new video.

``FADEMEM_SCREENSHOT=1`` also lets the video run ~25 s and rewrites docs/serve_screenshot.png.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no system Chromium (apt-get install chromium; .ci/run "
                                                          "installs it, Playwright's own download is unreachable)")

from fademem.serve import LiveRunner, embedded_model  # noqa: E402
from fademem.serve.app import create_app  # noqa: E402

try:
    from test_serve import A, B, in_thread  # pytest puts tests/ on sys.path
except ImportError:
    from tests.test_serve import A, B, in_thread

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "serve_screenshot.png"


@pytest.fixture
def server(tmp_path):
    model = embedded_model()
    runner = LiveRunner(model, A, "fademem", seconds=120, out_dir=tmp_path / "live", buffer_s=1.0)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    srv = uvicorn.Server(uvicorn.Config(create_app(runner), log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/", model
    srv.should_exit = True
    thread.join(30)
    sock.close()


def _means(model, switches, chunks: int):
    """Mean RGB per chunk of the video the server makes, computed here (as the worker does, on a thread)."""
    def run():
        s = model.build("fademem").session(A, 3 * chunks, memory="fademem", latent_shape=model.latent_shape,
                                           switches=switches)
        return [c.frames[0].float().mean(dim=(0, 1, 2)).tolist() for _ in range(chunks) for c in s.step()]
    return in_thread(run)


def test_live_page_in_a_browser(server, tmp_path):
    from fademem.pipeline.state import load_state
    from fademem.pipeline.video_io import count_frames

    url, model = server
    hook = "window.fademem"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--force-color-profile=srgb"])
        ctx = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
        page = ctx.new_page()
        page.set_default_timeout(90_000)
        page.goto(url)
        # the page loads and frames arrive
        page.wait_for_function(f"{hook}.hello !== null && {hook}.framesShown >= 6")
        assert page.input_value("#prompt") == A and page.input_value("#policy") == "fademem"
        # a prompt outside the embedded grammar is refused on the page, nothing else changes
        page.fill("#prompt", "a dog runs in the park")
        page.click("#switch")
        page.wait_for_function("document.getElementById('prompt-error').textContent.includes('cannot parse prompt')")
        # a prompt switch: from the next chunk on, the frames are those of the switch planned at that chunk
        page.fill("#prompt", B)
        page.press("#prompt", "Enter")
        at = page.wait_for_function(f"{hook}.switches.length && {hook}.switches[0].at").json_value()
        page.wait_for_function(f"{hook}.chunks.some(c => c.start >= {at + 3})")
        page.click("#pause")
        page.wait_for_function("document.getElementById('status').textContent === 'paused'")
        shown = [c for c in page.evaluate(f"{hook}.chunks") if c["run"] == 1]
        assert [c["start"] for c in shown] == list(range(0, 3 * len(shown), 3))
        assert {c["prompt"] for c in shown if c["start"] < at} == {A}
        assert {c["prompt"] for c in shown if c["start"] >= at} == {B}
        assert next(c for c in shown if c["start"] == at)["recached"]
        planned, plain = _means(model, [(at, B)], len(shown)), _means(model, [], len(shown))
        for c, ref, ref_plain in zip(shown, planned, plain):
            assert max(abs(a - b) for a, b in zip(c["mean"], ref)) < 0.5, (c, ref)
            if c["start"] < at:
                assert max(abs(a - b) for a, b in zip(c["mean"], ref_plain)) < 0.5
        assert max(abs(a - b) for c, r in zip(shown, plain) if c["start"] >= at for a, b in zip(c["mean"], r)) > 2
        # downloads: the mp4 so far and a state carrying the live switch
        with page.expect_download() as dl:
            page.click("#download-video")
        video = tmp_path / dl.value.suggested_filename
        dl.value.save_as(video)
        assert video.suffix == ".mp4" and count_frames(video) >= 3 * len(shown)
        with page.expect_download() as dl:
            page.click("#download-state")
        state = tmp_path / dl.value.suggested_filename
        dl.value.save_as(state)
        saved = load_state(state)
        assert saved["cli"]["switches"] == [f"{at}:{B}"] and saved["video"]["frames"] == count_frames(video)
        # a second page is told why it cannot drive the generation
        other = ctx.new_page()
        other.goto(url)
        other.wait_for_function("document.getElementById('banner').textContent.includes('another page')")
        other.close()
        page.click("#pause")  # resume
        if os.environ.get("FADEMEM_SCREENSHOT") == "1":
            page.wait_for_function(f"{hook}.framesShown >= 200", timeout=240_000)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        # a new policy: a new video whose memory view shows that policy
        page.select_option("#policy", "sink")
        page.click("#restart")
        page.wait_for_function(f"{hook}.chunks.some(c => c.run === 2)")
        assert page.text_content("#memsum").startswith("sink")
        assert not page.evaluate(f"{hook}.errors.filter(e => e.what === 'generation').length")
        browser.close()
