"""Generation metrics: how close, how diverse, how useful and how original the generated spectrograms are.

All distribution metrics (generation/metrics.py) are computed in the feature space of the identification
classifier (models/classifier.py, ``features``: its pooled embedding), which works offline; the Inception FID is
added only when its weights are on this machine. Features are computed once and reused for the overall numbers,
the numbers per person and the memorisation check. Also measured:

- Classification accuracy score (CAS, Ravuri & Vinyals 2019): a classifier trained on generated images only
  (best epoch chosen on the real validation split) tested on the real test split.
- Identifiability: a classifier trained on real images names the person of each generated sample (and, behind
  the VA-VAE, one trained on round-tripped real images).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from microdoppler_finetune.evaluation.generation.metrics import (
    frechet_distance,
    kernel_inception_distance,
    memorisation_report,
    memorisation_summary,
    nearest_neighbours,
    precision_recall_density_coverage,
)
from microdoppler_finetune.evaluation.identification.images import (
    LabelledImages,
    load_generated_images,
    load_split_images,
)
from microdoppler_finetune.evaluation.identification.training import (
    IdentificationConfig,
    accuracy_report,
    predict_logits,
    train_classifier,
)
from microdoppler_finetune.utils.commands import reproducing_command
from microdoppler_finetune.utils.files import atomic_write_json, atomic_write_text
from microdoppler_finetune.utils.images import to_uint8
from microdoppler_finetune.utils.tensors import pick_device
from models.classifier import SpectrogramClassifier, load_classifier

METRICS_JSON = "generation_metrics.json"
METRICS_MD = "generation_metrics.md"
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's FID Inception


@torch.no_grad()
def extract_features(model: SpectrogramClassifier, data: LabelledImages, *, batch_size: int = 128) -> np.ndarray:
    """Classifier embeddings [N, feature_dim] (float64) of uint8 images, in eval mode."""
    device = next(model.parameters()).device
    model.eval()  # eval: BatchNorm running statistics, so a sample's features do not depend on its batch
    outputs = []
    for start in range(0, len(data), batch_size):
        batch = data.float_images(torch.arange(start, min(start + batch_size, len(data))), device)
        outputs.append(model.features(batch).double().cpu())
    return torch.cat(outputs).numpy()


def group_positions(labels: torch.Tensor) -> Dict[int, np.ndarray]:
    labels = labels.numpy()
    return {int(v): np.flatnonzero(labels == v) for v in np.unique(labels)}


# ------------------------------------------------------------------------------------------- Inception FID


def inception_weights_path(explicit: Optional[str] = None) -> Optional[Path]:
    """torch-fidelity's FID Inception weights if present (given path, else torch.hub's cache), else None."""
    if explicit:
        return Path(explicit) if Path(explicit).is_file() else None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    return cached if cached.is_file() else None


def inception_fid(real: LabelledImages, generated: LabelledImages, *, weights: Optional[str] = None,
                  batch_size: int = 64) -> dict:
    """torchmetrics' Inception FID (2048 features), or why it was not computed. Never downloads anything."""
    try:
        import torch_fidelity  # noqa: F401 - torchmetrics' Inception needs it
    except ImportError:
        return {"value": None, "status": "not computed: torch-fidelity is not installed (pip install torch-fidelity)"}
    path = inception_weights_path(weights)
    if path is None:
        return {"value": None, "status": f"not computed: weights unavailable ({INCEPTION_WEIGHTS_FILE} is not in "
                                        f"{Path(torch.hub.get_dir()) / 'checkpoints'}; pass --inception_weights)"}
    from torchmetrics.image.fid import FrechetInceptionDistance

    try:
        metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(path))
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign weights file: report, do not crash the run
        return {"value": None, "status": f"not computed: {path} could not be loaded ({type(exc).__name__}: {exc})"}
    for data, is_real in ((real, True), (generated, False)):
        for start in range(0, len(data), batch_size):
            metric.update(data.images[start:start + batch_size], real=is_real)  # uint8, resized to 299 inside
    return {"value": float(metric.compute()), "status": f"computed with {path}"}


