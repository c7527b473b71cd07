"""The one config schema of the pipeline.

Every default lives in a dataclass below. A run's config is built in this order, later wins:
schema defaults <- hardware preset (configs/<preset>.yaml) <- user YAML (--config) <- dotlist overrides
(``data.image_size=64``). The resolved config is written into each run folder (``save_config``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]
PRESET_DIR = REPO_ROOT / "configs"
PRESETS = ("cpu_demo", "p100", "t4x2", "gpu")


@dataclass
class RunConfig:
    work_dir: str = "work_dir"  # every stage writes under here; --kaggle moves it to /kaggle/working
    seed: int = 42
    preset: str = "cpu_demo"


@dataclass
class SimulateConfig:
    people: int = 31
    per_person: int = 150
    image_size: int = 256
    layout: str = "flat"  # flat: ID_n/*.jpg; conditions: <Condition>/ID_n/*.jpg
    seed: int = 0
    conditions: Optional[list] = None  # None: the simulator's default set


@dataclass
class DataConfig:
    data_root: Optional[str] = None  # None: the demo simulates a dataset into <work_dir>/simulated
    dataset_dir: Optional[str] = None  # manifest folder; None: <work_dir>/dataset
    image_size: int = 256  # size the models see; images are resized on load
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 0
    num_workers: int = 2
    # Off by default: a flipped spectrogram is time-reversed or Doppler-inverted, i.e. not a real sample.
    flip: bool = False


@dataclass
class PipelineConfig:
    run: RunConfig = field(default_factory=RunConfig)
    simulate: SimulateConfig = field(default_factory=SimulateConfig)
    data: DataConfig = field(default_factory=DataConfig)


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"Unknown hardware preset '{name}': {path} does not exist. Choose one of {', '.join(PRESETS)} "
            f"or pass a YAML file with --config."
        )
    return path


def load_config(
    preset: Optional[str] = None,
    config_path: Optional[str | Path] = None,
    overrides: Sequence[str] = (),
) -> DictConfig:
    """Build the resolved config; unknown keys are errors (a typo must not be silently ignored)."""
    cfg = OmegaConf.structured(PipelineConfig)
    if preset is not None:
        cfg = OmegaConf.merge(cfg, OmegaConf.load(preset_path(preset)))
        cfg.run.preset = preset
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise FileNotFoundError(f"Config file {path} does not exist.")
        cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    return cfg


def save_config(cfg: DictConfig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, path, resolve=True)
    return path


def to_plain(cfg: Any) -> Any:
    """Plain dicts/lists for checkpoints (nanoGPT style: no OmegaConf objects inside saved files)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg
