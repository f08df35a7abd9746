"""Progress of long loops (episodes of a run, meta-training steps) that also works in log files.

On a terminal a tqdm bar is drawn. When the output is not a terminal (a file, ``nohup``, a CI log, a
batch scheduler) tqdm would stay silent, so :class:`Progress` logs one INFO line on the
``fewshot_bench.core.progress`` logger every ``every`` units or ``interval`` seconds, whichever comes first,
and one when it closes::

    episodes 12/40 (30%) | full_ft | banking77/fold1/5way1shot15q | elapsed 1:02 | ETA 2:25

The ETA extrapolates the rate of the units done in this process; units that were already done before it
started (a resumed run's stored episodes) are counted with :meth:`Progress.skip` and do not speed it up. Given
``costs`` (each unit's estimated seconds, e.g. the dry run's per method and cell, passed to ``update``/``skip``
with the unit), the ETA is the estimated seconds of the units left, scaled by measured over estimated seconds of
the units done: a run whose cheap units come first does not promise an early end.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Callable, Optional, TextIO

from tqdm.auto import tqdm

log = logging.getLogger("fewshot_bench.core.progress")

DEFAULT_LINES = 20  # without ``every``: a line every 5% of the total


class Progress:
    """Count ``total`` units of work; a bar on a terminal, log lines otherwise. Usable as a context manager."""

    def __init__(self, total: int, desc: str, *, unit: str = "ep", every: int = 0, interval: float = 60.0,
                 stream: Optional[TextIO] = None, clock: Callable[[], float] = time.monotonic,
                 total_cost: Optional[float] = None):
        stream = stream if stream is not None else sys.stderr
        self.total, self.desc, self.clock = int(total), desc, clock
        self.total_cost, self.cost_done, self.cost_skipped = total_cost, 0.0, 0.0  # estimated seconds
        self.every = every if every > 0 else max(1, self.total // DEFAULT_LINES)
        self.interval = interval
        self.done = self.skipped = 0
        self.current = ""
        self.started = self.last_line_at = clock()
        self.last_line_done = 0
        is_terminal = bool(getattr(stream, "isatty", lambda: False)())
        self.bar = tqdm(total=self.total, desc=desc, unit=unit, dynamic_ncols=True, file=stream) if is_terminal else None

    def set_current(self, text: str) -> None:
        """What is being worked on now (e.g. ``method | cell``), shown on the bar and in the lines."""
        self.current = text
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)

    def update(self, n: int = 1, cost: float = 0.0) -> None:
        """``n`` units finished by work done now (``cost``: their estimated seconds, with ``total_cost``)."""
        self.cost_done += cost
        self._advance(n)

    def skip(self, n: int = 1, cost: float = 0.0) -> None:
        """``n`` units that were already done (resumed); they count toward done/total, not toward the rate."""
        self.skipped += n
        self.cost_skipped += cost
        self._advance(n)

    def _advance(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = self.clock()
        if self.done - self.last_line_done >= self.every or now - self.last_line_at >= self.interval:
            self._line(now)

    def line(self) -> str:
        """The progress line as it would be logged now."""
        return self._format(self.clock())

    def _format(self, now: float) -> str:
        elapsed = now - self.started
        worked = self.done - self.skipped
        remaining = max(self.total - self.done, 0)
        if remaining == 0:
            eta = tqdm.format_interval(0)
        elif self.total_cost and self.cost_done > 0:  # estimated seconds left x measured / estimated so far
            left = max(self.total_cost - self.cost_done - self.cost_skipped, 0.0)
            eta = tqdm.format_interval(left * elapsed / self.cost_done)
        elif worked > 0:
            eta = tqdm.format_interval(elapsed / worked * remaining)
        else:
            eta = "?"
        percent = f"{100 * self.done / self.total:.0f}%" if self.total else "-"
        parts = [f"{self.desc} {self.done}/{self.total} ({percent})", self.current,
                 f"elapsed {tqdm.format_interval(elapsed)}", f"ETA {eta}"]
        return " | ".join(p for p in parts if p)

    def _line(self, now: float) -> None:
        log.info("%s", self._format(now))
        self.last_line_at, self.last_line_done = now, self.done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.done != self.last_line_done or self.done == 0:
            self._line(self.clock())

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
