"""Training and testing the person classifier of the identification experiments.

The epoch that is kept (early stopping) is chosen on the validation split only; the test split is only ever
predicted on. The conventional augmentation of the baseline lives here too, so every variant trains the same way.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F

from microdoppler_finetune.evaluation.identification.images import LabelledImages, concatenate, load_split_images
from microdoppler_finetune.utils.tensors import pick_device
from models.classifier import SpectrogramClassifier, create_classifier


@dataclass
class IdentificationConfig:
    """Training settings shared by every variant of one experiment (so rows differ only in their data)."""

    preset: str = "tiny"          # models.classifier.CLASSIFIER_PRESETS
    image_size: int = 64
    epochs: int = 30              # upper bound; the best validation epoch is kept
    patience: int = 8             # stop after this many epochs without a better validation accuracy
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0          # image loading workers (loading happens once per split)
    # Conventional augmentation (the baseline). No time flip: a time-reversed walk is never measured. A Doppler
    # mirror is: it turns a walk toward the radar into the same gait walking away (off by default).
    max_time_shift: float = 0.25      # circular roll along time (width), as a fraction of the width
    max_doppler_shift: float = 0.04   # shift along Doppler (height), edge rows repeated, fraction of height
    intensity_jitter: float = 0.1     # contrast x U(1 +- j), brightness + U(+- j) in [-1, 1] units
    doppler_flip: float = 0.0         # probability of mirroring the Doppler (height) axis


# ------------------------------------------------------------------------------------------- augmentation

def conventional_augment(images: torch.Tensor, config: IdentificationConfig,
                         generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Baseline augmentation of a [B,3,H,W] batch in [-1, 1]: time roll, small Doppler shift, optional Doppler
    mirror, intensity jitter."""
    b, _, h, w = images.shape
    device = images.device

    def uniform(low, high, size):
        return torch.rand(size, generator=generator).to(device) * (high - low) + low

    # Time (width): circular roll; a walking gait is periodic, so a rolled window is still a plausible one.
    time_shift = uniform(-config.max_time_shift, config.max_time_shift, b).mul(w).round().long()
    cols = (torch.arange(w, device=device)[None, :] - time_shift[:, None]) % w                # [B, W]
    images = images.gather(3, cols[:, None, None, :].expand(b, 3, h, w))
    # Doppler (height): small shift with the edge row repeated (no wrap-around of the velocity axis).
    doppler_shift = uniform(-config.max_doppler_shift, config.max_doppler_shift, b).mul(h).round().long()
    rows = (torch.arange(h, device=device)[None, :] - doppler_shift[:, None]).clamp(0, h - 1)  # [B, H]
    images = images.gather(2, rows[:, None, :, None].expand(b, 3, h, w))
    # Intensity: contrast and brightness jitter, kept in range.
    if config.doppler_flip > 0:
        mirror = uniform(0.0, 1.0, b) < config.doppler_flip
        images = torch.where(mirror.view(b, 1, 1, 1), images.flip(2), images)
    contrast = uniform(1 - config.intensity_jitter, 1 + config.intensity_jitter, b).view(b, 1, 1, 1)
    brightness = uniform(-config.intensity_jitter, config.intensity_jitter, b).view(b, 1, 1, 1)
    return (images * contrast + brightness).clamp(-1, 1)


# ------------------------------------------------------------------------------------------- training

@torch.no_grad()
def predict_logits(model: SpectrogramClassifier, data: LabelledImages, *, batch_size: int = 128,
                   device: Optional[torch.device] = None) -> torch.Tensor:
    device = device or next(model.parameters()).device
    model.eval()  # eval: BatchNorm running statistics, no dropout
    outputs = []
    for start in range(0, len(data), batch_size):
        batch = data.float_images(torch.arange(start, min(start + batch_size, len(data))), device)
        outputs.append(model(batch).float().cpu())
    return torch.cat(outputs) if outputs else torch.zeros(0, model.config.num_classes)


def _accuracy_and_loss(model, data: LabelledImages, batch_size: int, device) -> tuple[float, float]:
    logits = predict_logits(model, data, batch_size=batch_size, device=device)
    loss = F.cross_entropy(logits, data.person_ids).item()
    accuracy = (logits.argmax(1) == data.person_ids).float().mean().item()
    return accuracy, loss


