"""Few-step ODE samplers at equal quality: model evaluations vs classifier-feature FID and identifiability.

    python benchmarks/bench_samplers.py --work_dir work_dir                  # a finished demo (or GPU) work dir
    python benchmarks/bench_samplers.py --work_dir W --samplers euler,dpm++2m,unipc --evaluations 8,12,16,24

Needs a work dir the pipeline has filled: the trained DiT (``dit/pretrained`` or the run folder), the exported
VA-VAE (``export/vavae_encoder_for_dit``), the split (``dataset/manifest.csv``) and the feature classifier step6
trained on the real train split (``evaluation/**/feature_classifier``; ``--classifier`` to name another).

For every person x walking condition the DiT was trained on (the sampling plan of ``sample_dit.py``),
``--per_pair`` images are generated with the SAME starting noise by every sampler (seeded per image as
sample_dit.py does), decoded by the VA-VAE and scored with the feature classifier:

* FID in the classifier's feature space against the real train split (the reference step6 uses);
* identifiability: the share of generated images the real-trained classifier names the requested person of;
* latent RMSE: distance of the sampler's latents to the reference sampler's for the same noise (the ODE
  solution error, free of the metrics' sampling noise);
* seconds per image (sampling only, this machine).

The reference is the release's sampler: Euler over 250 grid points (249 evaluations) with the run's guidance,
shift and guidance interval. A row is "within 5 %" when its FID is at most 5 % above the reference's and its
identifiability at least 95 % of it. The FID's own sampling noise is shown by the reference sampler with another
seed ("noise floor"). Images stay in memory as uint8 (no JPEG round trip), so only the sampler differs.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional

import torch

from _bench_common import device_description

DEFAULT_SAMPLERS = "unipc,dpm++2m,ab2,ab3,euler,heun,midpoint"
DEFAULT_EVALUATIONS = "6,8,10,12,16,20,25,32,50"
TOLERANCE = 0.05


def find_inputs(work_dir: Path, classifier: Optional[str]) -> dict:
    from microdoppler_finetune.dit.export import resolve_trained_dit

    dit_dir = work_dir / "dit"
    dit = dit_dir / "pretrained" if (dit_dir / "pretrained").is_dir() else resolve_trained_dit(dit_dir)
    export = work_dir / "export" / "vavae_encoder_for_dit"
    if classifier is None:
        found = sorted(work_dir.glob("evaluation/**/feature_classifier"))
        if not found:
            raise FileNotFoundError(f"No feature classifier under {work_dir}/evaluation (step6 trains it); pass "
                                    f"--classifier.")
        classifier = str(found[0])
    manifest = work_dir / "dataset" / "manifest.csv"
    for path in (export, manifest, Path(classifier)):
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run the pipeline on {work_dir} first.")
    return {"dit": dit, "export": export, "classifier": Path(classifier), "manifest": manifest}


def sample_settings_from(work_dir: Path, overrides: dict):
    """The run's dit.sample section (its saved pipeline config when there is one, else the cpu_demo preset)."""
    from omegaconf import OmegaConf

    from microdoppler_finetune.config import load_config

    saved = sorted(work_dir.glob("pipeline_*config.yaml"))
    cfg = load_config(config_path=saved[0]) if saved else load_config("cpu_demo")
    sample = OmegaConf.to_container(cfg.dit.sample, resolve=True)
    sample.update({k: v for k, v in overrides.items() if v is not None})
    return sample


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", type=Path, required=True)
    parser.add_argument("--classifier", default=None)
    parser.add_argument("--samplers", default=DEFAULT_SAMPLERS)
    parser.add_argument("--evaluations", default=DEFAULT_EVALUATIONS,
                        help="model evaluations per image to try (steps = evaluations / evaluations per step)")
    parser.add_argument("--reference_points", type=int, default=250, help="grid points of the reference Euler")
    parser.add_argument("--per_pair", type=int, default=6, help="images per person x condition")
    parser.add_argument("--cfg_scale", type=float, default=None)
    parser.add_argument("--shift", type=float, default=None)
    parser.add_argument("--cfg_interval_start", type=float, default=None)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--cache", type=Path, default=None,
                        help="a .pt file keeping the reference and every finished row: a rerun with the same "
                             "settings continues where the last one stopped")
    args = parser.parse_args(argv)
    result = run(args)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return result


