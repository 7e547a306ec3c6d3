"""``fademem generate --state FILE`` / ``--resume FILE``: stop a generation and continue it exactly.

A state file (``fademem.pipeline.state``) holds the generation session's state (memory of every
layer, RNG states, chunk index, prompt plan, recache ring, decoder stream state), the identity of
the model, and the command's own options under ``cli``, plus the video file and its frame count
under ``video``. The video is written in segments that are appended at each save
(``fademem.pipeline.segments``), so it is a finished, playable file whenever the state is saved.

Stops: after the current chunk on Ctrl-C (exit 130) or SIGTERM (exit 143); a second Ctrl-C stops at
once without saving. ``--stop-after-chunks N`` (hidden, for tests) stops after N chunks (exit 0).
"""

from __future__ import annotations

import os
import signal

import click

RESUME_FIXED = ("memory_spec", "checkpoint", "lora", "wan_dir", "weights", "seed", "dtype", "height", "width",
                "context_noise", "opening", "crf", "out", "prompts_file", "image", "video", "video_seconds")


class StateRun:
    """How the command runs each video: plain (no state), with a state file, or resuming one."""

    def __init__(self, state_path=None, every: int = 0, stop_after=None, crf: int = 18, resume_state=None,
                 new_switches: bool = False):
        self.state_path, self.every, self.stop_after, self.crf = state_path, every, stop_after, crf
        self.resume_state, self.new_switches = resume_state, new_switches
        self.seconds = None  # the video length asked for (saved, the default length of a resumed run)

    @classmethod
    def fresh(cls, state_path, every, stop_after, n_prompts: int, crf: int) -> StateRun:
        from fademem.cli.common import check_out_path

        if state_path is None:
            if every or stop_after:
                raise click.UsageError("--state-every / --stop-after-chunks need --state FILE")
            return cls(crf=crf)
        if n_prompts != 1:
            raise click.UsageError("--state saves one generation: use --prompt, not a --prompts file of "
                                   f"{n_prompts} prompts")
        check_out_path(state_path, param_hint="--state", suffixes=None)
        return cls(state_path, every, stop_after, crf)

    def generate(self, pipe, prompt, num_frames, out, memory_spec, seed, switches, latent_shape, prefix=None,
                 files=(), cli=None):
        if self.state_path is None:
            return pipe.generate_video(prompt, num_frames, out=out, memory=memory_spec, seed=seed, switches=switches,
                                       latent_shape=latent_shape, progress=True, prefix=prefix, crf=self.crf)
        from fademem.pipeline.segments import SegmentedVideo

        state = self.resume_state
        plan = switches
        if state is not None:
            plan = self._resumed_plan(state, switches, pipe.frames_per_chunk)
        session = pipe.session(prompt, num_frames, memory=memory_spec, seed=seed, switches=plan,
                               latent_shape=latent_shape, prefix=prefix, model_files=files)
        if state is not None:
            session.load_state_dict(state)
        video = SegmentedVideo(out, pipe.fps, crf=self.crf, frames=state["video"]["frames"] if state else 0)
        meta = dict(cli or {}, prompt=prompt, memory=memory_spec, seed=seed, fps=pipe.fps, out=os.path.abspath(out),
                    device=str(session.device), dtype=str(session.dtype).replace("torch.", ""),
                    context_noise=pipe.context_noise, crf=self.crf, seconds=self.seconds)
        _run(session, video, self.state_path, self.every, self.stop_after, meta)

    def _resumed_plan(self, state, switches, fpc):
        start = state["start_frame"]
        rounded = [(fpc * -(-f // fpc), p) for f, p in switches]
        if self.new_switches and any(f < start for f, _ in rounded):
            raise click.BadParameter(f"a switch before the resume point (latent frame {start}) cannot change: "
                                     f"{[f for f, _ in rounded if f < start]}", param_hint="--switch")
        past = [(f, p) for f, p in state["plan"] if f < start]
        return past + [(f, p) for f, p in rounded if f >= start]


def _run(session, video, state_path, every, stop_after, meta) -> None:
    from fademem.pipeline.state import save_state

    stopped = {"sig": None}

    def on_signal(signum, _frame):
        if stopped["sig"] is not None:
            raise KeyboardInterrupt
        stopped["sig"] = signum
        click.echo(f"\n{signal.Signals(signum).name}: finishing the current chunk, then saving the state to "
                   f"{state_path} (again to stop at once, without saving)", err=True)

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not the main thread: no signal handling
            pass

    def write(chunks):
        for c in chunks:
            video.write(c.frames[0].numpy())

    session.state_dict()  # a session that cannot be saved (e.g. a decoder without stream_state) fails before work

    def save():
        write(session.drain())
        frames = video.commit()
        state = session.state_dict()
        meta["switches"] = [f"{f}:{p[0]}" for f, p in session.plan]
        save_state(state_path, {**state, "cli": meta,
                                "video": {"path": meta["out"], "frames": frames}})

    run = 0
    fpc = session.pipe.frames_per_chunk
    try:
        from tqdm.auto import tqdm

        with tqdm(total=session.num_frames // fpc, initial=session.index, desc="chunks", unit="chunk") as bar:
            while not session.done:
                write(session.step())
                bar.update(1)
                run += 1
                stop = stopped["sig"] is not None or (stop_after is not None and run >= stop_after)
                if stop or session.done or (every and session.index % every == 0):
                    save()
                if stop and not session.done:
                    click.echo(f"stopped after chunk {session.index} ({session.start} latent frames); "
                               f"{video.path} holds {video.frames} frames; continue with: "
                               f"fademem generate --resume {state_path}", err=True)
                    break
    except BaseException:
        video.abort()
        raise
    finally:
        session.close()
        for sig, h in old.items():
            signal.signal(sig, h)
    if stopped["sig"] is not None:
        raise SystemExit(128 + int(stopped["sig"]))


def resume(ctx: click.Context, resume_path, state_path, every, stop_after) -> None:
    """``fademem generate --resume FILE``: rebuild the command from the state and continue."""
    from click.core import ParameterSource

    from fademem.cli.common import check_device, check_seconds, resolve_memory_option
    from fademem.cli.generate import _fast_options, _generate_embedded, _generate_wan
    from fademem.cli.generate_input import StartFrom
    from fademem.pipeline.state import StateError, load_state, read_header
    from fademem.pipeline.video_io import count_frames

    try:
        read_header(resume_path)
    except (FileNotFoundError, StateError) as e:
        raise click.BadParameter(str(e), param_hint="--resume") from None
    p = ctx.params
    given = {k for k in p if ctx.get_parameter_source(k) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}
    dev = check_device(p["device"]) if "device" in given else None
    state = load_state(resume_path, device=dev)
    cli = state.get("cli", {})
    if dev is None:
        dev = check_device(cli.get("device"))
    saved = {"memory_spec": cli.get("memory"), "checkpoint": cli.get("checkpoint"),
             "lora": tuple(cli.get("lora") or ()),
             "wan_dir": cli.get("wan_dir"), "weights": cli.get("weights"), "seed": cli.get("seed"),
             "dtype": cli.get("dtype"), "height": cli.get("height"), "width": cli.get("width"),
             "context_noise": cli.get("context_noise"), "opening": cli.get("opening", 0.0), "crf": cli.get("crf"),
             "out": cli.get("out"), "prompts_file": None, "image": cli.get("image"), "video": cli.get("video"),
             "video_seconds": cli.get("video_seconds")}
    flag = {prm.name: prm.opts[0] for prm in ctx.command.params}
    for k in RESUME_FIXED:
        if k not in given:
            continue
        mine, theirs = p[k], saved[k]
        if k in ("checkpoint", "wan_dir", "weights", "out", "image", "video") and mine is not None:
            mine = os.path.abspath(mine)
        if k == "lora":
            mine = tuple(os.path.abspath(x) for x in mine)
        if mine != theirs:
            raise click.UsageError(f"--resume continues the saved generation: {flag[k]} {mine!r} differs from the "
                                   f"state's {theirs!r} (leave it out)")
    seconds = p["seconds"] if "seconds" in given else cli.get("seconds")
    check_seconds(seconds)
    start = state["start_frame"]
    specs = list(p["switch_specs"]) if p["switch_specs"] else list(cli.get("switches", []))
    if p["prompt"] is not None:
        if not p["prompt"].strip():
            raise click.BadParameter("empty prompt", param_hint="--prompt")
        specs = [f"{start}:{p['prompt']}"] + specs
    resolve_memory_option(saved["memory_spec"], None)
    have = count_frames(saved["out"]) if os.path.isfile(saved["out"] or "") else 0
    if have != state["video"]["frames"]:
        raise click.BadParameter(f"the state's video {saved['out']} has {have} frames, the state recorded "
                                 f"{state['video']['frames']}: it was changed or is not this state's video",
                                 param_hint="--resume")
    run = StateRun(state_path or resume_path, every, stop_after, saved["crf"], state, bool(p["switch_specs"]))
    run.seconds = seconds
    args = dict(prompts=[cli["prompt"]], seconds=seconds, memory_spec=saved["memory_spec"], paths=[saved["out"]],
                seed=saved["seed"], switch_specs=specs, device=dev, dtype=saved["dtype"],
                context_noise=saved["context_noise"], height=saved["height"], width=saved["width"], run=run)
    click.echo(f"resuming {resume_path}: {start} latent frames done, {state['video']['frames']} video frames in "
               f"{saved['out']}", err=True)
    start_from = StartFrom.from_state(cli)
    # the speed options as a fresh run takes them (compiled by default on CUDA, as the run being resumed was)
    fast = _fast_options(p["compile_mode"], p["precision"], p["low_memory"], dev, cli.get("kind") != "wan")
    if fast["fp8"]:
        raise click.UsageError("--resume is not available with --precision fp8: the state continues the "
                               "generator in its dtype")
    if cli.get("kind") == "wan":
        _generate_wan(checkpoint=saved["checkpoint"], lora=saved["lora"], wan_dir=saved["wan_dir"], start=start_from,
                      fast=fast, **args)
    else:
        _generate_embedded(weights=saved["weights"], opening=saved["opening"], start=start_from,
                           lora=saved.get("lora") or (), **args)
