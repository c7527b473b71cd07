"""Reconstruction quality of a VA-VAE: PSNR, SSIM, MSE (and LPIPS when its weights exist), overall and per group.

Conventions (every number step5 reports follows them):

- Images are compared as the uint8 files a user would save: [-1,1] -> round((x+1)*127.5) -> 0..255.
- PSNR is per image, 10*log10(255^2 / MSE_uint8), then averaged over images. A perfect reconstruction has
  PSNR = inf; it is kept as inf (the JSON writes the string "inf"), never silently capped.
  ``psnr_from_mean_mse`` (one PSNR from the MSE averaged over all images) is finite unless every image is exact.
- MSE is on the uint8 levels rescaled to [0,1], so PSNR = 10*log10(1/MSE) for a single image.
- SSIM is scikit-image's ``structural_similarity`` on the uint8 HxWx3 images (data_range 255, 7x7 window,
  ``channel_axis=-1``: the mean over the three channels).
- LPIPS compares the [-1,1] input with the reconstruction clamped to [-1,1]. It is only reported with its real
  pretrained backbone; a random-backbone stand-in gives meaningless numbers, so it is reported as unavailable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from skimage.metrics import structural_similarity
from torch.utils.data import DataLoader, Dataset

from microdoppler_finetune.utils.files import atomic_save_figure
from microdoppler_finetune.utils.images import psnr_uint8, to_uint8_hwc
from microdoppler_finetune.utils.progress import progress

METRIC_NAMES = ("psnr", "ssim", "mse", "lpips")


# ------------------------------------------------------------------------------------------- per-image metrics


def mse_uint8(reference: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Per-image MSE of two uint8 [B,H,W,C] batches, on the [0,1] scale."""
    _check_pair(reference, test)
    diff = (reference.astype(np.float64) - test.astype(np.float64)) / 255.0
    return (diff**2).reshape(diff.shape[0], -1).mean(axis=1)


