"""Step 3: scan, validate and split the spectrograms once; write the manifest every later stage reads.

    python microdoppler_finetune/step3_prepare_dataset.py --data_root DATA [--output_dir OUT] [--seed 0]
    python microdoppler_finetune/step3_prepare_dataset.py --kaggle      # finds the dataset under /kaggle/input

Writes OUT/manifest.csv, user_labels.json, problems.csv/.json and split_summary.txt/.json (OUT defaults
to ./work_dir/dataset, or /kaggle/working/work_dir/dataset with --kaggle). Nothing is written into DATA.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from microdoppler_finetune.data import DatasetError, discover_data_root, prepare_dataset
from microdoppler_finetune.data.layouts import EXPECTED_LAYOUTS
from microdoppler_finetune.data.prepare import DEFAULT_GAP_FRAMES, default_output_dir
from microdoppler_finetune.data.splits import SPLIT_UNITS
from microdoppler_finetune.environment import kaggle_input_root
from microdoppler_finetune.report.lines import step3_line
from microdoppler_finetune.utils.cli import run_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="step3_prepare_dataset.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=EXPECTED_LAYOUTS)
    p.add_argument("--data_root", help="spectrogram folder (read only). With --kaggle and no --data_root, the "
                                       "dataset is searched for under the Kaggle input folder")
    p.add_argument("--output_dir", help="where the manifest goes (default: <work_dir>/dataset)")
    p.add_argument("--work_dir", help="run folder whose dataset/ subfolder is the default --output_dir "
                                      "(default ./work_dir, /kaggle/working/work_dir with --kaggle)")
    p.add_argument("--kaggle", action="store_true", help="Kaggle notebook: find the data under /kaggle/input, "
                                                         "write under /kaggle/working")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--val_fraction", type=float, default=0.15, help="share of images for validation (tuning)")
    p.add_argument("--test_fraction", type=float, default=0.15,
                   help="share of images for the test split, which nothing trains or tunes on")
    p.add_argument("--split_unit", choices=SPLIT_UNITS, default="auto",
                   help="auto: whole recordings when every split can get one per person and condition (even if "
                        "the fractions are off), else contiguous blocks; recording: never cut a recording; "
                        "block: always cut into blocks (default auto)")
    p.add_argument("--gap_frames", type=int, default=DEFAULT_GAP_FRAMES,
                   help="minimum frames left out where a block cuts through a recording; the gap is the time "
                        f"overlap of its frames measured from the images when larger (default {DEFAULT_GAP_FRAMES})")
    p.add_argument("--min_recordings", type=int, default=None,
                   help="with --split_unit auto, a person/condition needs this many recordings to be split by "
                        "whole recordings (default: one per split, i.e. 3)")
    p.add_argument("--strict", action="store_true",
                   help="fail (exit 2, nothing written) when the content check finds a val/test frame with a "
                        "near copy in training")
    p.add_argument("--min_side", type=int, default=32, help="images with a smaller side are skipped (default 32)")
    p.add_argument("--max_side", type=int, default=4096, help="larger images are kept with a warning")
    p.add_argument("--workers", type=int, default=None, help="threads that open and hash images")
    p.add_argument("--withhold", metavar="CONDITION[:FRACTION]",
                   help="keep every recording in CONDITION (a name or prefix, e.g. Backpack) of a seeded FRACTION "
                        "(default 0.5) of the people out of all training: tested on only (plus a few such pairs in "
                        "validation to tune on)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing manifest made from other inputs/settings (redo the later stages)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.data_root:
            data_root = Path(args.data_root)
        elif args.kaggle:
            data_root = discover_data_root(kaggle_input_root())
            print(f"Found the dataset at {data_root}")
        else:
            print("ERROR: pass --data_root DIR (or --kaggle to search the Kaggle input folder).", file=sys.stderr)
            return 2
        if args.output_dir:
            output_dir = Path(args.output_dir)
        elif args.work_dir:
            output_dir = Path(args.work_dir) / "dataset"
        else:
            output_dir = default_output_dir(kaggle=args.kaggle)
        prepare_dataset(data_root, output_dir, seed=args.seed, val_fraction=args.val_fraction,
                        test_fraction=args.test_fraction, gap_frames=args.gap_frames,
                        split_unit=args.split_unit, min_recordings=args.min_recordings, strict=args.strict,
                        min_side=args.min_side, max_side=args.max_side, overwrite=args.overwrite,
                        withhold=args.withhold, workers=args.workers)
    except (DatasetError, ValueError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    print(step3_line(output_dir / "manifest.csv"))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
