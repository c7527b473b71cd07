"""Person identification: train and evaluate the classifier, and run the "does generated data help?" experiments.

Protocol (DESIGN.md section 6):

- Every variant is tested on the SAME clean test split of the manifest; nothing trains or selects on it. The
  epoch that is kept (early stopping) is chosen on the validation split only.
- Variants: real only, real + generated, real + conventional augmentation, each over a fraction of the real
  training recordings (10/25/50/100 %; whole recordings are kept or dropped, because frames of one recording
  overlap in time and are near-duplicates), and, when the manifest has walking conditions, a cross-condition
  test: train on Normal* recordings, test on Backpack* test images, with and without generated Backpack samples.
- Each result row records the command that reproduces it.
"""
from __future__ import annotations

import json
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from microdoppler_finetune.evaluation.identification.images import (
    load_generated_images,
    load_split_images,
    positions_with_condition,
    select_fraction_by_recording,
)
from microdoppler_finetune.evaluation.identification.training import (
    IdentificationConfig,
    accuracy_report,
    evaluate_classifier,
    predict_logits,
    train_classifier,
)
from microdoppler_finetune.utils.commands import reproducing_command
from microdoppler_finetune.utils.files import (
    atomic_write_json,
    atomic_write_text,
    swap_in_folder,
    temporary_sibling,
    text_sha256,
)

METHODS = ("real", "real+generated", "real+augmentation")
DEFAULT_FRACTIONS = (0.1, 0.25, 0.5, 1.0)


RESULTS_JSON = "identification_results.json"
RESULTS_MD = "identification_results.md"
INDICES_JSON = "identification_train_keys.json"
FEATURE_CLASSIFIER_DIR = "feature_classifier"


@dataclass
class Variant:
    name: str
    method: str                   # one of METHODS
    real_fraction: float
    source: Optional[str] = None  # cross-condition rows: train (and validate) on this condition's images only ...
    target: Optional[str] = None  # ... and report the accuracy on this condition's test images

    @property
    def cross_condition(self) -> bool:
        return self.source is not None


def cross_condition_pairs(condition_names: Sequence[str], has_images) -> List[tuple]:
    """Every ordered (source, target) pair of different conditions for which ``has_images(split, condition)``
    holds for the source's train and val images and the target's test images — whatever the conditions are
    called."""
    return [(s, t) for s in condition_names for t in condition_names
            if s != t and has_images("train", s) and has_images("val", s) and has_images("test", t)]


