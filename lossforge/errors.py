"""Typed exceptions. Library code raises these; the CLI turns each into one line and exit code 2."""

from __future__ import annotations

import difflib
from typing import Iterable


def printable(text: str) -> str:
    """``text`` with control and other unprintable characters escaped (``\\x1b``, ``\\n``): a file or run
    name in a message is shown, never obeyed by the terminal, and the message stays one line."""
    # isprintable: false for control, format and surrogate characters and for separators but the space
    # (a line separator U+2028 would break the line too)
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def did_you_mean(word: str, valid: Iterable[str]) -> str:
    """``"; did you mean 'NAME'?"`` for the name in ``valid`` closest to a misspelt ``word``, or ``""``: the
    suggestion every unknown keyword or setting gets."""
    close = difflib.get_close_matches(word, list(valid), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


class LossforgeError(Exception):
    """Base class of every error lossforge raises on bad input or bad state."""


class SpaceError(LossforgeError):
    """A search-space file is missing, malformed or names something unknown."""


class ExpressionError(LossforgeError):
    """An expression (user text, JSON export, stored tree) cannot be parsed or is unsafe."""


class RunError(LossforgeError):
    """A run file is missing, already exists, is corrupted or has an incompatible schema."""


class ConfigError(LossforgeError):
    """A search, suite or task option has an invalid value."""


class ExportError(LossforgeError):
    """An export or load request cannot be fulfilled (bad rank, format, path or hostile file)."""
