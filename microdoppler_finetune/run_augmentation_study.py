"""Does generated data help person identification, above all for people never recorded in a condition?

    python -m microdoppler_finetune.run_augmentation_study --work_dir work_dir
    python -m microdoppler_finetune.run_augmentation_study --work_dir work_dir --set study.seeds=[0,1,2,3,4]

Needs a work dir the pipeline made with a withheld condition (the CPU demo withholds Backpack; on your data:
`quick_start_finetune.sh both --data_root D --set data.withhold=Backpack`). Tunes the classifier, the
conventional augmentation and the generated-data knobs (guidance, amount, quality filter) on validation only,
then tests every row once over several seeds: real only, + conventional augmentation, + generated, + both,
generated only (classification accuracy score), and each condition against each other. Writes
<work_dir>/study/results.json, results.md and plots; a rerun resumes run by run.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Optional


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m microdoppler_finetune.run_augmentation_study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work_dir", default="work_dir", help="the pipeline's work dir (default ./work_dir)")
    p.add_argument("--config", help="YAML over the work dir's own resolved config (e.g. a study section)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set study.seeds=[0,1,2] (repeatable)")
    return p


def main(argv: Optional[list] = None) -> int:
    from omegaconf.errors import OmegaConfBaseException

    from microdoppler_finetune.data import DatasetError
    from microdoppler_finetune.evaluation.study.runner import run_augmentation_study, study_config

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    command = "python -m microdoppler_finetune.run_augmentation_study " + " ".join(shlex.quote(a) for a in argv)
    try:
        cfg = study_config(Path(args.work_dir), args.config, args.overrides)
        results = run_augmentation_study(cfg, Path(args.work_dir), command=command)
    except (FileNotFoundError, ValueError, DatasetError, OmegaConfBaseException) as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 2
    print(f"Study finished in {results['seconds'] / 60:.1f} min: {Path(args.work_dir) / 'study' / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
