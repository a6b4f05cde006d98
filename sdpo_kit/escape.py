"""Escape strings from data or paths for the place they are rendered: HTML, markdown tables, plots.

    python -c "from sdpo_kit.escape import md_cell, html, mpl_label; print(md_cell('a|b\\n<script>'), html(\\"x' onerror='y\\"), mpl_label('$x$'))"

A source name, a run folder or a file name is data: it must never become markup. `html` for
HTML text and attribute values, `md_cell` for one cell of a markdown table (also safe inline in
markdown prose), `md_table`/`html_table` for whole tables (the only table writers), `mpl_label`
for matplotlib titles, tick labels and legend entries (no mathtext, and a leading underscore does
not hide the legend entry), `term` for one line on a terminal. All of them show invisible and
bidi characters (zero-width spaces, right-to-left overrides, other Unicode Cf/Cc) as `term` does,
as Python escapes (`\\u200b`, `\\u202e`): two sources that differ only by one never read alike,
and an override never reverses the text after it.
"""

from __future__ import annotations

import html as _html


def html(s: object) -> str:
    """`s` as HTML text or a quoted attribute value: `& < > " '` escaped."""
    return _html.escape(str(s), quote=True)


def md_cell(s: object) -> str:
    """`s` as one markdown table cell: HTML-escaped, `|` and backslashes escaped, newlines as spaces.

    A `|` would start a new column, a newline ends the row, and `<script>` is live HTML in most
    markdown renderers (the Hugging Face hub included)."""
    text = html(visible(s)).replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")
    return text


def md_table(header: list, rows: list[list], cell=md_cell) -> str:
    """The one markdown table writer (cards, summary.md): a header, a `---` rule and one line per row,
    each ending in a newline. Header cells go through `md_cell`, row cells through `cell` (a function
    from a value to its cell text; `md_cell` unless the caller formats numbers or escapes otherwise)."""
    def line(cells) -> str:
        return "| " + " | ".join(cells) + " |\n"

    return line(md_cell(h) for h in header) + "|" + "---|" * len(header) + "\n" + "".join(
        line(cell(v) for v in row) for row in rows)


def html_table(header: list, rows: list[list]) -> str:
    """An HTML table: every header and row cell through `html`, row cells `visible` first."""
    head = "".join(f"<th>{html(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html(visible(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def mpl_label(s: object) -> str:
    """`s` as literal matplotlib text: `$` escaped so mathtext never parses data (an unbalanced
    `$...$` aborts the figure), a leading `_` kept visible (matplotlib hides such legend entries), and
    invisible, bidi and control characters shown as `term` shows them."""
    text = term(s).replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def term(s: object) -> str:
    """`s` on one terminal line: newlines, escape sequences and other control characters shown as
    Python escapes (`\\n`, `\\x1b`), so a name from data can neither break a line nor recolour the terminal."""
    text = str(s)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def visible(s: object) -> str:
    """`s` as one line of visible text: line breaks as spaces (a cell keeps its row), every other
    invisible, bidi or control character as `term` shows it (`a\\u200bb`, `\\u202eevil`)."""
    text = str(s)
    if text.isprintable():
        return text
    return term(" ".join(text.splitlines()) if any(c in text for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")
                else text)
