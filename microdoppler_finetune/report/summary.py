"""The run's summary: report.md (readable: one row per stage with key: value cells, then each part's headline
numbers), report.json (the stage log, machine-readable) and report.html (the page with every figure).

    write_report(work_dir, log, mode=..., command=..., preset=...)     # what workflow/run.py calls
    python -m microdoppler_finetune.report [WORK_DIR]                  # rebuild from the output folders alone
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional, Sequence

from microdoppler_finetune.report.html import NOT_RUN, Section, flatten, fmt
from microdoppler_finetune.report.page import write_html
from microdoppler_finetune.report.unavailable import Fact
from microdoppler_finetune.utils.files import atomic_write_text

MAX_CELL_ITEMS = 14  # key: value pairs in one report.md cell; the rest are in report.json


def _short_path(text: str, work_dir: Path) -> str:
    """Paths inside the work dir written relative to it (the cells stay short)."""
    root = str(Path(work_dir).resolve())
    return text.replace(root + "/", "").replace(str(work_dir) + "/", "") if isinstance(text, str) else text


def result_cell(entry: dict, work_dir: Path) -> str:
    """A stage's result as 'key: value' pairs (nested keys dotted, numbers rounded), escaped for a table cell."""
    rest = {k: v for k, v in entry.items() if k not in ("stage", "seconds")}
    pairs = flatten(rest)
    shown = [f"{key}: {_short_path(value, work_dir)}" for key, value in pairs[:MAX_CELL_ITEMS]]
    if len(pairs) > MAX_CELL_ITEMS:
        shown.append(f"… {len(pairs) - MAX_CELL_ITEMS} more in report.json")
    return "<br>".join(shown).replace("|", "\\|").replace("\n", " ") or "–"


def render_markdown(work_dir: Path, log: Sequence[dict], sections: Sequence[Section], facts: Sequence[Fact], *,
                    stages: Sequence[str], mode: Optional[str], command: str, preset: str) -> str:
    lines = [f"# Pipeline report ({mode or 'step scripts'})", "", f"Command: `{command or 'unknown'}`", "",
             f"Preset: {preset or 'unknown'}; work dir: {Path(work_dir).resolve()}", "",
             "Open `report.html` (next to this file) for every figure: one self-contained page.", ""]
    if facts:
        lines += ["## Not available in this run", ""] + [f"- {f.text} ({', '.join(f.sources)})" for f in facts] + [""]
    logged = {entry.get("stage"): entry for entry in log}
    names = list(stages) + [e.get("stage") for e in log if e.get("stage") not in stages]
    if names:
        lines += ["## Stages", "", "| stage | seconds | result |", "|---|---|---|"]
        for name in names:
            entry = logged.get(name)
            if entry is None:
                lines.append(f"| {name} | – | not run |")
            else:
                lines.append(f"| {name} | {fmt(entry.get('seconds'))} | {result_cell(entry, work_dir)} |")
        lines.append("")
    lines += ["## Results", ""]
    for section in sections:
        status = "" if section.status != NOT_RUN else " (not run)"
        lines.append(f"### {section.title}{status}")
        lines += [f"- {line}" for line in section.headline] + [""]
    return "\n".join(lines)


def write_report(work_dir: Path, log: Sequence[dict], *, mode: str, command: str, preset: str,
                 stages: Sequence[str] = (), dataset_dir=None) -> Path:
    """report.json (the stage log), report.html and report.md; returns the path of report.md.

    ``stages``: every stage of the mode, so the ones that did not run are listed as such.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    log = list(log)
    atomic_write_text(work_dir / "report.json", json.dumps(log, indent=2, default=str))
    html_path, sections, facts = write_html(work_dir, log=log, stages=stages, mode=mode, command=command,
                                            preset=preset, dataset_dir=dataset_dir)
    path = atomic_write_text(work_dir / "report.md", render_markdown(
        work_dir, log, sections, facts, stages=stages, mode=mode, command=command, preset=preset))
    print(f"\nReport written to {html_path} (open it in a browser; every figure is inside) and {path}", flush=True)
    return path


def previous_header(work_dir: Path) -> dict:
    """mode, command and preset of the last pipeline run, from its report.md (for rebuilding the page later)."""
    path = Path(work_dir) / "report.md"
    text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    found = {}
    for key, pattern in (("mode", r"^# Pipeline report \((.+)\)$"), ("command", r"^Command: `(.*)`$"),
                         ("preset", r"^Preset: ([^;]+);")):
        match = re.search(pattern, text, re.MULTILINE)
        if match and match.group(1) not in ("unknown", "step scripts"):
            found[key] = match.group(1)
    return found


def rebuild_report(work_dir, *, command: Optional[str] = None, preset: Optional[str] = None,
                   mode: Optional[str] = None, dataset_dir=None) -> Path:
    """report.html and report.md from the output folders (and report.json when a pipeline run wrote one)."""
    work_dir = Path(work_dir)
    previous = previous_header(work_dir)
    log_file = work_dir / "report.json"
    try:
        log = json.loads(log_file.read_text()) if log_file.is_file() else []
    except ValueError:
        log = []
    log = log if isinstance(log, list) else []
    mode = mode or previous.get("mode")
    command = command or previous.get("command", "")
    preset = preset or previous.get("preset") or preset_of_run(work_dir)
    html_path, sections, facts = write_html(work_dir, log=log, mode=mode, command=command, preset=preset,
                                            dataset_dir=dataset_dir)
    atomic_write_text(work_dir / "report.md", render_markdown(work_dir, log, sections, facts, stages=(), mode=mode,
                                                              command=command, preset=preset))
    print(f"Report written to {html_path} and {work_dir / 'report.md'}", flush=True)
    return html_path


def preset_of_run(work_dir: Path) -> str:
    """run.preset of a config a stage saved (pipeline, VA-VAE stage, DiT), '' when none is found."""
    candidates = sorted(work_dir.glob("pipeline_*_config.yaml")) + sorted(work_dir.glob("vae/*/config.yaml")) + \
        [work_dir / "dit" / "config.yaml"]
    for path in candidates:
        if path.is_file():
            match = re.search(r"^run:\n(?:  .*\n)*?  preset: (\S+)", path.read_text(errors="replace"), re.MULTILINE)
            if match:
                return match.group(1)
    return ""
