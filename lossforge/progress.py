"""Progress of a search on the terminal.

:func:`make_progress` picks the reporter for the output stream:

* a terminal with ``rich``: a ``rich.progress`` display with a bar per phase (baselines, generation k of n,
  validation, tuning), losses done of the phase's total, best fitness, rejections, rate and ETA, and one
  permanent line per finished generation above it;
* a terminal without rich: a live carriage-return status line;
* anything else (a pipe, a log file, CI): plain lines: one when a phase other than a generation starts and
  ends, and one per finished generation, :meth:`GenerationStats.line` plus rate and ETA;
* ``quiet``: nothing.

The engine calls ``phase(name, total)`` before scoring baselines, validating or tuning,
``generation_started(gen)``, ``candidate_scored(n)`` for each trained loss, ``generation_finished(stats)``
and finally ``close()``. A ``candidate_scored`` outside any phase is attributed to the baselines before the
first generation and to the final validation and tuning after the last.

Rate: losses trained in the generations per second since the first generation started; none is shown
before the first loss of a generation has finished (set-up and baselines are not search throughput).
ETA: the mean finished generation's time for each generation still to run; before the first generation
has finished, a full generation at the current generation's pace; never past the search's time limit; in
other phases, the phase's pace.
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

    def phase(self, name: str, total: int | None = None) -> None:
        """A phase other than a generation begins (``baselines``, ``validation``, ``tuning``) that will
        score ``total`` losses (None: unknown)."""

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

    def phase(self, name: str, total: int | None = None) -> None:
        pass

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
                 clock: Callable[[], float] = time.monotonic, time_left_s: float | None = None) -> None:
        self.total_generations = total_generations
        self.population = population
        self.clock = clock
        # a time limit ends the generations by then, however many it allows (--time alone: 100000)
        self.deadline = None if time_left_s is None else clock() + max(0.0, time_left_s)
        self.started: float | None = None  # the first generation's start: set-up time is not training
        self.gen: int | None = None
        self.gen_started = 0.0
        self.gen_seconds: list[float] = []
        self.trained = 0  # losses trained in generations (the rate's numerator)
        self.trained_in_gen = 0
        self.rejected = 0
        self.best: float | None = None
        # the phase outside generations: name, total, done, start
        self.phase_name: str | None = None
        self.phase_total: int | None = None
        self.phase_done = 0
        self.phase_started = 0.0

    # ------------------------------------------------------------------------------------------ events
    def phase(self, name: str, total: int | None = None) -> None:
        self._end_phase()
        self.phase_name, self.phase_total, self.phase_done = name, total, 0
        self.phase_started = self.clock()
        self._phase_started()

    def _end_phase(self) -> None:
        if self.phase_name is not None:
            self._phase_finished(self.clock() - self.phase_started)
            self.phase_name = None

    def generation_started(self, gen: int) -> None:
        self._end_phase()
        self.gen = gen
        self.gen_started = self.clock()
        if self.started is None:
            self.started = self.gen_started
        self.trained_in_gen = 0
        self._changed()

    def candidate_scored(self, n: int = 1) -> None:
        if self.gen is None:
            if self.phase_name is None:  # an engine that does not announce phases
                self.phase("baselines" if self.started is None else "validation and tuning")
            self.phase_done += n
        else:
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
        self._end_phase()

    # ---------------------------------------------------------------------------------------- numbers
    def rate(self) -> float | None:
        """Losses trained in generations per second since the first generation started; None before the
        first such loss finished."""
        if self.started is None or self.trained == 0:
            return None
        elapsed = self.clock() - self.started
        return self.trained / elapsed if elapsed > 0 else None

    def eta(self) -> float | None:
        """Seconds left: the mean finished generation's time for each generation still to finish (before the
        first finishes, a full generation at the current rate), less the current generation's elapsed time."""
        in_gen = self.clock() - self.gen_started if self.gen is not None else 0.0
        if self.gen_seconds:
            per_gen = sum(self.gen_seconds) / len(self.gen_seconds)
        elif self.trained_in_gen:
            per_gen = in_gen / self.trained_in_gen * self.population
        else:
            return None if self.deadline is None else max(0.0, self.deadline - self.clock())
        remaining = self.total_generations - len(self.gen_seconds)
        eta = max(0.0, per_gen * remaining - in_gen)
        return eta if self.deadline is None else min(eta, max(0.0, self.deadline - self.clock()))

    def phase_eta(self) -> float | None:
        """Seconds left in the current non-generation phase at its pace so far (None until one loss is done)."""
        if not self.phase_done or not self.phase_total:
            return None
        elapsed = self.clock() - self.phase_started
        return max(0.0, elapsed / self.phase_done * (self.phase_total - self.phase_done))

    def rate_text(self) -> str:
        rate = self.rate()
        return "- losses/s" if rate is None else f"{rate:.2f} losses/s"

    def tail(self) -> str:
        """Rate and ETA, appended to every line."""
        rate = self.rate()
        return f"  | {0.0 if rate is None else rate:.2f} losses/s  ETA {format_duration(self.eta())}"

    def status(self) -> str:
        """The live line."""
        if self.gen is None and self.phase_name is not None:
            total = "?" if self.phase_total is None else str(self.phase_total)
            return (f"{self.phase_name}: {self.phase_done}/{total} scored  "
                    f"ETA {format_duration(self.phase_eta())}")
        done = len(self.gen_seconds)
        gen = "-" if self.gen is None else str(self.gen)
        best = "-" if self.best is None else f"{self.best:.4f}"
        return (f"gen {gen} ({done}/{self.total_generations} done)  trained {self.trained_in_gen}/{max(self.population, self.trained_in_gen)}"
                f"  best {best}  rejected {self.rejected}" + self.tail())

    # ------------------------------------------------------------------------------------------- hooks
    def _changed(self) -> None:
        """The counts moved (live reporters redraw)."""

    def _finished(self, stats: GenerationStats) -> None:
        """A generation finished."""

    def _phase_started(self) -> None:
        """A non-generation phase began."""

    def _phase_finished(self, seconds: float) -> None:
        """The non-generation phase ended after ``seconds``."""


