"""The dataset part of the report: people, conditions, recordings per split, problems, leak check, preview."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from microdoppler_finetune.report.html import (
    DONE,
    NOT_RUN,
    Section,
    details,
    esc,
    figure,
    kv_list,
    not_run,
    note,
    table,
)
from microdoppler_finetune.report.images import file_uri, strip_uri
from microdoppler_finetune.report.readers import ManifestView, read_csv, read_json

SPLITS = ("train", "val", "test", "gap")
MAX_PROBLEM_ROWS = 25
PREVIEW_PER_ROW = 8  # images per person (and condition) when the report draws its own preview
PREVIEW_ROWS = 24


def split_table(view: ManifestView) -> str:
    """Images and recordings per split, overall and per condition."""
    headers = ["", *[f"{s}: images (recordings)" for s in SPLITS]]

    def cell(rows, split):
        chosen = [r for r in rows if r.get("split") == split]
        recordings = {(r["person"], r["condition"], r.get("recording", "")) for r in chosen}
        return f"{len(chosen)} ({len(recordings)})"

    lines = [["all", *[cell(view.rows, s) for s in SPLITS]]]
    conditions = view.conditions
    if len(conditions) > 1:
        for condition in conditions:
            rows = [r for r in view.rows if r["condition"] == condition]
            lines.append([condition, *[cell(rows, s) for s in SPLITS]])
    return table(headers, lines, caption="Images (and recordings) per split")


def people_table(view: ManifestView) -> str:
    counts = {p: Counter() for p in view.people}
    for row in view.rows:
        counts.setdefault(row["person"], Counter())[row.get("split", "")] += 1
    rows = [[p, *[c.get(s, 0) for s in SPLITS], sum(c.values())] for p, c in counts.items()]
    return table(["person", *SPLITS, "images"], rows, caption="Images per person and split")


def problems_block(dataset_dir: Path) -> tuple[str, int]:
    rows = read_csv(dataset_dir / "problems.csv")
    if not rows:
        exists = (dataset_dir / "problems.csv").is_file()
        return note("No problem found: every image file was readable and usable." if exists
                    else "problems.csv is missing (written by step3)."), 0
    by_reason = Counter((r.get("severity", ""), r.get("reason", "")) for r in rows)
    summary = table(["severity", "reason", "files"], [[s, r, n] for (s, r), n in by_reason.most_common()],
                    caption=f"Problems found: {len(rows)} (every file in {dataset_dir / 'problems.csv'})")
    shown = [[r.get("path", ""), r.get("severity", ""), r.get("reason", ""), r.get("detail", "")]
             for r in rows[:MAX_PROBLEM_ROWS]]
    more = f" (first {MAX_PROBLEM_ROWS} of {len(rows)})" if len(rows) > MAX_PROBLEM_ROWS else ""
    return summary + details(f"The files{more}", table(["file", "severity", "reason", "detail"], shown)), len(rows)


def leak_block(summary: dict) -> str:
    leak = summary.get("leak_check") or {}
    if not leak:
        return ""
    leaks = leak.get("probable_leaks") or []
    text = (f"Content leak check: {leak.get('checked_frames', '?')} validation/test frames compared with the training "
            f"frames of the same person; probable leaks: {len(leaks) if leaks else 'none'}.")
    return note(text, "warn" if leaks else "info")


def withheld_block(view: ManifestView) -> str:
    pairs = view.withheld_pairs()
    if not pairs:
        return ""
    rows = [[p, c, role] for (p, c), role in sorted(pairs.items())]
    return table(["person", "condition", "held out in"], rows,
                 caption=f"Withheld person × condition pairs ({len(rows)}): never trained on; 'test' pairs are "
                         f"only tested on, 'val' pairs are where choices about unseen pairs are made")


def own_preview(view: ManifestView) -> str:
    """When the run has no preview.png (step3 alone does not draw one): a few images per person and condition,
    straight from the manifest."""
    rows = []
    for person in view.people:
        for condition in view.conditions:
            chosen = [r for r in view.rows if r["person"] == person and r["condition"] == condition
                      and r.get("split") in ("train", "val", "test")]
            if not chosen:
                continue
            step = max(1, len(chosen) // PREVIEW_PER_ROW)
            paths = [p for p in (view.image_path(r) for r in chosen[::step][:PREVIEW_PER_ROW]) if p and p.is_file()]
            uri = strip_uri(paths, 64)
            if uri:
                label = esc(person) + (f"<br><small>{esc(condition)}</small>" if len(view.conditions) > 1 else "")
                rows.append(f"<tr><td>{label}</td>"
                            f"<td><img src=\"{uri}\" alt=\"{esc(person)} {esc(condition)}\"></td></tr>")
    if not rows:
        return not_run("preview grid", "no preview.png and no readable image under the manifest's data root")
    more = len(rows) - PREVIEW_ROWS
    return (f"<table class=\"pairs\"><tbody>{''.join(rows[:PREVIEW_ROWS])}</tbody></table>"
            + (note(f"{more} more person × condition rows in the dataset.") if more > 0 else ""))


def build(work_dir: Path, dataset_dir: Path) -> Section:
    view = ManifestView(dataset_dir)
    preview = Path(work_dir) / "preview.png"
    if not view.exists:
        body = not_run("dataset split", f"no manifest at {dataset_dir / 'manifest.csv'} (step3 or the pipeline's "
                                        f"prepare stage writes it)")
        if preview.is_file():
            body += figure(file_uri(preview), "Dataset preview")
        return Section("dataset", "Dataset", NOT_RUN, body, ["not run"])
    summary = read_json(dataset_dir / "split_summary.json") or {}
    settings = summary.get("settings") or {}
    split_counts = Counter(r.get("split", "") for r in view.rows)
    recordings = {(r["person"], r["condition"], r.get("recording", "")) for r in view.rows}
    problems_html, problem_count = problems_block(dataset_dir)
    facts = [
        ("data root", str(view.data_root) if view.data_root else "unknown"),
        ("layout", view.labels.get("layout", "unknown")),
        ("people", f"{len(view.people)}: {', '.join(view.people[:40])}{' …' if len(view.people) > 40 else ''}"),
        ("walking conditions", f"{len(view.conditions)}: {', '.join(view.conditions)}"),
        ("images", f"{len(view.rows)} in {len(recordings)} recordings"),
        ("split", ", ".join(f"{s} {split_counts.get(s, 0)}" for s in SPLITS)),
        ("split settings", "; ".join(f"{k}: {v}" for k, v in settings.items() if k != "data_root") or "unknown"),
        ("problems found", problem_count),
        ("manifest", str(dataset_dir / "manifest.csv")),
    ]
    body = kv_list(facts) + split_table(view) + withheld_block(view)
    body += details("Images per person", people_table(view))
    body += "<h3>Problems found</h3>" + problems_html + leak_block(summary)
    body += "<h3>Preview</h3>"
    if preview.is_file():
        body += figure(file_uri(preview), f"{preview.name}: a few images per person (work_dir/preview.png)")
    else:
        body += own_preview(view)
    headline = [f"{len(view.people)} people, {len(view.conditions)} condition(s), {len(view.rows)} images "
                f"({', '.join(f'{s} {split_counts.get(s, 0)}' for s in ('train', 'val', 'test'))}); "
                f"{problem_count} problem file(s)"]
    return Section("dataset", "Dataset", DONE, body, headline)
