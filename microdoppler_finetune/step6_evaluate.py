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
import sys
from pathlib import Path
from typing import List, Optional

from microdoppler_finetune.environment import default_work_dir
from microdoppler_finetune.evaluation.generation.evaluate import INCEPTION_WEIGHTS_FILE
from microdoppler_finetune.evaluation.identification.experiments import DEFAULT_FRACTIONS, METHODS
from microdoppler_finetune.evaluation.identification.training import IdentificationConfig
from microdoppler_finetune.report.lines import step6_line
from microdoppler_finetune.utils.cli import run_main
from models.classifier import CLASSIFIER_PRESETS


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="step6_evaluate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = IdentificationConfig()
    p.add_argument("--work_dir", help="output root (default ./work_dir, or /kaggle/working/work_dir with --kaggle)")
    p.add_argument("--kaggle", action="store_true", help="default work_dir under /kaggle/working")
    p.add_argument("--dataset_dir", help="folder with manifest.csv (default <work_dir>/dataset)")
    p.add_argument("--generated", help="generated images in the dataset layout (ID_n/*.jpg or <Condition>/ID_n/*.jpg)")
    p.add_argument("--data_root", help="where the manifest's images are now, if they moved since step3")
    p.add_argument("--preset", default=d.preset, choices=sorted(CLASSIFIER_PRESETS),
                   help="classifier size: tiny (CPU, 64 px), small (128 px), standard (ResNet-18, 256 px GPU)")
    p.add_argument("--image_size", type=int, default=d.image_size)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--patience", type=int, default=d.patience)
    p.add_argument("--batch_size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.learning_rate)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--num_workers", type=int, default=0, help="image loading workers")
    p.add_argument("--max_generated_per_person", type=int, help="use at most N generated images per person")
    p.add_argument("--vae_encoder", help="step5's exported VA-VAE folder: adds identifiability behind the VA-VAE "
                   "(default: <work_dir>/export/vavae_encoder_for_dit when it exists)")
    p.add_argument("--fractions", type=_float_list, default=list(DEFAULT_FRACTIONS),
                   help="fractions of the real training recordings (default 0.1,0.25,0.5,1.0)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {', '.join(METHODS)}")
    p.add_argument("--variants", action="append", default=[], metavar="NAME",
                   help="run only this identification row (repeatable; each row's recorded command uses it)")
    p.add_argument("--no_cross_condition", action="store_true", help="skip the cross-condition rows")
    p.add_argument("--skip_identification", action="store_true")
    p.add_argument("--skip_generation_metrics", action="store_true")
    p.add_argument("--classifier", help="feature classifier for the generation metrics (default: the "
                   "real-only 100 %% classifier of the identification part, else one trained here)")
    p.add_argument("--no_cas", action="store_true", help="skip the classification accuracy score")
    p.add_argument("--no_inception", action="store_true", help="skip the Inception FID")
    p.add_argument("--inception_weights", help=f"path of {INCEPTION_WEIGHTS_FILE} (torch-fidelity)")
    return p


def main(argv: Optional[List[str]] = None) -> dict:
    from microdoppler_finetune.evaluation.run import EvaluationRequest, run_evaluation
    from microdoppler_finetune.latents.export import exported_encoder_in
    from microdoppler_finetune.utils.commands import reproducing_command

    args = build_parser().parse_args(argv)
    # Each result row appends its own --variants to this, so drop any given here.
    command = reproducing_command("microdoppler_finetune.step6_evaluate", _without_variants(argv))
    work_dir = Path(args.work_dir) if args.work_dir else default_work_dir(args.kaggle)
    dataset_dir = Path(args.dataset_dir) if args.dataset_dir else work_dir / "dataset"
    if not (dataset_dir / "manifest.csv").is_file():
        raise SystemExit(f"No manifest at {dataset_dir / 'manifest.csv'}. Run step3 (prepare the dataset) first or "
                         f"pass --dataset_dir / --work_dir.")
    if args.generated and not Path(args.generated).is_dir():
        raise SystemExit(f"--generated {args.generated} is not a folder. Pass the folder the sampling step wrote.")
    config = IdentificationConfig(preset=args.preset, image_size=args.image_size, epochs=args.epochs,
                                  patience=args.patience, batch_size=args.batch_size, learning_rate=args.lr,
                                  seed=args.seed, device=args.device, num_workers=args.num_workers)
    summary = run_evaluation(EvaluationRequest(
        dataset_dir=dataset_dir, out_dir=work_dir / "evaluation", classifier_config=config,
        generated=Path(args.generated) if args.generated else None, fractions=args.fractions,
        methods=[m.strip() for m in args.methods.split(",") if m.strip()],
        cross_condition=not args.no_cross_condition, variants=args.variants or None,
        identification=not args.skip_identification, generation_metrics=not args.skip_generation_metrics,
        feature_classifier=args.classifier, classification_accuracy_score=not args.no_cas,
        inception=not args.no_inception, inception_weights=args.inception_weights,
        vae_encoder=args.vae_encoder or exported_encoder_in(work_dir), data_root=args.data_root,
        max_generated_per_person=args.max_generated_per_person, command=command))
    print(step6_line(summary, work_dir / "evaluation"))
    return summary


if __name__ == "__main__":
    sys.exit(run_main(main))