# ------------------------------------------------------------------------------------------- the evaluation


def _distribution_metrics(reference: np.ndarray, generated: np.ndarray, *, k: int, kid_subsets: int,
                          kid_subset_size: int, seed: int) -> dict:
    if len(reference) < 2 or len(generated) < 2:
        return {"skipped": f"needs at least 2 samples on each side ({len(reference)} real, {len(generated)} "
                           f"generated)"}
    kid_mean, kid_std = kernel_inception_distance(reference, generated, num_subsets=kid_subsets,
                                                  subset_size=kid_subset_size, seed=seed)
    return {"fid": frechet_distance(reference, generated), "kid": kid_mean, "kid_std": kid_std,
            **precision_recall_density_coverage(reference, generated, k=k),
            "real_images": int(len(reference)), "generated_images": int(len(generated))}


def obtain_feature_classifier(classifier, splits: Dict[str, LabelledImages], num_classes: int,
                              config: IdentificationConfig, out_dir: Path, log=print) -> SpectrogramClassifier:
    """The given classifier (model or saved folder), or one trained on the real train split (val selects)."""
    if isinstance(classifier, SpectrogramClassifier):
        model = classifier
    elif classifier is not None:
        model = load_classifier(classifier, device=pick_device(config.device))
    else:
        log("Training the feature classifier on the real train split ...")
        model, history = train_classifier([splits["train"]], splits["val"], num_classes=num_classes, config=config,
                                          forbidden_keys=splits["test"].keys, log=log)
        model.save_pretrained(str(out_dir / "feature_classifier"))
        log(f"  best epoch {history['best_epoch']}, val accuracy {history['best_val_accuracy']:.4f}")
    if model.config.num_classes != num_classes:
        raise ValueError(f"The feature classifier has {model.config.num_classes} classes but the manifest has "
                         f"{num_classes} people: use a classifier trained on this manifest.")
    return model.eval()