def run(args) -> dict:
    from microdoppler_finetune.data import load_manifest
    from microdoppler_finetune.dit.model_setup import load_trained_dit
    from microdoppler_finetune.dit.sampling import (
        SamplerSettings,
        decode_latents,
        generate_latents,
        noise_key,
        plan_jobs,
    )
    from microdoppler_finetune.evaluation.generation.evaluate import extract_features
    from microdoppler_finetune.evaluation.generation.metrics import frechet_distance
    from microdoppler_finetune.evaluation.identification.images import LabelledImages, load_split_images
    from microdoppler_finetune.evaluation.identification.training import predict_logits
    from microdoppler_finetune.latents.export import load_exported_vae, read_latent_statistics
    from microdoppler_finetune.utils.images import resize, to_uint8
    from microdoppler_finetune.utils.tensors import pick_device
    from models.classifier import load_classifier
    from models.transport import canonical_method, model_evaluations, steps_for_evaluations

    torch.manual_seed(0)
    device = pick_device(args.device)
    inputs = find_inputs(args.work_dir, args.classifier)
    model, info = load_trained_dit(inputs["dit"], use_ema=True, device=device)
    data_info = info["data"]
    vae = load_exported_vae(inputs["export"]).to(device)
    mean, std = read_latent_statistics(inputs["export"])
    classifier = load_classifier(inputs["classifier"], device=device).eval()
    image_size = int(classifier.config.image_size or data_info.get("image_size") or 64)
    manifest = load_manifest(inputs["manifest"])
    real_train = load_split_images(manifest, "train", image_size=image_size)
    real_features = extract_features(classifier, real_train)
    sample = sample_settings_from(args.work_dir, {"cfg_scale": args.cfg_scale, "shift": args.shift,
                                                  "cfg_interval_start": args.cfg_interval_start})
    uses_conditions = bool(info["dit_config"].get("num_conditions", 0))
    jobs = plan_jobs(data_info, per_person=args.per_pair,
                     conditions=sample.get("conditions") if uses_conditions else None,
                     pairs="all", uses_conditions=uses_conditions)
    persons = [j.person for j in jobs]
    conditions = [j.condition for j in jobs]
    keys = [noise_key(j.person, j.condition, j.number) for j in jobs]
    base = dict(cfg_scale=float(sample["cfg_scale"]), cfg_interval_start=float(sample["cfg_interval_start"]),
                shift=float(sample["shift"]), batch_size=args.batch_size)

    def evaluate(method: str, points: int, seed: int) -> dict:
        settings = SamplerSettings(num_sampling_steps=points, sampler=method, seed=seed, **base)
        started = time.perf_counter()
        latents = generate_latents(model, persons, conditions, data_info["latent_shape"], settings, device,
                                   keys=keys)
        seconds = time.perf_counter() - started
        images = decode_latents(vae, latents, mean, std, batch_size=args.batch_size, device=device)
        pixels = to_uint8(resize(images, image_size))
        generated = LabelledImages(pixels, torch.tensor(persons), torch.tensor([-1 if c is None else c
                                                                                for c in conditions]),
                                   [str(k) for k in keys], [""] * len(keys), "generated")
        features = extract_features(classifier, generated)
        ident = float((predict_logits(classifier, generated).argmax(1) == generated.person_ids).float().mean())
        return {"sampler": method, "evaluations": model_evaluations(method, points - 1), "grid_points": points,
                "fid": float(frechet_distance(real_features, features)), "identifiability": ident,
                "seconds_per_image": seconds / len(jobs), "latents": latents}

    print(f"{len(jobs)} images per setting ({args.per_pair} per person x condition), guidance {base['cfg_scale']} "
          f"from t >= {base['cfg_interval_start']}, shift {base['shift']}, on {device_description()}", flush=True)
    key = json.dumps([str(inputs["dit"]), len(jobs), base, args.reference_points, args.seed], sort_keys=True)
    cache = torch.load(args.cache, weights_only=True) if args.cache and args.cache.is_file() else {}
    if cache.get("key") != key:
        cache = {"key": key, "rows": {}}

    def save_cache() -> None:
        if args.cache:
            torch.save(cache, args.cache)

    if "reference" not in cache:
        cache["reference"] = evaluate("euler", args.reference_points, args.seed)
        cache["floor"] = evaluate("euler", args.reference_points, args.seed + 1)
        save_cache()
    reference, floor = dict(cache["reference"]), dict(cache["floor"])
    print(f"  reference {reference['evaluations']} evaluations: FID {reference['fid']:.3f}, identifiability "
          f"{reference['identifiability']:.3f}; other seed: FID {floor['fid']:.3f}, identifiability "
          f"{floor['identifiability']:.3f}", flush=True)
    rows = []
    for method in [canonical_method(m) for m in args.samplers.split(",") if m.strip()]:
        tried = set()
        for budget in sorted(int(e) for e in args.evaluations.split(",")):
            steps = steps_for_evaluations(method, budget)
            if steps in tried:
                continue
            tried.add(steps)
            row = cache["rows"].get(f"{method}:{steps}")
            if row is None:
                row = evaluate(method, steps + 1, args.seed)
                row["latent_rmse"] = float((row.pop("latents") - reference["latents"]).pow(2).mean().sqrt())
                cache["rows"][f"{method}:{steps}"] = row
                save_cache()
            rows.append(dict(row))
            print(f"  {method:9s} {row['evaluations']:4d} evaluations: FID {row['fid']:.3f}, identifiability "
                  f"{row['identifiability']:.3f}, latent RMSE {row['latent_rmse']:.4f}", flush=True)
    ref_latents = reference.pop("latents")
    floor["latent_rmse"] = float((floor.pop("latents") - ref_latents).pow(2).mean().sqrt())
    reference["latent_rmse"] = 0.0
    for row in rows:
        row["within_5pct"] = bool(row["fid"] <= (1 + TOLERANCE) * reference["fid"]
                                  and row["identifiability"] >= (1 - TOLERANCE) * reference["identifiability"])
    fewest = {}
    for method in {r["sampler"] for r in rows}:
        mine = sorted((r for r in rows if r["sampler"] == method), key=lambda r: r["evaluations"])
        # the fewest evaluations from which every larger budget tried also stays within 5 %
        ok = None
        for row in reversed(mine):
            if not row["within_5pct"]:
                break
            ok = row["evaluations"]
        fewest[method] = ok
    return {"device": device_description(), "work_dir": str(args.work_dir), "images": len(jobs),
            "sampling": base, "reference": reference, "noise_floor_other_seed": floor, "rows": rows,
            "fewest_evaluations_within_5pct": fewest,
            "criterion": "FID <= 1.05 x reference and identifiability >= 0.95 x reference"}


