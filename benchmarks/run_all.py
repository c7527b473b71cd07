"""Every speed figure of the project in one command: a table on screen and one JSON file.

    python benchmarks/run_all.py --quick                                   # CPU, under 10 minutes
    python benchmarks/run_all.py --quick --work_dir work_dir               # + samplers on its DiT, stage times
    python benchmarks/run_all.py --device cuda --official_src SRC --official_deps DEPS   # the GPU presets

Parts (each its own process, with a time limit; a part that fails or runs out of time is reported, the rest go
on):

* ``vae_profile``   benchmarks/profile_vae_step.py: the VA-VAE step of the CPU demo profile part by part;
* ``vae_changes``   benchmarks/bench_vae_changes.py: before/after ratios of the step's speed-ups
                    (+ the whole step against ``--baseline_src`` when given);
* ``samplers``      benchmarks/bench_samplers.py on ``--work_dir``'s DiT (skipped without a work dir);
* ``official``      benchmarks/bench_official.py: our DiT / VA-VAE steps against the official code
                    (``--official_src``; ours alone without it);
* ``data``          data-loading throughput of the training DataLoader (the work dir's manifest, else a small
                    simulated set), num_workers 0 and 2;
* ``memory``        benchmarks/bench_memory.py: the VA-VAE memory plans for a P100 and two T4s, the per-image
                    count checked on real tensors, and on ``--device cuda`` the estimate against the measured peak;
* ``stages``        the demo's stage times from ``--work_dir``/report.json.

On ``--device cuda`` the step benchmarks run on the GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def run_part(name: str, command: list[str], json_path: Path, timeout: float, results: dict) -> None:
    started = time.time()
    print(f"\n=== {name}: {' '.join(command)}", flush=True)
    try:
        completed = subprocess.run(command, cwd=REPO, timeout=timeout, capture_output=True, text=True)
        output = completed.stdout + completed.stderr
        tail = "\n".join(line for line in output.splitlines() if "Warning" not in line)[-3000:]
        print(tail, flush=True)
        status = "ok" if completed.returncode == 0 else f"failed (exit {completed.returncode})"
    except subprocess.TimeoutExpired:
        status = f"timed out after {timeout:.0f} s"
        print(status, flush=True)
    data = None
    if json_path.is_file():
        try:
            data = json.loads(json_path.read_text())
        except ValueError:
            data = None
    results[name] = {"status": status, "seconds": round(time.time() - started, 1), "result": data}


def data_throughput(work_dir: Path | None, image_size: int, batch_size: int, seconds: float) -> dict:
    """Images per second through the VA-VAE DataLoader (decode + collate), per num_workers setting."""
    import torch

    from microdoppler_finetune.data import MicroDopplerDataset, load_manifest

    manifest_path = work_dir / "dataset" / "manifest.csv" if work_dir else None
    source = str(manifest_path)
    if manifest_path is None or not manifest_path.is_file():
        from microdoppler_finetune.data import prepare_dataset
        from microdoppler_finetune.simulator import simulate_dataset

        tmp = Path(tempfile.mkdtemp(prefix="bench_data_"))
        simulate_dataset(tmp / "sim", people=3, per_person=48, seed=0, image_size=image_size)
        prepare_dataset(tmp / "sim", tmp / "dataset", seed=0)
        manifest_path = tmp / "dataset" / "manifest.csv"
        source = f"simulated 3 x 48 images at {image_size} px"
    dataset = MicroDopplerDataset(load_manifest(manifest_path), "train", image_size=image_size)
    rows = {}
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                             persistent_workers=workers > 0)
        images, started = 0, None
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            for batch in loader:
                if started is None:  # the first batch pays the workers' start
                    started = time.perf_counter()
                    continue
                images += len(batch["image"])
                if time.perf_counter() >= deadline:
                    break
        rows[f"num_workers={workers}"] = round(images / max(time.perf_counter() - started, 1e-9), 1)
    return {"source": source, "image_size": image_size, "batch_size": batch_size, "images_per_second": rows}


def stage_times(work_dir: Path | None) -> dict | None:
    if work_dir is None or not (work_dir / "report.json").is_file():
        return None
    report = json.loads((work_dir / "report.json").read_text())
    stages = report if isinstance(report, list) else report.get("stages", [])
    return {row["stage"]: row.get("seconds") for row in stages if isinstance(row, dict) and "stage" in row}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and settings (CPU: < 10 minutes)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--work_dir", type=Path, default=None, help="a pipeline work dir (samplers, stage times)")
    parser.add_argument("--official_src", type=Path, default=None)
    parser.add_argument("--official_deps", type=Path, default=None)
    parser.add_argument("--baseline_src", type=Path, default=None,
                        help="a folder with an earlier vae_training/ (git archive <commit> vae_training)")
    parser.add_argument("--parts", default="vae_profile,vae_changes,samplers,official,data,memory,stages")
    parser.add_argument("--out", type=Path, default=Path("benchmark_results.json"))
    args = parser.parse_args(argv)
    quick = args.quick
    python = sys.executable
    tmp = Path(tempfile.mkdtemp(prefix="run_all_"))
    parts = set(args.parts.split(","))
    results: dict = {"quick": quick, "device": args.device, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    started = time.time()
    manifest = args.work_dir / "dataset" / "manifest.csv" if args.work_dir else None

    if "vae_profile" in parts:
        command = [python, str(HERE / "profile_vae_step.py"), "--json", str(tmp / "vae_profile.json"),
                   "--repeats", "2" if quick else "5", "--trainer_steps", "2" if quick else "6"]
        if quick:
            command += ["--no_unlogged"]
        if manifest is not None and manifest.is_file():
            command += ["--manifest", str(manifest)]
        if args.device == "cuda":
            command += ["--set", "vae_train.accelerator=gpu"]
        run_part("vae_profile", command, tmp / "vae_profile.json", 420 if quick else 1800, results)
    if "vae_changes" in parts:
        command = [python, str(HERE / "bench_vae_changes.py"), "--json", str(tmp / "vae_changes.json"),
                   "--repeats", "3" if quick else "9", "--rounds", "2" if quick else "4"]
        if args.baseline_src:
            command += ["--baseline_src", str(args.baseline_src)]
        run_part("vae_changes", command, tmp / "vae_changes.json", 300 if quick else 1800, results)
    if "samplers" in parts:
        if args.work_dir is None:
            results["samplers"] = {"status": "skipped: no --work_dir with a trained DiT", "result": None}
        else:
            command = [python, str(HERE / "bench_samplers.py"), "--work_dir", str(args.work_dir), "--json",
                       str(tmp / "samplers.json"), "--device", args.device]
            if quick:
                command += ["--per_pair", "2", "--samplers", "euler,ab2,dpm++2m,unipc", "--evaluations",
                            "10,16,25,50"]
            run_part("samplers", command, tmp / "samplers.json", 360 if quick else 3600, results)
    if "official" in parts:
        command = [python, str(HERE / "bench_official.py"), "--json", str(tmp / "official.json"), "--device",
                   args.device]
        if args.official_src:
            command += ["--official_src", str(args.official_src)]
        if args.official_deps:
            command += ["--official_deps", str(args.official_deps)]
        if quick:
            command += ["--dit_repeats", "5", "--vae_rounds", "1", "--vae_steps", "1"]
        else:
            command += ["--dit_presets", "tiny/2,S/2" if args.device == "cpu" else "S/2,B/2,XL/1"]
        if args.device == "cuda":
            command += ["--dit_latent", "32x16", "--dit_batch", "32", "--vae_preset", "f16d32", "--vae_batch", "4"]
        run_part("official", command, tmp / "official.json", 420 if quick else 3600, results)
    if "data" in parts:
        t0 = time.time()
        try:
            results["data"] = {"status": "ok", "result": data_throughput(args.work_dir, 64, 8, 5 if quick else 20)}
        except Exception as exc:  # noqa: BLE001 - one part failing must not stop the others
            results["data"] = {"status": f"failed: {type(exc).__name__}: {exc}", "result": None}
        results["data"]["seconds"] = round(time.time() - t0, 1)
    if "memory" in parts:
        command = [python, str(HERE / "bench_memory.py"), "--json", str(tmp / "memory.json"), "--device", args.device]
        run_part("memory", command, tmp / "memory.json", 300, results)
    if "stages" in parts:
        results["stages"] = {"status": "ok" if stage_times(args.work_dir) else "skipped: no --work_dir/report.json",
                             "result": stage_times(args.work_dir)}
    results["seconds"] = round(time.time() - started, 1)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print_summary(results)
    print(f"\nwrote {args.out} ({results['seconds']:.0f} s)")
    return results


def print_summary(results: dict) -> None:
    print("\n" + "=" * 100 + "\nSUMMARY")
    for name, part in results.items():
        if not isinstance(part, dict) or "status" not in part:
            continue
        print(f"[{name}] {part['status']} ({part.get('seconds', '-')} s)")
        data = part.get("result")
        if not data:
            continue
        if name == "vae_profile":
            for key, value in data.get("steps_seconds", {}).items():
                print(f"    {key:52s} {value:8.3f} s")
            top = sorted(((v, k) for k, v in data.get("parts_seconds", {}).items() if not k.endswith("fwd+bwd")),
                         reverse=True)[:8]
            for value, key in top:
                print(f"    part: {key:46s} {value:8.3f} s")
            for key, value in data.get("per_epoch_seconds", {}).items():
                print(f"    per epoch: {key:41s} {value:8.3f} s")
        elif name == "vae_changes":
            for key, row in data.get("results", {}).items():
                print(f"    {key:58s} {row['speedup_b_over_a']:6.2f}x")
        elif name == "samplers":
            ref = data["reference"]
            print(f"    reference euler {ref['evaluations']} evals: FID {ref['fid']:.3f}, ident. "
                  f"{ref['identifiability']:.3f}")
            for method, value in sorted(data["fewest_evaluations_within_5pct"].items()):
                print(f"    {method:10s} within 5 % from {value} evaluations" if value else
                      f"    {method:10s} not within 5 % at the budgets tried")
        elif name == "official":
            for row in data.get("dit", []):
                print(f"    DiT {row['preset']}: ours {row['ours_s']:.4f} s (compiled blocks "
                      f"{row.get('ours_compiled_s', float('nan')):.4f} s)" +
                      (f", official {row['official_s']:.4f} s, speed-up {row['speedup_ours_vs_official']:.2f}x, "
                       f"compiled {row.get('speedup_ours_compiled_vs_official', float('nan')):.2f}x"
                       if "official_s" in row else ""))
            vae = data.get("vavae")
            if vae:
                for key, value in vae["seconds"].items():
                    speedup = vae.get("speedup_vs_official", {}).get(key)
                    print(f"    VA-VAE {key:38s} {value:8.3f} s" + (f"  {speedup:.2f}x" if speedup else ""))
        elif name == "data":
            print(f"    {data['source']}: {data['images_per_second']} images/s")
        elif name == "memory":
            for plan in data.get("plans", []):
                print(f"    {plan['gpu']}: batch {plan['batch_size']} x accumulation {plan['gradient_accumulation']}"
                      f", checkpointing {plan['gradient_checkpointing']}, estimate {plan['estimate_gib']} GiB")
            if data.get("measured"):
                m = data["measured"]
                print(f"    measured peak {m['measured_peak_gib']:.2f} GiB vs estimate {m['estimate_gib']:.2f} GiB")
        elif name == "stages":
            print("    " + ", ".join(f"{k} {v} s" for k, v in data.items()))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
