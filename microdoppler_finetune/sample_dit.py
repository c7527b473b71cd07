"""Generate spectrograms per person (and walking condition) with a trained DiT.

    python microdoppler_finetune/sample_dit.py --checkpoint work_dir/dit/checkpoints/0100000.pt \\
        --vae_encoder work_dir/export/vavae_encoder_for_dit --out work_dir/generated --per_person 50

    # unseen person x condition pairs (e.g. people never recorded with a backpack):
    python microdoppler_finetune/sample_dit.py ... --conditions all --pairs unseen

Writes <out>/ID_n/IDn_gen{seed}_Doppler{k}.jpg (or <out>/<Condition>/ID_n/... with --conditions), a
generation_info.json and __grid_by_person.jpg. --checkpoint may also be the training folder (<work_dir>/dit or
its checkpoints/): the checkpoint with the highest step is used. Sampler defaults come from the config
(dit.sample: the release's Euler, 250 steps, CFG 6.7 from t >= 0.125, shift 0.3).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from microdoppler_finetune.config import PRESETS, load_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sample_dit.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="{step:07d}.pt from train_conditional_dit.py, or its folder")
    p.add_argument("--vae_encoder", required=True, help="the exported encoder folder the DiT was trained with")
    p.add_argument("--out", required=True, help="output folder (dataset layout)")
    p.add_argument("--per_person", type=int, help="images per person (per condition with --conditions)")
    p.add_argument("--persons", default="all", help="all, or a comma list of names/numbers (ID_3,7)")
    p.add_argument("--conditions", help="all, or a comma list (Normal_free,Backpack_line); default: the null "
                   "condition (condition-free samples)")
    p.add_argument("--pairs", choices=("all", "seen", "unseen"), default="all",
                   help="with --conditions: every pair, or only pairs (not) present in the training split")
    p.add_argument("--steps", type=int, help="ODE steps")
    p.add_argument("--sampler", choices=("euler", "heun"))
    p.add_argument("--cfg_scale", type=float)
    p.add_argument("--cfg_interval_start", type=float)
    p.add_argument("--shift", type=float, help="timestep shift s of t' = s*t / (1 + (s-1)*t)")
    p.add_argument("--seed", type=int)
    p.add_argument("--batch_size", type=int)
    p.add_argument("--image_size", type=int, help="written JPG size (default: the size the cache was encoded at)")
    p.add_argument("--no_ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1")
    p.add_argument("--trust_pickle", action="store_true", help="allow a pickled checkpoint (only files you trust)")
    p.add_argument("--preset", choices=PRESETS, help="config preset whose dit.sample section gives the defaults "
                   "(default: the schema's, i.e. the release's sampler settings)")
    p.add_argument("--config", help="YAML in the config schema (dit.sample section)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p


def resolve_checkpoint(path: str) -> Path:
    from microdoppler_finetune.dit.checkpointing import CHECKPOINT_DIRNAME, latest_checkpoint

    path = Path(path)
    if path.is_dir():
        folder = path / CHECKPOINT_DIRNAME if (path / CHECKPOINT_DIRNAME).is_dir() else path
        found = latest_checkpoint(folder)
        if found is None:
            raise SystemExit(f"No {{step:07d}}.pt checkpoint in {folder}.")
        return found
    if not path.is_file():
        raise SystemExit(f"--checkpoint {path} does not exist.")
    return path


def main(argv: Optional[list[str]] = None) -> int:
    from microdoppler_finetune.dit.sampling import SamplerSettings, generate_dataset

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    s = load_config(args.preset, args.config, list(args.overrides)).dit.sample
    settings = SamplerSettings(
        steps=args.steps if args.steps is not None else int(s.steps),
        sampler=args.sampler or str(s.sampler),
        cfg_scale=args.cfg_scale if args.cfg_scale is not None else float(s.cfg_scale),
        cfg_interval_start=(args.cfg_interval_start if args.cfg_interval_start is not None
                            else float(s.cfg_interval_start)),
        shift=args.shift if args.shift is not None else float(s.shift),
        seed=args.seed if args.seed is not None else int(s.seed),
        batch_size=args.batch_size if args.batch_size is not None else int(s.batch_size))
    info = generate_dataset(
        resolve_checkpoint(args.checkpoint), args.vae_encoder, args.out,
        per_person=args.per_person if args.per_person is not None else int(s.per_person),
        persons=args.persons, conditions=args.conditions, pairs=args.pairs, settings=settings,
        image_size=args.image_size if args.image_size is not None else s.image_size,
        use_ema=not args.no_ema and bool(s.use_ema), device=args.device, trust_pickle=args.trust_pickle)
    summary = {k: v for k, v in info.items() if k != "files"}
    summary["files"] = len(info["files"])
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
