"""Training log of the DiT: ``train_log.csv`` (fixed columns, one row per event) and ``train_log.jsonl``."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Optional

LOG_COLUMNS = ("step", "event", "elapsed_s", "train_loss", "flow_loss", "velocity_mse", "cosine_loss",
               "contrastive_loss", "lr", "grad_norm",
               "val_loss", "val_loss_ema", "skipped_steps", "steps_per_s")


class TrainLog:
    """Appends rows; a resumed run keeps appending to the same files (rows past the resume step are kept: the
    ``step`` column tells which run wrote what)."""

    def __init__(self, run_dir: str | Path, enabled: bool = True):
        self.csv_path = Path(run_dir) / "train_log.csv"
        self.jsonl_path = Path(run_dir) / "train_log.jsonl"
        self.enabled = enabled
        if enabled and not self.csv_path.is_file():
            self.csv_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.csv_path, "w", newline="") as handle:
                csv.writer(handle).writerow(LOG_COLUMNS)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        clean = {k: _finite_or_none(v) for k, v in row.items()}
        with open(self.csv_path, "a", newline="") as handle:
            csv.writer(handle).writerow(["" if clean.get(c) is None else clean.get(c) for c in LOG_COLUMNS])
        with open(self.jsonl_path, "a") as handle:
            handle.write(json.dumps(clean) + "\n")


def _finite_or_none(value) -> Optional[object]:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_log(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "train_log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
