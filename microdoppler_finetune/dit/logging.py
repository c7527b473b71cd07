"""Training log of the DiT: ``train_log.csv`` (fixed columns, one row per event), ``train_log.jsonl`` and TensorBoard
event files in ``<run_dir>/tensorboard`` (``tensorboard --logdir <run_dir>/tensorboard``).

Only rank 0 logs (``enabled``). Every numeric value of a row becomes a TensorBoard scalar at the row's step, under
``train/...`` or ``val/...`` (see :data:`SCALAR_TAGS`).
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Optional

LOG_COLUMNS = ("step", "event", "elapsed_s", "train_loss", "flow_loss", "velocity_mse", "cosine_loss",
               "contrastive_loss", "lr", "grad_norm",
               "val_loss", "val_loss_ema", "skipped_steps", "steps_per_s")
TENSORBOARD_DIRNAME = "tensorboard"
# Row column -> TensorBoard tag (columns not listed, e.g. elapsed_s, stay in the CSV only).
SCALAR_TAGS = {
    "train_loss": "train/loss", "flow_loss": "train/flow_loss", "velocity_mse": "train/velocity_mse",
    "cosine_loss": "train/cosine_loss", "contrastive_loss": "train/contrastive_loss", "lr": "train/lr",
    "grad_norm": "train/grad_norm", "skipped_steps": "train/skipped_steps", "steps_per_s": "train/steps_per_s",
    "val_loss": "val/loss", "val_loss_ema": "val/loss_ema",
}


class TrainLog:
    """Appends rows; a resumed run keeps appending to the same files (rows past the resume step are kept: the
    ``step`` column tells which run wrote what). TensorBoard hides the events of an earlier run past the resume
    step (``purge_step``), so its curves show what the checkpoints hold."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, resume_step: int = 0):
        self.csv_path = Path(run_dir) / "train_log.csv"
        self.jsonl_path = Path(run_dir) / "train_log.jsonl"
        self.tensorboard_dir = Path(run_dir) / TENSORBOARD_DIRNAME
        self.enabled = enabled
        self._resume_step = int(resume_step)
        self._writer = None
        if enabled and not self.csv_path.is_file():
            self.csv_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.csv_path, "w", newline="") as handle:
                csv.writer(handle).writerow(LOG_COLUMNS)

    @property
    def writer(self):
        """The SummaryWriter, opened on first use (rank 0 only)."""
        if self._writer is None and self.enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.tensorboard_dir), purge_step=self._resume_step or None)
        return self._writer

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        clean = {k: _finite_or_none(v) for k, v in row.items()}
        with open(self.csv_path, "a", newline="") as handle:
            csv.writer(handle).writerow(["" if clean.get(c) is None else clean.get(c) for c in LOG_COLUMNS])
        with open(self.jsonl_path, "a") as handle:
            handle.write(json.dumps(clean) + "\n")
        step = int(row["step"])
        for column, tag in SCALAR_TAGS.items():
            value = row.get(column)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag, float(value), global_step=step)

    def flush(self) -> None:
        """Write the buffered TensorBoard events (called at every checkpoint)."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _finite_or_none(value) -> Optional[object]:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_log(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "train_log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_tensorboard_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from the event files in ``<run_dir>/tensorboard`` (TensorBoard's own reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(Path(run_dir) / TENSORBOARD_DIRNAME), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}
