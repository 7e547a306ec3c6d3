"""``fademem serve``: the live page (``fademem.serve``) on a local web server.

Options are checked before the model loads (address, folder, length, policy, device, files): a bad
value is a usage error (exit 2). The port is bound before the model loads too, so a port in use
fails at once.
"""

from __future__ import annotations

import ipaddress
import os
import socket

import click

DEFAULT_PROMPT = ("a large red circle bouncing over a striped blue background , camera pans right and returns "
                  "after 8 seconds")


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. The page has no login: anything but a loopback address lets other "
                   "machines drive the generation.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0: any free port.")
@click.option("--prompt", default=DEFAULT_PROMPT, help="The first prompt (the page switches it live).")
@click.option("--memory", "memory_spec", default="fademem", show_default=True,
              help="The first memory policy spec (the page picks another, starting a new video); 'beta=auto' "
                   "takes the beta of --beta-from.")
@click.option("--beta-from", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A fademem spectrum report (spectrum.json): its suggested beta replaces beta=auto in --memory, "
                   "as for `fademem generate`.")
@click.option("--seconds", type=float, default=600.0, show_default=True,
              help="Length of each video (a new policy starts a new one); at most 24 h.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--buffer", "buffer_s", type=float, default=1.0, show_default=True,
              help="Seconds of video generation may run ahead of playback: a new prompt shows about this late.")
@click.option("--out-dir", type=click.Path(file_okay=False), default="fademem_live", show_default=True,
              help="Folder for the videos and the snapshots the page downloads (mp4 + state; a state "
                   "resumes with `fademem generate --resume FILE`, continuing the mp4 next to it).")
@click.option("--paused", is_flag=True, help="Start paused (the page's Resume starts generating).")
@click.option("--checkpoint", type=click.Path(), default=None,
              help="Causal Wan generator, as for `fademem generate` (with --wan-dir); default: the embedded model.")
@click.option("--lora", type=click.Path(), multiple=True, help="Wan only: LoRA file merged into the generator.")
@click.option("--wan-dir", type=click.Path(), default=None, help="Wan only: Wan2.1 Diffusers directory.")
@click.option("--device", default=None, help="Default: cuda if available, else cpu.")
@click.option("--dtype", type=click.Choice(["bfloat16", "float16", "float32"]), default=None,
              help="Default: bfloat16 on GPU, float32 on CPU.")
@click.option("--height", type=int, default=None, help="Wan only: frame height (multiple of 16) [default: 480].")
@click.option("--width", type=int, default=None, help="Wan only: frame width (multiple of 16) [default: 832].")
@click.option("--context-noise", type=float, default=0.0, show_default=True,
              help="Timestep of the cache-writing pass.")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="Embedded model only: weights file (default: the ones shipped in the package).")
@click.option("--crf", type=click.IntRange(0, 51), default=18, show_default=True, help="x264 quality of the mp4.")
def serve(host, port, prompt, memory_spec, beta_from, seconds, seed, buffer_s, out_dir, paused, checkpoint, lora,
          wan_dir, device, dtype, height, width, context_noise, weights, crf):
    """A live page: watch the video as it is generated, switch prompts and policies, see the memory.

    Frames stream to the page over a WebSocket (PNG for the embedded model's 64x64 frames, JPEG for
    larger ones) at the model's fps; a new prompt takes effect at the next chunk (KV-recache).
    """
    from fademem.cli.common import check_device, check_seconds, resolve_memory_option

    try:
        import uvicorn

        from fademem.serve.app import create_app
    except ImportError as e:
        raise click.ClickException(f"fademem serve needs the web server packages ({e.name} is missing): "
                                   "pip install 'fademem[serve]'") from None
    from fademem.serve import LiveRunner, embedded_model, wan_model

    check_seconds(seconds)
    if not 0 <= buffer_s <= 60:
        raise click.BadParameter(f"must be between 0 and 60 seconds, got {buffer_s}", param_hint="--buffer")
    if not prompt.strip():
        raise click.BadParameter("empty prompt", param_hint="--prompt")
    memory_spec = resolve_memory_option(memory_spec, beta_from)
    is_embedded = checkpoint is None and wan_dir is None
    if is_embedded:
        if lora:
            raise click.UsageError("--lora is for a real generator (--checkpoint); the embedded model takes none")
        if height is not None or width is not None:
            raise click.UsageError("--height/--width are for a Wan --checkpoint; the embedded model has its own size")
        if weights is not None and not os.path.isfile(weights):
            raise click.BadParameter(f"embedded-model weights file not found: {weights}", param_hint="--weights")
    else:
        if checkpoint is None or wan_dir is None:
            raise click.UsageError("--checkpoint and --wan-dir go together (the generator, and the Wan2.1 "
                                   "text encoder + VAE it runs with)")
        if weights is not None:
            raise click.UsageError("--weights is for the embedded model; a real generator takes --checkpoint")
        height, width = height or 480, width or 832
        if height <= 0 or width <= 0 or height % 16 or width % 16:
            raise click.BadParameter(f"height and width must be positive multiples of 16, got {height}x{width}",
                                     param_hint="--height/--width")
    dev = check_device(device)
    dtype = dtype or ("float32" if dev.type == "cpu" else "bfloat16")
    _check_out_dir(out_dir)
    sock = _bind(host, port)
    try:
        if is_embedded:
            model = embedded_model(weights, device=dev, dtype=dtype, context_noise=context_noise)
        else:
            model = wan_model(checkpoint, wan_dir, lora=lora, device=dev, dtype=dtype, height=height, width=width,
                              context_noise=context_noise)
    except (FileNotFoundError, ValueError) as e:
        sock.close()
        raise click.ClickException(str(e)) from None
    try:
        runner = LiveRunner(model, prompt, memory_spec, seconds=seconds, seed=seed, out_dir=out_dir,
                            buffer_s=buffer_s, crf=crf, autostart=not paused)
    except ValueError as e:  # a prompt outside the embedded model's grammar
        sock.close()
        raise click.BadParameter(str(e), param_hint="--prompt") from None
    if not _loopback(host):
        click.echo(f"warning: listening on {host}: the page has no login, anyone who reaches this address can "
                   "drive the generation", err=True)
    shown = sock.getsockname()
    url_host = f"[{shown[0]}]" if ":" in shown[0] else shown[0]
    click.echo(f"fademem live page: http://{url_host}:{shown[1]}/  ({model.name} model on {dev}; Ctrl-C stops)",
               err=True)
    server = uvicorn.Server(uvicorn.Config(create_app(runner), log_level="warning"))
    server.run(sockets=[sock])


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _check_out_dir(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise click.BadParameter(f"cannot create {path}: {e.strerror or e}", param_hint="--out-dir") from None
    if not os.access(path, os.W_OK):
        raise click.BadParameter(f"cannot write in {path}", param_hint="--out-dir")


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); a usage error for a bad address or a port in use."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET  # a host name: resolved by bind
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise click.BadParameter(f"cannot listen on {host}:{port}: {e.strerror or e}", param_hint="--host/--port") \
            from None
    sock.listen(16)
    sock.set_inheritable(True)
    return sock
