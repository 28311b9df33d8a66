"""Self-contained HTML: inline CSS, images as base64 data URIs, no scripts, no network."""

from __future__ import annotations

import base64
import html
from typing import Iterable, Optional, Sequence

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
 padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;
 margin-top:1.8em} .sub{color:#666}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em} th,td{border:1px solid #ddd;padding:.25em .6em}
th{background:#f4f4f4;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
td.best{font-weight:bold;background:#eef7ee}
img,video{max-width:100%;height:auto;border:1px solid #eee;margin:.3em 0}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.85em}
.missing{background:#fff6e5;border-left:4px solid #f0a020;padding:.5em 1em;margin:.6em 0}
.warn{background:#fdecea;border-left:4px solid #d33;padding:.5em 1em;margin:.6em 0}
figure{margin:.6em 0} figcaption{color:#555;font-size:.9em}
"""


def esc(x) -> str:
    """``str(x)`` HTML-escaped, quotes included."""
    return html.escape(str(x), quote=True)


def data_uri(data: bytes, mime: str) -> str:
    """``data`` as a base64 ``data:`` URI of type ``mime``."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def img(data: bytes, alt: str, mime: str = "image/png", caption: Optional[str] = None) -> str:
    """An inline ``<img>`` of ``data``, in a ``<figure>`` with ``caption`` when one is given."""
    tag = f'<img src="{data_uri(data, mime)}" alt="{esc(alt)}">'
    return f"<figure>{tag}<figcaption>{esc(caption)}</figcaption></figure>" if caption else tag


def video(data: bytes, mime: str, caption: str) -> str:
    """An inline looping, muted, autoplaying ``<video>`` of ``data`` in a ``<figure>`` with ``caption``."""
    return (f'<figure><video controls autoplay loop muted playsinline src="{data_uri(data, mime)}"></video>'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def fmt(v) -> str:
    """Floats with 4 decimals (4 significant digits from 1e5 up); ints as ints; None as ""."""
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1e5 else f"{v:.4g}"
    return str(v)


def table(header: Sequence[str], rows: Iterable[Sequence], best: Optional[set] = None) -> str:
    """``best``: {(row index, column index)} cells to highlight."""
    best = best or set()
    out = ["<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"]
    for i, row in enumerate(rows):
        cells = []
        for j, v in enumerate(row):
            cls = ["num"] if isinstance(v, (int, float)) and not isinstance(v, bool) else []
            if (i, j) in best:
                cls.append("best")
            attr = f' class="{" ".join(cls)}"' if cls else ""
            cells.append(f"<td{attr}>{esc(fmt(v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def missing(text: str) -> str:
    """``text`` in a paragraph of class ``missing`` (an orange note)."""
    return f'<p class="missing">{esc(text)}</p>'


def warning(text: str) -> str:
    """``text`` in a paragraph of class ``warn`` (a red note)."""
    return f'<p class="warn">{esc(text)}</p>'


def details(summary: str, body: str) -> str:
    """A collapsed ``<details>`` titled ``summary``, with ``body`` as preformatted text."""
    return f"<details><summary>{esc(summary)}</summary><pre>{esc(body)}</pre></details>"


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str]]) -> str:
    """A whole document; ``sections``: [(heading, inner html)]."""
    body = "\n".join(f'<section><h2>{esc(h)}</h2>\n{inner}\n</section>' for h, inner in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n"
            f'<h1>{esc(title)}</h1><p class="sub">{esc(subtitle)}</p>\n{body}\n</body></html>\n')
