"""Telling a real Ctrl-C from a method that raises ``KeyboardInterrupt`` (or ``SystemExit``) itself.

While :func:`watch_sigint` is active (``run`` and ``tune`` wrap their episode loops in it), SIGINT sets a flag
before raising ``KeyboardInterrupt``. The harness treats any exception escaping a method as that episode's
failure, unless :func:`interrupted` says the user pressed Ctrl-C: then it is re-raised and the run stops
cleanly (finished episodes are already committed). :func:`interrupt_message` is the line the CLI prints then: it
says results were kept only for a command that writes them to a store as it goes.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Mapping

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


STORE_WRITERS = ("run", "tune")  # commands that commit each finished episode to their results store


def interrupt_message(options: Mapping[str, Any]) -> str:
    """The line printed when Ctrl-C stops the command of the parsed command-line ``options`` (``command``,
    ``action``, ``dry_run``, as the CLI's parser names them): "finished episodes are kept" only
    for a command that commits episodes to a store as it goes (``run`` but not ``run --dry-run``, ``tune``,
    ``campaign run``: its shards); ``merge`` keeps what it merged; every other command (``reproduce`` and
    ``compare`` only read a store) wrote nothing that stays."""
    command, action = options.get("command"), options.get("action")
    if command in STORE_WRITERS and not options.get("dry_run", False):
        return "interrupted; finished episodes are kept in the store"
    if command == "campaign" and action == "run":
        return "interrupted; finished episodes are kept in the campaign's shard stores"
    if command == "merge" or (command == "campaign" and action == "merge"):
        return "interrupted; what was merged before it is kept in the store; merge again to add the rest"
    return "interrupted; nothing was written"
