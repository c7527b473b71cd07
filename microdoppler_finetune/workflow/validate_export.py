"""Step 5 as a library: validate a VA-VAE on the manifest's splits, export it for the DiT, encode the latent cache.

One call, :func:`run_step5`, with four parts that can be chosen separately:

- metrics  -> ``<work_dir>/validation/<name>/metrics.json``, ``metrics.md``, ``reconstruction_results.png``
- stats    -> ``<work_dir>/validation/<name>/latent_statistics.json``, ``latent_map.png``
- export   -> ``<work_dir>/export/vavae_encoder_for_dit/`` (microdoppler_finetune.latents.export)
- cache    -> ``<work_dir>/latents/`` (microdoppler_finetune.latents.cache)

``<name>`` comes from the checkpoint, so validating the released VA-VAE and the fine-tuned one with the same
command gives two folders side by side; ``<work_dir>/validation/summary.md`` compares every folder there.

Determinism: reconstruction metrics decode the posterior MODE (its mean), so they are a property of the weights
alone. Latent statistics, the map, the separability score and the cache use posterior samples (or means)
with per-image fixed seeds (microdoppler_finetune.latents.cache.item_seed). Rerunning gives the same numbers.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from microdoppler_finetune.data.dataset import evenly_spaced_subset
from microdoppler_finetune.evaluation.latent_map import (
    embed_2d,
    latent_features,
    person_separability,
    save_latent_map,
    subsample_positions,
)
from microdoppler_finetune.evaluation.reconstruction import (
    LPIPSMetric,
    display_positions,
    evaluate_reconstruction,
    format_number,
    load_lpips_metric,
    metrics_markdown,
    save_reconstruction_figure,
)
from microdoppler_finetune.latents.build import CACHE_SPLITS, encode_manifest_splits
from microdoppler_finetune.latents.cache import EncodedSplit, write_latent_cache
from microdoppler_finetune.latents.export import EXPORT_DIRNAME, export_encoder_for_dit, vae_identity
from microdoppler_finetune.latents.statistics import ChannelStatistics, statistics_summary
from microdoppler_finetune.utils.files import atomic_write_json, atomic_write_text, file_sha256, path_sha256
from microdoppler_finetune.utils.plain import to_plain
from microdoppler_finetune.utils.tensors import pick_device

METRIC_SPLITS = ("val", "test")
PARTS = ("metrics", "stats", "export", "cache")


# ------------------------------------------------------------------------------------------- which checkpoint


@dataclass
class CheckpointChoice:
    """The VA-VAE to validate and what is known about where it came from."""

    path: Path
    name: str  # folder name under <work_dir>/validation/
    stage_folder: Optional[Path] = None  # <work_dir>/vae/<stage> when the checkpoint belongs to a stage
    stage_result: Optional[dict] = None
    run_config: Optional[Path] = None  # that stage's resolved config.yaml
    notes: list = field(default_factory=list)

    @property
    def work_dir_guess(self) -> Optional[Path]:
        """<work_dir> of the run the checkpoint belongs to (stage folders live in <work_dir>/vae/<stage>)."""
        return self.stage_folder.parent.parent if self.stage_folder is not None else None


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "checkpoint"


def _stage_folder_of(path: Path) -> Optional[Path]:
    """<stage> folder when ``path`` is <stage>/checkpoints/<file> and <stage>/stage_result.json exists."""
    from vae_training.stages import StageFolder

    candidate = path.parent.parent if path.parent.name == "checkpoints" else None
    if candidate is not None and (candidate / StageFolder.RESULT).is_file():
        return candidate
    return None


def describe_checkpoint(path: str | Path) -> CheckpointChoice:
    """A --checkpoint: our .ckpt (inside a stage folder or not), an exported folder, or the released file."""
    from vae_training.stages import StageFolder

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--checkpoint {path} does not exist. Give a .ckpt written by step4, an exported "
                                f"folder (<work_dir>/export/{EXPORT_DIRNAME}) or the released VA-VAE file.")
    stage_folder = _stage_folder_of(path.resolve())
    if stage_folder is not None:
        result = StageFolder(stage_folder.parent, stage_folder.name).read_result()
        return CheckpointChoice(path, safe_name(f"{stage_folder.name}_{path.stem}"), stage_folder,
                                result.to_dict() if result else None, _existing(stage_folder / "config.yaml"))
    if path.is_dir():
        name = f"{path.parent.name}_{path.name}" if path.name == EXPORT_DIRNAME else path.name
        return CheckpointChoice(path, safe_name(name))
    return CheckpointChoice(path, safe_name(path.stem))


def choose_from_run(run_dir: str | Path) -> CheckpointChoice:
    """--run <work_dir>/vae: the chosen checkpoint of the last finished stage in schedule order.

    A single stage folder (one holding stage_result.json) is accepted too.
    """
    from vae_training.stages import StageFolder

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"--run {run_dir} is not a folder. Pass <work_dir>/vae, the folder step4 trains in.")
    if (run_dir / StageFolder.RESULT).is_file():
        stage_dirs = [run_dir]
        run_dir = run_dir.parent
    else:
        stage_dirs = [d for d in run_dir.iterdir() if (d / StageFolder.RESULT).is_file()]
    if not stage_dirs:
        raise FileNotFoundError(f"No stage folder with {StageFolder.RESULT} under {run_dir}: run step4 first "
                                f"(python microdoppler_finetune/step4_train_vavae.py), or pass --checkpoint.")
    order = _schedule_order(stage_dirs)
    stage_dirs.sort(key=lambda d: order.get(d.name, (len(order), (d / StageFolder.RESULT).stat().st_mtime)))
    folders = [StageFolder(run_dir, d.name) for d in stage_dirs]
    finished = [f for f in folders if f.is_finished()]
    if not finished:
        states = ", ".join(f"{f.name}: {f.read_result().status}" for f in folders)
        raise RuntimeError(f"No finished stage in {run_dir} ({states}). Rerun step4 to finish a stage, or pass "
                           f"--checkpoint with a checkpoint of an unfinished stage on purpose.")
    last = finished[-1]
    path = last.chosen_checkpoint()
    result = last.read_result().to_dict()
    notes = [f"--run {run_dir}: last finished stage '{last.name}' (stage order: "
             f"{', '.join(f.name for f in folders)}), its chosen checkpoint ({result.get('monitor')}="
             f"{result.get('chosen_metric')})"]
    unfinished_later = [f.name for f in folders[folders.index(last) + 1:]]
    if unfinished_later:
        notes.append(f"later stage(s) not finished and not used: {', '.join(unfinished_later)}")
    return CheckpointChoice(path, safe_name(f"{last.name}_{path.stem}"), last.root, result,
                            _existing(last.config_file), notes)


def _existing(path: Path) -> Optional[Path]:
    return path if path.is_file() else None


def _schedule_order(stage_dirs: list[Path]) -> dict:
    """Stage name -> position in the schedule recorded in the stages' config.yaml (empty when unreadable)."""
    from vae_training.stages import resolve_stages

    for folder in stage_dirs:
        config_file = folder / "config.yaml"
        if config_file.is_file():
            try:
                names = [s["name"] for s in resolve_stages(load_run_config(config_file))]
                return {name: (i, 0.0) for i, name in enumerate(names)}
            except Exception:  # noqa: BLE001 - an old or edited config: fall back to completion time
                continue
    return {}


