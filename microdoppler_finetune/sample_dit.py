"""Generate spectrograms per person (and walking condition) with a trained DiT.

    python microdoppler_finetune/sample_dit.py --checkpoint work_dir/dit/checkpoints/0100000.pt \\
        --vae_encoder work_dir/export/vavae_encoder_for_dit --out work_dir/generated --per_person 50

    # unseen person x condition pairs (e.g. people never recorded with a backpack):
    python microdoppler_finetune/sample_dit.py ... --conditions all --pairs unseen

Writes <out>/ID_n/IDn_gen{seed}_Doppler{k}.jpg (or <out>/<Condition>/ID_n/... with --conditions), a
generation_info.json and __grid_by_person.jpg. --checkpoint may be a {step:07d}.pt checkpoint, the exported
folder <work_dir>/dit/pretrained (LightningDiT.from_pretrained; EMA weights), or the training folder
(<work_dir>/dit: its pretrained/ export, or a later checkpoint when there is one; <work_dir>/dit/checkpoints: the
highest step). Sampler defaults come from the config (dit.sample: UniPC over --num_sampling_steps 26 grid points =
25 model evaluations, CFG 6.7 from t >= 0.125, shift 0.3; --sampler euler --num_sampling_steps 250 is the
release's sampler).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from microdoppler_finetune.config import PRESETS, load_config
from microdoppler_finetune.report.lines import sample_line
from microdoppler_finetune.utils.cli import run_main
from models.transport import SAMPLING_METHODS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sample_dit.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="{step:07d}.pt from train_conditional_dit.py, its pretrained/ export, or the run folder")
    p.add_argument("--vae_encoder", required=True, help="the exported encoder folder the DiT was trained with")
    p.add_argument("--out", required=True, help="output folder (dataset layout)")
    p.add_argument("--per_person", type=int, help="images per person (per condition with --conditions)")
    p.add_argument("--persons", default="all", help="all, or a comma list of names/numbers (ID_3,7)")
    p.add_argument("--conditions", help="all, or a comma list (Normal_free,Backpack_line); default: the null "
                   "condition (condition-free samples)")
    p.add_argument("--pairs", choices=("all", "seen", "unseen"), default="all",
                   help="with --conditions: every pair, or only pairs (not) present in the training split")
    p.add_argument("--num_sampling_steps", type=int,
                   help="grid points of the ODE, as the release counts them: 250 = 249 Euler steps")
    p.add_argument("--steps", type=int, help="DEPRECATED: Euler steps (= num_sampling_steps - 1); use "
                   "--num_sampling_steps")
    p.add_argument("--sampler", choices=SAMPLING_METHODS,
                   help="unipc (the default), euler (the release's, with 250 points) or another: see the README's "
                        "sampler table")
    p.add_argument("--cfg_scale", type=float, help="guidance scale; <= 1: no guidance")
    p.add_argument("--cfg_interval_start", type=float)
    p.add_argument("--shift", type=float, help="timestep shift s of t' = s*t / (1 + (s-1)*t); <= 0: no shift")
    p.add_argument("--seed", type=int)
    p.add_argument("--batch_size", type=int)
    p.add_argument("--image_size", type=int, help="written JPG size (default: the size the cache was encoded at)")
    p.add_argument("--no_ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1")
    p.add_argument("--trust_pickle", action="store_true", help="allow a pickled checkpoint (only files you trust)")
    p.add_argument("--preset", choices=PRESETS, help="config preset whose dit.sample section gives the defaults "
                   "(default: the schema's)")
    p.add_argument("--config", help="YAML in the config schema (dit.sample section)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p


def resolve_checkpoint(path: str) -> Path:
    """--checkpoint as one loadable path: a {step:07d}.pt file or a pretrained/ folder."""
    from microdoppler_finetune.dit.export import resolve_trained_dit

    try:
        return resolve_trained_dit(path)
    except FileNotFoundError as exc:
        raise SystemExit(str(exc)) from exc


def main(argv: Optional[list[str]] = None) -> int:
    from microdoppler_finetune.dit.sample_folder import generate_into_folder
    from microdoppler_finetune.dit.sampling import SamplerSettings

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.steps is not None and args.num_sampling_steps is not None:
        raise SystemExit("Pass --num_sampling_steps (grid points) or the deprecated --steps (Euler steps), not both.")
    s = load_config(args.preset, args.config, list(args.overrides)).dit.sample
    settings = SamplerSettings.from_config(
        s, num_sampling_steps=args.num_sampling_steps, steps=args.steps, sampler=args.sampler,
        cfg_scale=args.cfg_scale, cfg_interval_start=args.cfg_interval_start, shift=args.shift, seed=args.seed,
        batch_size=args.batch_size)
    info = generate_into_folder(
        resolve_checkpoint(args.checkpoint), args.vae_encoder, args.out,
        per_person=args.per_person if args.per_person is not None else int(s.per_person),
        persons=args.persons, conditions=args.conditions, pairs=args.pairs, settings=settings,
        image_size=args.image_size if args.image_size is not None else s.image_size,
        use_ema=not args.no_ema and bool(s.use_ema), device=args.device, trust_pickle=args.trust_pickle)
    print(sample_line(info, args.out))  # everything else: <out>/generation_info.json
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
