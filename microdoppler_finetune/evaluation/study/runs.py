"""One classifier training of the study ("a run"): what it trains on, how, and what it scores.

A run is described by a :class:`RunSpec`; its result is written to ``<study>/runs/<id>.json`` as soon as it is
done, so an interrupted study resumes run by run. Tuning runs are scored on validation only; only the final
rows (``test=True``) ever look at the test split.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch

from microdoppler_finetune.evaluation.identification.images import LabelledImages
from microdoppler_finetune.evaluation.identification.training import (
    IdentificationConfig,
    accuracy_report,
    predict_logits,
    train_classifier,
)
from microdoppler_finetune.evaluation.study.data import StudyData
from microdoppler_finetune.utils.files import atomic_write_json


@dataclass(frozen=True)
class GeneratedSpec:
    """Which generated images a run adds: pool (guidance scale, sampling seed), amount and quality filter."""

    scale: float
    amount: float  # generated / real training images
    threshold: float = 0.0  # keep images the real-trained classifier gives at least this probability
    pairs: str = "unseen"


@dataclass(frozen=True)
class RunSpec:
    group: str  # the table or curve the run belongs to, e.g. "tune:recipe", "test", "cross"
    label: str  # its row in that table, e.g. "lr2e-3", "real+generated"
    recipe: Dict[str, object] = field(default_factory=dict)  # IdentificationConfig overrides
    augmentation: Optional[Dict[str, object]] = None  # None: no conventional augmentation
    generated: Optional[GeneratedSpec] = None
    seed: int = 0
    train_conditions: Optional[Tuple[str, ...]] = None  # real training images of these conditions only
    real: bool = True  # False: generated images only (the classification accuracy score)
    test: bool = False  # score on the test split too (final rows only)

    def key(self) -> str:
        """The run's file name: what it trains on and how (not the table it is shown in), so the same run asked
        for by two tables is trained once. Tuning runs are "tune_*", runs that score the test split "test_*"."""
        content = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("group", "label")}
        digest = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:12]
        return f"{'test' if self.test else 'tune'}_s{self.seed}_{digest}"


def scores(model, data: LabelledImages, names, conditions) -> dict:
    if len(data) == 0:
        return {"accuracy": None, "images": 0}
    predicted = predict_logits(model, data).argmax(1)
    report = accuracy_report(predicted, data, names, conditions)
    correct = (predicted == data.person_ids).tolist()
    cells: Dict[str, list] = {}  # "person|condition" -> [correct, images]: any subset's accuracy can be rebuilt
    for ok, p, c in zip(correct, data.person_ids.tolist(), data.condition_ids.tolist()):
        cell = cells.setdefault(f"{names[p]}|{conditions[c]}", [0, 0])
        cell[0] += int(ok)
        cell[1] += 1
    return {"accuracy": report["accuracy"], "images": report["images"],
            "per_person": {k: v["accuracy"] for k, v in report["per_person"].items()},
            "per_condition": {k: v["accuracy"] for k, v in report["per_condition"].items()},
            "cells": cells, "confusion_matrix": report["confusion_matrix"]}


class RunBook:
    """Runs and their cached results in ``<study>/runs``."""

    def __init__(self, folder: Path, data: StudyData, base: IdentificationConfig, log: Callable[[str], None] = print):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.data, self.base, self.log = data, base, log

    def config_for(self, spec: RunSpec) -> IdentificationConfig:
        values = {**dataclasses.asdict(self.base), **spec.recipe, **(spec.augmentation or {}), "seed": spec.seed}
        return IdentificationConfig(**values)

    def run(self, spec: RunSpec, generated: Optional[LabelledImages] = None) -> dict:
        """The run's result (from the cache when it was done before with the same spec)."""
        path = self.folder / f"{spec.key()}.json"
        if path.is_file():
            return json.loads(path.read_text())
        data, config = self.data, self.config_for(spec)
        conditions = list(spec.train_conditions) if spec.train_conditions else None
        train = data.subset("train", conditions=conditions)
        val = data.subset("val", conditions=conditions)
        sources = ([train] if spec.real else []) + ([generated] if generated is not None and len(generated) else [])
        started = time.time()
        torch.manual_seed(spec.seed)
        model, history = train_classifier(sources, val, num_classes=len(data.person_names), config=config,
                                          augment=spec.augmentation is not None,
                                          forbidden_keys=data.splits["test"].keys, log=None)
        names, conds = data.person_names, data.condition_names
        result = {"spec": dataclasses.asdict(spec), "real_images": len(train) if spec.real else 0,
                  "generated_images": len(generated) if generated is not None else 0,
                  "best_epoch": history["best_epoch"], "epochs_run": len(history["epochs"]),
                  "val": scores(model, data.splits["val"], names, conds),
                  "val_withheld": scores(model, data.subset("val", withheld="val"), names, conds)}
        if spec.test:
            result["test"] = scores(model, data.splits["test"], names, conds)
            result["test_withheld"] = scores(model, data.subset("test", withheld="test"), names, conds)
            result["test_not_withheld"] = scores(model, data.subset("test", withheld=""), names, conds)
        result["seconds"] = round(time.time() - started, 1)
        atomic_write_json(path, result)
        self.log(f"  [{spec.group}] {spec.label} seed {spec.seed}: val {result['val']['accuracy']:.3f}"
                 + (f", val withheld {result['val_withheld']['accuracy']:.3f}" if result['val_withheld']['images']
                    else "")
                 + (f", test {result['test']['accuracy']:.3f}" if spec.test else "")
                 + f" ({result['generated_images']} generated, {result['seconds']} s)")
        return result

    def train_model(self, spec: RunSpec, folder: Path):
        """A classifier saved to ``folder`` (the real-data baseline used to score generated images)."""
        from models.classifier import load_classifier

        if (folder / "config.json").is_file():
            return load_classifier(folder)
        config = self.config_for(spec)
        model, _ = train_classifier([self.data.splits["train"]], self.data.splits["val"],
                                    num_classes=len(self.data.person_names), config=config,
                                    augment=spec.augmentation is not None,
                                    forbidden_keys=self.data.splits["test"].keys, log=None)
        model.save_pretrained(str(folder))
        return model