def print_table(result: dict) -> None:
    ref = result["reference"]
    print(f"\nSamplers on {result['device']}: {result['images']} images per setting; reference = Euler over "
          f"{ref['grid_points']} grid points ({ref['evaluations']} evaluations)")
    print(f"{'sampler':10s} {'evals':>5s} {'FID':>8s} {'ident.':>7s} {'lat.RMSE':>8s} {'s/img':>7s} {'<=5%':>5s}")
    floor = result["noise_floor_other_seed"]
    for label, row in (("reference", ref), ("ref seed+1", floor)):
        print(f"{label:10s} {row['evaluations']:5d} {row['fid']:8.3f} {row['identifiability']:7.3f} "
              f"{row['latent_rmse']:8.4f} {row['seconds_per_image']:7.4f} {'':>5s}")
    for row in result["rows"]:
        print(f"{row['sampler']:10s} {row['evaluations']:5d} {row['fid']:8.3f} {row['identifiability']:7.3f} "
              f"{row['latent_rmse']:8.4f} {row['seconds_per_image']:7.4f} {'yes' if row['within_5pct'] else 'no':>5s}")
    print("fewest evaluations within 5 % of the reference (and at every larger budget tried):")
    for method, value in sorted(result["fewest_evaluations_within_5pct"].items()):
        gain = f" ({ref['evaluations'] / value:.1f}x fewer)" if value else ""
        print(f"  {method:10s} {value if value else 'none tried'}{gain}")


if __name__ == "__main__":
    main()
