"""One live generation, driven from a web page: a worker thread steps a ``GenerationSession`` (the
same chunk loop ``fademem generate`` runs), in real time, and applies what the page asks between
chunks: a new prompt (``GenerationSession.switch_prompt``: LongLive's KV-recache switch at the next
chunk), a new policy (a new video), pause / resume, and snapshots (the mp4 so far and a state file
``fademem generate --resume`` continues).

Real time: generation may run at most ``buffer_s`` seconds of video ahead of the wall clock, so a
new prompt shows about that long after it is typed, whatever the hardware's speed. Everything the
page sees goes through ``emit``: JSON-able dicts and, per decoded frame, the image bytes.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable

from fademem.serve.memview import Layout, Shadows
from fademem.serve.models import LiveModel

log = logging.getLogger(__name__)
PNG_MAX_PIXELS = 256 * 256  # small frames go losslessly as PNG; larger ones as JPEG (a tenth of the bytes)


class NoFrames(RuntimeError):
    """Nothing generated yet to download."""


def check_policy(spec) -> str:
    """``spec``, stripped, once the registry builds it (ValueError naming the problem otherwise)."""
    from fademem.memory import build_memory

    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("empty memory policy: pick one, e.g. 'fademem'")
    try:
        build_memory(spec.strip())
        return spec.strip()
    except TypeError as e:  # a knob the policy's constructor rejects
        raise ValueError(str(e)) from None


def encode_frame(frame) -> tuple[bytes, str]:
    """uint8 [H, W, 3] -> (image bytes, mime type)."""
    from PIL import Image

    im = Image.fromarray(frame)
    buf = io.BytesIO()
    if frame.shape[0] * frame.shape[1] <= PNG_MAX_PIXELS:
        im.save(buf, "PNG", compress_level=1)
        return buf.getvalue(), "image/png"
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue(), "image/jpeg"


class LiveRunner:
    def __init__(self, model: LiveModel, prompt: str, policy: str = "fademem", *, seconds: float = 600.0,
                 seed: int = 0, out_dir: str = "fademem_live", buffer_s: float = 1.0, crf: int = 18,
                 autostart: bool = True):
        self.model = model
        self.prompt = model.check_prompt(prompt)
        self.policy = check_policy(policy)
        self.seconds, self.seed, self.crf, self.buffer_s = float(seconds), int(seed), int(crf), float(buffer_s)
        self.out_dir = os.path.abspath(out_dir)
        self.paused = not autostart
        self.status = "idle"
        self.session = self.pipe = self.video = self.layout = self.shadows = None
        self.run = 0
        self.gen_fps: float | None = None  # frames per second of compute (EMA over chunks)
        self.totals = [0, 0.0]  # frames, compute seconds of this process
        self._want_policy: str | None = self.policy  # applied by the worker before the next chunk
        self._want_prompt: str | None = None
        self._cond = threading.Condition()
        self._lock = threading.Lock()  # the session and its video: a chunk or a snapshot at a time
        self._emit: Callable | None = None
        self._stop = False
        self._thread: threading.Thread | None = None
        self._t0 = 0.0  # wall clock of video time 0 (pacing)
        self._video_s = 0.0
        self._snap: tuple | None = None

    # -- life -----------------------------------------------------------------------------------
    def start(self) -> None:
        os.makedirs(self.out_dir, exist_ok=True)
        self._thread = threading.Thread(target=self._loop, name="fademem-live", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._close()

    def attach(self, emit: Callable) -> bool:
        """The page that receives events; False when another one is attached."""
        with self._cond:
            if self._emit is not None:
                return False
            self._emit = emit
            self._t0 = time.monotonic() - self._video_s  # the page starts with an empty buffer
            self._cond.notify_all()
            return True

    def detach(self) -> None:
        with self._cond:
            self._emit = None

    def send(self, msg) -> None:
        emit = self._emit
        if emit is not None:
            emit(msg)

    # -- what the page asks -----------------------------------------------------------------------
    def hello(self) -> dict:
        """What a page joining now needs (waits for the chunk in progress: call it off the event loop)."""
        from fademem.memory import REGISTRY

        with self._lock:
            memory = self._memory_message(full=True)
        m = self.model
        policies = [{"name": n, "doc": (REGISTRY[n].__doc__ or "").strip().split("\n")[0]} for n in sorted(REGISTRY)]
        return {"type": "hello", "model": {"name": m.name, "fps": m.fps, "frame_size": list(m.frame_size),
                                           "grammar": m.grammar, "examples": list(m.examples)},
                "policies": policies, "prompt": self.prompt, "policy": self.policy, "paused": self.paused,
                "status": self.status, "run": self.run, "buffer_s": self.buffer_s, **memory}

    def command(self, msg) -> dict:
        """Apply one request of the page; returns the reply (``type: error`` for a bad request)."""
        try:
            kind = msg.get("type") if isinstance(msg, dict) else None
            if kind == "prompt":
                prompt = self.model.check_prompt(msg.get("prompt"))
                with self._cond:
                    self._want_prompt = prompt
                    self._cond.notify_all()
                return {"type": "ack", "what": "prompt", "prompt": prompt,
                        "message": "the new prompt takes effect at the next chunk"}
            if kind == "policy":
                spec = check_policy(msg.get("policy"))
                with self._cond:
                    self._want_policy = spec
                    self.paused = False  # asking for a new video means: run it
                    self._cond.notify_all()
                return {"type": "ack", "what": "policy", "policy": spec, "message": f"new video with {spec}"}
            if kind in ("pause", "resume"):
                with self._cond:
                    self.paused = kind == "pause"
                    self._t0 = time.monotonic() - self._video_s  # generation picks up from now on resume
                    self._cond.notify_all()
                self._set_status()
                return {"type": "ack", "what": kind}
            raise ValueError(f"unknown request {kind!r}: expected prompt, policy, pause or resume")
        except ValueError as e:
            return {"type": "error", "what": (msg.get("type") if isinstance(msg, dict) else None), "message": str(e)}

    def snapshot(self) -> tuple[str, str]:
        """(mp4, state file) of the video so far, as ``fademem generate --state`` writes them: the state
        resumes with ``fademem generate --resume STATE``, continuing that mp4. Waits for the chunk in
        progress; NoFrames before the first chunk."""
        from fademem.pipeline.state import save_state

        with self._lock:
            s = self.session
            if s is None or s.index == 0:
                raise NoFrames("no frames generated yet")
            key = (self.run, s.index)
            if self._snap is not None and self._snap[0] == key:
                return self._snap[1:]
            self._write(s.drain())
            frames = self.video.commit()
            stem = os.path.join(self.out_dir, f"live{self.run:03d}_chunk{s.index:05d}")
            mp4, state_path = stem + ".mp4", stem + ".state.safetensors"
            shutil.copyfile(self.video.path, mp4)  # the state's own video: the live one keeps growing
            state = s.state_dict()
            pipe = self.pipe
            meta = dict(self.model.cli, prompt=s.prompts[0], memory=self.policy, seed=self.seed, fps=pipe.fps,
                        out=mp4, device=str(s.device), dtype=str(s.dtype).replace("torch.", ""),
                        context_noise=pipe.context_noise, crf=self.crf, seconds=self.seconds,
                        switches=[f"{f}:{p[0]}" for f, p in s.plan])
            save_state(state_path, {**state, "cli": meta, "video": {"path": mp4, "frames": frames}})
            self._snap = (key, mp4, state_path)
            return mp4, state_path

    # -- the worker -------------------------------------------------------------------------------
    def _runnable(self) -> bool:
        if self._emit is None or self.paused:
            return False
        return self._want_policy is not None or self._want_prompt is not None or (
            self.session is not None and not self.session.done)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._runnable():
                    self._set_status()
                    self._cond.wait()
                if self._stop:
                    return
                policy, prompt = self._want_policy, self._want_prompt
                self._want_policy = self._want_prompt = None
                due = self._t0 + self._video_s - self.buffer_s
                wait = due - time.monotonic()
                if policy is None and prompt is None and wait > 0:  # ahead of real time
                    self._cond.wait(wait)
                    continue
            try:
                with self._lock:
                    if policy is not None or (prompt is not None and (self.session is None or self.session.index == 0
                                                                      or self.session.done)):
                        self._new_session(policy or self.policy, prompt or self.prompt)
                    elif prompt is not None:
                        at = self.session.switch_prompt(prompt)
                        self.prompt = prompt
                        self.send({"type": "switch", "at": at, "prompt": prompt,
                                   "seconds": at * self.model.temporal_stride / self.model.fps})
                self._step()
            except Exception as e:  # a failed chunk must not take the server down: report it and wait
                log.exception("live generation failed")
                with self._cond:
                    self.paused = True
                self.status = "failed"
                self.send({"type": "error", "what": "generation", "message": f"{type(e).__name__}: {e}"})
                self._set_status(force=True)

    def _set_status(self, force: bool = False) -> None:
        s = self.session
        status = ("failed" if self.status == "failed" and self.paused else "paused" if self.paused
                  else "finished" if s is not None and s.done else "idle" if self._emit is None else "generating")
        if status != self.status or force:
            self.status = status
            self.send({"type": "status", "status": status, "paused": self.paused})

    def _close(self) -> None:
        if self.session is None:
            return
        try:
            self._write(self.session.drain())
            self.video.commit()  # the run's mp4 stays, playable
        except Exception:  # the video of a failed run is not worth failing a restart for
            log.exception("could not finish %s", self.video.path)
            self.video.abort()
        self.session.close()

    def _new_session(self, policy: str, prompt: str) -> None:
        from fademem.pipeline import latent_frames_for_seconds
        from fademem.pipeline.segments import SegmentedVideo

        m = self.model
        pipe = m.build(policy)
        frames = latent_frames_for_seconds(self.seconds, fps=m.fps, temporal_stride=m.temporal_stride,
                                           frames_per_chunk=pipe.frames_per_chunk)
        session = pipe.session(prompt, frames, memory=policy, seed=self.seed, latent_shape=m.latent_shape,
                               model_files=m.files)
        self._close()
        self.run += 1
        self.session, self.pipe, self.policy, self.prompt = session, pipe, policy, prompt
        self.video = SegmentedVideo(os.path.join(self.out_dir, f"live{self.run:03d}.mp4"), pipe.fps, crf=self.crf)
        self.layout, self.shadows = Layout(), Shadows(policy, pipe.frames_per_chunk)
        self._video_s, self._t0 = 0.0, time.monotonic()
        self.send({"type": "restart", "run": self.run, "policy": self.policy, "prompt": prompt,
                   "seconds": self.seconds, **self._memory_message(full=True)})
        self._set_status(force=True)

    def _write(self, chunks) -> list:
        for c in chunks:
            self.video.write(c.frames[0].numpy())
        return chunks

    def _step(self) -> None:
        t = time.perf_counter()
        with self._lock:
            s = self.session
            seen = s.stack.frames_seen
            chunks = self._write(s.step())
            ended = self.layout.update(s.stack.frames_seen, s.stack.entries())
            ended_shadow = self.shadows.insert(seen, s.stack.frames_seen - seen)
            out = []
            for c in chunks:
                images = [encode_frame(f) for f in c.frames[0].numpy()]
                out.append(({"type": "chunk", "run": self.run, "index": c.index, "start": c.start, "end": c.end,
                             "frames": len(images), "mime": images[0][1] if images else None,
                             "prompt": c.prompts[0], "recached": c.recached}, images))
        dt = time.perf_counter() - t
        n = sum(len(images) for _, images in out)
        if n:
            rate = n / dt
            self.gen_fps = rate if self.gen_fps is None else 0.7 * self.gen_fps + 0.3 * rate
            self.totals[0] += n
            self.totals[1] += dt
        with self._cond:
            self._video_s += n / self.model.fps
        for meta, images in out:
            self.send({**meta, "gen_fps": self.gen_fps, "video_s": self._video_s})
            for data, _ in images:
                self.send(data)
        self.send({"type": "memory", **self._memory_message(ended, ended_shadow)})
        self._set_status()

    def _memory_message(self, ended=None, ended_shadow=None, full: bool = False) -> dict:
        s = self.session
        if s is None:
            return {"memory": None, "compare": []}
        live = {"spec": self.policy, "nbytes": s.stack.nbytes(), "frames_seen": s.stack.frames_seen,
                **self.layout.message(None if full else ended)}
        return {"memory": live, "compare": self.shadows.message(None if full else ended_shadow)}
