"""``fademem serve``: a local web page that watches a video being generated, switches prompts
(LongLive's KV-recache switch at the next chunk) and policies live, and shows what the memory holds.

``runner.LiveRunner`` steps the one ``GenerationSession`` (the chunk loop ``fademem generate`` runs)
in real time; ``memview`` turns ``Memory.entries()`` into the page's layout; ``app.create_app`` is
the ASGI app (Starlette; the ``serve`` extra); ``models`` wraps the embedded model or a Wan
checkpoint. The page itself is package data in ``static/``.
"""

from fademem.serve.models import LiveModel, embedded_model, wan_model
from fademem.serve.runner import LiveRunner, NoFrames, check_policy

__all__ = ["LiveModel", "LiveRunner", "NoFrames", "check_policy", "embedded_model", "wan_model"]
