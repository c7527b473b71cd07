"""What the stages of one pipeline run share: the modes, the run's paths and its log."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

# Which stages each mode runs, in order (the stage functions are in workflow/stages.py).
FULL = ("setup", "simulate", "prepare", "preview", "vae", "export", "dit", "sample", "evaluate")
MODES = {
    "demo": FULL,  # the CPU demo profile on simulated data unless --preset/--data_root say otherwise
    "both": FULL,  # the same on your data and hardware preset
    "data": ("setup", "simulate", "prepare", "preview"),
    "vae": ("setup", "simulate", "prepare", "preview", "vae", "export"),
    "dit": ("setup", "dit", "sample", "evaluate"),  # needs the export and latent cache of a vae run
}


class StageIncomplete(RuntimeError):
    """A stage stopped cleanly before its end (time budget): rerunning the same command continues it."""


class PipelineContext:
    """Paths and bookkeeping shared by the stages of one run."""

    def __init__(self, cfg: DictConfig, command: str):
        self.cfg = cfg
        self.command = command
        self.work_dir = Path(cfg.run.work_dir)
        self.log: list[dict] = []

    @property
    def simulated_dir(self) -> Path:
        return self.work_dir / "simulated"

    @property
    def dataset_dir(self) -> Path:
        return Path(self.cfg.data.dataset_dir) if self.cfg.data.dataset_dir else self.work_dir / "dataset"

    @property
    def samples_dir(self) -> Path:
        return self.work_dir / "samples"

    @property
    def data_root(self) -> Path:
        return Path(self.cfg.data.data_root) if self.cfg.data.data_root else self.simulated_dir
