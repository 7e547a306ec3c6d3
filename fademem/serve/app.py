"""The web app of ``fademem serve`` (Starlette, served by uvicorn).

Routes:

* ``GET /``, ``/app.js``: the page (package data in ``fademem/serve/static``, no outside resources);
* ``WS /ws``: the live channel of the one page allowed at a time. The server sends JSON text
  messages (``hello``, ``restart``, ``chunk``, ``memory``, ``switch``, ``status``, ``ack``, ``error``)
  and, after each ``chunk`` message, that chunk's frames as binary messages, one image each
  (``chunk.mime``: PNG for small frames, JPEG for large ones). The page sends JSON requests:
  ``{"type": "prompt", "prompt": ...}``, ``{"type": "policy", "policy": "fademem:budget=12"}``,
  ``{"type": "pause"}``, ``{"type": "resume"}``; a bad one gets ``{"type": "error", "message": ...}``.
  A second page is told another one is connected and closed with code 4409;
* ``GET /download/video.mp4``, ``/download/state.safetensors``: the video so far and a state that
  ``fademem generate --resume`` continues (409 with ``{"error": ...}`` before the first chunk).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from importlib import resources

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from fademem.serve.runner import LiveRunner, NoFrames

log = logging.getLogger(__name__)
BUSY_CODE = 4409  # WebSocket close code (4000-4999: the application's own) for "another page is connected"
BUSY = ("another page is already connected to this server: one page drives the generation at a time. "
        "Close the other tab (or stop it), then reload this one.")
BAD_JSON = 'requests are JSON objects such as {"type": "prompt", "prompt": "..."}'
DOWNLOADS = {"video.mp4": (0, "video/mp4"), "state.safetensors": (1, "application/octet-stream")}


def _static(name: str) -> str:
    return (resources.files("fademem.serve") / "static" / name).read_text(encoding="utf-8")


def create_app(runner: LiveRunner) -> Starlette:
    """The app around ``runner`` (started and stopped with the app's lifespan)."""

    async def index(request: Request) -> Response:
        return HTMLResponse(_static("index.html"), headers={"Cache-Control": "no-store"})

    async def script(request: Request) -> Response:
        return Response(_static("app.js"), media_type="text/javascript", headers={"Cache-Control": "no-store"})

    async def download(request: Request) -> Response:
        what = request.path_params["what"]
        if what not in DOWNLOADS:
            return JSONResponse({"error": f"no download '{what}'; there are {', '.join(DOWNLOADS)}"}, status_code=404)
        try:
            paths = await run_in_threadpool(runner.snapshot)
        except NoFrames as e:
            return JSONResponse({"error": f"{e}: wait for the first frames"}, status_code=409)
        except (ValueError, OSError) as e:  # e.g. a decoder whose streaming state cannot be saved
            log.exception("snapshot failed")
            return JSONResponse({"error": f"cannot save the {what}: {e}"}, status_code=409)
        index_, mime = DOWNLOADS[what]
        path = paths[index_]
        return FileResponse(path, media_type=mime, filename=os.path.basename(path))

    async def live(ws: WebSocket) -> None:
        await ws.accept()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        if not runner.attach(lambda msg: loop.call_soon_threadsafe(queue.put_nowait, msg)):
            await ws.send_json({"type": "error", "what": "connect", "message": BUSY})
            await ws.close(code=BUSY_CODE, reason="another page is connected")
            return
        sender = None
        try:
            await ws.send_json(await run_in_threadpool(runner.hello))
            sender = asyncio.create_task(_pump(ws, queue))
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                try:
                    req = json.loads(msg["text"]) if msg.get("text") is not None else None
                except json.JSONDecodeError:
                    req = None
                queue.put_nowait(runner.command(req) if isinstance(req, dict)
                                 else {"type": "error", "what": None, "message": BAD_JSON})
        except WebSocketDisconnect:
            pass
        finally:
            runner.detach()
            if sender is not None:
                sender.cancel()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        runner.start()
        try:
            yield
        finally:
            await run_in_threadpool(runner.stop)

    routes = [Route("/", index), Route("/app.js", script), Route("/download/{what}", download),
              WebSocketRoute("/ws", live)]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.runner = runner
    return app


async def _pump(ws: WebSocket, queue: asyncio.Queue) -> None:
    """Runner events to the page, in order: frames as binary messages, the rest as JSON."""
    try:
        while True:
            msg = await queue.get()
            if isinstance(msg, bytes):
                await ws.send_bytes(msg)
            else:
                await ws.send_json(msg)
    except (WebSocketDisconnect, RuntimeError, OSError):  # the page went away: the receive loop ends too
        pass
