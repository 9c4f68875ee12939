"""A stop signal whose exception Python swallowed is raised again at the next safe point.

The CLI turns SIGTERM and Ctrl-C into exceptions raised wherever the main thread is. If that is a
``__del__`` or a weakref callback (the garbage collector runs them at any allocation), Python only prints
"Exception ignored" and goes on, and a job its scheduler or its user stopped would keep training. So the
handler also records the signal, and the training loop calls :func:`check` once per batch (a global read).
"""

from __future__ import annotations

_pending: type[BaseException] | None = None


def record(exc: type[BaseException]) -> None:
    """Remember a stop until it has been raised where it cannot be swallowed."""
    global _pending
    _pending = exc


def clear() -> None:
    global _pending
    _pending = None


def check() -> None:
    """Raise the recorded stop, once."""
    global _pending
    if _pending is not None:
        exc, _pending = _pending, None
        raise exc()
