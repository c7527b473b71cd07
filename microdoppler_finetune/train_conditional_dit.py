"""Train the person- (and walking-condition-) conditioned DiT on the VA-VAE latent cache.

    python microdoppler_finetune/train_conditional_dit.py --vae_encoder work_dir/export/vavae_encoder_for_dit \\
        --data_root /kaggle/input/micro-doppler-data --preset t4x2 --time_budget 11h30m

    # two T4 GPUs (DDP):
    torchrun --nproc_per_node 2 microdoppler_finetune/train_conditional_dit.py --preset t4x2 ...

    # fine-tune the released LightningDiT-XL with LoRA, a frozen backbone and the guide's settings:
    python microdoppler_finetune/train_conditional_dit.py --init_from lightningdit-xl-imagenet256-800ep.pt \\
        --freeze_backbone --lora_rank 16 --dropout 0.15 --contrastive_weight 0.3 --lr 1e-4

Reads <work_dir>/latents (built from the manifest with the exported encoder when missing), trains in
<work_dir>/dit, writes checkpoints/{step:07d}.pt, train_log.csv/.jsonl, tensorboard/ (tensorboard --logdir
<work_dir>/dit/tensorboard) and samples/grid_*.jpg, and when training ends (or the time budget stops it)
pretrained/: the EMA model as a diffusers folder (LightningDiT.from_pretrained) with sampling_info.json. Rerunning
the same command resumes from the checkpoint with the highest step; --time_budget saves and stops cleanly.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

from microdoppler_finetune.config import PRESETS, load_config
from microdoppler_finetune.report.lines import dit_line
from microdoppler_finetune.utils.cli import run_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train_conditional_dit.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae_encoder", help="exported encoder folder (default <work_dir>/export/vavae_encoder_for_dit)")
    p.add_argument("--data_root", help="the spectrogram folder (used only when the latent cache must be built)")
    p.add_argument("--dataset_dir", help="folder with manifest.csv (default <work_dir>/dataset)")
    p.add_argument("--latent_cache", help="latent cache folder (default <work_dir>/latents)")
    p.add_argument("--config", help="YAML in the config schema (merged over the preset)")
    p.add_argument("--preset", choices=PRESETS, help="hardware preset (default: the one that fits this machine)")
    p.add_argument("--work_dir", help="output root (default ./work_dir, /kaggle/working/... with --kaggle)")
    p.add_argument("--kaggle", action="store_true", help="default work_dir under /kaggle/working")
    p.add_argument("--run_dir", help="training folder (default <work_dir>/dit)")
    p.add_argument("--model", help="DiT size preset: S/2, B/2, L/2, XL/1, mini, tiny, ...")
    p.add_argument("--steps", type=int, help="total optimizer steps")
    p.add_argument("--batch_size", type=int, help="per device")
    p.add_argument("--lr", "--learning_rate", dest="lr", type=float, help="AdamW learning rate")
    p.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"))
    p.add_argument("--time_budget", help="save and stop cleanly after this long, e.g. 11h30m")
    p.add_argument("--gradient_checkpointing", action="store_true", help="less activation memory, slower steps")
    p.add_argument("--init_from", help="released LightningDiT .pt (or one of our checkpoints) to fine-tune")
    p.add_argument("--trust_pickle", action="store_true", help="allow a pickled --init_from (only files you trust)")
    p.add_argument("--freeze_backbone", action="store_true",
                   help="train only the person/condition tables (+ LoRA adapters and scheduled blocks)")
    p.add_argument("--lora_rank", type=int, help="LoRA rank on the blocks' linears (0: no LoRA)")
    p.add_argument("--lora_targets", help="comma-separated layer names, e.g. qkv,proj,w12,w3")
    p.add_argument("--dropout", type=float, help="dropout on the LoRA adapters (the guide: 0.15)")
    p.add_argument("--contrastive_weight", type=float, help="supervised-contrastive loss weight (the guide: 0.3)")
    p.add_argument("--seed", type=int)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, e.g. --set dit.train.val_every=500 (repeatable)")
    return p


FLAG_KEYS = {
    "vae_encoder": "dit.vae_encoder", "data_root": "data.data_root", "dataset_dir": "data.dataset_dir",
    "latent_cache": "dit.latent_cache", "run_dir": "dit.run_dir", "model": "dit.model", "steps": "dit.train.steps",
    "batch_size": "dit.train.batch_size", "lr": "dit.train.learning_rate", "precision": "dit.train.precision",
    "time_budget": "dit.train.time_budget", "init_from": "dit.finetune.init_from",
    "lora_rank": "dit.finetune.lora_rank", "dropout": "dit.finetune.dropout",
    "contrastive_weight": "dit.finetune.contrastive_weight", "seed": "dit.train.seed",
}
SWITCH_KEYS = {"gradient_checkpointing": "dit.train.gradient_checkpointing",
               "freeze_backbone": "dit.finetune.freeze_backbone", "trust_pickle": "dit.finetune.trust_pickle"}


def build_config(args: argparse.Namespace):
    from microdoppler_finetune.environment import default_work_dir, detect_gpus, recommend_preset

    preset = args.preset or recommend_preset(detect_gpus())[0]
    overrides = [f"run.work_dir={args.work_dir or default_work_dir(kaggle=args.kaggle)}"]
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    for flag, key in SWITCH_KEYS.items():
        if getattr(args, flag):
            overrides.append(f"{key}=true")
    if args.lora_targets:
        targets = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
        overrides.append(f"dit.finetune.lora_targets=[{','.join(targets)}]")
    return load_config(preset, args.config, overrides + list(args.overrides))


def main(argv: Optional[list[str]] = None) -> int:
    from microdoppler_finetune.dit import train_dit

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.data_root and not Path(args.data_root).is_dir():
        raise SystemExit(f"--data_root {args.data_root} is not a folder.")
    cfg = build_config(args)
    summary = train_dit(cfg)
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank returns the summary: one line, from rank 0
        print(dit_line(summary))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
