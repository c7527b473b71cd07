"""A small made-up work dir holding every file the report reads, in the formats the stages write them.

For the report's tests and for trying the page without running anything:

    python -c "from microdoppler_finetune.report.example import make_example_run; make_example_run('/tmp/ex')"
    python -m microdoppler_finetune.report /tmp/ex

``until`` stops the made-up run after a part ("dataset", "vae", "dit", "evaluation"), like a run that stopped
early or a `vae`-only pipeline mode. The numbers are invented; only the layout is real.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional

PARTS = ("dataset", "vae", "dit", "evaluation", "study")
PEOPLE = ("ID_1", "ID_2", "ID_3")
CONDITIONS = ("Normal_line", "Backpack_line")
WITHHELD = {("ID_3", "Backpack_line"): "test"}
SIZE = 32


def _image(path: Path, seed: int, size: int = SIZE, fmt: str = "JPEG") -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size, dtype=np.float32)[None, :, None]
    pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype("uint8")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def _json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2))


def _csv(path: Path, header: list, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _dataset(work: Path) -> None:
    data_root = work / "data"
    rows, seed = [], 0
    for p, person in enumerate(PEOPLE):
        for c, condition in enumerate(CONDITIONS):
            role = WITHHELD.get((person, condition), "")
            for r, split in enumerate(("train", "train", "val", "test")):
                for frame in range(1, 4):
                    rel = f"{condition}/{person}/{person.replace('_', '')}_case{r}_1_Doppler{frame}.jpg"
                    _image(data_root / rel, seed)
                    seed += 1
                    rows.append([rel, p, person, c, condition, f"case{r}_1", frame, f"case{r}_1",
                                 role or split, f"{seed:064x}", SIZE, SIZE, role])
    _csv(work / "dataset" / "manifest.csv", ["path", "person_id", "person", "condition_id", "condition", "recording",
                                             "frame", "group", "split", "sha256", "width", "height", "withheld"], rows)
    _json(work / "dataset" / "user_labels.json", {
        "format": "microdoppler-manifest/1", "data_root": str(data_root), "layout": "condition/person",
        "person_names": list(PEOPLE), "condition_names": list(CONDITIONS)})
    _csv(work / "dataset" / "problems.csv", ["path", "person", "condition", "severity", "reason", "detail"],
         [["Normal_line/ID_1/broken.jpg", "ID_1", "Normal_line", "skipped", "corrupt", "cannot identify image file"],
          ["Normal_line/ID_2/gray.jpg", "ID_2", "Normal_line", "warning", "grayscale", "converted to RGB"]])
    _json(work / "dataset" / "split_summary.json", {
        "format": "microdoppler-split-summary/1",
        "settings": {"data_root": str(data_root), "seed": 0, "val_fraction": 0.15, "test_fraction": 0.15,
                     "split_unit": "auto"},
        "counts": {"train": 30, "val": 5, "test": 7, "gap": 0}, "cells": [], "overlap": [],
        "leak_check": {"checked_frames": 12, "threshold_distance": 0.01, "probable_leaks": [], "groups": []}})
    _image(work / "preview.png", 999, 96, "PNG")
    _json(work / "environment_info.json", {"python": "3.11", "kaggle": False, "cpu_count": 2, "gpus": [],
                                           "recommended_preset": "cpu_demo"})


def _vae(work: Path) -> None:
    names = ("stage1", "stage2", "stage3")
    for i, name in enumerate(names):
        folder = work / "vae" / name
        _json(folder / "stage_result.json", {
            "stage": name, "status": "finished",
            "chosen_checkpoint": str(folder / "checkpoints" / "epoch=000-val_psnr=21.00.ckpt"),
            "last_checkpoint": str(folder / "checkpoints" / "last.ckpt"), "monitor": "val_psnr",
            "chosen_metric": 21.0 + i, "epochs_done": 1, "ae_steps": 10 * (i + 1), "global_step": 20 * (i + 1),
            "alignment_target": "random-init vit_small_patch14_dinov2.lvd142m (NOT pretrained DINOv2; seed 42)",
            "perceptual": "LPIPS alex (NOT PRETRAINED: RANDOM backbone (no file at /root/.cache/alexnet.pth))",
            "hardware": "cpu x1, precision 32-true", "init_from": "pretrained" if i == 0 else names[i - 1],
            "message": "random init of preset 'tiny_f4'; discriminator: random init (the stage starts from random "
                       "weights)" if i == 0 else "",
            "nonfinite_skipped_total": 0, "amp_skipped_steps": 0,
            "val_history": [{"epoch": 0, "ae_steps": 10, "val_psnr": 20.5 + i, "val_loss": 812.25 - i,
                             "val_lpips": 0.31234567}],
            "stage_config": {"name": name, "epochs": 1, "learning_rate": 1e-4, "vf_weight": 0.5 if i == 0 else 0.1,
                             "disc_start": 5001 if i == 0 else 1}})
        header = ["epoch", "step", "train_ae_step", "train_loss", "train_lambda_vf", "train_lambda_adv",
                  "train_gan_active", "val_psnr"]
        rows = [[0, s, s, 900 - 10 * s, 0.5, 0.0 if i == 0 else 0.8 + 0.01 * s, 0 if i == 0 else 1, ""]
                for s in range(1, 11)] + [[0, 10, "", "", "", "", "", 20.5 + i]]
        _csv(folder / "logs" / "version_0" / "metrics.csv", header, rows)
        if i < 2:  # the last stage has no loss_curves.png: the report draws one from metrics.csv
            _image(folder / "loss_curves.png", 100 + i, 120, "PNG")
        _image(folder / "reconstructions" / "epoch_000.png", 200 + i, 80, "PNG")
        (folder / "config.yaml").write_text("run:\n  work_dir: x\n  preset: cpu_demo\nvae_train:\n  stages:\n"
                                            + "".join(f"  - name: {n}\n    epochs: 1\n" for n in names)
                                            + "  stage_overrides: {}\n")
    for name, psnr in (("before_finetuning", 7.15), ("stage3_epoch000", 22.91)):
        folder = work / "validation" / name
        splits = {s: {"overall": {"count": 6, "psnr": psnr + d, "ssim": 0.697, "mse": 0.005}, "per_person": {}}
                  for s, d in (("val", 0.0), ("test", -0.02))}
        _json(folder / "metrics.json", {
            "name": name, "image_size": SIZE, "lpips_available": False,
            "lpips": "unavailable: only a random-backbone LPIPS-alex could be built; its numbers would mean nothing",
            "notes": ["Reconstructions decode the posterior mode"], "splits": splits})
        _image(folder / "reconstruction_results.png", 300, 100, "PNG")
    after = work / "validation" / "stage3_epoch000"
    _image(after / "latent_map.png", 301, 100, "PNG")
    _json(after / "latent_statistics.json", {"person_separability": {
        "method": "k-NN", "flat": {"accuracy": 0.61, "chance": 0.333, "k": 5},
        "pooled": {"accuracy": 0.52, "chance": 0.333, "k": 5}}})
    (work / "export" / "vavae_encoder_for_dit").mkdir(parents=True, exist_ok=True)


def _dit(work: Path) -> None:
    run = work / "dit"
    header = ["step", "event", "elapsed_s", "train_loss", "flow_loss", "velocity_mse", "cosine_loss",
              "contrastive_loss", "lr", "grad_norm", "val_loss", "val_loss_ema", "skipped_steps", "steps_per_s"]
    rows = [[0, "val", 1.0, "", "", "", "", "", "", "", 1.2, 1.2, "", ""]]
    for step in (2, 4):
        rows.append([step, "train", step, 1.0 / step, 0.9 / step, 0.8, 0.1, "", 1e-3, 0.5, "", "", 0, 6.5])
        rows.append([step, "val", step, "", "", "", "", "", "", "", 1.0 / step, 1.1 / step, "", ""])
    rows.append([4, "train", 5.0, 0.24, 0.2, 0.8, 0.1, "", 1e-3, 0.4, "", "", 0, 6.6])  # a resumed run's rewrite
    _csv(run / "train_log.csv", header, rows)
    (run / "config.yaml").write_text("run:\n  preset: cpu_demo\ndit:\n  model: tiny/2\n  train:\n    steps: 4\n"
                                     "    batch_size: 8\n    learning_rate: 0.001\n    precision: fp32\n"
                                     "  finetune:\n    init_from: null\n")
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run / "checkpoints" / "0000004.pt").write_bytes(b"")
    _image(run / "samples" / "grid_0000004.jpg", 400, 96)
    files, seed = [], 500
    for p, person in enumerate(PEOPLE):
        for c, condition in enumerate(CONDITIONS):
            for k in range(3):
                rel = f"{condition}/{person}/{person.replace('_', '')}_gen0_Doppler{k}.jpg"
                _image(work / "samples" / rel, seed)
                seed += 1
                files.append({"file": rel, "person": person, "person_id": p, "condition": condition,
                              "condition_id": c, "seen_in_training": (person, condition) not in WITHHELD,
                              "sample_index": len(files)})
    _json(work / "samples" / "generation_info.json", {
        "checkpoint": str(run / "checkpoints" / "0000004.pt"), "checkpoint_step": 4, "weights": "ema",
        "sampler": {"num_sampling_steps": 51, "ode_steps": 50, "sampler": "euler", "cfg_scale": 6.7,
                    "cfg_interval_start": 0.125, "shift": 0.3, "seed": 0, "batch_size": 16},
        "image_size": SIZE, "per_person": 3, "pairs": "all", "conditions_used": True, "null_condition": False,
        "device": "cpu", "seconds": 2.5, "seconds_per_image": 0.139, "grid": "__grid_by_person.jpg",
        "files": files})


def _evaluation(work: Path) -> None:
    people = list(PEOPLE)
    rows = []
    for method, accuracy in (("real", 0.505), ("real+generated", 0.537), ("real+augmentation", 0.573)):
        for fraction in (0.25, 1.0):
            rows.append({
                "variant": f"{method}@{fraction * 100:g}%", "method": method, "real_fraction": fraction,
                "cross_condition": False, "real_images": int(24 * fraction), "real_recordings": int(8 * fraction),
                "generated_images": 18 if method == "real+generated" else 0, "augmentation": "augmentation" in method,
                "epochs_run": 5, "best_epoch": 3, "val_images": 5, "val_accuracy": accuracy + 0.01,
                "test_images": 7, "test_accuracy": accuracy * (fraction ** 0.2),
                "per_condition_test_accuracy": {c: accuracy for c in CONDITIONS},
                "per_person_test_accuracy": {p: accuracy for p in people},
                "confusion_matrix": [[2, 1, 0], [0, 2, 0], [1, 0, 1]], "seconds": 3.2,
                "command": f"python -m microdoppler_finetune.step6_evaluate --work_dir {work} --variants "
                           f"'{method}@{fraction * 100:g}%'"})
    _json(work / "evaluation" / "identification" / "identification_results.json", {
        "config": {"preset": "tiny", "image_size": SIZE, "epochs": 5, "seed": 0},
        "test_set": {"split": "test", "images": 7, "fingerprint": "abcdef0123456789"}, "num_persons": 3,
        "person_names": people, "condition_names": list(CONDITIONS),
        "notes": ["cross-condition rows skipped: the manifest has no Normal* and Backpack* conditions."],
        "rows": rows})
    distribution = {"fid": 14.8, "kid": 0.0123, "precision": 0.71, "recall": 0.42, "density": 0.9, "coverage": 0.6,
                    "generated_images": 18}
    _json(work / "evaluation" / "generation" / "generation_metrics.json", {
        "generated_images": 18, "feature_space": "identification classifier embedding (64 dims)",
        "reference": "real train split", "baseline": "real val split vs real train split",
        "overall": {"generated": distribution, "real_val_baseline": {**distribution, "fid": 7.1},
                    "memorisation": {"generated_median_distance": 1.2, "test_median_distance": 1.1, "copies": 0,
                                     "closest_pairs": []}},
        "per_person": {p: {"generated": distribution, "real_val_baseline": distribution, "cas_test_accuracy": 0.2}
                       for p in people},
        "people_without_generated_images": [],
        "inception_fid": {"value": None, "status": "unavailable: no Inception weights on this machine"},
        "real_classifier_on_generated": {"accuracy": 0.41, "images": 18, "chance": 0.333, "real_test_accuracy": 0.5,
                                         "per_person": {p: 0.4 for p in people}},
        "classification_accuracy_score": {"test_accuracy": 0.15, "test_images": 7},
        "command": "python -m microdoppler_finetune.step6_evaluate --work_dir x"})


def _study(work: Path) -> None:
    """The layout of run_augmentation_study's results.json: rows keyed by name, cells as mean/std/n over seeds."""
    def summary(mean):
        return {"mean": mean, "std": 0.0123, "n": 3, "values": [mean - 0.01, mean, mean + 0.01]}

    rows = {name: {"name": name, "seeds": [0, 1, 2], "real_images": 24, "generated_images": 18 if "gen" in name else 0,
                   "test": summary(acc), "test_withheld": summary(acc - 0.1),
                   "per_condition": {c: summary(acc) for c in CONDITIONS},
                   "run_files": [f"runs/test-{name}-seed{i}-{'x' * 40}.json" for i in range(3)]}
            for name, acc in (("real", 0.5051), ("real+augmentation", 0.55), ("real+generated", 0.537))}
    _json(work / "study" / "results.json", {
        "work_dir": str(work), "command": "python -m microdoppler_finetune.run_augmentation_study --work_dir x",
        "seconds": 301.5, "seeds": [0, 1, 2], "condition_names": list(CONDITIONS),
        "withheld": {"conditions": ["Backpack_line"], "test_people": ["ID_3"], "val_people": []},
        "rows": rows,
        "tuning": {"guidance": {"chosen": "2.0", "chosen_by": "val_withheld",
                                "candidates": [{"label": "1.0", "val": summary(0.4)},
                                               {"label": "2.0", "val": summary(0.45)}]}},
        "cross_condition": {"Normal_line": {c: summary(0.4) for c in CONDITIONS}},
        "goals": {"withheld_gain": {"goal": "real + generated beats real only by 10% or more on the withheld pairs",
                                    "difference": 0.032, "reached": False}}})
    _image(work / "study" / "accuracy_vs_amount.png", 600, 90, "PNG")


def make_example_run(root, until: Optional[str] = None) -> Path:
    """Write the made-up work dir under ``root`` (the parts up to and including ``until``); returns it."""
    if until is not None and until not in PARTS:
        raise ValueError(f"until must be one of {', '.join(PARTS)}")
    work = Path(root)
    work.mkdir(parents=True, exist_ok=True)
    writers = {"dataset": _dataset, "vae": _vae, "dit": _dit, "evaluation": _evaluation, "study": _study}
    for part in PARTS:
        writers[part](work)
        if part == until:
            break
    return work