def load_run_config(path: Path) -> DictConfig:
    """A run's resolved config.yaml merged onto the current schema (new sections get their defaults).

    vae_training adds a top-level ``stage`` entry (that stage's resolved schedule row) to each stage's
    config.yaml; it is a record, not a schema key, and is dropped. Any other unknown key is an error.
    """
    from microdoppler_finetune.config import PipelineConfig

    loaded = OmegaConf.load(path)
    if "stage" in loaded:
        loaded.pop("stage")
    return OmegaConf.merge(OmegaConf.structured(PipelineConfig), loaded)


def alignment_note(choice: CheckpointChoice) -> Optional[str]:
    """The alignment target the checkpoint was trained against, from stage_result.json or the .ckpt itself."""
    if choice.stage_result and choice.stage_result.get("alignment_target"):
        return str(choice.stage_result["alignment_target"])
    if choice.path.is_file() and choice.path.suffix == ".ckpt":
        from models.checkpoints import load_torch_file

        try:
            content = load_torch_file(choice.path)
        except Exception:  # noqa: BLE001 - a note only; loading the model reports real problems
            return None
        note = content.get("alignment_target") if isinstance(content, dict) else None
        return str(note) if note else None
    return None


# ------------------------------------------------------------------------------------------- helpers


def _write_json(path: Path, data: dict) -> Path:
    return atomic_write_json(path, to_plain(data, finite=True))


