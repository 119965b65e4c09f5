"""TensorBoard logging of a search, as a search callback: ``callback(stats, hall_of_fame) -> bool | None``.

    >>> lossforge.search(..., callbacks=[TensorBoardCallback("tb/run1")])
    $ tensorboard --logdir tb

After each generation it writes, at step = the generation number:

* scalars ``fitness/best``, ``fitness/median``, ``candidates/screened``, ``candidates/trained``,
  ``candidates/rejected``, ``candidates/cached`` and ``speed/losses_per_s`` (losses trained in the generation
  over its wall time);
* text ``hall_of_fame``: a Markdown table of the best formulas with their fitness.

Event files are written by tensorboardX (optional extra ``lossforge[tensorboard]``): it needs only numpy and
protobuf, where ``torch.utils.tensorboard`` needs the whole ``tensorboard`` package (a web server, grpc,
werkzeug) just to write files. The callback never stops the search (returns None).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from lossforge.errors import ConfigError

__all__ = ["TensorBoardCallback"]


def _field(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, dict) else getattr(item, name, None)


class TensorBoardCallback:
    """Writes each generation's statistics and best formulas to TensorBoard event files in ``logdir``.

    ``top``: how many hall-of-fame formulas the text summary lists.
    """

    def __init__(self, logdir: str | os.PathLike[str], top: int = 5) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ConfigError("--tensorboard needs tensorboardX; pip install 'lossforge[tensorboard]'") from None
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:  # top=-1 would drop the last silently
            raise ConfigError(f"top must be a positive whole number of formulas, not {top!r}")
        self.logdir = Path(logdir)
        try:
            self.logdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create TensorBoard directory {self.logdir}: {exc.strerror or exc}") from None
        self.top = top
        self.writer = SummaryWriter(logdir=str(self.logdir), flush_secs=5)

    def __call__(self, stats: Any, hall_of_fame: Sequence[Any]) -> None:
        step = int(stats.gen)
        trained = int(stats.evaluated)  # losses scored at full fidelity
        # every loss that got any training: with racing every new loss is screened first, without it none is
        screened = int(getattr(stats, "screened", 0)) or trained
        seconds = float(stats.seconds)
        scalars = {
            "fitness/best": float(stats.best),
            "fitness/median": float(stats.median),
            "candidates/screened": screened,
            "candidates/trained": trained,
            "candidates/rejected": int(stats.rejected),
            "candidates/cached": int(stats.cache_hits),
            "speed/losses_per_s": screened / seconds if seconds > 0 else 0.0,
        }
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        rows = ["| rank | fitness | formula |", "|---:|---:|---|"]
        for rank, item in enumerate(list(hall_of_fame)[: self.top], 1):
            fitness = _field(item, "fitness")
            formula = str(_field(item, "formula") or "").replace("|", "\\|")
            rows.append(f"| {rank} | {'-' if fitness is None else f'{fitness:.4f}'} | `{formula}` |")
        rows.append(f"\ngeneration {step}: best of the population `{stats.best_formula}`")
        self.writer.add_text("hall_of_fame", "\n".join(rows), step)
        self.writer.flush()  # a user watching TensorBoard sees each generation as it ends
        return None

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()
