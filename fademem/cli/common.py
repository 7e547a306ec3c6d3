"""Checks shared by the commands, run before any work starts so a bad option never costs a run.

Click's convention throughout: a bad option value is a usage error (``click.BadParameter`` /
``click.UsageError``, exit code 2); a failure while working is a ``click.ClickException`` (exit 1).
Heavy imports (torch) stay inside the functions so ``fademem --help`` stays fast.
"""

from __future__ import annotations

import math
import os
import re

import click

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".m4v")
MAX_SECONDS = 24 * 3600.0  # longer videos are refused up front (a day of video is already weeks of compute)


def available_devices() -> list[str]:
    """The torch devices this process can use, e.g. ``['cpu', 'cuda:0', 'cuda:1']``."""
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def check_device(device, param_hint: str = "--device"):
    """``device`` (a string such as ``cuda``, ``cuda:1``, ``cpu``; None: cuda when available, else
    cpu) as a ``torch.device`` this process can use; otherwise ``click.BadParameter`` naming the
    device and the ones available (exit code 2)."""
    import torch

    if device is None or (isinstance(device, str) and not device.strip()):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device.strip() if isinstance(device, str) else device)
    except (RuntimeError, TypeError, ValueError):
        raise click.BadParameter(f"{device!r} is not a torch device (available: {', '.join(available_devices())})",
                                 param_hint=param_hint) from None
    avail = available_devices()
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise click.BadParameter(f"{device!r}: no CUDA GPU is available to this process (torch "
                                     f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); "
                                     f"available: {', '.join(avail)}", param_hint=param_hint)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise click.BadParameter(f"{device!r}: there are {torch.cuda.device_count()} CUDA device(s); "
                                     f"available: {', '.join(avail)}", param_hint=param_hint)
        return dev
    if dev.type == "mps" and "mps" in avail:
        return dev
    backend = getattr(torch, dev.type, None)
    if dev.type != "mps" and backend is not None and getattr(backend, "is_available", lambda: False)():
        return dev
    raise click.BadParameter(f"{device!r}: no {dev.type} device is available to this process; available: "
                             f"{', '.join(avail)}", param_hint=param_hint)


def check_out_path(path: str, param_hint: str = "--out", suffixes: tuple[str, ...] | None = VIDEO_SUFFIXES) -> str:
    """Check before any work that ``path`` can be written: a known video suffix (``suffixes``; None:
    any), an existing folder, and a file this process can create or overwrite (probed by opening it
    for append; a file that did not exist is removed again). ``click.BadParameter`` otherwise."""
    path = os.fspath(path)
    if suffixes is not None and os.path.splitext(path)[1].lower() not in suffixes:
        raise click.BadParameter(f"{path}: the video format comes from the file suffix; use one of "
                                 f"{', '.join(suffixes)}", param_hint=param_hint)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise click.BadParameter(f"cannot write {path}: directory {parent} does not exist", param_hint=param_hint)
    if os.path.isdir(path):
        raise click.BadParameter(f"cannot write {path}: it is a directory", param_hint=param_hint)
    existed = os.path.exists(path)
    try:
        with open(path, "ab"):
            pass
    except OSError as e:
        raise click.BadParameter(f"cannot write {path}: {e.strerror or e}", param_hint=param_hint) from None
    if not existed:
        try:
            os.remove(path)
        except OSError:
            pass
    return path


def check_seconds(seconds: float, param_hint: str = "--seconds", limit: float = MAX_SECONDS) -> float:
    """A video length in seconds: finite, positive and at most ``limit`` (24 h of video)."""
    if not math.isfinite(seconds) or seconds <= 0:
        raise click.BadParameter(f"must be a positive number of seconds, got {seconds}", param_hint=param_hint)
    if seconds > limit:
        raise click.BadParameter(f"{seconds:g} s is {seconds / 3600:,.0f} hours of video; the limit is "
                                 f"{limit / 3600:g} h ({limit:g} s)", param_hint=param_hint)
    return seconds


def measured_knobs(beta_from: str | None) -> dict:
    """Knob values measured from data, for ``knob=auto`` in memory specs: ``--beta-from FILE`` (a
    ``fademem spectrum`` report) gives ``beta``. A click error naming the file and why when it gives none."""
    return spectrum_measurement(beta_from)[0]


def spectrum_measurement(beta_from: str | None) -> tuple[dict, str]:
    """``measured_knobs`` and one line saying what was measured and where it came from (the file, the
    result it read -- pooled over N clips or one clip --, b with its interval and the verdict)."""
    if beta_from is None:
        return {}, ""
    import json

    from fademem.memory import beta_from_spectrum

    try:
        with open(beta_from) as fh:
            report = json.load(fh)
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"cannot read {beta_from} as a spectrum report (JSON): {exc}",
                                 param_hint="--beta-from") from None
    try:
        beta = beta_from_spectrum(report)
    except ValueError as exc:
        raise click.BadParameter(f"{beta_from}: {exc}", param_hint="--beta-from") from None
    res = report.get("pooled") if ("pooled" in report or "videos" in report) else report
    what = f"pooled over {res['n_clips']} clips" if res.get("n_clips") else (res.get("name") or "one result")
    ci = (res.get("beta") or {}).get("beta_ci")
    b = res.get("b")
    fit = "" if not isinstance(b, (int, float)) else f", b = {b:.3g}"
    note = (f"beta = {beta:.4g} measured: suggested by --beta-from {beta_from} ({what}{fit}, verdict "
            f"{res.get('verdict')}" + (f", beta interval [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "") + ")")
    return {"beta": beta}, note


def resolve_auto_specs(specs: list[str], measured: dict, beta_from: str | None) -> list[str]:
    """Memory specs with ``knob=auto`` replaced by the measured values (``measured_knobs``); a usage error
    when a spec asks for a value nothing measured, or a measurement is given and no spec uses it."""
    from fademem.memory import resolve_auto

    try:
        out = [resolve_auto(s, measured, source=f"--beta-from {beta_from}" if beta_from else "") for s in specs]
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if measured and not any(re.search(r"=\s*auto\s*(,|$)", s, re.IGNORECASE) for s in specs if isinstance(s, str)):
        raise click.UsageError("--beta-from is given but no memory spec asks for it: write beta=auto in a spec, "
                               "e.g. 'fademem:beta=auto'")
    return out


def resolve_memory_option(spec: str, beta_from: str | None, param_hint: str = "--memory") -> str:
    """One ``--memory`` spec with ``knob=auto`` resolved from ``--beta-from`` (as ``fademem bench memory``
    does for its policies), checked like any spec; prints where a measured value came from. Click errors
    (exit 2) before any work: an unreadable report, one without a usable beta, ``auto`` without
    ``--beta-from``, ``--beta-from`` that no ``auto`` uses, or a bad spec."""
    from fademem.memory import build_memory

    measured, note = spectrum_measurement(beta_from)
    [out] = resolve_auto_specs([spec], measured, beta_from)
    out = out if measured else spec  # nothing resolved: the spec as given (a resumed run compares it)
    try:
        build_memory(out)
    except (ValueError, TypeError) as exc:
        raise click.BadParameter(str(exc), param_hint=param_hint) from None
    if note:
        click.echo(f"{note}; memory {out}", err=True)
    return out
