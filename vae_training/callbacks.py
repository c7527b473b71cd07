"""Lightning callbacks of the VA-VAE stages: stopping cleanly, resumable checkpoints, figures, progress.

Every count here is in autoencoder optimizer steps (``pl_module.ae_steps``), the unit of the schedule and the logs.

All of them are DDP-safe: decisions that change control flow are taken on rank 0 and broadcast, checkpoint
saves are called on every rank (Lightning writes on rank 0), figures are drawn on rank 0 only.
"""
from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins import TorchCheckpointIO

from microdoppler_finetune.utils.files import atomic_path
from microdoppler_finetune.utils.progress import progress

STOP_TIME_BUDGET = "time_budget"
STOP_AE_STEPS = "stop_after_ae_steps"
STOP_NONFINITE = "nonfinite"


def save_last_checkpoint(trainer: pl.Trainer, path: Path) -> None:
    """Full training state (optimizers, loops, counters), written on rank 0 through AtomicCheckpointIO."""
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path, weights_only=False)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Every checkpoint of a stage (last.ckpt, the best ones, the non-finite stop) written to a temporary sibling and
    renamed into place. Lightning's own writer stages the file in the system temp folder and then moves it: a
    copy into the final name when that folder is on another file system (/tmp and /kaggle/working on Kaggle), so a
    session that ends mid-copy left a truncated last.ckpt and lost the last good state."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO writes local files only (no storage_options).")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class GracefulStop(pl.Callback):
    """Stops a stage cleanly with a checkpoint: at a time budget (Kaggle sessions end hard) or a step cap.

    The budget is measured from ``start_time`` (the start of the whole command), so several stages share it.
    """

    def __init__(self, last_checkpoint: Path, *, deadline: Optional[float] = None,
                 stop_after_ae_steps: Optional[int] = None, nonfinite_checkpoint: Optional[Path] = None):
        self.last_checkpoint = Path(last_checkpoint)
        self.deadline = deadline  # time.time() value, or None
        self.stop_after_ae_steps = stop_after_ae_steps
        # Where the state is saved when the module stops on non-finite losses (last.ckpt keeps the last good one).
        self.nonfinite_checkpoint = Path(nonfinite_checkpoint) if nonfinite_checkpoint else None
        self._saved_nonfinite = False

    def _reason(self, pl_module) -> Optional[str]:
        if self.deadline is not None and time.time() >= self.deadline:
            return STOP_TIME_BUDGET
        if self.stop_after_ae_steps is not None and pl_module.ae_steps >= self.stop_after_ae_steps:
            return STOP_AE_STEPS
        return None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if pl_module.stop_reason == STOP_NONFINITE and self.nonfinite_checkpoint and not self._saved_nonfinite:
            save_last_checkpoint(trainer, self.nonfinite_checkpoint)  # every rank took the same decision
            self._saved_nonfinite = True
        if pl_module.stop_reason is not None:
            return
        # Ranks start at slightly different times: rank 0 decides for all, or one rank would wait forever.
        reason = trainer.strategy.broadcast(self._reason(pl_module), src=0)
        if reason is None:
            return
        pl_module.stop_reason = reason
        trainer.should_stop = True
        save_last_checkpoint(trainer, self.last_checkpoint)
        pl.utilities.rank_zero_info(
            f"Stopping cleanly ({reason}) at autoencoder step {pl_module.ae_steps}; full state saved to "
            f"{self.last_checkpoint}. Rerun the same command to continue.")


class LastCheckpoint(pl.Callback):
    """Writes ``last.ckpt`` at each epoch end and every N autoencoder steps (0: epoch ends only)."""

    def __init__(self, path: Path, every_n_ae_steps: int = 0):
        self.path = Path(path)
        self.every_n_ae_steps = int(every_n_ae_steps or 0)
        self._saved_at = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        steps = pl_module.ae_steps
        if (self.every_n_ae_steps > 0 and steps > 0 and steps % self.every_n_ae_steps == 0
                and steps != self._saved_at and pl_module.stop_reason is None):
            save_last_checkpoint(trainer, self.path)
            self._saved_at = steps

    def on_train_epoch_end(self, trainer, pl_module):
        # After a mid-epoch stop the stopping callback already saved the mid-epoch state; saving here would
        # mark the epoch as done and skip its remaining batches on resume.
        if pl_module.stop_reason is None:
            save_last_checkpoint(trainer, self.path)
            self._saved_at = pl_module.ae_steps


