"""Speed of the micro-Doppler simulator, and how separable its people are.

    python benchmarks/bench_simulator.py                                  # 31 people x 150 images at 256 px
    python benchmarks/bench_simulator.py --people 4 --per-person 30 --separability-people 0
    python benchmarks/bench_simulator.py --people 0 --separability-people 10   # separability only

Speed: writes the full dataset (into --out, or a temporary folder that is removed afterwards) and prints
images/s and the total time. Separability: simulates --separability-people people at 64 px, trains a
logistic-regression probe on recordings case1_1..case2_1 of everyone and tests on case2_2 and case2_3
(held-out recordings, never frames of training recordings); prints accuracy and chance level.
Prints one JSON line per measurement and writes them to --json if given.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from microdoppler_finetune.simulator import simulate_dataset
from microdoppler_finetune.simulator.separability import held_out_recording_accuracy


def bench_speed(out: Path, args) -> dict:
    start = time.perf_counter()
    summary = simulate_dataset(out, people=args.people, per_person=args.per_person, seed=args.seed,
                               image_size=args.image_size, workers=args.workers, progress=True)
    total = time.perf_counter() - start  # includes starting the worker processes and writing metadata
    return {"benchmark": "simulate_dataset", "people": args.people, "per_person": args.per_person,
            "image_size": args.image_size, "images": summary["num_images"], "workers": summary["workers"],
            "total_s": round(total, 2), "images_per_s": round(summary["num_images"] / total, 1),
            "cpu_count": os.cpu_count(), "machine": platform.machine(), "load_avg_1min": _load()}


def bench_separability(out: Path, args) -> dict:
    start = time.perf_counter()
    simulate_dataset(out, people=args.separability_people, per_person=args.separability_per_person,
                     recordings_per_person=6, seed=args.seed, image_size=64, workers=args.workers, progress=False)
    result = held_out_recording_accuracy(out, test_recordings=(4, 5))
    return dict({"benchmark": "separability", "probe": "logistic regression on Doppler profile + cadence"},
                **result, total_s=round(time.perf_counter() - start, 2))


def _load():
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--people", type=int, default=31, help="0 skips the speed benchmark")
    parser.add_argument("--per-person", type=int, default=150)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=None, help="default: CPU count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="keep the speed run's dataset here (default: a temporary folder)")
    parser.add_argument("--separability-people", type=int, default=10, help="0 skips the separability probe")
    parser.add_argument("--separability-per-person", type=int, default=60)
    parser.add_argument("--json", default=None, help="also write the results (JSON lines) to this file")
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory(prefix="bench_simulator_") as tmp:
        if args.people > 0:
            results.append(bench_speed(Path(args.out) if args.out else Path(tmp) / "speed", args))
            print(json.dumps(results[-1]), flush=True)
        if args.separability_people > 0:
            results.append(bench_separability(Path(tmp) / "separability", args))
            print(json.dumps(results[-1]), flush=True)
    if args.json:
        Path(args.json).write_text("".join(json.dumps(r) + "\n" for r in results))


if __name__ == "__main__":
    main()