def ssim_uint8(reference: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Per-image SSIM (scikit-image, data_range 255, mean over channels) of two uint8 [B,H,W,C] batches."""
    _check_pair(reference, test)
    if min(reference.shape[1:3]) < 7:
        raise ValueError(f"SSIM uses a 7x7 window: images must be at least 7x7, got {reference.shape[1:3]}.")
    return np.array([
        structural_similarity(r, t, data_range=255, channel_axis=-1) for r, t in zip(reference, test)
    ], dtype=np.float64)


def _check_pair(reference: np.ndarray, test: np.ndarray) -> None:
    if reference.shape != test.shape:
        raise ValueError(f"Image batches differ in shape: {reference.shape} vs {test.shape}.")
    if reference.dtype != np.uint8 or test.dtype != np.uint8:
        raise TypeError(f"Expected uint8 images (use to_uint8_hwc), got {reference.dtype} and {test.dtype}.")


# ------------------------------------------------------------------------------------------- LPIPS availability


@dataclass
class LPIPSMetric:
    """LPIPS, or the reason it cannot be computed here (``model`` is None then)."""

    model: Optional[torch.nn.Module]
    description: str

    @property
    def available(self) -> bool:
        return self.model is not None


def load_lpips_metric(net: str = "alex", device: str | torch.device = "cpu", *, download: bool = True) -> LPIPSMetric:
    """The LPIPS metric with its pretrained backbone, or an unavailable marker saying why (never raises).

    models.perceptual.create_lpips raises when torchvision's backbone weights are missing (offline) and could
    not be downloaded (``download``: one short attempt). A random-backbone stand-in is never used here: its
    numbers would not be LPIPS.
    """
    try:
        from models.perceptual import create_lpips

        model = create_lpips(net=net, allow_random_backbone=False, download=download)
    except Exception as exc:  # noqa: BLE001 - missing weights, unreadable file, ...: all mean "no LPIPS here"
        reason = " ".join(str(exc).split())  # one line: the message names the missing file over several lines
        reason = reason if len(reason) <= 400 else reason[:400] + " ..."
        return LPIPSMetric(None, f"unavailable: LPIPS-{net} backbone weights could not be loaded "
                                 f"({type(exc).__name__}: {reason})")
    if getattr(model, "backbone_pretrained", True) is False:
        return LPIPSMetric(None, f"unavailable: only a random-backbone LPIPS-{net} could be built; its numbers "
                                 f"would be meaningless")
    model = model.to(device).eval()  # eval: LPIPS has dropout layers
    source = getattr(model, "backbone_source", "pretrained backbone")
    return LPIPSMetric(model, f"LPIPS-{net} v0.1 ({source})")


# ------------------------------------------------------------------------------------------- accumulation


@dataclass
class ReconstructionRecords:
    """Per-image metrics with the labels needed to group them."""

    psnr: List[float] = field(default_factory=list)
    ssim: List[float] = field(default_factory=list)
    mse: List[float] = field(default_factory=list)
    lpips: List[float] = field(default_factory=list)  # empty when LPIPS is unavailable
    person_id: List[int] = field(default_factory=list)
    condition_id: List[int] = field(default_factory=list)
    index: List[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.psnr)

    def add(self, originals: torch.Tensor, reconstructions: torch.Tensor, *, person_id: Sequence[int],
            condition_id: Sequence[int], index: Sequence[int], lpips: Optional[torch.Tensor] = None) -> None:
        a, b = to_uint8_hwc(originals), to_uint8_hwc(reconstructions)
        self.psnr.extend(psnr_uint8(a, b).tolist())
        self.ssim.extend(ssim_uint8(a, b).tolist())
        self.mse.extend(mse_uint8(a, b).tolist())
        if lpips is not None:
            self.lpips.extend(lpips.detach().float().flatten().cpu().tolist())
        self.person_id.extend(int(v) for v in person_id)
        self.condition_id.extend(int(v) for v in condition_id)
        self.index.extend(int(v) for v in index)

    def summary(self, person_names: Optional[Sequence[str]] = None,
                condition_names: Optional[Sequence[str]] = None) -> dict:
        """Overall numbers plus the same per person and per condition."""
        everything = np.arange(len(self))
        result = {"overall": self._group(everything)}
        result["per_person"] = self._grouped(np.asarray(self.person_id), person_names)
        result["per_condition"] = self._grouped(np.asarray(self.condition_id), condition_names)
        return result

    def _grouped(self, labels: np.ndarray, names: Optional[Sequence[str]]) -> Dict[str, dict]:
        groups = {}
        for label in sorted(set(labels.tolist())):
            name = names[label] if names is not None and 0 <= label < len(names) else str(label)
            groups[name] = self._group(np.flatnonzero(labels == label))
        return groups

    def _group(self, rows: np.ndarray) -> dict:
        if len(rows) == 0:
            return {"count": 0}
        psnr = np.asarray(self.psnr)[rows]
        mse = np.asarray(self.mse)[rows]
        mean_mse = float(mse.mean())
        group = {
            "count": int(len(rows)),
            "psnr": float(psnr.mean()),  # inf when any image in the group is reconstructed exactly
            "psnr_std": float(psnr.std()) if np.isfinite(psnr).all() else float("nan"),
            "psnr_from_mean_mse": 10.0 * math.log10(1.0 / mean_mse) if mean_mse > 0 else float("inf"),
            "ssim": float(np.asarray(self.ssim)[rows].mean()),
            "mse": mean_mse,
        }
        if self.lpips:
            group["lpips"] = float(np.asarray(self.lpips)[rows].mean())
        return group


# ------------------------------------------------------------------------------------------- evaluation loop


@torch.no_grad()
def evaluate_reconstruction(
    reconstruct: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    lpips_metric: Optional[LPIPSMetric] = None,
    num_workers: int = 0,
    description: str = "reconstruct",
) -> ReconstructionRecords:
    """Per-image metrics of ``reconstruct(images [B,3,H,W] in [-1,1]) -> [B,3,H,W]`` over ``dataset``.

    ``dataset`` items are dicts with image, person_id, condition_id and index (MicroDopplerDataset).
    ``reconstruct`` must be deterministic (step5 decodes the posterior mode) so reruns give equal numbers.
    """
    records = ReconstructionRecords()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    lpips_model = lpips_metric.model if lpips_metric is not None and lpips_metric.available else None
    for batch in progress(loader, desc=description, unit="batch"):
        images = batch["image"].to(device)
        recon = reconstruct(images).float().clamp(-1, 1)  # [B,3,H,W]
        lp = lpips_model(images.float(), recon).flatten(1).mean(1) if lpips_model is not None else None
        records.add(images, recon, person_id=batch["person_id"].tolist(),
                    condition_id=batch["condition_id"].tolist(), index=batch["index"].tolist(), lpips=lp)
    return records


# ------------------------------------------------------------------------------------------- reporting


def format_number(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def metrics_markdown(metrics: dict, title: str, groups: bool = True) -> str:
    """A short Markdown report: one row per split, then (``groups``) per-person and per-condition tables."""
    lines = [f"# {title}", ""]
    notes = metrics.get("notes", [])
    for note in notes:
        lines.append(f"- {note}")
    if notes:
        lines.append("")
    columns = ["psnr", "ssim", "mse", "lpips"]
    header = "| {} | images | PSNR (dB) | SSIM | MSE | LPIPS |"
    rule = "|---|---:|---:|---:|---:|---:|"

    def row(name: str, group: dict) -> str:
        values = [format_number(group.get(c), 5 if c == "mse" else 3) for c in columns]
        return f"| {name} | {group.get('count', 0)} | " + " | ".join(values) + " |"

    splits = metrics.get("splits", {})
    lines += [header.format("split"), rule]
    for split, result in splits.items():
        lines.append(row(split, result["overall"]))
    for split, result in (splits.items() if groups else ()):
        for key, label in (("per_person", "person"), ("per_condition", "condition")):
            groups = result.get(key, {})
            if len(groups) <= 1 and key == "per_condition":
                continue  # one condition: the table would repeat the overall row
            lines += ["", f"## {split}: per {label}", "", header.format(label), rule]
            lines += [row(name, group) for name, group in groups.items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- figure


def display_positions(person_ids: Sequence[int], condition_ids: Sequence[int], count: int) -> List[int]:
    """Positions of ``count`` items showing as many people and conditions as possible, deterministically.

    Each round takes one item per person; person k shows its condition (k + round) modulo its number of
    conditions, so one figure mixes conditions instead of showing the first condition of everyone.
    """
    pairs: Dict[tuple, List[int]] = {}
    for position, (p, c) in enumerate(zip(person_ids, condition_ids)):
        pairs.setdefault((int(p), int(c)), []).append(position)
    persons = sorted({p for p, _ in pairs})
    conditions_of = {p: sorted(c for q, c in pairs if q == p) for p in persons}
    used = {pair: 0 for pair in pairs}
    chosen: List[int] = []
    target = min(count, len(person_ids))
    round_ = 0
    while len(chosen) < target:
        for k, person in enumerate(persons):
            conditions = conditions_of[person]
            pair = (person, conditions[(k + round_) % len(conditions)])
            if used[pair] < len(pairs[pair]) and len(chosen) < target:
                chosen.append(pairs[pair][used[pair]])
                used[pair] += 1
        round_ += 1
    return chosen


def save_reconstruction_figure(originals: torch.Tensor, reconstructions: torch.Tensor, labels: Sequence[str],
                               path: str | Path, title: str = "") -> Path:
    """Three rows: originals, reconstructions, |error| (mean over RGB, uint8 levels, shared colour scale)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and Kaggle
    import matplotlib.pyplot as plt

    a, b = to_uint8_hwc(originals), to_uint8_hwc(reconstructions)
    error = np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(axis=-1)  # [N,H,W]
    psnr = psnr_uint8(a, b)
    n = len(a)
    vmax = max(float(error.max()), 1.0)
    fig, axes = plt.subplots(3, n, figsize=(1.9 * n + 0.8, 6.2), squeeze=False)
    image = None
    for col in range(n):
        axes[0, col].imshow(a[col])
        axes[0, col].set_title(labels[col], fontsize=7)
        axes[1, col].imshow(b[col])
        axes[1, col].set_title(f"PSNR {format_number(float(psnr[col]), 1)} dB", fontsize=7)
        image = axes[2, col].imshow(error[col], cmap="magma", vmin=0, vmax=vmax)
        for row in range(3):
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
    for row, name in enumerate(("original", "reconstruction", "|error|")):
        axes[row, 0].set_ylabel(name, fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes[2, :].tolist(), fraction=0.02, pad=0.01, label="|error| (uint8 levels)")
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_figure(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
