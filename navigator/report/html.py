"""The HTML kit of every report page: one self-contained file, one shared stylesheet, pictures embedded as
base64 PNG, no scripts.

Every piece returns HTML text and escapes what it is given (text is never trusted to be markup); a
:class:`Cell` carries a table cell whose text is already formatted (a signed depth, a coloured verdict).
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass

import numpy as np

STYLESHEET = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1300px; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.4em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1.0em; margin-top: 1.1em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #bbb; padding: 3px 8px; text-align: left; }
th { background: #f0f0f0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.bad td { background: #fdd; }
.ok { color: #07702a; font-weight: 600; } .fail { color: #b00000; font-weight: 600; }
.note { color: #555; font-size: 0.9em; } img { max-width: 100%; border: 1px solid #ddd; margin: 4px 0; }
"""


@dataclass(frozen=True)
class Cell:
    """A table cell whose ``text`` is already formatted (it is still escaped); ``cls`` is its CSS class."""

    text: str
    cls: str = ""


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def fmt(value, digits: int = 2) -> str:
    """Numbers rounded for reading; None as an em dash; booleans as ok/FAIL; number lists as (x, y, z)."""
    if value is None:
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "ok" if value else "FAIL"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}f}"
    if isinstance(value, np.integer):
        return str(int(value))
    if isinstance(value, (list, tuple, np.ndarray)) and len(value) and all(_is_number(v) for v in value):
        return "(" + ", ".join(fmt(v, digits) for v in value) + ")"
    return str(value)


def num(value, spec: str = "{:.1f}") -> Cell:
    """A right-aligned number formatted with ``spec`` (``"{:+.1f}"`` for a signed depth); None as a dash."""
    return Cell("—" if value is None else spec.format(value), "num")


def flag(ok, yes: str = "yes", no: str = "NO") -> Cell:
    """A verdict cell: ``yes`` in green when ``ok``, ``no`` in red otherwise."""
    return Cell(yes, "ok") if ok else Cell(no, "fail")


def _cell(value, digits: int) -> str:
    if isinstance(value, Cell):
        text, cls = value.text, value.cls
    else:
        text = fmt(value, digits)
        cls = "num" if _is_number(value) else ""
        if isinstance(value, (bool, np.bool_)):
            cls = "ok" if value else "fail"
    return f'<td class="{cls}">{esc(text)}</td>' if cls else f"<td>{esc(text)}</td>"


def table(rows, header=None, digits: int = 2, bad_rows=None) -> str:
    """A table of ``rows`` (sequences of values or :class:`Cell`); numbers right-aligned, booleans as a
    coloured ok/FAIL; ``bad_rows``: one flag per row, True shades the row (a needle out of tolerance)."""
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
    bad = list(bad_rows) if bad_rows is not None else []
    for n, row in enumerate(rows):
        tr = '<tr class="bad">' if n < len(bad) and bad[n] else "<tr>"
        out.append(tr + "".join(_cell(v, digits) for v in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def metrics_table(metrics: dict, digits: int = 2, header=("metric", "value")) -> str:
    """Key/value table of a flat metrics dict (nested dicts are left out; give them their own table)."""
    return table([(k, v) for k, v in metrics.items() if not isinstance(v, (dict, list))], list(header), digits)


def image(png, alt: str = "") -> str:
    """An embedded picture: ``png`` as the PNG's bytes or as base64 text."""
    if isinstance(png, (bytes, bytearray)):
        png = base64.b64encode(png).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{png}">'


def section(title: str, *parts: str) -> str:
    return f"<h2>{esc(title)}</h2>\n" + "\n".join(p for p in parts if p)


def subsection(title: str, *parts: str) -> str:
    return f"<h3>{esc(title)}</h3>\n" + "\n".join(p for p in parts if p)


def paragraph(text: str, cls: str = "") -> str:
    return f'<p class="{esc(cls)}">{esc(text)}</p>' if cls else f"<p>{esc(text)}</p>"


def note(text: str) -> str:
    """A small grey explanatory paragraph (what the colours of a picture mean...)."""
    return paragraph(text, "note")


def bullets(items, empty: str = "none") -> str:
    """A bulleted list of texts; ``empty`` as the only item when there are none."""
    items = list(items) or [empty]
    return "<ul>" + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>"


def unavailable(what: str, exc: BaseException) -> str:
    """The place of a picture that could not be drawn, saying why (a report is written all the same)."""
    return paragraph(f"{what} unavailable: {exc}", "fail")


def page(title: str, *sections: str, heading: str | None = None) -> str:
    """A complete HTML document: ``title`` in the tab, ``heading`` (default the title) as its <h1>."""
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{STYLESHEET}</style></head>\n<body>\n"
            f"<h1>{esc(heading if heading is not None else title)}</h1>\n"
            + "\n".join(s for s in sections if s) + "\n</body></html>\n")
