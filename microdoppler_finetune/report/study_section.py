"""The augmentation study, when one ran: work_dir/study/results.json and the PNG plots under work_dir/study/.

Rendered generically, so the study can add rows, columns and plots without a change here:

- a list of objects, or an object whose values are all objects (rows keyed by name), becomes a table;
- in a table, a cell holding {'mean', 'std', 'n'} reads 'mean ± std (n=k)'; a column of objects (e.g. accuracy
  per condition) becomes its own table (rows × the objects' keys); a column of lists of objects becomes one table
  per row; long texts and long lists (commands, file lists) go below the table;
- any other value becomes a key: value line.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

from microdoppler_finetune.report.html import (
    DONE,
    NOT_RUN,
    Section,
    bullet_list,
    details,
    esc,
    figure,
    kv_list,
    not_run,
    readable,
    table,
)
from microdoppler_finetune.report.images import file_uri
from microdoppler_finetune.report.readers import natural_key, read_json

MAX_ROWS = 200
MAX_FIGURES = 24
LONG_TEXT = 160  # longer cells (commands, file lists) go below the table
SUMMARY_KEYS = {"mean", "std", "n", "values", "min", "max", "seeds"}
FIRST_TABLES = ("rows", "goals")  # shown first when present; every other table follows in the file's order


def is_summary(value) -> bool:
    return isinstance(value, Mapping) and "mean" in value and set(value) <= SUMMARY_KEYS


def is_rows(value) -> bool:
    """A list of objects."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def is_keyed_rows(value) -> bool:
    """An object whose values are all objects (not mean/std cells): rows keyed by their name."""
    return (isinstance(value, Mapping) and bool(value) and not is_summary(value)
            and all(isinstance(v, Mapping) and not is_summary(v) for v in value.values()))


def _kind(values: list) -> str:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, Mapping) and not is_summary(v) for v in present):
        return "nested"
    if present and all(is_rows(v) for v in present):
        return "rowlists"
    if any(len(readable(v)) > LONG_TEXT for v in present):
        return "long"
    return "cell"


def rows_table(name: str, rows: list, keys: Optional[list] = None) -> str:
    """``rows`` (objects) as a table; ``keys``: a first column naming each row."""
    rows, keys = rows[:MAX_ROWS], (keys[:MAX_ROWS] if keys else None)
    columns: list = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    if keys:  # a column repeating each row's key (e.g. "name") adds nothing
        columns = [c for c in columns if not all(str(row.get(c)) == k for row, k in zip(rows, keys))]
    kinds = {c: _kind([row.get(c) for row in rows]) for c in columns}
    cells = [c for c in columns if kinds[c] == "cell"]
    headers = ([""] if keys else []) + cells
    lines = [([keys[i]] if keys else []) + [readable(row[c]) if c in row else "–" for c in cells]
             for i, row in enumerate(rows)]
    labels = keys or [str(i + 1) for i in range(len(rows))]
    count = f"{len(rows)} row{'' if len(rows) == 1 else 's'}"
    html = f"<div class=\"scroll\">{table(headers, lines, caption=f'{name} ({count})')}</div>"
    for column in columns:
        if kinds[column] == "nested":  # e.g. per condition: one table, rows x the inner keys
            inner = [row.get(column) or {} for row in rows]
            html += rows_table(f"{name}: {column}", inner, labels)
        elif kinds[column] == "rowlists":
            parts = "".join(rows_table(f"{labels[i]}: {column}", row[column]) for i, row in enumerate(rows)
                            if row.get(column))
            html += details(f"{name}: {column}", parts)
        elif kinds[column] == "long":
            html += details(f"{name}: {column}", bullet_list(f"{labels[i]}: {readable(row.get(column), 1000)}"
                                                             for i, row in enumerate(rows)))
    return html


def render_value(name: str, value) -> str:
    if is_rows(value):
        return rows_table(name or "results", value)
    if is_keyed_rows(value):
        return rows_table(name, list(value.values()), [str(k) for k in value])
    if isinstance(value, Mapping):
        simple = [(k, v) for k, v in value.items() if not (is_rows(v) or is_keyed_rows(v))]
        html = kv_list(simple) if simple else ""
        tables = [k for k, v in value.items() if is_rows(v) or is_keyed_rows(v)]
        tables.sort(key=lambda k: FIRST_TABLES.index(k) if k in FIRST_TABLES else len(FIRST_TABLES))
        for key in tables:
            html += render_value(f"{name}.{key}" if name else str(key), value[key])
        return html
    return kv_list([(name or "value", value)])


def build(work_dir: Path) -> Section:
    study_dir = Path(work_dir) / "study"
    results = read_json(study_dir / "results.json")
    figures = sorted(study_dir.rglob("*.png"), key=lambda p: natural_key(str(p.relative_to(study_dir))))
    if results is None and not figures:
        body = not_run("augmentation study", f"no {study_dir / 'results.json'} (optional: python -m "
                                             f"microdoppler_finetune.run_augmentation_study --work_dir WORK_DIR)")
        return Section("study", "Augmentation study", NOT_RUN, body, ["not run"])
    body, headline = "", []
    if results is not None:
        body += render_value("", results)
        rows = results.get("rows") if isinstance(results, Mapping) else results
        if is_rows(rows) or is_keyed_rows(rows):
            headline.append(f"{len(rows)} result rows")
        goals = results.get("goals") if isinstance(results, Mapping) else None
        if is_keyed_rows(goals):
            headline += [f"{'reached' if g.get('reached') else 'NOT reached'}: {g.get('goal', k)}"
                         for k, g in goals.items()]
    else:
        body += not_run("study table", f"{study_dir / 'results.json'} is missing or unreadable")
    for path in figures[:MAX_FIGURES]:
        body += figure(file_uri(path), str(path.relative_to(study_dir)))
    if figures:
        headline.append(f"{len(figures)} plot(s)")
    body = f"<p>{esc('Rows are mean ± std over seeds (n = number of seeds).')}</p>" + body
    return Section("study", "Augmentation study", DONE, body, headline or ["results.json present"])
