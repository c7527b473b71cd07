"""The stage schedule (data from the schedule YAML) and the run folder each stage writes.

A stage's folder is ``<work_dir>/vae/<stage name>/``::

    config.yaml          resolved config of the run (written at the stage's first start)
    stage_result.json    status, chosen (best validation metric) and last checkpoints, metrics, alignment target
    checkpoints/         last.ckpt (full training state) and epoch=NNN-val_psnr=XX.XX.ckpt (weights only)
    logs/                version_N/: metrics.csv and a TensorBoard event file of one run segment (a resumed run
                         adds a version); x values are autoencoder steps. `tensorboard --logdir <work_dir>`
    reconstructions/     epoch_NNN.png: fixed validation inputs above, reconstructions below
    loss_curves.png      every logged loss term and adaptive weight

Later stages and later pipeline steps find checkpoints only through ``stage_result.json``.

One unit: every step count of the schedule (``disc_start``), the config (``stop_after_ae_steps``,
``checkpoint_every_n_steps``, ``log_every_n_steps``), the logs and the progress bar is an autoencoder optimizer
step. The official code counts Lightning's global step instead, which advances twice per batch; ``disc_start``
S here is its global step 2·S − 1 (``official_disc_start`` / ``disc_start_from_official``).
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from microdoppler_finetune.config import REPO_ROOT, VAEStageConfig
from microdoppler_finetune.utils.files import atomic_write_json
from microdoppler_finetune.utils.plain import to_plain

STAGE_FIELDS = tuple(VAEStageConfig.__dataclass_fields__)
# init_from values that do not name an earlier stage.
INIT_PRETRAINED = "pretrained"
INIT_RANDOM = "random"

STATUS_FINISHED = "finished"
STATUS_RUNNING = "running"
STATUS_INTERRUPTED = "interrupted"  # time budget or stop_after_ae_steps: rerun the same command to continue
STATUS_NONFINITE = "stopped_nonfinite"  # too many non-finite losses in a row: needs a change, not a rerun


# ----------------------------------------------------------------------------------------------- schedule


def schedule_path(name: str | Path) -> Path:
    """The schedule file: as given, else relative to the repository (the default is a repo-relative path)."""
    path = Path(name)
    for candidate in (path, REPO_ROOT / path, Path(__file__).parent / path.name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"Stage schedule {name} not found (looked in the current folder and in {REPO_ROOT}). Set "
        f"vae_train.schedule to a YAML file with a vae_train.stages list, e.g. "
        f"vae_training/vavae_microdoppler_config.yaml."
    )


def _check_stage(stage: dict, where: str) -> None:
    missing = [k for k in STAGE_FIELDS if stage.get(k) is None or stage.get(k) == "???"]
    if missing:
        raise ValueError(f"{where}: stage '{stage.get('name', '?')}' lacks {', '.join(missing)}. Every stage "
                         f"states all of: {', '.join(STAGE_FIELDS)}.")
    _refuse_unknown_fields(stage, where, stage["name"])
    if int(stage["epochs"]) < 1 or float(stage["learning_rate"]) <= 0 or int(stage["disc_start"]) < 0:
        raise ValueError(f"{where}: stage '{stage['name']}' needs epochs >= 1, learning_rate > 0, disc_start >= 0.")


def _refuse_unknown_fields(fields: dict, where: str, name: str) -> None:
    """A misspelled stage field is an error naming the closest valid one (difflib), never silently ignored."""
    import difflib

    unknown = sorted(set(fields) - set(STAGE_FIELDS))
    if unknown:
        guesses = [f"'{k}' (did you mean '{close[0]}'?)" if close else f"'{k}'" for k in unknown
                   for close in [difflib.get_close_matches(k, STAGE_FIELDS, n=1, cutoff=0.5)]]
        raise ValueError(f"{where}: stage '{name}' has unknown field(s) {', '.join(guesses)}; "
                         f"allowed: {', '.join(STAGE_FIELDS)}.")


def disc_start_from_official(global_step: int) -> int:
    """Our disc_start (autoencoder steps) for an official disc_start (Lightning global steps, two per batch).

    Official rule, at batch k (0-based, one autoencoder and one discriminator step per batch): the generator's
    GAN term is on when 2k >= D, the discriminator learns when 2k + 1 >= D (its update comes one global step
    later). Ours with S = (D + 1) // 2: the GAN term is on when k >= S, the discriminator learns when k >= S − 1.
    Exact for odd D (5001 -> 2501, 50001 -> 25001, 1 -> 1); for even D the discriminator starts one step early.
    """
    return (max(0, int(global_step)) + 1) // 2


def official_disc_start(stage: dict) -> int:
    """The official disc_start (Lightning global steps) that starts the GAN where this stage's disc_start does."""
    return max(0, 2 * int(stage["disc_start"]) - 1)