class _Lines(_Tracker):
    """Plain lines: phases and finished generations (non-terminal output)."""

    def __init__(self, total_generations: int, population: int, stream: TextIO, **kw: Any) -> None:
        super().__init__(total_generations, population, **kw)
        self.stream = stream

    def _phase_started(self) -> None:
        total = "" if self.phase_total is None else f" {self.phase_total} loss(es)"
        print(f"{self.phase_name}:{total} ...", file=self.stream, flush=True)

    def _phase_finished(self, seconds: float) -> None:
        print(f"{self.phase_name}: {self.phase_done} scored in {format_duration(seconds)}", file=self.stream,
              flush=True)

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

    def _phase_started(self) -> None:
        self._changed()

    def _phase_finished(self, seconds: float) -> None:
        self._clear()
        print(f"{self.phase_name}: {self.phase_done} scored in {format_duration(seconds)}", file=self.stream,
              flush=True)

    def _finished(self, stats: GenerationStats) -> None:
        if self.shown:
            self._write("")
        self.stream.write("\r" + stats.line() + self.tail() + "\n")
        self.stream.flush()
        self.shown = False

    def message(self, text: str) -> None:
        self._clear()
        print(text, file=self.stream, flush=True)

    def _clear(self) -> None:
        if self.shown:
            self._write("")
            self.stream.write("\r")
            self.stream.flush()
            self.shown = False

    def close(self) -> None:
        super().close()
        self._clear()


