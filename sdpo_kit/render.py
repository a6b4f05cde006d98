"""The one text renderer: report, verdict and data cards are lists of blocks, rendered as markdown or HTML.

    python -c "from sdpo_kit.render import to_markdown; print(to_markdown([('h2', 'Run'), ('p', 'base model `{}`', 'a|b')]))"

A block is a tuple whose first item is its kind:
- `("h1" | "h2" | "h3", text)`: a heading; `text` is data.
- `("p" | "warn" | "note", template, *data)`: a paragraph. In a template each `{}` takes the next
  data value (escaped for the format) and backticks mark code; the template itself is our own
  text. `warn` is a bold paragraph, `note` a side remark (HTML class `note`, markdown plain).
- `("call" | "alert", line)`: a verdict line and a verdict warning, written out whole (they are
  also verdict.json's strings, and carry run names): escaped as a whole for either format, our
  own backticks kept as code in markdown (bold call, "⚠ " alert). In HTML the call's text from
  " [" on is its smaller detail.
- `("table", header, rows)`: cells are display text (numbers already formatted), escaped for the format.
- `("list", [(template, *data), ...])`: a bulleted list, one template per item.
- `("image", alt, path)`, `("code", language, text)`: a figure file and a fenced code block.

Every string from data is escaped for its format by `sdpo_kit.escape`. `page` wraps HTML sections
into one self-contained page with the one stylesheet (`CSS`): report and verdict share it.
"""

from __future__ import annotations

from typing import Any

from sdpo_kit import escape

CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1300px;margin:2em auto;
padding:0 1em;color:#222}h1{border-bottom:2px solid #4C72B0}h2{margin-top:2em;color:#2d4a7a}
figure{margin:1.5em 0;padding:.5em;border:1px solid #ddd;border-radius:6px}img{max-width:100%}
figcaption{color:#555;font-size:.9em}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}.note{color:#a05a00}
.verdict{border:2px solid #2d4a7a;border-radius:8px;padding:.6em 1.2em;margin:1em 0;background:#f4f7fc}
.verdict h2{margin-top:.2em}.verdict .call{font-size:1.15em;font-weight:600;margin:.4em 0}
.verdict .detail{font-size:.8em;font-weight:400;color:#444}.verdict .warn{color:#8a4b00;margin:.3em 0}"""


def text(v: Any) -> str:
    """A number or value as a report table shows it: floats to 4 significant digits, None as a dash."""
    return f"{v:.4g}" if isinstance(v, float) else ("–" if v is None else str(v))


def md_fill(template: str, data: tuple) -> str:
    """`template` with each `{}` replaced by the next data value as markdown (escaped); backticks kept."""
    if not data:  # our own text only: a `{}` in it is text, not a slot
        return template
    pieces = template.split("{}")
    return pieces[0] + "".join(escape.md_cell(d) + p for d, p in zip(data, pieces[1:]))


def html_fill(template: str, data: tuple) -> str:
    """`template` as HTML: escaped, backtick spans as <code>, each `{}` the next data value (escaped)."""
    out, code = [], False
    for i, piece in enumerate(template.split("{}") if data else [template]):
        for j, chunk in enumerate(piece.split("`")):
            if j:  # a backtick of the template: opens or closes a code span
                out.append("</code>" if code else "<code>")
                code = not code
            out.append(escape.html(chunk))
        if i < len(data):
            out.append(escape.html(escape.visible(data[i])))
    return "".join(out)


def _md_block(b: tuple) -> str:
    kind = b[0]
    if kind in ("h1", "h2", "h3"):
        return "#" * int(kind[1]) + " " + escape.md_cell(b[1])
    if kind == "table":
        return escape.md_table(b[1], b[2]).rstrip("\n")
    if kind == "list":
        return "\n".join("- " + md_fill(item[0], item[1:]) for item in b[1])
    if kind == "image":
        return f"![{b[1]}]({b[2]})"
    if kind == "code":
        return f"```{b[1]}\n{b[2]}\n```"
    if kind in ("call", "alert"):  # they carry run names (data): escaped, our own backticks kept as code
        line = escape.md_cell(b[1]).replace("\\`", "`")
        return f"**{line}**" if kind == "call" else f"⚠ {line}"
    filled = md_fill(b[1], b[2:])
    return f"**{filled}**" if kind == "warn" else filled


def to_markdown(blocks: list[tuple]) -> str:
    """Markdown of blocks: separated by a blank line, ending in a newline ("" for no blocks)."""
    return "\n\n".join(_md_block(b) for b in blocks) + "\n" if blocks else ""


def _html_block(b: tuple) -> str:
    kind = b[0]
    if kind in ("h1", "h2", "h3"):
        return f"<{kind}>{escape.html(escape.visible(b[1]))}</{kind}>"
    if kind == "table":
        return escape.html_table(b[1], b[2])
    if kind == "list":
        return "<ul>" + "".join(f"<li>{html_fill(item[0], item[1:])}</li>" for item in b[1]) + "</ul>"
    if kind == "image":
        return f"<img alt='{escape.html(b[1])}' src='{escape.html(b[2])}'>"
    if kind == "code":
        return f"<pre><code>{escape.html(b[2])}</code></pre>"
    if kind == "call":  # the call in bold, its n / seeds / reward-margin detail smaller
        call, _, detail = escape.visible(b[1]).partition(" [")
        detail = f" <span class='detail'>[{escape.html(detail)}</span>" if detail else ""
        return f"<p class='call'>{escape.html(call)}{detail}</p>"
    if kind == "alert":
        return f"<p class='warn'>⚠ {escape.html(escape.visible(b[1]))}</p>"
    filled = html_fill(b[1], b[2:])
    return {"warn": f"<p class='note'><strong>{filled}</strong></p>",
            "note": f"<p class='note'>{filled}</p>"}.get(kind, f"<p>{filled}</p>")


def to_html(blocks: list[tuple]) -> list[str]:
    """HTML elements of blocks, one string per block."""
    return [_html_block(b) for b in blocks]


def page(title: str, sections: list[str]) -> str:
    """One self-contained HTML page: the stylesheet, an h1 and the sections (already HTML)."""
    t = escape.html(title)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{t}</title><style>{CSS}</style>"
            f"</head><body><h1>{t}</h1>\n" + "\n".join(sections) + "</body></html>")
