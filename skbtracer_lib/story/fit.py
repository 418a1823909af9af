"""Text that fits a width: lines wrapped with a hanging indent, and tables
whose widest columns wrap inside their cells, so the story reads in an
80- or 120-column terminal and in a ticket (100 columns when not a
terminal)."""

import os

DEFAULT_WIDTH = 100         # not a terminal: a ticket, a file, a pipe
MIN_WIDTH = 40
MIN_COLUMN = 10             # a wrapped column keeps at least this many characters
GAP = "  "                  # between table columns
# where a long line is best broken: between hops, fork branches, clauses
# (the mark stays at the end of the line); else at a space
BREAKS = (" > ", " => ", " | ", "; ")
UNITS = {"s", "ms", "us", "ns", "packets", "skbs"}   # never the first word of a line


def is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):    # not a file, or closed
        return False


def terminal_width(stream, default=DEFAULT_WIDTH):
    """The columns of the terminal stream writes to, else default (also
    for a terminal that does not know its size: 0 columns)."""
    try:
        if stream.isatty():
            columns = os.get_terminal_size(stream.fileno()).columns
            if columns > 0:
                return max(MIN_WIDTH, columns)
    except (AttributeError, OSError, ValueError):
        pass
    return default


def _cut(text, width):
    """Where to end the first line of text (at most width characters): after
    the last of BREAKS that leaves the line at least two thirds full, else at
    the last space, else exactly at width."""
    if len(text) <= width:
        return len(text)
    best = 0
    for mark in BREAKS:
        at = text.rfind(mark, 0, width - len(mark.rstrip()) + 1)
        if at > 0:
            best = max(best, at + len(mark.rstrip()))
    if best >= 2 * width // 3:
        return best
    space = text.rfind(" ", 0, width + 1)
    while space > 0 and _unit_follows(text, space):
        space = text.rfind(" ", 0, space)     # keep "3.5 ms" together
    return space if space > 0 else width


def _unit_follows(text, space):
    """Is the word after text[space] a unit of the number before it?"""
    word = text[space + 1:].split(" ", 1)[0].rstrip(",;)")
    return word in UNITS and text[space - 1:space].isdigit()


def wrap(text, width, indent=4):
    """[line] of text, each at most width characters; lines after the first
    start with indent spaces. Breaks after ' > ', '; ', ', ' or a space."""
    width = max(width, indent + MIN_COLUMN)
    lines = []
    first = True
    while text:
        room = width if first else width - indent
        end = _cut(text, room)
        lines.append(("" if first else " " * indent) + text[:end].rstrip())
        text = text[end:].lstrip()
        first = False
    return lines or [""]


def wrap_lines(lines, width, indent=4):
    """Every line of lines wrapped (wrap())."""
    out = []
    for line in lines:
        out += wrap(line, width, indent)
    return out


def column_widths(natural, width, wrappable):
    """Widths for columns of natural widths so that they and their gaps fit
    width, taking room from the wrappable columns (indexes), widest first."""
    widths = list(natural)
    excess = sum(widths) + len(GAP) * (len(widths) - 1) - width
    while excess > 0:
        candidates = [i for i in wrappable if widths[i] > MIN_COLUMN]
        if not candidates:
            break
        widest = max(candidates, key=lambda i: widths[i])
        others = [widths[i] for i in candidates if i != widest]
        # shrink the widest down to the next widest (or by the excess)
        target = max(MIN_COLUMN, max(others, default=MIN_COLUMN),
                     widths[widest] - excess)
        if target >= widths[widest]:
            target = widths[widest] - 1
        excess -= widths[widest] - target
        widths[widest] = target
    return widths


def table(headers, rows, width=None, wrappable=None):
    """A table in tabulate's "simple" layout (header, dashes, rows), its cells
    wrapped inside their columns when the table is wider than width.
    wrappable: the indexes of the columns that may wrap (default: all but
    the first)."""
    rows = [[str(x) for x in row] for row in rows]
    natural = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    widths = natural
    if width is not None:
        if wrappable is None:
            wrappable = range(1, len(headers))
        widths = column_widths(natural, width, list(wrappable))
    lines = [_line([str(h) for h in headers], widths),
             GAP.join("-" * w for w in widths)]
    for row in rows:
        cells = [wrap(cell, w, indent=2) if len(cell) > w else [cell]
                 for cell, w in zip(row, widths)]
        for i in range(max(len(c) for c in cells)):
            lines.append(_line([c[i] if i < len(c) else "" for c in cells], widths))
    return "\n".join(lines)


def _line(cells, widths):
    return GAP.join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