def resolve_stages(cfg: DictConfig) -> list[dict]:
    """The stage list this config trains: the schedule, then stage_overrides, then run-wide lr/epochs."""
    train = cfg.vae_train
    if len(train.stages) > 0:
        raw = OmegaConf.to_container(train.stages, resolve=True, throw_on_missing=False)
        where = "vae_train.stages"
    else:
        path = schedule_path(train.schedule)
        loaded = OmegaConf.load(path)
        if "vae_train" not in loaded or "stages" not in loaded.vae_train:
            raise ValueError(f"{path} has no vae_train.stages list.")
        raw = OmegaConf.to_container(loaded.vae_train.stages, resolve=True)
        where = str(path)
    stages = [dict(s) for s in raw]
    names = [s.get("name") for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: stage names must be unique, got {names}.")
    overrides = OmegaConf.to_container(train.stage_overrides, resolve=True) if train.stage_overrides else {}
    for name, changes in overrides.items():
        if name not in names:
            raise ValueError(f"vae_train.stage_overrides names stage '{name}', but the schedule has {names}.")
        _refuse_unknown_fields(changes, f"vae_train.stage_overrides.{name}", name)
        stages[names.index(name)].update(changes)
    for stage in stages:
        if train.learning_rate is not None:
            stage["learning_rate"] = float(train.learning_rate)
        if train.epochs is not None:
            stage["epochs"] = int(train.epochs)
        _check_stage(stage, where)
        init = stage["init_from"]
        if init not in (INIT_PRETRAINED, INIT_RANDOM) and init not in names[: names.index(stage["name"])]:
            earlier = names[: names.index(stage["name"])]
            raise ValueError(f"{where}: stage '{stage['name']}' has init_from '{init}'; use '{INIT_PRETRAINED}', "
                             f"'{INIT_RANDOM}' or the name of an earlier stage ({earlier}).")
    return stages


def select_stages(stages: list[dict], selection: Optional[Sequence[int | str] | str]) -> list[dict]:
    """--stages 1,2,3 (1-based positions) or stage names; None: all."""
    if selection is None:
        return list(stages)
    if isinstance(selection, str):
        selection = [s for s in selection.replace(" ", "").split(",") if s]
    chosen = []
    for item in selection:
        text = str(item)
        if text.isdigit():
            index = int(text) - 1
            if not 0 <= index < len(stages):
                raise ValueError(f"--stages {text}: the schedule has stages 1..{len(stages)}.")
            chosen.append(stages[index])
        else:
            matches = [s for s in stages if s["name"] == text]
            if not matches:
                raise ValueError(f"--stages {text}: no such stage; the schedule has {[s['name'] for s in stages]}.")
            chosen.append(matches[0])
    order = [s["name"] for s in stages]
    return sorted({s["name"]: s for s in chosen}.values(), key=lambda s: order.index(s["name"]))


# ----------------------------------------------------------------------------------------------- time budget

_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)d)?\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*"
                       r"(?:(\d+(?:\.\d+)?)s?)?\s*$")


