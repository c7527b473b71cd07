"""Simulate a radar micro-Doppler dataset of walking people (no real data needed).

    python -m microdoppler_finetune.simulate --out data/simulated --people 31 --per-person 150
    python -m microdoppler_finetune.simulate --out data/sim_cond --layout conditions --people 8 --per-person 40 \\
        --image-size 64 --conditions Normal_line Backpack_line
    python microdoppler_finetune/simulate.py --out data/sim --preview docs/simulator_preview.png

Writes ``<out>/ID_n/IDn_caseX_Y_DopplerN.jpg`` (or ``<out>/<Condition>/ID_n/...``), a ``parameters.jsonl``
per ID folder and ``simulation_info.json``. The same arguments always give byte-identical images.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from microdoppler_finetune.simulator.dataset import LAYOUTS, simulate_dataset
from microdoppler_finetune.simulator.people import CONDITION_NAMES
from microdoppler_finetune.simulator.preview import render_preview_grid
from microdoppler_finetune.simulator.radar import BANDS, RadarSettings
from microdoppler_finetune.utils.cli import run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m microdoppler_finetune.simulate",
        description="Physics-based synthetic micro-Doppler spectrograms of walking people "
                    "(Boulic-Thalmann gait, ellipsoid scatterers, CW radar, STFT).")
    parser.add_argument("--out", required=True,
                        help="output folder: new, empty, or a previous simulator output (which is replaced)")
    parser.add_argument("--people", type=int, default=31, help="number of people (folders ID_1 .. ID_n)")
    parser.add_argument("--per-person", type=int, default=150, help="images in each ID_n folder")
    parser.add_argument("--seed", type=int, default=0, help="same seed -> identical images")
    parser.add_argument("--image-size", type=int, default=256, help="square image side in pixels")
    parser.add_argument("--layout", choices=LAYOUTS, default="flat",
                        help="flat: <out>/ID_n/*.jpg; conditions: <out>/<Condition>/ID_n/*.jpg")
    parser.add_argument("--conditions", nargs="+", choices=CONDITION_NAMES, default=None, metavar="CONDITION",
                        help="walking conditions (default: Normal_line for flat, all eight for conditions): "
                             + ", ".join(CONDITION_NAMES))
    parser.add_argument("--recordings-per-person", type=int, default=6,
                        help="recordings (caseX_Y) per ID folder; their frames overlap in time")
    parser.add_argument("--band", choices=sorted(BANDS), default="24GHz", help="radar carrier (sets the PRF)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count)")
    parser.add_argument("--preview", default=None, metavar="PNG",
                        help="also write a labelled preview grid (3 people x the chosen conditions) to this PNG")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    settings = RadarSettings.for_band(args.band)
    try:
        summary = simulate_dataset(
            args.out, people=args.people, per_person=args.per_person, seed=args.seed, image_size=args.image_size,
            layout=args.layout, conditions=args.conditions, workers=args.workers,
            recordings_per_person=args.recordings_per_person, settings=settings)
    except (FileExistsError, NotADirectoryError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.preview:
        conditions = summary["args"]["conditions"]
        path = render_preview_grid(args.preview, people=range(1, min(3, args.people) + 1), conditions=conditions,
                                   seed=args.seed, image_size=args.image_size, settings=settings)
        print(f"[simulate] preview: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
