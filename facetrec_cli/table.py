"""Plain-text tables whose columns line up whatever the widths of their values."""

from __future__ import annotations

from typing import Sequence


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[int] = (),
                 indent: str = "", gap: str = "  ") -> list[str]:
    """The lines of a table: each column as wide as its widest cell (header included); the columns
    whose index is in ``right`` are right-aligned (numbers). Trailing spaces are dropped."""
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append((indent + gap.join(parts)).rstrip())
    return lines
