"""Step 6: does generated data help person identification? And how good is it?

    python microdoppler_finetune/step6_evaluate.py --dataset_dir work_dir/dataset --generated work_dir/samples
    python microdoppler_finetune/step6_evaluate.py --kaggle --generated /kaggle/working/work_dir/samples \
        --preset standard --image_size 256 --epochs 40

Two parts, both on the manifest's splits (the test split is only ever tested on; epochs are chosen on val):

1. identification experiments (<work_dir>/evaluation/identification/identification_results.json/.md): real
   only vs real + generated vs real + conventional augmentation, over fractions of the real training recordings,
   plus Normal -> Backpack across walking conditions when the data has them. Every row records its command.
2. generation metrics (<work_dir>/evaluation/generation/generation_metrics.json/.md): classifier-feature
   FID/KID, precision/recall/density/coverage, classification accuracy score, memorisation, per person; the
   Inception FID when its weights are on the machine. Uses the real-only 100 % classifier of part 1 as its
   feature network.

Without --generated only the real and augmentation rows of part 1 run.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from microdoppler_finetune.environment import default_work_dir
from microdoppler_finetune.evaluate_generation import (INCEPTION_WEIGHTS_FILE, add_common_arguments,
                                                       config_from_args, evaluate_generation)
from microdoppler_finetune.identification import (DEFAULT_FRACTIONS, FEATURE_CLASSIFIER_DIR, METHODS,
                                                  current_command, run_identification_experiments)


def _float_list(text: str) -> List[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.1,0.25,0.5,1.0, got '{text}'") \
            from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"fractions must be in (0, 1], got '{text}'")
    return values


def _without_variants(argv: Optional[List[str]]) -> List[str]:
    args, kept, skip = list(sys.argv[1:] if argv is None else argv), [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--variants":
            skip = True
        elif not arg.startswith("--variants="):
            kept.append(arg)
    return kept


def default_vae_encoder(work_dir: Path) -> Optional[str]:
    """step5's exported VA-VAE of this work dir, when there is one (for identifiability behind the VA-VAE)."""
    from microdoppler_finetune.export import EXPORT_DIRNAME, EXPORT_INFO_FILE

    folder = work_dir / "export" / EXPORT_DIRNAME
    return str(folder) if (folder / EXPORT_INFO_FILE).is_file() else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="step6_evaluate.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.set_defaults(dataset_dir=None)
    parser._option_string_actions["--dataset_dir"].required = False  # defaults to <work_dir>/dataset here
    parser.add_argument("--work_dir", help="output root (default ./work_dir, or /kaggle/working/work_dir with "
                        "--kaggle)")
    parser.add_argument("--kaggle", action="store_true", help="default work_dir under /kaggle/working")
    parser.add_argument("--fractions", type=_float_list, default=list(DEFAULT_FRACTIONS),
                        help="fractions of the real training recordings (default 0.1,0.25,0.5,1.0)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset of {', '.join(METHODS)}")
    parser.add_argument("--variants", action="append", default=[], metavar="NAME",
                        help="run only this identification row (repeatable; each row's recorded command uses it)")
    parser.add_argument("--no_cross_condition", action="store_true", help="skip the Normal -> Backpack rows")
    parser.add_argument("--skip_identification", action="store_true")
    parser.add_argument("--skip_generation_metrics", action="store_true")
    parser.add_argument("--classifier", help="feature classifier for the generation metrics (default: the "
                        "real-only 100 %% classifier of the identification part, else one trained here)")
    parser.add_argument("--no_cas", action="store_true", help="skip the classification accuracy score")
    parser.add_argument("--no_inception", action="store_true", help="skip the Inception FID")
    parser.add_argument("--inception_weights", help=f"path of {INCEPTION_WEIGHTS_FILE} (torch-fidelity)")
    return parser


def main(argv: Optional[List[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    # Each result row appends its own --variants to this, so drop any given here.
    command = current_command("microdoppler_finetune.step6_evaluate", _without_variants(argv))
    work_dir = Path(args.work_dir) if args.work_dir else default_work_dir(args.kaggle)
    dataset_dir = Path(args.dataset_dir) if args.dataset_dir else work_dir / "dataset"
    if not (dataset_dir / "manifest.csv").is_file():
        raise SystemExit(f"No manifest at {dataset_dir / 'manifest.csv'}. Run step3 (prepare the dataset) first or "
                         f"pass --dataset_dir / --work_dir.")
    if args.generated and not Path(args.generated).is_dir():
        raise SystemExit(f"--generated {args.generated} is not a folder. Pass the folder the sampling step wrote.")
    config = config_from_args(args)
    out = work_dir / "evaluation"
    summary = {}
    identification_dir = out / "identification"
    if not args.skip_identification:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        results = run_identification_experiments(
            dataset_dir, args.generated, identification_dir, args.fractions, config=config, methods=methods,
            cross_condition=not args.no_cross_condition, variants=args.variants or None, command=command,
            data_root=args.data_root, max_generated_per_person=args.max_generated_per_person)
        summary["identification"] = {r["variant"]: r["test_accuracy"] for r in results["rows"]}
    if args.generated and not args.skip_generation_metrics:
        classifier = args.classifier
        saved = identification_dir / FEATURE_CLASSIFIER_DIR
        if classifier is None and (saved / "config.json").is_file():
            classifier = str(saved)
        metrics = evaluate_generation(
            dataset_dir, args.generated, out / "generation", classifier=classifier, config=config,
            classification_accuracy_score=not args.no_cas, inception=not args.no_inception,
            inception_weights=args.inception_weights, data_root=args.data_root,
            max_generated_per_person=args.max_generated_per_person, command=command,
            vae_encoder=args.vae_encoder or default_vae_encoder(work_dir))
        summary["generation"] = {k: metrics["overall"]["generated"].get(k) for k in
                                 ("fid", "kid", "precision", "recall", "density", "coverage")}
        summary["identifiability"] = {k: metrics[k]["accuracy"] for k in
                                      ("real_classifier_on_generated", "reconstruction_classifier_on_generated")
                                      if k in metrics}
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