@dataclass
class Step5Context:
    cfg: DictConfig
    choice: CheckpointChoice
    model: torch.nn.Module
    manifest: object
    manifest_file: Path
    device: torch.device
    out_dir: Path  # <work_dir>/validation/<name>
    work_dir: Path
    source_sha256: str
    identity: str

    @property
    def image_size(self) -> int:
        return int(self.cfg.data.image_size)

    @property
    def max_images(self) -> Optional[int]:
        value = self.cfg.export.max_images
        return int(value) if value else None

    def dataset(self, split: str):
        from microdoppler_finetune.data import MicroDopplerDataset

        # No flip here: metrics and the cache's originals are the real images (flipped copies are added
        # explicitly by encode_split when data.flip is on).
        return MicroDopplerDataset(self.manifest, split, image_size=self.image_size, flip=False)


# ------------------------------------------------------------------------------------------- metrics


@torch.no_grad()
def _reconstruct_mode(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Deterministic reconstruction: decode the posterior mode (no sampling noise in the metric)."""
    return model.decode(model.encode(images).mode())


def run_metrics(ctx: Step5Context) -> dict:
    lpips_metric: LPIPSMetric = load_lpips_metric(str(ctx.cfg.export.lpips_net), ctx.device,
                                                  download=bool(ctx.cfg.export.lpips_download))
    print(f"LPIPS: {lpips_metric.description}", flush=True)
    notes = [
        "Reconstructions decode the posterior mode (deterministic); PSNR/SSIM/MSE on uint8 images "
        "(MSE on the [0,1] scale), SSIM: scikit-image, 7x7 window, mean over RGB.",
        f"LPIPS: {lpips_metric.description}",
    ]
    if ctx.max_images:
        notes.append(f"At most {ctx.max_images} images per split (--max_images), spread over each split.")
    splits = {}
    for split in METRIC_SPLITS:
        dataset = ctx.dataset(split)
        if len(dataset) == 0:
            notes.append(f"The '{split}' split is empty: no metrics for it.")
            continue
        subset = evenly_spaced_subset(dataset, ctx.max_images)
        records = evaluate_reconstruction(
            lambda x: _reconstruct_mode(ctx.model, x), subset, batch_size=int(ctx.cfg.export.batch_size),
            device=ctx.device, lpips_metric=lpips_metric, num_workers=int(ctx.cfg.data.num_workers),
            description=f"reconstruct {split}")
        splits[split] = records.summary(ctx.manifest.person_names, ctx.manifest.condition_names)
    metrics = {
        "checkpoint": str(ctx.choice.path.resolve()),
        "checkpoint_sha256": ctx.source_sha256,
        "vae_identity": ctx.identity,
        "name": ctx.choice.name,
        "manifest": str(ctx.manifest_file.resolve()),
        "manifest_sha256": file_sha256(ctx.manifest_file),
        "image_size": ctx.image_size,
        "encoding": "posterior mode",
        "lpips": lpips_metric.description,
        "lpips_available": lpips_metric.available,
        "notes": notes,
        "splits": splits,
    }
    _write_json(ctx.out_dir / "metrics.json", metrics)
    atomic_write_text(ctx.out_dir / "metrics.md",
                      metrics_markdown(metrics, f"Reconstruction metrics: {ctx.choice.name}"))
    figure = write_reconstruction_figure(ctx)
    print(metrics_markdown({"splits": splits}, f"Reconstruction: {ctx.choice.name}", groups=False), flush=True)
    return {"metrics": str(ctx.out_dir / "metrics.json"), "figure": str(figure) if figure else None,
            "summary": {split: result["overall"] for split, result in splits.items()},
            "lpips": lpips_metric.description}


def write_reconstruction_figure(ctx: Step5Context) -> Optional[Path]:
    """Fixed validation images covering several people and conditions (test images if val is empty)."""
    for split in ("val", "test"):
        rows = ctx.manifest.entries_for(split)
        if rows:
            break
    else:
        return None
    positions = display_positions([int(r["person_id"]) for r in rows], [int(r["condition_id"]) for r in rows],
                                  int(ctx.cfg.export.figure_images))
    dataset = ctx.dataset(split)
    items = [dataset[p] for p in positions]
    images = torch.stack([item["image"] for item in items]).to(ctx.device)
    recon = _reconstruct_mode(ctx.model, images).float().clamp(-1, 1)
    names, conditions = ctx.manifest.person_names, ctx.manifest.condition_names
    labels = [f"{names[int(rows[p]['person_id'])]}\n{conditions[int(rows[p]['condition_id'])]}" for p in positions]
    return save_reconstruction_figure(images.cpu(), recon.cpu(), labels, ctx.out_dir / "reconstruction_results.png",
                                      title=f"{ctx.choice.name}: {split} images (posterior mode)")


# ------------------------------------------------------------------------------------------- latents


def encode_splits(ctx: Step5Context, splits) -> dict[str, EncodedSplit]:
    return encode_manifest_splits(ctx.model, ctx.manifest, splits, image_size=ctx.image_size,
                                  sample_seed=int(ctx.cfg.export.sample_seed),
                                  batch_size=int(ctx.cfg.export.batch_size),
                                  device=ctx.device, flip=bool(ctx.cfg.data.flip),
                                  num_workers=int(ctx.cfg.data.num_workers), max_images=ctx.max_images)


def latent_statistics(encoded_train: EncodedSplit) -> tuple[list, list, dict]:
    stats = ChannelStatistics()
    stats.update(encoded_train.latents)
    mean, std = stats.mean(), stats.std()
    return mean.tolist(), std.tolist(), statistics_summary(mean, std, encoded_train.latents)


def run_latent_analysis(ctx: Step5Context, encoded: dict[str, EncodedSplit], stats_summary: dict) -> dict:
    """latent_statistics.json (+ person separability) and latent_map.png."""
    train, val = encoded["train"].originals(), encoded["val"].originals()
    names = ctx.manifest.person_names
    print("Person separability (k-NN on posterior-mean latents, train -> val)", flush=True)
    separability = person_separability(train.posterior_mean, train.person_id.tolist(), val.posterior_mean,
                                       val.person_id.tolist(), k=int(ctx.cfg.export.knn_k), person_names=names)
    for kind, score in separability.items():
        print(f"  {kind}: accuracy {score['accuracy']:.3f} (chance {score['chance']:.3f}, k={score['k']})",
              flush=True)
    means = torch.cat([train.posterior_mean, val.posterior_mean])
    persons = torch.cat([train.person_id, val.person_id]).numpy()
    held_out = np.r_[np.zeros(len(train), bool), np.ones(len(val), bool)]
    keep = subsample_positions(len(means), int(ctx.cfg.export.map_max_points), seed=0)
    print(f"t-SNE map of {len(keep)} latents", flush=True)
    coords = embed_2d(latent_features(means[keep], "flat"), seed=0)
    map_path = save_latent_map(coords, persons[keep], ctx.out_dir / "latent_map.png", is_eval=held_out[keep],
                               person_names=names, title=ctx.choice.name)
    data = {
        "checkpoint": str(ctx.choice.path.resolve()),
        "vae_identity": ctx.identity,
        "manifest_sha256": file_sha256(ctx.manifest_file),
        "statistics_over": "train split posterior samples (fixed per-image seeds"
                           + (", flipped copies included" if bool(ctx.cfg.data.flip) else "") + ")",
        "sample_seed": int(ctx.cfg.export.sample_seed),
        **stats_summary,
        "person_separability": {
            "method": "k-NN (scikit-learn, standardised features) fitted on train posterior means, scored on val "
                      "posterior means; flat = all latent values, pooled = per-channel mean and std",
            **separability,
        },
        "latent_map": str(map_path),
        "latent_map_method": "t-SNE (scikit-learn, PCA to <=50 dims first, random_state 0) of posterior means",
    }
    _write_json(ctx.out_dir / "latent_statistics.json", data)
    return {"latent_statistics": str(ctx.out_dir / "latent_statistics.json"), "latent_map": str(map_path),
            "knn_accuracy_flat": separability["flat"]["accuracy"],
            "knn_accuracy_pooled": separability["pooled"]["accuracy"],
            "knn_chance": separability["flat"]["chance"]}


def write_statistics_only(ctx: Step5Context, stats_summary: dict) -> None:
    """latent_statistics.json without map/separability (when only --export/--cache asked for the statistics)."""
    _write_json(ctx.out_dir / "latent_statistics.json", {
        "checkpoint": str(ctx.choice.path.resolve()), "vae_identity": ctx.identity,
        "manifest_sha256": file_sha256(ctx.manifest_file), "sample_seed": int(ctx.cfg.export.sample_seed),
        "statistics_over": "train split posterior samples (fixed per-image seeds)", **stats_summary,
        "person_separability": "not computed (run step5 with --stats)"})


# ------------------------------------------------------------------------------------------- export + cache


def metrics_for_export(ctx: Step5Context, fresh: Optional[dict]) -> Optional[dict]:
    """This run's metrics, or the ones in metrics.json when they belong to the same weights."""
    if fresh is not None:
        return {"splits": fresh["summary"], "lpips": fresh["lpips"]}
    path = ctx.out_dir / "metrics.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("vae_identity") == ctx.identity:
            return {"splits": {k: v["overall"] for k, v in saved.get("splits", {}).items()},
                    "lpips": saved.get("lpips"), "from": str(path)}
    return None


def run_export(ctx: Step5Context, mean: list, std: list, metrics: Optional[dict], stats_summary: dict) -> dict:
    out = ctx.work_dir / "export" / EXPORT_DIRNAME
    stage = ctx.choice.stage_result or {}
    info = {
        "source_checkpoint": str(ctx.choice.path.resolve()),
        "source_sha256": ctx.source_sha256,
        "source_stage": stage.get("stage"),
        "source_stage_metric": {stage.get("monitor"): stage.get("chosen_metric")} if stage else None,
        "alignment_target": alignment_note(ctx.choice),
        "manifest": str(ctx.manifest_file.resolve()),
        "manifest_sha256": file_sha256(ctx.manifest_file),
        "image_size": ctx.image_size,
        "latent_statistics": {"over": "train split posterior samples", "sample_seed": int(ctx.cfg.export.sample_seed),
                              "num_images": stats_summary["num_images"], "latent_shape": stats_summary["latent_shape"],
                              "complete": not ctx.max_images},
        "metrics_summary": metrics if metrics is not None else "not computed (run step5 with --metrics)",
    }
    print(f"Exporting the encoder for the DiT to {out}", flush=True)
    path = export_encoder_for_dit(ctx.model, out, latents_mean=mean, latents_std=std, info=to_plain(info, finite=True))
    return {"export": str(path), "vae_identity": ctx.identity}


def run_cache(ctx: Step5Context, encoded: dict[str, EncodedSplit], mean: list, std: list) -> dict:
    out = ctx.work_dir / "latents"
    print(f"Writing the latent cache to {out}", flush=True)
    info_path = write_latent_cache(
        {split: encoded[split] for split in CACHE_SPLITS}, out, vae_identity_hash=ctx.identity,
        manifest_path=ctx.manifest_file, image_size=ctx.image_size, latents_mean=mean, latents_std=std,
        sample_seed=int(ctx.cfg.export.sample_seed), flip=bool(ctx.cfg.data.flip),
        shard_size=int(ctx.cfg.export.shard_size), complete=not ctx.max_images,
        extra_info={"source_checkpoint": str(ctx.choice.path.resolve()), "source_sha256": ctx.source_sha256,
                    "person_names": list(ctx.manifest.person_names),
                    "condition_names": list(ctx.manifest.condition_names)})
    return {"latent_cache": str(info_path), "counts": {s: len(encoded[s]) for s in CACHE_SPLITS}}


# ------------------------------------------------------------------------------------------- summary table


def write_validation_summary(validation_root: Path) -> Optional[Path]:
    """One table comparing every checkpoint validated under <work_dir>/validation (oldest first)."""
    rows = []
    for metrics_file in sorted(validation_root.glob("*/metrics.json"), key=lambda p: p.stat().st_mtime):
        try:
            data = json.loads(metrics_file.read_text())
        except json.JSONDecodeError:
            continue
        for split, result in data.get("splits", {}).items():
            overall = result.get("overall", {})
            rows.append(f"| {metrics_file.parent.name} | {split} | {overall.get('count')} | "
                        + " | ".join(format_number(overall.get(k), 5 if k == "mse" else 3)
                                     for k in ("psnr", "ssim", "mse", "lpips"))
                        + f" | `{data.get('checkpoint', '')}` |")
    if not rows:
        return None
    lines = ["# Validated VA-VAE checkpoints", "",
             "Posterior-mode reconstructions; PSNR/SSIM/MSE on uint8 images. One folder per checkpoint.", "",
             "| name | split | images | PSNR (dB) | SSIM | MSE | LPIPS | checkpoint |",
             "|---|---|---:|---:|---:|---:|---:|---|", *rows]
    path = validation_root / "summary.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------------------------------- entry


def run_step5(cfg: DictConfig, choice: CheckpointChoice, parts=PARTS, *, trust_pickle: bool = False,
              data_root: Optional[str | Path] = None) -> dict:
    """Run the chosen ``parts`` (metrics, stats, export, cache) for ``choice``; returns a JSON-ready summary.

    Reads ``<dataset_dir>/manifest.csv`` (cfg.data.dataset_dir, default <work_dir>/dataset); ``data_root``
    overrides where the manifest's images are (e.g. the dataset attached at another path on Kaggle).
    """
    from microdoppler_finetune.data import load_manifest
    from models.vavae import load_vavae

    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise ValueError(f"Unknown or no step5 parts {unknown or parts}; choose from {', '.join(PARTS)}.")
    start = time.time()
    work_dir = Path(cfg.run.work_dir)
    dataset_dir = Path(cfg.data.dataset_dir) if cfg.data.dataset_dir else work_dir / "dataset"
    manifest_file = dataset_dir / "manifest.csv"
    if not manifest_file.is_file():
        raise FileNotFoundError(f"No manifest at {manifest_file}. Run step3 (python microdoppler_finetune/"
                                f"step3_prepare_dataset.py --data_root DATA) or pass --dataset_dir / --work_dir.")
    manifest = load_manifest(manifest_file, data_root=data_root) if data_root else load_manifest(manifest_file)
    device = pick_device(str(cfg.export.device))
    print(f"Loading the VA-VAE from {choice.path}", flush=True)
    for note in choice.notes:
        print(f"  {note}", flush=True)
    model = load_vavae(str(choice.path), trust_pickle=trust_pickle).to(device).float().eval()
    ctx = Step5Context(cfg=cfg, choice=choice, model=model, manifest=manifest, manifest_file=manifest_file,
                       device=device, out_dir=work_dir / "validation" / choice.name, work_dir=work_dir,
                       source_sha256=path_sha256(choice.path), identity=vae_identity(model))
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {"checkpoint": str(choice.path), "name": choice.name, "vae_identity": ctx.identity,
                     "validation_dir": str(ctx.out_dir), "parts": list(parts), "notes": list(choice.notes)}
    metrics = run_metrics(ctx) if "metrics" in parts else None
    if metrics is not None:
        summary["metrics"] = metrics
        write_validation_summary(ctx.out_dir.parent)
    if {"stats", "export", "cache"} & set(parts):
        wanted = ("train", "val") if ({"stats", "cache"} & set(parts)) else ("train",)
        encoded = encode_splits(ctx, wanted)
        mean, std, stats_summary = latent_statistics(encoded["train"])
        if "stats" in parts:
            summary["stats"] = run_latent_analysis(ctx, encoded, stats_summary)
        else:
            write_statistics_only(ctx, stats_summary)
        if "export" in parts:
            summary["export"] = run_export(ctx, mean, std, metrics_for_export(ctx, metrics), stats_summary)
        if "cache" in parts:
            summary["cache"] = run_cache(ctx, encoded, mean, std)
    summary["seconds"] = round(time.time() - start, 1)
    _write_json(ctx.out_dir / "step5_summary.json", summary)
    return to_plain(summary, finite=True)
