"""Progress of a long step, for a person watching: a bar on a terminal, periodic lines elsewhere.

A build, the phantom's rendering and ``dsnet predict`` can run for minutes; CI logs, ``make``
under ``tee`` and notebooks have no terminal, and a tqdm bar there prints nothing useful until
the end. :func:`progress` gives a tqdm bar when the stream is a terminal, and otherwise one line
each time another 10 % is done. Either appears only once the step has run ``delay_s`` (2 s), so
quick steps stay silent. ``enabled=False`` (``--no-progress``) silences it; ``True`` forces it on
even for quick steps; ``None`` (the default) is the above.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

__all__ = ["Progress", "progress"]


class Progress:
    """``update(n)`` after each unit of work, ``close()`` at the end (or use it as a context manager)."""

    def __init__(self, total: int, *, desc: str, unit: str, enabled: bool | None = None,
                 stream: IO[str] | None = None, delay_s: float = 2.0, step_pct: int = 10):
        self.total, self.desc, self.unit = max(0, int(total)), desc, unit
        self.stream = sys.stderr if stream is None else stream
        self.on = enabled is not False and self.total > 0
        self.delay_s = 0.0 if enabled else float(delay_s)
        self.step_pct = int(step_pct)
        self.done, self.postfix = 0, ""
        self.started = time.monotonic()
        self._next_pct = self.step_pct
        self._printed = False
        self._bar = None
        isatty = getattr(self.stream, "isatty", None)
        if self.on and isatty is not None and isatty():
            from tqdm import tqdm

            # No monitor thread: forked workers may be started after the bar exists.
            tqdm.monitor_interval = 0
            self._bar = tqdm(total=self.total, desc=desc, unit=unit, file=self.stream, delay=self.delay_s,
                             dynamic_ncols=True)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())
        if self._bar is not None:
            self._bar.set_postfix(refresh=False, **values)

    def update(self, n: int = 1) -> None:
        self.done += int(n)
        if not self.on:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        pct = 100 * self.done // self.total if self.total else 100
        if pct >= self._next_pct:
            self._next_pct = (pct // self.step_pct + 1) * self.step_pct
            if time.monotonic() - self.started >= self.delay_s:
                self._line()

    def _line(self) -> None:
        elapsed = time.monotonic() - self.started
        extra = f"; {self.postfix}" if self.postfix else ""
        self.stream.write(f"{self.desc}: {self.done}/{self.total} {self.unit}s "
                          f"({100 * self.done // max(self.total, 1)} %) after {elapsed:.0f} s{extra}\n")
        self.stream.flush()
        self._printed = True

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.on and self._printed and self.done < self.total:
            self._line()  # stopped early (rejects, an error): say where

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(total: int, *, desc: str, unit: str, enabled: bool | None = None, stream: IO[str] | None = None,
             delay_s: float = 2.0) -> Progress:
    """A :class:`Progress` (see the module docstring)."""
    return Progress(total, desc=desc, unit=unit, enabled=enabled, stream=stream, delay_s=delay_s)
