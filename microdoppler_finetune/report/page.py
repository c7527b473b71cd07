"""report.html: one self-contained page (inline CSS, images as data URIs, no script, no network) built from the
files the stages wrote. A part that did not run says "not run"; a part that cannot be drawn says why; neither
stops the page from being written."""
from __future__ import annotations

import datetime
import traceback
from pathlib import Path
from typing import Callable, Optional, Sequence

from microdoppler_finetune.report import dataset_section, dit_section, evaluation_section, study_section, vae_section
from microdoppler_finetune.report.html import DONE, NOT_RUN, PARTIAL, STYLE, Section, esc, fmt, kv_list, note, table
from microdoppler_finetune.report.unavailable import Fact, collect
from microdoppler_finetune.utils.files import atomic_write_text

TITLE = "Micro-Doppler pipeline report"


def stage_status(entry: dict) -> str:
    if "incomplete" in entry:
        return "stopped early: " + str(entry["incomplete"])
    if "failed" in entry:
        return "failed: " + str(entry["failed"])
    if "skipped" in entry:
        return "reused: " + str(entry["skipped"])
    return "done"


def run_table(log: Sequence[dict], stages: Sequence[str]) -> str:
    logged = {entry.get("stage"): entry for entry in log}
    names = list(stages) + [e.get("stage") for e in log if e.get("stage") not in stages]
    if not names:
        return note("No pipeline stage log (report.json): this page was built from the output folders alone, e.g. "
                    "after the step scripts of the Kaggle notebook.")
    rows = []
    for name in names:
        entry = logged.get(name)
        rows.append([name, entry.get("seconds") if entry else None, stage_status(entry) if entry else "not run"])
    return table(["stage", "seconds", "status"], rows, caption="Stages of this command, in order")


def unavailable_box(facts: Sequence[Fact]) -> str:
    if not facts:
        return ("<div class=\"box ok\" id=\"unavailable\"><h2>Nothing was missing</h2><p>No fallback was recorded: "
                "released weights, pretrained alignment target and LPIPS backbone were used where the stages need "
                "them.</p></div>")
    items = "".join(f"<li>{esc(f.text)} <small>(from {esc(', '.join(f.sources))})</small></li>" for f in facts)
    return ("<div class=\"box\" id=\"unavailable\"><h2>Not available in this run</h2>"
            "<p>These parts ran with stand-ins, so the numbers that depend on them show the machinery, not real "
            f"results:</p><ul>{items}</ul></div>")


def guarded(builder: Callable[[], object], key: str, title: str, strict: bool) -> list[Section]:
    """Build one part; an unexpected error becomes a visible note instead of a missing report."""
    try:
        built = builder()
    except Exception as error:  # noqa: BLE001 - the report must be written whatever one part holds
        if strict:
            raise
        detail = "".join(traceback.format_exception_only(type(error), error)).strip()
        return [Section(key, title, PARTIAL, note(f"This part could not be drawn: {detail}", "warn"),
                        [f"could not be drawn: {detail}"])]
    return list(built) if isinstance(built, tuple) else [built]


def build_sections(work_dir: Path, dataset_dir: Path, strict: bool = False) -> list[Section]:
    sections: list[Section] = []
    sections += guarded(lambda: dataset_section.build(work_dir, dataset_dir), "dataset", "Dataset", strict)
    sections += guarded(lambda: vae_section.build(work_dir), "vae", "VA-VAE", strict)
    sections += guarded(lambda: dit_section.build(work_dir, dataset_dir), "dit", "DiT training", strict)
    sections += guarded(lambda: evaluation_section.build(work_dir), "evaluation", "Evaluation", strict)
    sections += guarded(lambda: study_section.build(work_dir), "study", "Augmentation study", strict)
    return sections


def badge(status: str) -> str:
    klass = {DONE: "done", PARTIAL: "partial", NOT_RUN: "notrun"}.get(status, "partial")
    return f"<span class=\"badge {klass}\">{esc(status)}</span>"


def render_page(work_dir: Path, sections: Sequence[Section], facts: Sequence[Fact], *, log: Sequence[dict],
                stages: Sequence[str], mode: Optional[str], command: str, preset: str) -> str:
    written = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    total = sum(float(e.get("seconds") or 0) for e in log)
    header = kv_list([
        ("command", command or "unknown"),
        ("preset", preset or "unknown"),
        ("mode", mode or "step scripts"),
        ("work dir", str(Path(work_dir).resolve())),
        ("written", written + (f"; stages took {fmt(total / 60, 3)} min in this command" if total else "")),
    ])
    toc = "".join(f"<span><a href=\"#{esc(s.key)}\">{esc(s.title)}</a>{badge(s.status)}</span>" for s in sections)
    parts = [
        "<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        f"<title>{esc(TITLE)}</title><style>{STYLE}</style></head><body><main>",
        f"<h1>{esc(TITLE)}</h1>", header, unavailable_box(facts),
        f"<nav class=\"toc\"><b>Parts:</b> <span><a href=\"#run\">Run</a></span>{toc}</nav>",
        f"<section id=\"run\"><h2>Run</h2>{run_table(log, stages)}</section>",
    ]
    for section in sections:
        parts.append(f"<section id=\"{esc(section.key)}\"><h2>{esc(section.title)}{badge(section.status)}</h2>"
                     f"{section.body}</section>")
    parts.append("<p><small>Every image is embedded in this file; it needs no network and no other file. "
                  "report.md and report.json hold the same run as text.</small></p></main></body></html>")
    return "\n".join(parts)


def write_html(work_dir, *, log: Sequence[dict] = (), stages: Sequence[str] = (), mode: Optional[str] = None,
               command: str = "", preset: str = "", dataset_dir=None, strict: bool = False) -> tuple[Path, list, list]:
    """Write work_dir/report.html; returns its path, the sections and the 'not available' facts."""
    work_dir = Path(work_dir)
    dataset_dir = Path(dataset_dir) if dataset_dir else work_dir / "dataset"
    sections = build_sections(work_dir, dataset_dir, strict)
    facts = collect(work_dir, log)
    text = render_page(work_dir, sections, facts, log=log, stages=stages, mode=mode, command=command, preset=preset)
    path = atomic_write_text(work_dir / "report.html", text)
    return path, sections, facts