class _Rich(_Tracker):
    """rich.progress bars: one for the generations, one for the current phase's losses; finished generations
    and messages are printed above them (terminal with rich)."""

    def __init__(self, total_generations: int, population: int, stream: TextIO, **kw: Any) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        super().__init__(total_generations, population, **kw)
        self.console = Console(file=stream)
        # Our own rate and ETA columns (info): rich's would count set-up time and show a rate before any
        # loss has finished.
        self.bars = Progress(TextColumn("{task.description:<18}"), BarColumn(bar_width=30), MofNCompleteColumn(),
                             TextColumn("{task.fields[info]}"), console=self.console, transient=True,
                             refresh_per_second=4, auto_refresh=True)
        self.gens_bar = self.bars.add_task("generations", total=total_generations, info="", visible=False)
        self.step_bar = self.bars.add_task("", total=None, info="", visible=False)
        self.step_key: tuple[str, int | None] | None = None
        self.bars.start()

    def _step(self, description: str, total: int | None) -> None:
        """The lower bar shows ``description`` with ``total`` steps (a new bar: rich cannot unset a total)."""
        if self.step_key != (description, total):
            self.bars.remove_task(self.step_bar)
            self.step_bar = self.bars.add_task(description, total=total, info="")
            self.step_key = (description, total)

    def _changed(self) -> None:
        best = "-" if self.best is None else f"{self.best:.4f}"
        if self.gen is not None:
            self.bars.update(self.gens_bar, visible=True, completed=len(self.gen_seconds),
                             info=f"best {best}  rejected {self.rejected}  {self.rate_text()}  "
                                  f"ETA {format_duration(self.eta())}")
            last = self.gen + self.total_generations - len(self.gen_seconds) - 1
            self._step(f"generation {self.gen} of {last}", max(self.population, self.trained_in_gen))
            self.bars.update(self.step_bar, completed=self.trained_in_gen, info="losses trained")
        elif self.phase_name is not None:
            if self.gen_seconds:  # the generations are over: their ETA no longer applies
                self.bars.update(self.gens_bar, info=f"best {best}  rejected {self.rejected}  {self.rate_text()}")
            self._step(self.phase_name, self.phase_total)
            self.bars.update(self.step_bar, completed=self.phase_done,
                             info=f"ETA {format_duration(self.phase_eta())}")

    def _phase_started(self) -> None:
        self._changed()

    def _phase_finished(self, seconds: float) -> None:
        from rich.text import Text

        self.console.print(Text(f"{self.phase_name}: {self.phase_done} scored in {format_duration(seconds)}"))

    def _finished(self, stats: GenerationStats) -> None:
        from rich.text import Text

        # Text, not str: formulas are not rich markup; soft_wrap: long lines wrap as a plain print's do
        self.console.print(Text(stats.line() + self.tail()), soft_wrap=True)
        self.bars.update(self.gens_bar, completed=len(self.gen_seconds))

    def message(self, text: str) -> None:
        from rich.text import Text

        self.console.print(Text(text), soft_wrap=True)

    def close(self) -> None:
        super().close()
        self.bars.stop()


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def make_progress(total_generations: int, population: int, quiet: bool = False,
                  stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
                  time_left_s: float | None = None) -> Progress:
    """The progress reporter for ``stream`` (default ``sys.stdout``).

    ``total_generations`` is how many generations this session will finish (for a new run
    ``config.generations + 1``, as generation 0 counts; for a resumed one ``config.generations - last.gen``);
    ``population`` bounds the losses trained per generation. ``quiet`` reports nothing; a terminal gets a
    live line (rich if installed); other streams get one line per generation. ``clock`` (seconds) is
    there for tests. ``time_left_s``: the search's time limit less the time spent (caps the ETA).
    """
    if quiet:
        return _Quiet()
    stream = sys.stdout if stream is None else stream
    if not _is_terminal(stream):
        return _Lines(total_generations, population, stream, clock=clock, time_left_s=time_left_s)
    try:
        import rich  # noqa: F401 - optional: a plain carriage-return line otherwise
    except ImportError:
        return _CarriageReturn(total_generations, population, stream, clock=clock, time_left_s=time_left_s)
    return _Rich(total_generations, population, stream, clock=clock, time_left_s=time_left_s)
