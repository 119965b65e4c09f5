"""Literal Markdown for text from a run file: ``report.md`` and ``lossforge show --format markdown``.

A run, suite, task or baseline name and a formula come from the run file, which anyone can edit: they are
shown as written, never rendered as emphasis, links or HTML, and never break a table row.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["one_line", "text", "code"]


def one_line(value: Any) -> str:
    return " ".join(str(value).split())  # a line break would end the table row or the list item


def text(value: Any) -> str:
    """``value`` as literal Markdown: HTML's ``&<>`` become entities and Markdown's punctuation is
    backslash-escaped, so no name renders as markup or HTML, or breaks a table cell."""
    out = []
    for ch in one_line(value):
        if ch in "&<>":
            out.append({"&": "&amp;", "<": "&lt;", ">": "&gt;"}[ch])
        elif ch in "\\`*[]|":  # [ ] stop a link, | a cell, ` a code span (_ is left: names are snake_case)
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def code(value: Any) -> str:
    """``value`` as a Markdown code span (shown literally, HTML included) that a backtick inside cannot end:
    the fence is one backtick longer than the longest run of them in the text."""
    value = one_line(value).replace("|", r"\|")  # a pipe would end the table cell, even in code
    fence = "`" * (max((len(run) for run in re.findall(r"`+", value)), default=0) + 1)
    pad = " " if value.startswith("`") or value.endswith("`") else ""
    return f"{fence}{pad}{value}{pad}{fence}"
