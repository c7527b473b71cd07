"""Rebuild report.html / report.md of a work dir from the files the stages wrote.

    python -m microdoppler_finetune.report                      # ./work_dir
    python -m microdoppler_finetune.report --kaggle             # /kaggle/working/work_dir
    python -m microdoppler_finetune.report work_dir --command "Kaggle notebook" --preset p100
    python -m microdoppler_finetune.report work_dir --check     # also open it in headless Chromium (if installed)

Use it after the step scripts (the Kaggle notebook runs them one by one, so no pipeline run writes the report),
after a run was stopped, or to refresh the page of an older run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional


def main(argv: Optional[list] = None) -> int:
    from microdoppler_finetune.environment import default_work_dir
    from microdoppler_finetune.report.summary import rebuild_report

    p = argparse.ArgumentParser(prog="python -m microdoppler_finetune.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("work_dir", nargs="?",
                   help="run folder (default ./work_dir, /kaggle/working/work_dir with --kaggle)")
    p.add_argument("--kaggle", action="store_true", help="default work_dir under /kaggle/working")
    p.add_argument("--dataset_dir", help="folder with manifest.csv (default <work_dir>/dataset)")
    p.add_argument("--command", help="what produced the run, shown at the top (default: from report.md)")
    p.add_argument("--preset", help="hardware preset shown at the top (default: from the saved configs)")
    p.add_argument("--mode", help="pipeline mode shown at the top")
    p.add_argument("--check", action="store_true", help="open the page in headless Chromium: every image decodes, "
                   "no console error")
    p.add_argument("--screenshot", help="with Chromium: save a full-page screenshot to this PNG")
    args = p.parse_args(argv)
    work_dir = Path(args.work_dir) if args.work_dir else default_work_dir(kaggle=args.kaggle)
    if not work_dir.is_dir():
        print(f"ERROR: {work_dir} is not a folder: pass the work dir of a run.", file=sys.stderr)
        return 2
    path = rebuild_report(work_dir, command=args.command, preset=args.preset, mode=args.mode,
                          dataset_dir=args.dataset_dir)
    if args.check or args.screenshot:
        from microdoppler_finetune.report.browser import check_page, find_chromium

        if find_chromium() is None:
            print("Chromium not found (apt-get install chromium): page not checked.", file=sys.stderr)
            return 0
        result = check_page(path, screenshot=args.screenshot)
        print(f"Chromium: {result.images} images, {len(result.broken)} broken, {len(result.errors)} console "
              f"error(s){'; screenshot ' + args.screenshot if args.screenshot else ''}")
        for problem in result.broken + result.errors:
            print(f"  {problem}", file=sys.stderr)
        return 1 if result.broken or result.errors else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
