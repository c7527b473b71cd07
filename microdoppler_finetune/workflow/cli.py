"""The command line of the pipeline (``python -m microdoppler_finetune.pipeline``; also
``models/main_microdoppler_finetune.py`` and ``models/two_stage_training.py``)."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Optional

from microdoppler_finetune.utils.cli import is_user_error, user_error_message
from microdoppler_finetune.workflow.context import MODES

PIPELINE_HELP = """Run the whole pipeline: simulate (when no data) -> split -> VA-VAE -> export -> DiT -> samples ->
evaluation -> report.

    python -m microdoppler_finetune.pipeline demo              # CPU demo on simulated data
    python -m microdoppler_finetune.pipeline vae --data_root D --preset p100   # split + VA-VAE + export
    python -m microdoppler_finetune.pipeline dit --data_root D --preset p100   # DiT + samples + evaluation
    python -m microdoppler_finetune.pipeline both --data_root D               # everything, preset from the GPU

Rerunning the same command continues an interrupted run: finished stages are skipped, trainings resume."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=PIPELINE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=sorted(MODES), help="which stages to run")
    parser.add_argument("--preset", default=None, help="hardware preset (configs/<preset>.yaml); "
                        "default: cpu_demo for 'demo', else the one step1 recommends")
    parser.add_argument("--config", default=None, help="YAML overriding the preset")
    parser.add_argument("--data_root", default=None, help="your spectrogram folder (default: with --kaggle the "
                        "dataset found under /kaggle/input, else simulate one)")
    parser.add_argument("--work_dir", default=None, help="output root (default ./work_dir)")
    parser.add_argument("--kaggle", action="store_true", help="outputs under /kaggle/working")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set data.image_size=128 (repeatable)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    from microdoppler_finetune.data import DatasetError
    from microdoppler_finetune.workflow.context import StageIncomplete
    from microdoppler_finetune.workflow.run import pipeline_config, run_pipeline

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    command = "python -m microdoppler_finetune.pipeline " + " ".join(shlex.quote(a) for a in argv)
    try:
        cfg = pipeline_config(args.mode, preset=args.preset, config=args.config, data_root=args.data_root,
                              work_dir=args.work_dir, kaggle=args.kaggle, overrides=args.overrides)
        run_pipeline(cfg, args.mode, command)
    except StageIncomplete as stop:
        print(f"\n{stop}\nNothing is lost: rerun the same command to continue.\n  {command}", file=sys.stderr)
        return 3
    except (FileNotFoundError, DatasetError) as error:
        # Missing inputs (a folder, an earlier stage's output, weights): the message names the file and the fix.
        print(f"\nERROR: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - a user's mistake is one line; a bug keeps its traceback
        if os.environ.get("MDF_TRACEBACK", "") not in ("", "0") or not is_user_error(error):
            raise
        print(f"\nERROR: {user_error_message(error)}\nFix it and rerun the same command: finished stages are "
              f"kept.\n  {command}", file=sys.stderr)
        return 2
    return 0