def plan_variants(methods: Sequence[str], fractions: Sequence[float], *, has_generated: bool,
                  cross_pairs: Sequence[tuple] = (), generated_conditions: Sequence[str] = ()
                  ) -> tuple[List[Variant], List[str]]:
    """The rows to run, and notes on the rows that cannot run with this data."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; choose from {', '.join(METHODS)}.")
    variants, notes = [], []
    for method in methods:
        if method == "real+generated" and not has_generated:
            notes.append("real+generated rows skipped: no generated folder given (--generated).")
            continue
        for fraction in sorted(set(fractions)):
            variants.append(Variant(f"{method}@{fraction * 100:g}%", method, fraction))
    for source, target in cross_pairs:
        variants.append(Variant(f"cross-condition:{source}->{target}", "real", 1.0, source, target))
        if target in generated_conditions:
            variants.append(Variant(f"cross-condition:{source}+generated-{target}->{target}", "real+generated",
                                    1.0, source, target))
    if not cross_pairs:
        notes.append("cross-condition rows skipped: the manifest has fewer than two walking conditions with "
                     "training and test images.")
    elif has_generated and not generated_conditions:
        notes.append("cross-condition rows with generated data skipped: the generated folder has no condition "
                     "folders.")
    return variants, notes


def _keys_fingerprint(keys: Sequence[str]) -> str:
    return text_sha256("\n".join(sorted(keys)))[:16]




def run_identification_experiments(manifest_dir, generated_dir=None, out_dir="identification",
                                   fractions: Sequence[float] = DEFAULT_FRACTIONS, *,
                                   config: Optional[IdentificationConfig] = None, methods: Sequence[str] = METHODS,
                                   cross_condition: bool = True, variants: Optional[Sequence[str]] = None,
                                   command: Optional[str] = None, data_root=None,
                                   max_generated_per_person: Optional[int] = None, log=print) -> dict:
    """Run the identification variants and write identification_results.json/.md (+ the trained-on keys).

    Every row is tested on the whole test split (the same images for every row: ``test_set`` in the JSON gives
    its size and a fingerprint of its keys); cross-condition rows add ``target_accuracy`` on the Backpack* test
    images. ``variants`` restricts the run to rows with those names (each row's ``command`` uses it, so one row
    can be reproduced alone). The real-only 100 % classifier is saved as the feature network for
    evaluate_generation (``<out_dir>/feature_classifier``).
    """
    from microdoppler_finetune.data import load_manifest

    log = log or (lambda _message: None)
    config = config or IdentificationConfig()
    command = command if command is not None else reproducing_command()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(manifest_dir, data_root=data_root) if data_root else load_manifest(manifest_dir)
    log(f"Loading images at {config.image_size}x{config.image_size} ...")
    splits = {s: load_split_images(manifest, s, image_size=config.image_size, num_workers=config.num_workers)
              for s in ("train", "val", "test")}
    test = splits["test"]
    generated = None
    if generated_dir is not None:
        generated = load_generated_images(generated_dir, manifest, image_size=config.image_size,
                                          max_per_person=max_generated_per_person, seed=config.seed)
    condition_names = list(manifest.condition_names)

    def with_condition(data, condition: str) -> List[int]:
        return positions_with_condition(data, condition_names, condition)

    cross_pairs = cross_condition_pairs(condition_names, lambda split, c: bool(with_condition(splits[split], c)))
    generated_conditions = ([] if generated is None else
                            [c for c in condition_names if with_condition(generated, c)])
    planned, notes = plan_variants(methods, fractions, has_generated=generated is not None,
                                   cross_pairs=cross_pairs if cross_condition else (),
                                   generated_conditions=generated_conditions)
    if not cross_condition:
        notes = [n for n in notes if not n.startswith("cross-condition rows skipped")]
        notes.append("cross-condition rows skipped: turned off (--no_cross_condition).")
    if variants:
        known = {v.name for v in planned}
        missing = sorted(set(variants) - known)
        if missing:
            raise ValueError(f"Unknown variants {missing}; this data allows: {', '.join(sorted(known))}.")
        planned = [v for v in planned if v.name in set(variants)]

    test_keys = set(test.keys)
    test_set = {"split": "test", "images": len(test), "fingerprint": _keys_fingerprint(test.keys)}
    rows, trained_on, selections = [], {}, {}
    for variant in planned:
        log(f"[{variant.name}]")
        start = time.time()
        train_real = (splits["train"].subset(with_condition(splits["train"], variant.source))
                      if variant.cross_condition else splits["train"])
        val = splits["val"].subset(with_condition(splits["val"], variant.source)) if variant.cross_condition \
            else splits["val"]
        chosen = select_fraction_by_recording(train_real, variant.real_fraction, seed=config.seed)
        same_as = selections.setdefault((variant.cross_condition, tuple(chosen)), variant.real_fraction)
        if same_as != variant.real_fraction:
            note = (f"real fractions {same_as * 100:g}% and {variant.real_fraction * 100:g}% select the same "
                    f"{len(chosen)} images: too few training recordings per person and condition to tell them apart "
                    f"(at least one recording each is always kept).")
            if note not in notes:
                notes.append(note)
        sources = [train_real.subset(chosen)]
        generated_used = 0
        if variant.method == "real+generated":
            extra = generated.subset(with_condition(generated, variant.target)) if variant.cross_condition \
                else generated
            sources.append(extra)
            generated_used = len(extra)
        model, history = train_classifier(sources, val, num_classes=manifest.num_persons, config=config,
                                          augment=variant.method == "real+augmentation",
                                          forbidden_keys=test_keys, log=log)
        report = evaluate_classifier(model, manifest, images=test)
        row = {
            "variant": variant.name, "method": variant.method, "real_fraction": variant.real_fraction,
            "cross_condition": variant.cross_condition,
            "real_images": len(chosen), "real_recordings": len({train_real.recordings[i] for i in chosen}),
            "generated_images": generated_used, "augmentation": variant.method == "real+augmentation",
            "epochs_run": len(history["epochs"]), "best_epoch": history["best_epoch"],
            "val_images": len(val), "val_accuracy": history["best_val_accuracy"],
            "test_images": report["images"], "test_accuracy": report["accuracy"],
            "test_set_fingerprint": test_set["fingerprint"],
            "per_condition_test_accuracy": {k: v["accuracy"] for k, v in report["per_condition"].items()},
            "per_person_test_accuracy": {k: v["accuracy"] for k, v in report["per_person"].items()},
            "confusion_matrix": report["confusion_matrix"],
            "seconds": round(time.time() - start, 1),
            "command": f"{command} --variants {shlex.quote(variant.name)}",
        }
        if variant.cross_condition:
            target_test = test.subset(with_condition(test, variant.target))
            target = accuracy_report(predict_logits(model, target_test).argmax(1), target_test,
                                     manifest.person_names, condition_names)
            row["target_test_images"], row["target_accuracy"] = target["images"], target["accuracy"]
        rows.append(row)
        trained_on[variant.name] = history["train_keys"]
        log(f"  -> val {row['val_accuracy']:.4f}, test {row['test_accuracy']:.4f} "
            f"({row['real_images']} real + {generated_used} generated images, {row['seconds']} s)")
        if variant.method == "real" and variant.real_fraction == 1.0 and not variant.cross_condition:
            folder = temporary_sibling(out / FEATURE_CLASSIFIER_DIR)  # swapped in whole: never half a classifier
            model.save_pretrained(str(folder))
            atomic_write_json(folder / "training_history.json", {k: v for k, v in history.items() if k != "train_keys"})
            swap_in_folder(folder, out / FEATURE_CLASSIFIER_DIR)

    results = {"config": asdict(config), "manifest": str(manifest_dir),
               "generated_dir": str(generated_dir) if generated_dir else None, "test_set": test_set,
               "num_persons": manifest.num_persons, "person_names": list(manifest.person_names),
               "condition_names": condition_names, "notes": notes, "rows": rows}
    if variants:
        results, trained_on = _merge_with_previous(out, results, trained_on, log)
    atomic_write_json(out / INDICES_JSON, trained_on, indent=None)
    atomic_write_text(out / RESULTS_MD, results_markdown(results))
    atomic_write_json(out / RESULTS_JSON, results)  # last: the table the pipeline and the report read
    log(f"Wrote {out / RESULTS_JSON} and {out / RESULTS_MD}")
    return results


def _merge_with_previous(out: Path, results: dict, trained_on: dict, log) -> tuple[dict, dict]:
    """A rerun of some rows (``variants``) replaces those rows in an earlier table of the same experiment
    (same test set and settings) instead of overwriting the whole table."""
    previous_file = out / RESULTS_JSON
    if not previous_file.is_file():
        return results, trained_on
    previous = json.loads(previous_file.read_text())
    same = (previous.get("test_set") == results["test_set"] and previous.get("config") == results["config"]
            and previous.get("generated_dir") == results["generated_dir"])
    if not same:
        log(f"{previous_file} holds another experiment (test set, settings or generated folder differ): replaced.")
        return results, trained_on
    new_rows = {r["variant"]: r for r in results["rows"]}
    rows = [new_rows.pop(r["variant"], r) for r in previous["rows"]] + list(new_rows.values())
    keys_file = out / INDICES_JSON
    merged_keys = json.loads(keys_file.read_text()) if keys_file.is_file() else {}
    merged_keys.update(trained_on)
    return {**results, "rows": rows, "notes": sorted(set(previous.get("notes", [])) | set(results["notes"]))}, \
        merged_keys


def results_markdown(results: dict) -> str:
    test_set = results["test_set"]
    lines = [
        "# Person identification: does generated data help?", "",
        f"Test set: the manifest's test split, {test_set['images']} images (fingerprint "
        f"`{test_set['fingerprint']}`), the same for every row. Best epoch chosen on validation accuracy.",
        f"Classifier preset `{results['config']['preset']}`, {results['config']['image_size']} px, "
        f"at most {results['config']['epochs']} epochs, seed {results['config']['seed']}.", "",
        "| variant | real % | real images (recordings) | generated | best epoch | val acc | test acc | "
        "target acc |", "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        target = (f"{row['target_accuracy']:.4f} ({row['target_test_images']})" if "target_accuracy" in row
                  else "")
        lines.append(f"| {row['variant']} | {row['real_fraction'] * 100:g} | {row['real_images']} "
                     f"({row['real_recordings']}) | {row['generated_images']} | {row['best_epoch']} | "
                     f"{row['val_accuracy']:.4f} | {row['test_accuracy']:.4f} | {target} |")
    if any(r["cross_condition"] for r in results["rows"]):
        lines += ["", "Cross-condition rows `A->B` train and validate on condition A's recordings only; target acc is "
                      "on condition B's test images. `A+generated-B` adds the generated images of condition B."]
    if results["notes"]:
        lines += ["", "Notes:"] + [f"- {n}" for n in results["notes"]]
    lines += ["", "Commands:"] + [f"- {r['variant']}: `{r['command']}`" for r in results["rows"]]
    return "\n".join(lines) + "\n"
