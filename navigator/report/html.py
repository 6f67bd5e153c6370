"""Tiny helpers for self-contained HTML reports (one file, images embedded as base64 PNG, no scripts)."""

from __future__ import annotations

import html

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1300px; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.4em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #bbb; padding: 3px 8px; text-align: left; }
th { background: #f0f0f0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #07702a; font-weight: 600; } .fail { color: #b00000; font-weight: 600; }
.note { color: #555; font-size: 0.9em; } img { max-width: 100%; }
"""


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def fmt(value, digits: int = 2) -> str:
    """Numbers rounded for reading; None as an em dash; booleans as ok/FAIL."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "ok" if value else "FAIL"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(rows: list, header: list | None = None, digits: int = 2) -> str:
    """An HTML table; cells are escaped; numbers right-aligned; 'ok'/'FAIL' coloured."""
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = []
        for v in row:
            text = fmt(v, digits)
            cls = "num" if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            if isinstance(v, bool):
                cls = "ok" if v else "fail"
            cells.append(f'<td class="{cls}">{esc(text)}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def metrics_table(metrics: dict, digits: int = 2) -> str:
    """Key/value table of a flat metrics dict (nested dicts are left out; give them their own table)."""
    return table([(k, v) for k, v in metrics.items() if not isinstance(v, (dict, list))], ["metric", "value"], digits)


def image(png_base64: str, alt: str = "") -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{png_base64}">'


def section(title: str, *parts: str) -> str:
    return f"<h2>{esc(title)}</h2>\n" + "\n".join(parts)


def paragraph(text: str, cls: str = "") -> str:
    return f'<p class="{esc(cls)}">{esc(text)}</p>' if cls else f"<p>{esc(text)}</p>"


def page(title: str, *sections: str) -> str:
    """A complete HTML document."""
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n<body>\n<h1>{esc(title)}</h1>\n"
            + "\n".join(sections) + "\n</body></html>\n")