def train_classifier(train_sources: Sequence[LabelledImages], val_split: LabelledImages, *, num_classes: int,
                     config: Optional[IdentificationConfig] = None, augment: bool = False,
                     forbidden_keys: Iterable[str] = (), log=print) -> tuple[SpectrogramClassifier, dict]:
    """Train a person classifier on the concatenated ``train_sources``; keep the best epoch on ``val_split``.

    ``forbidden_keys`` (e.g. the test split's keys) must not appear in the training data: the run stops with an
    error if they do, so a test image can never be trained on by accident. Returns the model (best validation
    epoch, eval mode) and a history dict with per-epoch losses/accuracies and the keys trained on.
    """
    config = config or IdentificationConfig()
    train = concatenate(train_sources, "+".join(s.source for s in train_sources))
    leaked = set(train.keys) & set(forbidden_keys)
    if leaked:
        raise RuntimeError(f"{len(leaked)} held-out images are in the training data (e.g. {sorted(leaked)[:3]}).")
    if len(val_split) == 0:
        raise ValueError("The validation split is empty: model selection needs validation images.")
    if int(train.person_ids.max()) >= num_classes or int(train.person_ids.min()) < 0:
        raise ValueError(f"Person ids must be in [0, {num_classes}); got {int(train.person_ids.min())}.."
                         f"{int(train.person_ids.max())}.")
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    model = create_classifier(config.preset, num_classes=num_classes,
                              image_size=int(train.images.shape[-1])).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs))
    shuffler = torch.Generator().manual_seed(config.seed)
    augmenter = torch.Generator().manual_seed(config.seed + 1)
    history = {"epochs": [], "best_epoch": None, "best_val_accuracy": None, "train_images": len(train),
               "train_keys": list(train.keys), "augment": augment}
    best_state, best_score, stale = None, None, 0
    for epoch in range(1, config.epochs + 1):
        start = time.time()
        model.train()  # train: BatchNorm batch statistics
        order = torch.randperm(len(train), generator=shuffler)
        total_loss, seen = 0.0, 0
        for begin in range(0, len(order), config.batch_size):
            positions = order[begin:begin + config.batch_size]
            if len(positions) < 2:
                continue  # BatchNorm cannot train on a batch of one
            images = train.float_images(positions, device)
            if augment:
                images = conventional_augment(images, config, augmenter)
            labels = train.person_ids[positions].to(device)
            loss = F.cross_entropy(model(images), labels, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(positions)
            seen += len(positions)
        scheduler.step()
        val_accuracy, val_loss = _accuracy_and_loss(model, val_split, config.batch_size * 2, device)
        record = {"epoch": epoch, "train_loss": total_loss / max(seen, 1), "val_accuracy": val_accuracy,
                  "val_loss": val_loss, "seconds": time.time() - start}
        history["epochs"].append(record)
        score = (val_accuracy, -val_loss)  # accuracy first, validation loss breaks ties
        if best_score is None or score > best_score:
            best_score, stale = score, 0
            best_state = copy.deepcopy(model.state_dict())
            history["best_epoch"], history["best_val_accuracy"] = epoch, val_accuracy
        else:
            stale += 1
        if log:
            log(f"  epoch {epoch:3d}: train loss {record['train_loss']:.4f}, val acc {val_accuracy:.4f}, "
                f"val loss {val_loss:.4f} ({record['seconds']:.1f} s)")
        if stale >= config.patience:
            break
    model.load_state_dict(best_state)
    return model.eval(), history


# ------------------------------------------------------------------------------------------- evaluation

def accuracy_report(predicted: torch.Tensor, data: LabelledImages, person_names: Sequence[str],
                    condition_names: Sequence[str]) -> dict:
    """Accuracy overall, per person and per condition, plus the confusion matrix (rows: true person)."""
    truth = data.person_ids
    correct = (predicted == truth)
    n = len(person_names)
    confusion = torch.zeros(n, n, dtype=torch.long)
    confusion.index_put_((truth, predicted), torch.ones_like(truth), accumulate=True)

    def grouped(labels: torch.Tensor, names: Sequence[str]) -> dict:
        result = {}
        for label in sorted(set(labels.tolist())):
            mask = labels == label
            name = names[label] if 0 <= label < len(names) else f"unknown({label})"
            result[str(name)] = {"accuracy": correct[mask].float().mean().item(), "images": int(mask.sum())}
        return result

    return {"accuracy": correct.float().mean().item() if len(truth) else float("nan"), "images": len(truth),
            "per_person": grouped(truth, person_names), "per_condition": grouped(data.condition_ids, condition_names),
            "confusion_matrix": confusion.tolist()}


def evaluate_classifier(model: SpectrogramClassifier, manifest, split: str = "test", *,
                        images: Optional[LabelledImages] = None, image_size: Optional[int] = None,
                        batch_size: int = 128) -> dict:
    """Identification accuracy of ``model`` on a manifest split (or on already loaded ``images`` of it).

    Images are loaded at ``image_size``, by default the size the classifier was trained at.
    """
    if images is None:
        image_size = image_size or model.config.image_size
        if image_size is None:
            raise ValueError("evaluate_classifier needs image_size: this classifier's config does not record the "
                             "size it was trained at.")
        images = load_split_images(manifest, split, image_size=image_size)
    logits = predict_logits(model, images, batch_size=batch_size)
    return accuracy_report(logits.argmax(1), images, manifest.person_names, manifest.condition_names)
