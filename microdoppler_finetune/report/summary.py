"""The run's machine-readable summary: report.md (a table, one row per stage) and report.json."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence


def write_report(work_dir: Path, log: Sequence[dict], *, mode: str, command: str, preset: str) -> Path:
    lines = [f"# Pipeline report ({mode})", "", f"Command: `{command}`", "",
             f"Preset: {preset}; work dir: {Path(work_dir).resolve()}", "",
             "| stage | seconds | result |", "|---|---|---|"]
    for entry in log:
        rest = {k: v for k, v in entry.items() if k not in ("stage", "seconds")}
        lines.append(f"| {entry['stage']} | {entry['seconds']} | {json.dumps(rest, default=str)[:300]} |")
    path = Path(work_dir) / "report.md"
    path.write_text("\n".join(lines) + "\n")
    (Path(work_dir) / "report.json").write_text(json.dumps(list(log), indent=2, default=str))
    print(f"\nReport written to {path}")
    return path
