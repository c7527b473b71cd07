"""Reading what the stages wrote, without importing their code: JSON, CSV and the manifest, all tolerant.

A missing or half-written file (a run stopped early, a stage that never ran) reads as None or an empty list, so
the report can say "not run" instead of failing.
"""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Optional


def read_json(path) -> Optional[object]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_csv(path) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def number(text) -> Optional[float]:
    """A CSV cell as a finite float, else None."""
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def natural_key(text: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(text))]


class ManifestView:
    """manifest.csv + user_labels.json of a dataset folder, read as plain rows."""

    def __init__(self, dataset_dir):
        self.dir = Path(dataset_dir)
        self.rows = read_csv(self.dir / "manifest.csv")
        self.labels = read_json(self.dir / "user_labels.json") or {}
        self.data_root = Path(self.labels.get("data_root", "")) if self.labels.get("data_root") else None

    @property
    def exists(self) -> bool:
        return bool(self.rows)

    @property
    def people(self) -> list[str]:
        names = self.labels.get("person_names")
        return list(names) if names else sorted({r["person"] for r in self.rows}, key=natural_key)

    @property
    def conditions(self) -> list[str]:
        names = self.labels.get("condition_names")
        return list(names) if names else sorted({r["condition"] for r in self.rows}, key=natural_key)

    def image_path(self, row: dict) -> Optional[Path]:
        if self.data_root is None:
            return None
        return self.data_root / row["path"]

    def withheld_pairs(self) -> dict:
        """(person, condition) -> role ('test' or 'val') of the withheld pairs (the manifest's withheld column)."""
        pairs = {}
        for row in self.rows:
            if row.get("withheld"):
                pairs[(row["person"], row["condition"])] = row["withheld"]
        return pairs

    def rows_of(self, person: str, condition: Optional[str], splits=("train",)) -> list[dict]:
        return [r for r in self.rows if r["person"] == person and (condition is None or r["condition"] == condition)
                and r.get("split") in splits]


def latest_rows_by_step(rows: list[dict], step_key: str = "step") -> list[dict]:
    """Rows of a log a resumed run appended to: for each (step, event) the row written last, in step order."""
    kept: dict = {}
    for row in rows:
        step = number(row.get(step_key))
        if step is None:
            continue
        kept[(step, row.get("event", ""))] = row
    return [kept[k] for k in sorted(kept, key=lambda k: (k[0], k[1]))]


def series(rows: list[dict], x_key: str, y_key: str) -> tuple[list, list]:
    xs, ys = [], []
    for row in rows:
        x, y = number(row.get(x_key)), number(row.get(y_key))
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
    return xs, ys


def read_yaml(path) -> Optional[dict]:
    """A resolved config a stage saved (config.yaml), as plain dicts; None when missing or unreadable."""
    if not Path(path).is_file():
        return None
    try:
        from omegaconf import OmegaConf

        data = OmegaConf.to_container(OmegaConf.load(str(path)), resolve=False)
    except Exception:  # noqa: BLE001 - a report never fails on a config it only describes
        return None
    return data if isinstance(data, dict) else None


def dig(data, *keys, default=None):
    """data[k1][k2]... or default when any level is missing."""
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return default
        data = data[key]
    return data
