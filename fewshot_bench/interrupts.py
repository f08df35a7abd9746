"""Telling a real Ctrl-C from a method that raises ``KeyboardInterrupt`` (or ``SystemExit``) itself.

While :func:`watch_sigint` is active (``run`` and ``tune`` wrap their episode loops in it), SIGINT sets a flag
before raising ``KeyboardInterrupt``. The harness treats any exception escaping a method as that episode's
failure, unless :func:`interrupted` says the user pressed Ctrl-C: then it is re-raised and the run stops
cleanly (finished episodes are already committed).
"""
from __future__ import annotations

import contextlib
import signal
import threading

_state = {"interrupted": False, "watching": False}


def interrupted() -> bool:
    """Whether a real SIGINT arrived while :func:`watch_sigint` was active (or no watcher is installed, in
    which case every KeyboardInterrupt counts as real)."""
    return _state["interrupted"] or not _state["watching"]


@contextlib.contextmanager
def watch_sigint():
    """Record real SIGINTs (main thread only; elsewhere every KeyboardInterrupt counts as real)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        _state["interrupted"] = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    before = dict(_state)
    _state.update(interrupted=False, watching=True)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _state.update(before)


def is_method_failure(exc: BaseException) -> bool:
    """Whether ``exc``, escaping a method's code, is that method's failure (to record) rather than the user's
    Ctrl-C (to obey): every Exception, SystemExit and GeneratorExit, and a KeyboardInterrupt no signal sent."""
    if isinstance(exc, KeyboardInterrupt):
        return not interrupted()
    return isinstance(exc, (Exception, SystemExit, GeneratorExit))
