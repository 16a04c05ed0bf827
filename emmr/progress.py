"""Progress of long work, with records/s: a tqdm bar on a terminal, otherwise a log line every `every_s` seconds
(CI logs, files, pipes), so that no long run is silent. Used by training, evaluation, `emmr publish` and the
scoring job's in-process runs."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger(__name__)


def on_terminal() -> bool:
    return sys.stderr.isatty()


class Progress:
    """`update(n)` as records are done (or `advance_to(done)` from a poller). `close()` ends the bar; a log line
    then sums up when `summary` is set. `enabled=False` makes it silent."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "records", every_s: float = 10.0,
                 logger: logging.Logger | None = None, terminal: bool | None = None, enabled: bool = True,
                 summary: bool = False, clock=time.monotonic):
        self.desc, self.total, self.unit, self.every_s = desc, total, unit, every_s
        self.log = logger or log
        self.enabled, self.summary, self.clock = enabled, summary, clock
        self.done = 0
        self.started = self.last_line = clock()
        self.bar = None
        if enabled and (on_terminal() if terminal is None else terminal):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=f" {unit}", unit_scale=True, leave=False, dynamic_ncols=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def rate(self) -> float:
        elapsed = self.clock() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and self.clock() - self.last_line >= self.every_s:
            self.last_line = self.clock()
            self.log.info("%s", self.line())

    def advance_to(self, done: int) -> None:
        if done > self.done:
            self.update(done - self.done)

    def line(self) -> str:
        of = f" of {self.total}" if self.total else ""
        percent = f" ({100 * self.done / self.total:.0f} %)" if self.total else ""
        return f"{self.desc}: {self.done}{of} {self.unit}{percent}, {self.rate:,.0f} {self.unit}/s"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.enabled and self.summary:
            self.log.info("%s in %.1f s", self.line(), self.clock() - self.started)
        self.enabled = False
