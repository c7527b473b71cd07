"""Command line of VA-VAE fine-tuning, shared by step4_train_vavae.py and vae_training/vavae_finetune.py.

The flags are the ones the original Kaggle guide used; each maps onto one config key (see flag_overrides),
and ``--set key=value`` reaches every other key. Later wins: schema <- preset <- --config <- flags <- --set.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from microdoppler_finetune.config import PRESETS, load_config
from microdoppler_finetune.environment import default_work_dir, detect_gpus, recommend_preset

EXAMPLES = """examples:
  CPU demo (simulated data, tiny model, random init):
    python microdoppler_finetune/step4_train_vavae.py --stages 1,2,3
  Kaggle P100:
    python microdoppler_finetune/step4_train_vavae.py --data_root /kaggle/input/<data> \\
        --pretrained_path /kaggle/input/<weights>/vavae-imagenet256-f16d32-dinov2.pt --stages 1,2,3 \\
        --batch_size 8 --gradient_accumulation 2 --kaggle --time_budget 11h30m
  Kaggle 2xT4:  add --kaggle_t4 --devices "0,1" --batch_size 16 --gradient_accumulation 1
Rerunning the same command skips finished stages and resumes an interrupted one from its last.ckpt.
"""


def build_parser(prog: Optional[str] = None, description: str = "") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML in the config schema (e.g. vae_training/vavae_microdoppler_config.yaml)")
    p.add_argument("--preset", choices=PRESETS, help="hardware preset (default: --kaggle_t4 -> t4x2, else the one "
                   "that fits the detected GPUs; cpu_demo without a GPU)")
    p.add_argument("--work_dir", help="output root (default ./work_dir, /kaggle/working/work_dir with --kaggle)")
    p.add_argument("--data_root", help="spectrogram folder; split once into <work_dir>/dataset when no manifest exists")
    p.add_argument("--dataset_dir", help="manifest folder written by step3 (overrides <work_dir>/dataset)")
    p.add_argument("--pretrained_path", help="released VA-VAE .pt (or our exported folder); default: searched")
    p.add_argument("--trust_pickle", action="store_true", help="allow loading pickled checkpoints (e.g. the "
                   "released .pt; step2 converts it to safetensors so this is not needed): only for files you trust")
    p.add_argument("--stages", default=None, help="stages to run, e.g. 1,2,3 (default: all in the schedule)")
    p.add_argument("--batch_size", "--batch-size", type=int, help="per-device batch size")
    p.add_argument("--gradient_accumulation", type=int, help="micro-batches per optimizer step")
    p.add_argument("--devices", help='"auto", a count, or GPU ids like "0,1"')
    p.add_argument("--kaggle", action="store_true", help="Kaggle paths: outputs under /kaggle/working")
    p.add_argument("--kaggle_t4", action="store_true", help="Kaggle 2xT4: the t4x2 preset (DDP over both GPUs)")
    p.add_argument("--detect_anomaly", action="store_true", help="torch anomaly detection (slow; finds NaN sources)")
    p.add_argument("--learning_rate", "--lr", type=float, help="learning rate of every stage of this run")
    p.add_argument("--epochs", type=int, help="epochs of every stage of this run (default: the schedule's)")
    p.add_argument("--gradient_clip_val", type=float, help="clip the gradient norm to this (0: off)")
    p.add_argument("--precision", help="32 (default), 16-mixed (T4) or bf16-mixed (Ampere+)")
    p.add_argument("--time_budget", help="stop cleanly with a checkpoint after this long, e.g. 11h30m, 90s")
    p.add_argument("--vf_model", help="alignment target: timm model name or local checkpoint")
    p.add_argument("--freeze_layers", "--freeze-layers", type=int, help="freeze the first N encoder levels")
    p.add_argument("--num_workers", type=int, help="data loader workers")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, e.g. --set vae_train.stage_overrides.stage1.epochs=3 (repeatable)")
    return p


def choose_preset(args: argparse.Namespace) -> str:
    if args.preset:
        return args.preset
    if args.kaggle_t4:
        return "t4x2"
    return recommend_preset(detect_gpus())[0]


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """Each user-facing flag as a dotlist override of the one config schema."""
    mapping = {
        "data_root": "data.data_root", "dataset_dir": "data.dataset_dir", "pretrained_path": "vae.pretrained_path",
        "batch_size": "vae_train.batch_size", "gradient_accumulation": "vae_train.gradient_accumulation",
        "devices": "vae_train.devices", "learning_rate": "vae_train.learning_rate", "epochs": "vae_train.epochs",
        "gradient_clip_val": "vae_train.gradient_clip_val", "precision": "vae_train.precision",
        "time_budget": "vae_train.time_budget", "vf_model": "vae.vf_model",
        "freeze_layers": "vae.freeze_encoder_levels", "num_workers": "data.num_workers", "seed": "run.seed",
    }
    overrides = []
    for flag, key in mapping.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.trust_pickle:
        overrides.append("vae.trust_pickle=true")
    if args.detect_anomaly:
        overrides.append("vae_train.detect_anomaly=true")
    if args.kaggle_t4 and args.devices is None:
        overrides.append("vae_train.devices=0,1")
    return overrides


def config_from_args(args: argparse.Namespace) -> DictConfig:
    if args.data_root and not Path(args.data_root).is_dir():
        raise SystemExit(f"--data_root {args.data_root} is not a folder.")
    work_dir = args.work_dir or str(default_work_dir(kaggle=args.kaggle))
    overrides = [f"run.work_dir={work_dir}"] + flag_overrides(args) + list(args.overrides)
    return load_config(choose_preset(args), args.config, overrides)


def print_summary(summary: dict) -> None:
    print("\n=== VA-VAE fine-tuning summary ===")
    for name, result in summary["stages"].items():
        history = result.get("val_history") or []
        psnr = [row.get("val_psnr") for row in history if row.get("val_psnr") is not None]
        span = f"val PSNR {psnr[0]:.2f} -> {psnr[-1]:.2f} dB over {len(psnr)} epochs" if psnr else "no validation yet"
        print(f"  {name}: {result['status']}; {span}; chosen {result.get('chosen_checkpoint')} "
              f"({result.get('monitor')}={result.get('chosen_metric')}); alignment target: "
              f"{result.get('alignment_target')}")
    print(f"  summary: {Path(summary['work_dir']) / 'vae' / 'summary.json'}")


def main(argv: Optional[list[str]] = None, prog: Optional[str] = None, description: str = "") -> int:
    args = build_parser(prog, description).parse_args(sys.argv[1:] if argv is None else argv)
    from vae_training.stages import STATUS_NONFINITE
    from vae_training.train import train_vavae

    cfg = config_from_args(args)
    summary = train_vavae(cfg, stages=args.stages)
    import lightning.pytorch as pl

    if pl.utilities.rank_zero_only.rank == 0:
        print_summary(summary)
    statuses = [s["status"] for s in summary["stages"].values()]
    if STATUS_NONFINITE in statuses:
        return 2
    if not summary["complete"]:
        print("Not all stages finished: rerun the same command to continue.", flush=True)
    return 0