def evaluate_generation(manifest_dir, generated_dir, out_dir="generation_metrics", *, classifier=None,
                        config: Optional[IdentificationConfig] = None, k: int = 5, kid_subsets: int = 100,
                        kid_subset_size: int = 1000, classification_accuracy_score: bool = True,
                        inception: bool = True, inception_weights: Optional[str] = None, data_root=None,
                        max_generated_per_person: Optional[int] = None, command: Optional[str] = None,
                        vae_encoder=None, log=print) -> dict:
    """Compute every generation metric (overall and per person) and write generation_metrics.json/.md.

    Reference set: the real TRAIN split (what the generator learned from). Baseline: the same metrics for the
    real VALIDATION split against it, i.e. the numbers a perfect generator of fresh real data would get with
    this many samples. ``classifier`` is a SpectrogramClassifier, a folder saved by one, or None to train one
    (preset and image size from ``config``; with a given classifier its own training image size is used).
    ``vae_encoder`` (step5's exported folder) adds identifiability behind the VA-VAE (a classifier trained on
    round-tripped real images), which separates what the codec loses from what the DiT gets wrong.
    """
    from microdoppler_finetune.data import load_manifest

    log = log or (lambda _message: None)
    start = time.time()
    config = config or IdentificationConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(manifest_dir, data_root=data_root) if data_root else load_manifest(manifest_dir)
    if classifier is not None and not isinstance(classifier, SpectrogramClassifier):
        classifier = load_classifier(classifier, device=pick_device(config.device))
    if isinstance(classifier, SpectrogramClassifier) and classifier.config.image_size:
        config = IdentificationConfig(**{**config.__dict__, "image_size": int(classifier.config.image_size)})
    log(f"Loading images at {config.image_size}x{config.image_size} ...")
    splits = {s: load_split_images(manifest, s, image_size=config.image_size, num_workers=config.num_workers)
              for s in ("train", "val", "test")}
    generated = load_generated_images(generated_dir, manifest, image_size=config.image_size,
                                      max_per_person=max_generated_per_person, seed=config.seed)
    model = obtain_feature_classifier(classifier, splits, manifest.num_persons, config, out, log)
    features = {name: extract_features(model, data) for name, data in splits.items()}
    features["generated"] = extract_features(model, generated)
    metric_args = dict(k=k, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=config.seed)

    # Training images are named by their manifest path in the memorisation report.
    train_names = [manifest.entries[int(key.split(":")[1])]["path"] for key in splits["train"].keys]
    overall = {
        "generated": _distribution_metrics(features["train"], features["generated"], **metric_args),
        "real_val_baseline": _distribution_metrics(features["train"], features["val"], **metric_args),
        "memorisation": memorisation_report(features["generated"], features["train"], features["test"],
                                            generated_keys=generated.keys, train_keys=train_names),
    }
    if len(generated) > len(splits["val"]):
        # FID and KID depend on the sample size: the same number of generated images as the baseline has
        # gives the like-for-like comparison.
        subset = np.sort(np.random.default_rng(config.seed).choice(len(generated), len(splits["val"]), replace=False))
        overall["generated_at_baseline_size"] = _distribution_metrics(features["train"], features["generated"][subset],
                                                                      **metric_args)
    per_person = {}
    train_groups = group_positions(splits["train"].person_ids)
    val_groups = group_positions(splits["val"].person_ids)
    test_groups = group_positions(splits["test"].person_ids)
    all_generated_distance, all_nearest = nearest_neighbours(features["generated"], features["train"])
    all_test_distance, _ = nearest_neighbours(features["test"], features["train"])
    for person, positions in sorted(group_positions(generated.person_ids).items()):
        name = manifest.person_names[person]
        reference = features["train"][train_groups.get(person, np.array([], dtype=int))]
        entry = {
            "generated": _distribution_metrics(reference, features["generated"][positions], **metric_args),
            "real_val_baseline": _distribution_metrics(
                reference, features["val"][val_groups.get(person, np.array([], dtype=int))], **metric_args),
        }
        person_test = test_groups.get(person)
        if person_test is not None and len(person_test):
            # Nearest neighbours over the WHOLE training set: copying another person's image also counts.
            entry["memorisation"] = memorisation_summary(
                all_generated_distance[positions], all_nearest[positions], all_test_distance[person_test],
                generated_keys=[generated.keys[i] for i in positions], train_keys=train_names, closest=3)
        per_person[name] = entry
    missing_people = sorted(set(range(manifest.num_persons)) - set(group_positions(generated.person_ids)))

    results = {
        "manifest": str(manifest_dir), "generated_dir": str(generated_dir), "generated_images": len(generated),
        "feature_space": f"identification classifier embedding ({model.feature_dim} dims, ResNet channels "
                         f"{list(model.config.channels)}, {config.image_size} px)",
        "reference": "real train split", "baseline": "real val split vs real train split",
        "overall": overall, "per_person": per_person,
        "people_without_generated_images": [manifest.person_names[p] for p in missing_people],
        "inception_fid": (inception_fid(splits["train"], generated, weights=inception_weights) if inception else
                          {"value": None, "status": "not computed: disabled (--no_inception)"}),
        "command": command if command is not None else reproducing_command(),
    }
    results["real_classifier_on_generated"] = identifiability(model, splits["test"], generated, manifest)
    if vae_encoder is not None:
        results["reconstruction_classifier_on_generated"] = reconstruction_identifiability(
            vae_encoder, splits, generated, manifest, config, log)
    if classification_accuracy_score:
        log("Classification accuracy score: training on generated images only ...")
        cas_model, history = train_classifier([generated], splits["val"], num_classes=manifest.num_persons,
                                              config=config, forbidden_keys=splits["test"].keys, log=log)
        report = accuracy_report(predict_logits(cas_model, splits["test"]).argmax(1), splits["test"],
                                 manifest.person_names, manifest.condition_names)
        results["classification_accuracy_score"] = {
            "test_accuracy": report["accuracy"], "test_images": report["images"],
            "best_epoch": history["best_epoch"], "val_accuracy": history["best_val_accuracy"],
            "per_person": {k: v["accuracy"] for k, v in report["per_person"].items()},
            "per_condition": {k: v["accuracy"] for k, v in report["per_condition"].items()}}
        for name, accuracy in results["classification_accuracy_score"]["per_person"].items():
            per_person.setdefault(name, {})["cas_test_accuracy"] = accuracy
    results["seconds"] = round(time.time() - start, 1)
    atomic_write_text(out / METRICS_MD, metrics_markdown(results))
    atomic_write_json(out / METRICS_JSON, results)
    log(f"Wrote {out / METRICS_JSON} and {out / METRICS_MD}")
    return results