def parse_duration(text: Optional[str | float | int]) -> Optional[float]:
    """'11h30m', '90s', '1.5h', '45m', '3600' -> seconds; None/'' -> None."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return float(text)
    match = _DURATION.match(str(text).lower())
    if not match or not any(match.groups()):
        raise ValueError(f"Time budget '{text}' not understood: write e.g. 11h30m, 45m, 90s or 1.5h.")
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = days * 86400 + hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ValueError(f"Time budget '{text}' must be positive.")
    return total


# ----------------------------------------------------------------------------------------------- run folder


def next_log_version(logs_dir: Path) -> str:
    """The log folder name of a new run segment: version_<1 + the highest existing one>. Given to both loggers,
    so the CSV and TensorBoard logs of one segment share one folder."""
    numbers = [int(p.name[len("version_"):]) for p in Path(logs_dir).glob("version_*")
               if p.is_dir() and p.name[len("version_"):].isdigit()]
    return f"version_{max(numbers, default=-1) + 1}"


@dataclass
class StageResult:
    """What a stage leaves for the next stage and for step5 (``stage_result.json``)."""

    stage: str
    status: str
    chosen_checkpoint: Optional[str] = None  # best validation metric (weights only)
    last_checkpoint: Optional[str] = None  # full training state, for resuming
    monitor: str = "val_psnr"
    chosen_metric: Optional[float] = None
    epochs_done: int = 0
    ae_steps: int = 0
    global_step: int = 0
    alignment_target: str = ""
    perceptual: str = ""
    hardware: str = ""
    init_from: str = ""
    init_checkpoint: Optional[str] = None
    init_fingerprint: str = ""  # sha256 of the VA-VAE weights the stage started from
    message: str = ""
    nonfinite_skipped_total: int = 0
    amp_skipped_steps: int = 0  # 16-mixed: updates the grad scaler skipped (inf/nan scaled gradients)
    val_history: list = field(default_factory=list)  # one dict of validation metrics per epoch
    stage_config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class StageFolder:
    """Paths inside one stage's run folder."""

    RESULT = "stage_result.json"

    def __init__(self, vae_dir: str | Path, stage_name: str):
        self.root = Path(vae_dir) / stage_name
        self.name = stage_name

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def result_file(self) -> Path:
        return self.root / self.RESULT

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def reconstructions(self) -> Path:
        return self.root / "reconstructions"

    @property
    def loss_curves(self) -> Path:
        return self.root / "loss_curves.png"

    def read_result(self) -> Optional[StageResult]:
        if not self.result_file.is_file():
            return None
        try:
            data = json.loads(self.result_file.read_text())
        except json.JSONDecodeError as exc:
            raise RuntimeError(f"{self.result_file} is not valid JSON ({exc}). Delete it to retrain or resume "
                               f"the stage from {self.last_checkpoint}.") from exc
        known = set(StageResult.__dataclass_fields__)
        return StageResult(**{k: v for k, v in data.items() if k in known})

    def write_result(self, result: StageResult) -> Path:
        """Atomic write, so a kill mid-write never leaves a half file that later stages would trust."""
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.result_file, to_plain(result.to_dict()))
        return self.result_file

    def relative(self, path: Optional[str | Path]) -> Optional[str]:
        """Paths in stage_result.json are relative to the stage folder, so a moved work_dir still works."""
        if path is None or str(path) == "":
            return None
        path = Path(path)
        try:
            return str(path.resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(path.resolve())

    def resolve(self, path: Optional[str]) -> Optional[Path]:
        if not path:
            return None
        return Path(path) if Path(path).is_absolute() else self.root / path

    def is_finished(self) -> bool:
        result = self.read_result()
        return result is not None and result.status == STATUS_FINISHED

    def chosen_checkpoint(self) -> Path:
        """The checkpoint a later stage starts from; a clear error when the stage has not finished."""
        result = self.read_result()
        if result is None or result.status != STATUS_FINISHED:
            state = "has not run" if result is None else f"is '{result.status}' ({result.message})"
            raise RuntimeError(
                f"Stage '{self.name}' {state}: {self.result_file} does not name a finished stage. Run that stage "
                f"first (e.g. --stages with its number), or rerun the same command to resume it.")
        chosen = self.resolve(result.chosen_checkpoint)
        if chosen is not None and chosen.is_file():
            return chosen
        last = self.resolve(result.last_checkpoint)
        if last is not None and last.is_file():
            print(f"WARNING: stage '{self.name}': its chosen checkpoint {result.chosen_checkpoint} is missing; "
                  f"using its last checkpoint {last} instead.", flush=True)
            return last
        raise FileNotFoundError(
            f"{self.result_file} names {result.chosen_checkpoint} and {result.last_checkpoint}, but neither exists. "
            f"Restore the checkpoints or retrain stage '{self.name}'.")