class ValidationHistory(pl.Callback):
    """Validation metrics of every epoch; kept in the checkpoint so a resumed stage reports all epochs."""

    def __init__(self, prefix: str = "val_"):
        self.prefix = prefix
        self.history: list[dict] = []

    def on_validation_end(self, trainer, pl_module):
        # on_validation_end, not ..._epoch_end: only here are this epoch's aggregated metrics in callback_metrics
        if trainer.sanity_checking:
            return
        row = {"epoch": trainer.current_epoch, "ae_steps": pl_module.ae_steps}
        for key, value in trainer.callback_metrics.items():
            if key.startswith(self.prefix):
                row[key] = float(value)
        self.history.append(row)

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))


class ReconstructionGrid(pl.Callback):
    """Each epoch: fixed validation images in the top row, their reconstructions below (one PNG per epoch)."""

    def __init__(self, images: torch.Tensor, out_dir: Path):
        self.images = images  # [N,3,H,W] in [-1,1], chosen once from the validation split
        self.out_dir = Path(out_dir)

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero or self.images.numel() == 0:
            return
        from torchvision.utils import make_grid, save_image

        recon = pl_module.reconstruct_for_display(self.images)
        images = torch.cat([self.images.cpu(), recon.cpu()]).clamp(-1, 1) * 0.5 + 0.5
        grid = make_grid(images, nrow=len(self.images), padding=2)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        save_image(grid, self.out_dir / f"epoch_{trainer.current_epoch:03d}.png")
        for logger in trainer.loggers:  # the same grid in TensorBoard, at the autoencoder step
            if isinstance(logger, pl.loggers.TensorBoardLogger):
                logger.experiment.add_image("val_reconstructions", grid, global_step=pl_module.ae_steps)


def read_metric_rows(logs_dir: Path) -> list[dict]:
    """All rows of every CSVLogger version under ``logs_dir`` (a resumed run writes a new version)."""
    rows = []
    for path in sorted(Path(logs_dir).glob("**/metrics.csv"), key=lambda p: p.stat().st_mtime):
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                rows.append(row)
    return rows


# Panels of the loss-curve figure: related terms share one panel, each term keeps its own line.
CURVE_PANELS = (
    ("total loss", ("train_loss", "val_loss")),
    ("reconstruction NLL (sum per sample)", ("train_nll", "val_nll")),
    ("L1 / LPIPS (per sample)", ("train_rec_l1", "train_lpips", "val_l1", "val_lpips")),
    ("KL (unweighted)", ("train_kl", "val_kl")),
    ("VF alignment", ("train_vf", "train_vf_distmat", "train_vf_cos", "val_vf", "val_vf_distmat", "val_vf_cos")),
    ("adaptive weights", ("train_lambda_vf", "train_lambda_adv")),
    ("GAN", ("train_g_loss", "train_disc_loss", "train_logits_real", "train_logits_fake")),
    ("gradient norm (before clipping)", ("train_grad_norm_ae", "train_grad_norm_disc")),
    ("validation PSNR (dB)", ("val_psnr",)),
)