def identifiability(model: SpectrogramClassifier, real_test: LabelledImages, generated: LabelledImages,
                    manifest) -> dict:
    """Does the generator draw the person it was asked for? The classifier trained on real images names the
    person of each generated sample; its accuracy on the real test split is the ceiling to compare with."""
    names, conditions = manifest.person_names, manifest.condition_names
    on_generated = accuracy_report(predict_logits(model, generated).argmax(1), generated, names, conditions)
    on_real = accuracy_report(predict_logits(model, real_test).argmax(1), real_test, names, conditions)
    return {"accuracy": on_generated["accuracy"], "images": on_generated["images"],
            "chance": 1.0 / max(manifest.num_persons, 1), "real_test_accuracy": on_real["accuracy"],
            "real_test_images": on_real["images"],
            "per_person": {k: v["accuracy"] for k, v in on_generated["per_person"].items()},
            "confusion_matrix": on_generated["confusion_matrix"]}


@torch.no_grad()
def vae_round_trip(vae: torch.nn.Module, data: LabelledImages, *, batch_size: int = 32) -> LabelledImages:
    """The images as the VA-VAE gives them back (posterior mode, decoded): what the DiT can at best produce."""
    device = next(vae.parameters()).device
    out = []
    for start in range(0, len(data), batch_size):
        x = data.float_images(torch.arange(start, min(start + batch_size, len(data))), device=device)
        decoded = vae.decode(vae.encode(x).mode())
        out.append(getattr(decoded, "sample", decoded).float().clamp(-1, 1).cpu())
    images = torch.cat(out) if out else data.images.float()
    return dataclasses.replace(data, images=to_uint8(images), source=f"{data.source}:vae")


def reconstruction_identifiability(vae_encoder, splits: Dict[str, LabelledImages], generated: LabelledImages,
                                   manifest, config: IdentificationConfig, log=print) -> dict:
    """Identifiability with the VA-VAE's texture loss factored out: a classifier trained on the real train images
    after a VA-VAE round trip names the person of each generated sample; its accuracy on round-tripped real test
    images is the ceiling. A generator can beat chance here while the plain real classifier still fails on the
    codec's smoother images (a weak VA-VAE); it cannot beat the ceiling."""
    from microdoppler_finetune.latents.export import load_exported_vae

    vae = load_exported_vae(vae_encoder).to(pick_device(config.device))
    log(f"Identifiability behind the VA-VAE ({vae_encoder}): round-tripping the real splits ...")
    trips = {name: vae_round_trip(vae, data) for name, data in splits.items()}
    model, history = train_classifier([trips["train"]], trips["val"], num_classes=manifest.num_persons,
                                      config=config, forbidden_keys=splits["test"].keys, log=log)
    result = identifiability(model.eval(), trips["test"], generated, manifest)
    result["vae_encoder"] = str(vae_encoder)
    result["best_epoch"] = history["best_epoch"]
    return result


