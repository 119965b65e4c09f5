"""Progress of a search on the terminal.

:func:`make_progress` picks the reporter for the output stream:

* a terminal: a live status line (generation, losses trained in this generation, best fitness so far,
  rejections, training rate, ETA) redrawn as candidates are scored, with one permanent line per finished
  generation above it; drawn with ``rich`` when it is installed, with a carriage-return line otherwise;
* anything else (a pipe, a log file, CI): one plain line per finished generation,
  :meth:`GenerationStats.line` plus rate and ETA, so logs stay line-oriented;
* ``quiet``: nothing.

The engine calls ``generation_started(gen)``, ``candidate_scored(n)`` for each trained loss,
``generation_finished(stats)`` and finally ``close()``.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, TextIO

__all__ = ["GenerationStats", "Progress", "make_progress", "format_duration"]


@dataclass
class GenerationStats:
    """What a generation did, for progress lines, callbacks and the run file."""

    gen: int
    evaluated: int
    cache_hits: int
    rejected: int
    failed: int
    best: float
    median: float
    best_formula: str
    seconds: float
    #: new losses scored at the screening fidelity (the first rung); ``evaluated`` counts full scores
    screened: int = 0
    #: children varied again because they were not new losses (known, twin, rejected, full niche)
    redrawn: int = 0
    #: slots still holding a known loss after every redraw (the space is exhausted around them)
    exhausted: int = 0
    #: distinct structures (constants aside) in the population
    structures: int = 0
    #: search budget spent so far, in full evaluations
    spent: float = 0.0

    def line(self) -> str:
        """One progress line."""
        screened = f"  screened {self.screened:3d}" if self.screened else ""
        exhausted = f"  space exhausted: {self.exhausted} slot(s) repeat known losses" if self.exhausted else ""
        return (
            f"gen {self.gen:3d}  trained {self.evaluated:3d}{screened}  cached {self.cache_hits:3d}  "
            f"rejected {self.rejected:3d}  failed {self.failed:3d}  best {self.best:.4f}  "
            f"median {self.median:.4f}  {self.seconds:6.1f}s{exhausted}  best: {self.best_formula}"
        )


class Progress(Protocol):
    """What the search reports to."""

    def generation_started(self, gen: int) -> None:
        """Generation ``gen`` begins (variation, then scoring)."""

    def candidate_scored(self, n: int = 1) -> None:
        """``n`` more losses of the current generation were trained and scored."""

    def generation_finished(self, stats: GenerationStats) -> None:
        """The current generation is done and recorded."""

    def message(self, text: str) -> None:
        """A one-off line (tuning, validation) printed above any live line."""

    def close(self) -> None:
        """The search ended (normally or not): release the terminal."""


def format_duration(seconds: float | None) -> str:
    """``1h02m``, ``3m05s``, ``42s``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(max(0.0, seconds)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class _Quiet:
    """Reports nothing."""

    def generation_started(self, gen: int) -> None:
        pass

    def candidate_scored(self, n: int = 1) -> None:
        pass

    def generation_finished(self, stats: GenerationStats) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class _Tracker:
    """Counts and timing shared by the reporters; subclasses decide what is shown and when."""

    def __init__(self, total_generations: int, population: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total_generations = total_generations
        self.population = population
        self.clock = clock
        self.started: float | None = None  # the first generation's start: set-up time is not training
        self.gen: int | None = None
        self.gen_started = 0.0
        self.gen_seconds: list[float] = []
        self.trained = 0
        self.trained_in_gen = 0
        self.rejected = 0
        self.best: float | None = None

    def generation_started(self, gen: int) -> None:
        self.gen = gen
        self.gen_started = self.clock()
        if self.started is None:
            self.started = self.gen_started
        self.trained_in_gen = 0
        self._changed()

    def candidate_scored(self, n: int = 1) -> None:
        self.trained += n
        self.trained_in_gen += n
        self._changed()

    def generation_finished(self, stats: GenerationStats) -> None:
        self.gen_seconds.append(self.clock() - self.gen_started)
        self.gen = None
        self.rejected += stats.rejected
        self.best = stats.best if self.best is None else max(self.best, stats.best)
        self._finished(stats)

    def close(self) -> None:
        pass

    def rate(self) -> float:
        """Losses trained per second since the first generation started."""
        elapsed = self.clock() - self.started if self.started is not None else 0.0
        return self.trained / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        """Seconds left: the mean finished generation's time for each generation still to finish (before the
        first finishes, a full generation at the current rate), less the current generation's elapsed time."""
        in_gen = self.clock() - self.gen_started if self.gen is not None else 0.0
        if self.gen_seconds:
            per_gen = sum(self.gen_seconds) / len(self.gen_seconds)
        elif self.trained_in_gen:
            per_gen = in_gen / self.trained_in_gen * self.population
        else:
            return None
        remaining = self.total_generations - len(self.gen_seconds)
        return max(0.0, per_gen * remaining - in_gen)

    def tail(self) -> str:
        """Rate and ETA, appended to every line."""
        return f"  | {self.rate():.2f} losses/s  ETA {format_duration(self.eta())}"

    def status(self) -> str:
        """The live line."""
        done = len(self.gen_seconds)
        gen = "-" if self.gen is None else str(self.gen)
        best = "-" if self.best is None else f"{self.best:.4f}"
        return (f"gen {gen} ({done}/{self.total_generations} done)  trained {self.trained_in_gen}/{self.population}"
                f"  best {best}  rejected {self.rejected}" + self.tail())

    def _changed(self) -> None:
        """The counts moved (live reporters redraw)."""

    def _finished(self, stats: GenerationStats) -> None:
        """A generation finished."""


class _Lines(_Tracker):
    """One plain line per finished generation (non-terminal output)."""

    def __init__(self, total_generations: int, population: int, stream: TextIO, **kw: Any) -> None:
        super().__init__(total_generations, population, **kw)
        self.stream = stream

    def _finished(self, stats: GenerationStats) -> None:
        print(stats.line() + self.tail(), file=self.stream, flush=True)

    def message(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


class _CarriageReturn(_Lines):
    """A live line redrawn in place with ``\\r`` (terminal without rich)."""

    def __init__(self, total_generations: int, population: int, stream: TextIO, **kw: Any) -> None:
        super().__init__(total_generations, population, stream, **kw)
        self.shown = False

    def _write(self, text: str) -> None:
        # Pad to the terminal's width to erase the previous line; a wrapped line could not be redrawn by \r.
        width = max(20, shutil.get_terminal_size().columns - 1)
        self.stream.write("\r" + text[:width].ljust(width))
        self.stream.flush()

    def _changed(self) -> None:
        self._write(self.status())
        self.shown = True

    def _finished(self, stats: GenerationStats) -> None:
        if self.shown:
            self._write("")
        self.stream.write("\r" + stats.line() + self.tail() + "\n")
        self.stream.flush()
        self.shown = False

    def message(self, text: str) -> None:
        self.close()
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.shown:
            self._write("")
            self.stream.write("\r")
            self.stream.flush()
            self.shown = False


class _Rich(_Tracker):
    """A rich live line, with finished generations printed above it (terminal with rich)."""

    def __init__(self, total_generations: int, population: int, stream: TextIO, **kw: Any) -> None:
        from rich.console import Console
        from rich.live import Live

        super().__init__(total_generations, population, **kw)
        self.console = Console(file=stream)
        self.live = Live(self._status_text(), console=self.console, refresh_per_second=4, transient=True)
        self.live.start()

    def _status_text(self) -> Any:
        from rich.text import Text

        return Text(self.status(), no_wrap=True, overflow="ellipsis")  # a wrapped live line would flicker

    def _changed(self) -> None:
        self.live.update(self._status_text())

    def _finished(self, stats: GenerationStats) -> None:
        from rich.text import Text

        # Text, not str: formulas are not rich markup; soft_wrap: long lines wrap as a plain print's do
        self.console.print(Text(stats.line() + self.tail()), soft_wrap=True)
        self._changed()

    def message(self, text: str) -> None:
        from rich.text import Text

        self.console.print(Text(text), soft_wrap=True)

    def close(self) -> None:
        self.live.stop()


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def make_progress(total_generations: int, population: int, quiet: bool = False,
                  stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> Progress:
    """The progress reporter for ``stream`` (default ``sys.stdout``).

    ``total_generations`` is how many generations this session will finish (for a new run
    ``config.generations + 1``, as generation 0 counts; for a resumed one ``config.generations - last.gen``);
    ``population`` bounds the losses trained per generation. ``quiet`` reports nothing; a terminal gets a
    live line (rich if installed); other streams get one line per generation. ``clock`` (seconds) is
    there for tests.
    """
    if quiet:
        return _Quiet()
    stream = sys.stdout if stream is None else stream
    if not _is_terminal(stream):
        return _Lines(total_generations, population, stream, clock=clock)
    try:
        import rich  # noqa: F401 - optional: a plain carriage-return line otherwise
    except ImportError:
        return _CarriageReturn(total_generations, population, stream, clock=clock)
    return _Rich(total_generations, population, stream, clock=clock)
