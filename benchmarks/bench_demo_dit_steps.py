"""What fewer DiT training steps would cost the demo: its DiT retrained for N steps, sampled and evaluated.

    python benchmarks/bench_demo_dit_steps.py --work_dir work_dir                    # 1500 and 2500 steps, seeds 0, 1
    python benchmarks/bench_demo_dit_steps.py --work_dir work_dir --steps 1500 --set dit.train.learning_rate=2e-3

Needs a finished demo work dir. Each setting (steps x seed) runs the pipeline's own stages on a copy of it, with
``--set dit.train.steps=N --set dit.train.seed=S --set dit.sample.seed=S``: the split, the VA-VAE and the latent
cache are the work dir's (the copy reruns the export once, because its paths changed), the DiT is trained from
scratch, then the demo's samples and evaluation follow unchanged. Seed 0 at the profile's own step count
reproduces the work dir's numbers exactly (the pipeline is deterministic on one machine).

Prints one row per setting: DiT stage seconds, the DiT's last EMA validation loss, identifiability (the share of
generated images the real-trained classifier names the right person of), classifier-feature FID, and the
real + generated test accuracy; writes them as JSON to --out. The real-only rows do not depend on the DiT.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

from microdoppler_finetune.dit.logging import read_log

# Per-run outputs the copy leaves behind so the DiT and everything after it start afresh.
REGENERATED = ("dit", "samples", "evaluation", "report.html", "report.md", "report.json")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", type=Path, required=True, help="a finished demo work dir (read only)")
    parser.add_argument("--steps", default="1500,2500", help="comma list of DiT training step counts")
    parser.add_argument("--seeds", default="0,1", help="comma list of DiT training and sampling seeds")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="another pipeline override for every setting (repeatable), e.g. the learning rate")
    parser.add_argument("--runs_dir", type=Path, default=Path("bench_demo_dit_steps"),
                        help="where the copies go (one folder per setting; an existing one is replaced)")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    return parser.parse_args(argv)


def original_data_root(work_dir: Path) -> str:
    """The image folder the work dir's split was made from (the copy must point at the same images)."""
    summary = work_dir / "dataset" / "split_summary.json"
    if not summary.is_file():
        raise FileNotFoundError(f"{summary} is missing: {work_dir} is not a finished pipeline work dir.")
    root = json.loads(summary.read_text())["settings"]["data_root"]
    if not Path(root).is_dir():
        raise FileNotFoundError(f"The split of {work_dir} was made from {root}, which is gone.")
    return root


def run_label(steps: int, seed: int, overrides) -> str:
    """Folder name of one setting: the overrides' last key parts when short, else a hash of them."""
    label = "_".join([f"steps{steps}_seed{seed}"] + [o.split(".")[-1] for o in overrides])
    if len(label) <= 80:
        return label
    return f"steps{steps}_seed{seed}_set-{hashlib.sha256(chr(10).join(overrides).encode()).hexdigest()[:10]}"


def copy_without_dit(work_dir: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(work_dir, target, ignore=lambda folder, names: [
        n for n in names if Path(folder) == work_dir and n in REGENERATED])


def read_results(run: Path) -> dict:
    identification = json.loads((run / "evaluation/identification/identification_results.json").read_text())
    generation = json.loads((run / "evaluation/generation/generation_metrics.json").read_text())
    stages = {row["stage"]: row for row in json.loads((run / "report.json").read_text())}  # the stage log
    val_rows = [row for row in read_log(run / "dit") if row["event"] == "val"]
    accuracy = {row["variant"]: row["test_accuracy"] for row in identification["rows"]}
    return {
        "dit_seconds": stages.get("dit", {}).get("seconds"),
        "val_loss_ema": val_rows[-1]["val_loss_ema"] if val_rows else None,
        "identifiability": generation["real_classifier_on_generated"]["accuracy"],
        "fid": generation["overall"]["generated"]["fid"],
        "real_plus_generated": accuracy.get("real+generated@100%"),
        "real": accuracy.get("real@100%"),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    work_dir = args.work_dir.resolve()
    data_root = original_data_root(work_dir)
    rows = []
    for steps in [int(s) for s in args.steps.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            run = (args.runs_dir / run_label(steps, seed, args.overrides)).resolve()
            copy_without_dit(work_dir, run)
            command = [sys.executable, "-m", "microdoppler_finetune.pipeline", "demo", "--work_dir", str(run),
                       "--data_root", data_root, "--set", f"dit.train.steps={steps}",
                       "--set", f"dit.train.seed={seed}", "--set", f"dit.sample.seed={seed}"]
            for override in args.overrides:
                command += ["--set", override]
            log = run.parent / f"{run.name}.log"
            with open(log, "w") as handle:
                subprocess.run(command, check=True, stdout=handle, stderr=subprocess.STDOUT)
            row = {"steps": steps, "seed": seed, "overrides": list(args.overrides), **read_results(run)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| DiT steps | seed | overrides | DiT s | EMA val loss | identifiability | FID | real + generated |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['steps']} | {r['seed']} | {' '.join(r['overrides'])} | {r['dit_seconds']} | "
              f"{r['val_loss_ema']:.3f} | {r['identifiability']:.3f} | {r['fid']:.1f} | "
              f"{r['real_plus_generated']:.3f} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