def _fmt(value, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _metric_cells(metrics: dict) -> str:
    if "fid" not in metrics:
        return "| " + metrics.get("skipped", "") + " | | | | | | |"
    return (f"| {_fmt(metrics['fid'], 3)} | {_fmt(metrics['kid'])} | {_fmt(metrics['precision'], 3)} | "
            f"{_fmt(metrics['recall'], 3)} | {_fmt(metrics['density'], 3)} | {_fmt(metrics['coverage'], 3)} | "
            f"{metrics['generated_images']} |")


def metrics_markdown(results: dict) -> str:
    overall = results["overall"]
    memo = overall["memorisation"]
    lines = ["# Generation metrics", "",
             f"Feature space: {results['feature_space']}. Reference: {results['reference']}; baseline: "
             f"{results['baseline']}.", "",
             "| set | FID | KID | precision | recall | density | coverage | images |",
             "|---|---|---|---|---|---|---|---|",
             "| generated " + _metric_cells(overall["generated"]),
             *(["| generated, as many as the baseline " + _metric_cells(overall["generated_at_baseline_size"])]
               if "generated_at_baseline_size" in overall else []),
             "| real val (baseline) " + _metric_cells(overall["real_val_baseline"]), "",
             f"Inception FID: {_fmt(results['inception_fid']['value'], 3) or results['inception_fid']['status']}", ""]
    if "real_classifier_on_generated" in results:
        ident = results["real_classifier_on_generated"]
        lines += [f"Identifiability (the classifier trained on real images names the person of each generated "
                  f"sample): {ident['accuracy']:.4f} on {ident['images']} images; chance {ident['chance']:.4f}; "
                  f"the same classifier on the real test split: {ident['real_test_accuracy']:.4f}.", ""]
    if "reconstruction_classifier_on_generated" in results:
        trip = results["reconstruction_classifier_on_generated"]
        lines += [f"Identifiability behind the VA-VAE (classifier trained on real images after a VA-VAE round trip): "
                  f"{trip['accuracy']:.4f} on generated samples; chance {trip['chance']:.4f}; ceiling (round-tripped "
                  f"real test images) {trip['real_test_accuracy']:.4f}.", ""]
    if "classification_accuracy_score" in results:
        cas = results["classification_accuracy_score"]
        lines += [f"Classification accuracy score (train on generated, test on the real test split): "
                  f"{cas['test_accuracy']:.4f} on {cas['test_images']} images (best epoch {cas['best_epoch']}, "
                  f"val {cas['val_accuracy']:.4f}).", ""]
    lines += ["## Memorisation", "",
              f"Distance to the nearest real training sample: generated median {memo['generated_median_distance']:.4f}"
              f" (5th percentile {memo['generated_p05_distance']:.4f}) vs real test median "
              f"{memo['test_median_distance']:.4f} (5th percentile {memo['test_p05_distance']:.4f}); ratio "
              f"{memo['median_ratio_generated_to_test']:.3f}. {memo['fraction_closer_than_test_p05'] * 100:.1f}% of "
              f"generated samples are closer than the real test 5th percentile; {memo['copies']} copies.", "",
              "Closest pairs:", ""] + [f"- `{p['generated']}` ~ `{p['train']}` ({p['distance']:.4f})"
                                       for p in memo["closest_pairs"]]
    lines += ["", "## Per person", "",
              "| person | FID | KID | precision | recall | density | coverage | images | baseline FID | "
              "memorisation ratio | CAS acc | identified |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, entry in results["per_person"].items():
        if "generated" not in entry:
            continue
        baseline = entry["real_val_baseline"]
        ratio = entry.get("memorisation", {}).get("median_ratio_generated_to_test")
        lines.append(f"| {name} " + _metric_cells(entry["generated"]) + f" {_fmt(baseline.get('fid'), 3)} | "
                     f"{_fmt(ratio, 3)} | {_fmt(entry.get('cas_test_accuracy'))} | "
                     f"{_fmt(results.get('real_classifier_on_generated', {}).get('per_person', {}).get(name))} |")
    if results["people_without_generated_images"]:
        lines += ["", f"No generated images for: {', '.join(results['people_without_generated_images'])}."]
    lines += ["", f"Command: `{results['command']}`"]
    return "\n".join(lines) + "\n"
