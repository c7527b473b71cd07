"""Small HTML building blocks of the report: escaping, tables, key/value lists, figures, notes.

Every function returns a string of HTML; text is escaped unless it is a :class:`Raw` (already built HTML).
Numbers go through :func:`fmt`, so every table rounds the same way.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Sequence

EMPTY = "–"


DONE, PARTIAL, NOT_RUN = "done", "partial", "not run"


class Raw(str):
    """HTML that is inserted as is (built by the functions of this module)."""


@dataclass
class Section:
    """One part of the report: its HTML body, a status for the table of contents, and short headline lines
    (the same facts in words, for report.md)."""

    key: str
    title: str
    status: str  # DONE, PARTIAL or NOT_RUN
    body: str
    headline: list = field(default_factory=list)


def esc(value) -> str:
    return value if isinstance(value, Raw) else html.escape(str(value), quote=True)


def fmt(value, digits: int = 4) -> str:
    """A readable number: 4 significant digits, no float noise; None -> '–'; mean/std/n dicts -> 'm ± s (n=k)'."""
    if value is None or value == "":
        return EMPTY
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value == 0:
            return "0"
        if abs(value) >= 10 ** digits:
            return f"{value:.0f}"
        return f"{value:.{digits}g}"
    if isinstance(value, Mapping) and "mean" in value:
        return mean_std(value, digits)
    return str(value)


def mean_std(value: Mapping, digits: int = 4) -> str:
    """{'mean': m, 'std': s, 'n': k} -> 'm ± s (n=k)' (the form the multi-seed rows use)."""
    text = fmt(value.get("mean"), digits)
    if value.get("std") is not None:
        text += f" ± {fmt(value.get('std'), 2 if digits > 2 else digits)}"
    if value.get("n") is not None:
        text += f" (n={value['n']})"
    return text


def readable(value, limit: int = 12) -> str:
    """Any JSON value as short text: numbers rounded, lists of scalars joined, dicts as 'key: value; ...'."""
    if isinstance(value, Mapping):
        if "mean" in value and set(value) <= {"mean", "std", "n", "min", "max", "values", "seeds"}:
            return mean_std(value)
        items = [f"{k}: {readable(v, limit)}" for k, v in list(value.items())[:limit]]
        if len(value) > limit:
            items.append(f"… {len(value) - limit} more")
        return "; ".join(items)
    if isinstance(value, (list, tuple)):
        if not value:
            return EMPTY
        shown = [readable(v, limit) for v in list(value)[:limit]]
        if len(value) > limit:
            shown.append(f"… {len(value) - limit} more")
        return ", ".join(shown)
    return fmt(value)


def flatten(value, prefix: str = "") -> list[tuple[str, str]]:
    """Nested dicts as (dotted key, readable value) pairs, for key: value lists."""
    if isinstance(value, Mapping) and not ("mean" in value and "std" in value):
        pairs = []
        for key, item in value.items():
            pairs.extend(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return pairs
    return [(prefix, readable(value))]


def table(headers: Sequence, rows: Iterable[Sequence], *, cls: str = "", caption: Optional[str] = None) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            text = esc(cell) if isinstance(cell, (str, Raw)) else esc(fmt(cell))
            numeric = isinstance(cell, (int, float)) and not isinstance(cell, bool)
            cells.append(f"<td class=\"num\">{text}</td>" if numeric else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<p class=\"cap\">{esc(caption)}</p>" if caption else ""
    klass = f" class=\"{esc(cls)}\"" if cls else ""
    return f"{cap}<table{klass}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def kv_list(pairs: Iterable[tuple[str, object]]) -> str:
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v) if isinstance(v, (str, Raw)) else esc(readable(v))}</dd>"
                    for k, v in pairs)
    return f"<dl class=\"kv\">{items}</dl>"


def figure(uri: Optional[str], caption: str, *, alt: str = "", width: Optional[int] = None) -> str:
    if uri is None:
        return note(f"{caption}: the image could not be read.", "warn")
    size = f" style=\"max-width:{int(width)}px\"" if width else ""
    return (f"<figure><img src=\"{uri}\" alt=\"{esc(alt or caption)}\"{size}>"
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def note(text, kind: str = "info") -> str:
    return f"<p class=\"note {esc(kind)}\">{esc(text)}</p>"


def not_run(what: str, why: str = "") -> str:
    return f"<p class=\"notrun\"><b>not run</b>: {esc(what)}{(' — ' + esc(why)) if why else ''}</p>"


def details(summary: str, body: str, *, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{esc(summary)}</summary>{body}</details>"


def bullet_list(items: Iterable) -> str:
    return "<ul>" + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>"


def code(text: str) -> Raw:
    return Raw(f"<code>{esc(text)}</code>")


def heat_table(matrix: Sequence[Sequence[float]], row_names: Sequence[str], col_names: Sequence[str], *,
               corner: str = "", normalise_rows: bool = True) -> str:
    """A matrix as a table with shaded cells (darker = larger share of its row): e.g. a confusion matrix."""
    head = f"<th>{esc(corner)}</th>" + "".join(f"<th>{esc(c)}</th>" for c in col_names)
    body = []
    for name, row in zip(row_names, matrix):
        total = sum(row) if normalise_rows else max(max(row, default=0), 1)
        cells = []
        for j, value in enumerate(row):
            share = (value / total) if total else 0.0
            diagonal = " diag" if j < len(col_names) and col_names[j] == name else ""
            colour = f"rgba(31,119,180,{min(max(share, 0.0), 1.0):.2f})"
            text_colour = "#fff" if share > 0.55 else "#111"
            cells.append(f"<td class=\"heat{diagonal}\" style=\"background:{colour};color:{text_colour}\" "
                         f"title=\"{esc(name)} → {esc(col_names[j] if j < len(col_names) else j)}: {fmt(value)}\">"
                         f"{esc(fmt(value))}</td>")
        body.append(f"<tr><th>{esc(name)}</th>{''.join(cells)}</tr>")
    return f"<div class=\"scroll\"><table class=\"heatmap\"><thead><tr>{head}</tr></thead>" \
           f"<tbody>{''.join(body)}</tbody></table></div>"


STYLE = """
body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;margin:0;color:#1b1f24;
background:#f6f7f9;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:18px 22px 60px}
h1{font-size:1.6em;margin:.2em 0}
h2{font-size:1.3em;border-bottom:2px solid #d0d7de;padding-bottom:4px;margin:.7em 0 .5em}
h3{font-size:1.08em;margin:1.2em 0 .4em}
section{background:#fff;border:1px solid #d8dee4;border-radius:8px;padding:4px 18px 14px;margin:18px 0}
table{border-collapse:collapse;margin:6px 0 12px;font-size:.88em}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
thead th{background:#eef1f4}
td.num{text-align:right;font-variant-numeric:tabular-nums}
p.cap{font-weight:600;font-size:.9em;margin:10px 0 2px}
figure{margin:8px 0 14px;display:inline-block;vertical-align:top;max-width:100%}
figure img{max-width:100%;border:1px solid #d0d7de;image-rendering:auto}
figcaption{font-size:.82em;color:#57606a}
dl.kv{display:grid;grid-template-columns:fit-content(24em) 1fr;gap:2px 14px;font-size:.9em;margin:6px 0 10px}
dl.kv dt{color:#57606a}
dl.kv dd{margin:0;word-break:break-word}
.note{padding:6px 10px;border-radius:6px;font-size:.9em}
.note.info{background:#eef6ff;border:1px solid #b6d4fe}
.note.warn{background:#fff8e1;border:1px solid #f0c36d}
.notrun{padding:6px 10px;border-radius:6px;background:#f1f1f1;border:1px dashed #9aa4ae;color:#444}
.box{border:2px solid #d1242f;background:#fff0f0;border-radius:8px;padding:8px 16px;margin:14px 0}
.box h2{border:none;margin:.2em 0;color:#a40e26}
.box.ok{border-color:#2da44e;background:#effaf1}
.box.ok h2{color:#116329}
.toc{line-height:2}
.toc span{white-space:nowrap;margin-right:14px}
.badge{display:inline-block;font-size:.75em;padding:1px 7px;border-radius:10px;margin-left:6px;vertical-align:middle}
.badge.done{background:#dafbe1;color:#116329}
.badge.partial{background:#fff8c5;color:#7d4e00}
.badge.notrun{background:#eaeef2;color:#57606a}
.scroll{overflow-x:auto}
table.heatmap td{text-align:center;min-width:2.2em;padding:2px 4px}
table.heatmap td.diag{outline:2px solid #2da44e;outline-offset:-2px}
table.pairs td{vertical-align:middle}
table.pairs img{display:block;border:1px solid #d0d7de}
tr.unseen{background:#fff4e5}
.tag{font-size:.75em;padding:1px 6px;border-radius:4px;background:#ffd8a8;color:#6b3b00;white-space:nowrap}
code{background:#f2f4f7;padding:1px 4px;border-radius:4px;font-size:.88em;word-break:break-all}
details{margin:6px 0}
summary{cursor:pointer;color:#0969da}
"""
