"""Step 5: validate a VA-VAE, export it for the DiT with its latent statistics, and encode the latent cache.

    python microdoppler_finetune/step5_validate_export.py --run work_dir/vae --all
    python microdoppler_finetune/step5_validate_export.py --checkpoint pretrained --metrics     # the released one
    python microdoppler_finetune/step5_validate_export.py --checkpoint work_dir/vae/stage3/checkpoints/last.ckpt \
        --metrics --stats

Parts (none given: --all): --metrics (PSNR/SSIM/LPIPS/MSE on val and test, per person; reconstruction figure),
--stats (per-channel latent statistics on train, t-SNE map, k-NN person separability), --export (the encoder
for the DiT, <work_dir>/export/vavae_encoder_for_dit), --cache (train/val latents, <work_dir>/latents).
Outputs of --metrics/--stats go to <work_dir>/validation/<name>/ with <name> taken from the checkpoint, so the
released and the fine-tuned VA-VAE can be compared with the same command (<work_dir>/validation/summary.md).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from microdoppler_finetune.config import PRESETS, load_config, merge_config, overrides_config
from microdoppler_finetune.environment import default_work_dir, detect_gpus, recommend_preset
from microdoppler_finetune.report.lines import step5_line
from microdoppler_finetune.utils.cli import run_main
from microdoppler_finetune.workflow.validate_export import (
    PARTS,
    CheckpointChoice,
    choose_from_run,
    describe_checkpoint,
    load_run_config,
    run_step5,
    safe_name,
)

PRETRAINED = "pretrained"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="step5_validate_export.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="our .ckpt, an exported folder, the released VA-VAE file, or "
                       f"'{PRETRAINED}' (the released weights step2 downloaded)")
    which.add_argument("--run", dest="run_dir", help="<work_dir>/vae: the chosen checkpoint of the last finished stage")
    for part, text in (("metrics", "reconstruction metrics and figure"), ("stats", "latent statistics, map, "
                       "separability"), ("export", "export the encoder for the DiT"), ("cache", "latent cache")):
        p.add_argument(f"--{part}", action="store_true", help=text)
    p.add_argument("--all", action="store_true", help="all four parts (the default when none is given)")
    p.add_argument("--kaggle", action="store_true", help="default work_dir under /kaggle/working")
    p.add_argument("--work_dir", help="output root (default: the run's work_dir with --run, else ./work_dir)")
    p.add_argument("--dataset_dir", help="folder with manifest.csv (default <work_dir>/dataset)")
    p.add_argument("--data_root", help="where the manifest's images are now, if they moved since step3")
    p.add_argument("--batch_size", type=int, help="images per forward pass")
    p.add_argument("--image_size", type=int, help="image size the VA-VAE sees (default: the run's data.image_size)")
    p.add_argument("--max_images", type=int, help="at most N images per split (quick checks; marks the cache "
                   "incomplete)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument("--name", help="validation folder name (default: derived from the checkpoint)")
    p.add_argument("--preset", choices=PRESETS, help="config preset when the checkpoint has no run config "
                   "(default: the one that fits this machine)")
    p.add_argument("--config", help="YAML in the config schema, merged over the run's config / preset")
    p.add_argument("--trust_pickle", action="store_true", help="allow a pickled checkpoint (only files you trust)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, e.g. --set export.sample_seed=1 (repeatable)")
    return p


def resolve_choice(args: argparse.Namespace) -> CheckpointChoice:
    if args.run_dir:
        choice = choose_from_run(args.run_dir)
    elif args.checkpoint == PRETRAINED and not Path(PRETRAINED).exists():
        from microdoppler_finetune.weights.locate import find_pretrained

        found = find_pretrained("vavae")
        if found is None:
            raise SystemExit("No released VA-VAE on this machine. Download it first with "
                             "python microdoppler_finetune/step2_download_models.py (or attach it on Kaggle), or "
                             "pass --checkpoint PATH.")
        choice = describe_checkpoint(found)
        choice.name = safe_name(f"{PRETRAINED}_{Path(found).stem}")
    else:
        choice = describe_checkpoint(args.checkpoint)
    if args.name:
        choice.name = safe_name(args.name)
    return choice


def build_config(args: argparse.Namespace, choice: CheckpointChoice):
    """Run config of the checkpoint's stage (its image size, split, flip) when known, else a preset."""
    overrides = []
    if choice.run_config is not None:
        cfg = load_run_config(choice.run_config)
        print(f"Config: {choice.run_config} (the run that trained this checkpoint)", flush=True)
        if args.config:
            cfg = _merge_file(cfg, args.config)
    else:
        preset = args.preset or recommend_preset(detect_gpus())[0]
        print(f"Config: preset {preset}" + (f" + {args.config}" if args.config else ""), flush=True)
        cfg = load_config(preset, args.config, [])
    work_dir = args.work_dir or (str(choice.work_dir_guess) if choice.work_dir_guess else None) \
        or str(default_work_dir(kaggle=args.kaggle))
    overrides.append(f"run.work_dir={work_dir}")
    mapping = {"dataset_dir": "data.dataset_dir", "image_size": "data.image_size", "batch_size": "export.batch_size",
               "max_images": "export.max_images", "device": "export.device"}
    for flag, key in mapping.items():
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = merge_config(cfg, overrides_config(overrides), "step5's flags")
    for item in args.overrides:
        cfg = merge_config(cfg, overrides_config([item]), f"--set {item}")
    return cfg


def _merge_file(cfg, path: str):
    from omegaconf import OmegaConf

    if not Path(path).is_file():
        raise SystemExit(f"--config {path} does not exist.")
    return merge_config(cfg, OmegaConf.load(path), f"config file {path}")


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    parts = [part for part in PARTS if getattr(args, part)]
    if args.all or not parts:
        parts = list(PARTS)
    if args.data_root and not Path(args.data_root).is_dir():
        raise SystemExit(f"--data_root {args.data_root} is not a folder.")
    choice = resolve_choice(args)
    cfg = build_config(args, choice)
    summary = run_step5(cfg, choice, parts, trust_pickle=args.trust_pickle, data_root=args.data_root)
    print(step5_line(summary))  # the whole summary: <validation_dir>/step5_summary.json
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