def plot_loss_curves(logs_dir: Path, out_png: Path, title: str = "") -> Optional[Path]:
    """Every logged loss term and adaptive weight against the autoencoder step (validation terms as dots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[float, float]]] = {}
    for row in read_metric_rows(logs_dir):
        x = row.get("train_ae_step") or row.get("val_ae_step") or row.get("step")
        if x in (None, ""):
            continue
        for key, value in row.items():
            if value not in (None, "") and (key.startswith("train_") or key.startswith("val_")):
                series.setdefault(key, []).append((float(x), float(value)))
    panels = [(name, [k for k in keys if k in series]) for name, keys in CURVE_PANELS]
    panels = [(name, keys) for name, keys in panels if keys]
    if not panels:
        return None
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, (name, keys) in zip(axes.flat, panels):
        for key in keys:
            points = sorted(series[key])
            style = dict(marker="o", markersize=3, linestyle="--") if key.startswith("val_") else {}
            ax.plot([p[0] for p in points], [p[1] for p in points], linewidth=1, label=key, **style)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("autoencoder step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=72)
    plt.close(fig)
    return out_png


class LossCurves(pl.Callback):
    """Redraws ``loss_curves.png`` from the CSV logs at every epoch end (and when a run stops mid-epoch)."""

    def __init__(self, logs_dir: Path, out_png: Path, title: str = ""):
        self.logs_dir = Path(logs_dir)
        self.out_png = Path(out_png)
        self.title = title
        self._drawn_at = None

    def _draw(self, trainer, pl_module):
        if not trainer.is_global_zero or self._drawn_at == pl_module.ae_steps:
            return
        for logger in trainer.loggers:
            logger.save()  # flush buffered CSV rows first
        plot_loss_curves(self.logs_dir, self.out_png, self.title)
        self._drawn_at = pl_module.ae_steps

    def on_train_epoch_end(self, trainer, pl_module):
        self._draw(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self._draw(trainer, pl_module)


class StageProgress(pl.Callback):
    """The stage's progress bar: microdoppler_finetune.utils.progress (tqdm), counted in autoencoder steps over
    the whole stage (a resumed stage starts at its step), with the latest loss terms and adaptive weights every
    ``every_n_ae_steps`` and one line of validation metrics per epoch.

    Live in a terminal or notebook; in a log file one plain-ASCII line every 30 s. Lightning's own bar is off:
    this is the one progress display of the VA-VAE training. MDF_PROGRESS=0 hides the bar.
    """

    SHOWN = ("train_loss", "train_nll", "train_vf", "train_lambda_vf", "train_g_loss", "train_lambda_adv",
             "train_disc_loss")
    SHOWN_VAL = ("val_psnr", "val_loss", "val_l1", "val_lpips", "val_vf")

    def __init__(self, stage_name: str, total_ae_steps: int, every_n_ae_steps: int = 10):
        self.stage_name = stage_name
        self.total = max(1, int(total_ae_steps))
        self.every = max(1, int(every_n_ae_steps))
        self.bar = None
        self._shown_at = None

    def on_train_start(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return
        self.bar = progress(desc=self.stage_name, total=self.total, unit="step", initial=pl_module.ae_steps)

    def on_train_epoch_start(self, trainer, pl_module):
        if self.bar is not None:
            self.bar.set_description(f"{self.stage_name} epoch {trainer.current_epoch + 1}/{trainer.max_epochs}",
                                     refresh=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.bar is None:
            return
        steps = pl_module.ae_steps
        if steps % self.every == 0 and steps != self._shown_at:
            self._shown_at = steps
            metrics = trainer.callback_metrics
            self.bar.set_postfix_str(" ".join(f"{key[6:]}={float(metrics[key]):.4g}" for key in self.SHOWN
                                              if key in metrics), refresh=False)
        if steps > self.bar.n:
            self.bar.update(steps - self.bar.n)  # redraws at most every mininterval (30 s in a log file)

    def on_validation_end(self, trainer, pl_module):
        if self.bar is None or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        shown = " ".join(f"{key[4:]}={float(metrics[key]):.4g}" for key in self.SHOWN_VAL if key in metrics)
        self.bar.write(f"[{self.stage_name}] epoch {trainer.current_epoch + 1}/{trainer.max_epochs} at autoencoder "
                       f"step {pl_module.ae_steps}: validation {shown}")
        sys.stdout.flush()

    def on_train_end(self, trainer, pl_module):
        self._close()

    def on_exception(self, trainer, pl_module, exception):
        self._close()

    def _close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
