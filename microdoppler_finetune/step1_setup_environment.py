"""Step 1: check (and if needed install) the environment and recommend a hardware preset.

    python microdoppler_finetune/step1_setup_environment.py [--kaggle] [--work_dir DIR] [--install]
"""
from __future__ import annotations

import argparse
import json
import sys

from microdoppler_finetune.environment import detect_gpus, run_setup
from microdoppler_finetune.utils.cli import run_main
from microdoppler_finetune.utils.files import atomic_write_json


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kaggle", action="store_true",
                        help="Kaggle notebook: inputs under /kaggle/input, outputs under /kaggle/working, "
                             "keep Kaggle's preinstalled CUDA torch")
    parser.add_argument("--work_dir", default=None, help="where environment_info.json is written "
                        "(default: ./work_dir, or /kaggle/working/work_dir with --kaggle)")
    parser.add_argument("--install", action="store_true",
                        help="pip-install this project (editable) when it is not importable or a dependency is missing")
    args = parser.parse_args(argv)
    info, path, problems = run_setup(kaggle=args.kaggle, work_dir=args.work_dir, install=args.install)
    print(json.dumps(info, indent=2))
    print(f"\nRecommended preset: {info['recommended_preset']} ({info['preset_reason']})")
    if not problems:
        from microdoppler_finetune.memory import setup_plans

        plans = setup_plans(detect_gpus())
        print("\nVA-VAE training memory (estimated from the measured memory per image; "
              "benchmarks/bench_memory.py checks the estimate on a GPU):")
        for plan in plans:
            print(f"  {plan.line()}")
        info["memory_plans"] = [plan.to_dict() for plan in plans]
        atomic_write_json(path, info)
    print(f"Environment report written to {path}")
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
