"""Step 6 as one call: the identification experiments, then the generation metrics, on one work dir.

Both parts use the manifest's splits: the test split is only ever tested on, epochs are chosen on validation.
The real-only 100 % classifier of the identification part is the feature network of the generation metrics.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from microdoppler_finetune.evaluation.generation.evaluate import evaluate_generation
from microdoppler_finetune.evaluation.identification.experiments import (
    DEFAULT_FRACTIONS,
    FEATURE_CLASSIFIER_DIR,
    METHODS,
    run_identification_experiments,
)
from microdoppler_finetune.evaluation.identification.training import IdentificationConfig

IDENTIFIABILITY_KEYS = (("real_classifier_on_generated", "generated_identified_by_real_classifier"),
                        ("reconstruction_classifier_on_generated", "generated_identified_behind_the_vae"))


@dataclass
class EvaluationRequest:
    """What step6 runs (its flags, or the pipeline's `evaluate` config section)."""

    dataset_dir: Path
    out_dir: Path  # <work_dir>/evaluation
    classifier_config: IdentificationConfig = field(default_factory=IdentificationConfig)
    generated: Optional[Path] = None
    fractions: Sequence[float] = DEFAULT_FRACTIONS
    methods: Sequence[str] = METHODS
    cross_condition: bool = True
    variants: Optional[List[str]] = None
    identification: bool = True
    generation_metrics: bool = True
    feature_classifier: Optional[str] = None  # default: the identification part's real-only 100 % classifier
    classification_accuracy_score: bool = True
    inception: bool = True
    inception_weights: Optional[str] = None
    vae_encoder: Optional[str] = None  # step5's export: adds identifiability behind the VA-VAE
    data_root: Optional[str] = None
    max_generated_per_person: Optional[int] = None
    command: Optional[str] = None


def run_evaluation(request: EvaluationRequest) -> dict:
    """Run both parts; returns a short summary (the full results are in the files each part writes)."""
    r = request
    identification_dir = Path(r.out_dir) / "identification"
    summary = {}
    if r.identification:
        results = run_identification_experiments(
            r.dataset_dir, r.generated, identification_dir, list(r.fractions), config=r.classifier_config,
            methods=list(r.methods), cross_condition=r.cross_condition, variants=r.variants, command=r.command,
            data_root=r.data_root, max_generated_per_person=r.max_generated_per_person)
        summary["identification_test_accuracy"] = {row["variant"]: round(row["test_accuracy"], 4)
                                                   for row in results["rows"]}
        summary["identification_dir"] = str(identification_dir)
    if r.generated is None or not r.generation_metrics:
        return summary
    classifier = r.feature_classifier
    saved = identification_dir / FEATURE_CLASSIFIER_DIR
    if classifier is None and (saved / "config.json").is_file():
        classifier = str(saved)
    metrics = evaluate_generation(
        r.dataset_dir, r.generated, Path(r.out_dir) / "generation", classifier=classifier,
        config=r.classifier_config, classification_accuracy_score=r.classification_accuracy_score,
        inception=r.inception, inception_weights=r.inception_weights, data_root=r.data_root,
        max_generated_per_person=r.max_generated_per_person, command=r.command, vae_encoder=r.vae_encoder)
    for key, name in IDENTIFIABILITY_KEYS:
        if key in metrics:
            ident = metrics[key]
            summary[name] = {"accuracy": round(ident["accuracy"], 4), "chance": round(ident["chance"], 4),
                             "real_test_accuracy": round(ident["real_test_accuracy"], 4), "images": ident["images"]}
    summary["generation_metrics"] = {k: metrics["overall"]["generated"].get(k) for k in
                                     ("fid", "kid", "precision", "recall", "density", "coverage")}
    if "classification_accuracy_score" in metrics:
        summary["classification_accuracy_score"] = metrics["classification_accuracy_score"]["test_accuracy"]
    return summary
