"""Library entry of VA-VAE fine-tuning: ``train_vavae(cfg, stages=...)`` runs the stage schedule.

Each stage trains in ``<work_dir>/vae/<stage>/`` (see vae_training.stages). Rerunning the same call skips
finished stages and resumes an interrupted one from its ``last.ckpt`` (optimizers, epoch, step, counters).
A stage starts from the checkpoint its ``init_from`` names: the released weights, random weights, or the
chosen checkpoint of an earlier stage as recorded in that stage's ``stage_result.json``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf

from microdoppler_finetune.config import save_config
from microdoppler_finetune.utils.files import atomic_write_json, remove_stale_temporaries
from microdoppler_finetune.utils.plain import to_plain
from microdoppler_finetune.utils.tensors import state_dict_fingerprint
from vae_training import stages as S
from vae_training.builders import (
    AlignmentTarget,
    VAEInit,
    build_alignment_target,
    build_discriminator,
    build_perceptual,
    build_vae,
    describe_perceptual,
    find_pretrained_vae,
    init_discriminator,
    loud,
    match_projection,
)
from vae_training.callbacks import (
    STOP_NONFINITE,
    AtomicCheckpointIO,
    GracefulStop,
    LastCheckpoint,
    LossCurves,
    ReconstructionGrid,
    StageProgress,
    ValidationHistory,
)
from vae_training.hardware import trainer_hardware
from vae_training.module import VAVAEFineTuneModule

MONITOR = "val_psnr"  # the chosen checkpoint of a stage: best validation PSNR


# ----------------------------------------------------------------------------------------------- dataset


def ensure_manifest(cfg: DictConfig) -> Path:
    """The manifest this run trains on; made once (by step3's prepare_dataset) and reused by every stage."""
    from microdoppler_finetune.data import load_manifest, prepare_dataset

    work_dir = Path(cfg.run.work_dir)
    if cfg.data.dataset_dir:
        manifest = Path(cfg.data.dataset_dir) / "manifest.csv"
        if not manifest.is_file():
            raise FileNotFoundError(f"--dataset_dir {cfg.data.dataset_dir} has no manifest.csv. Point it at the "
                                    f"folder step3_prepare_dataset.py wrote, or leave it out to split --data_root.")
        return manifest
    dataset_dir = work_dir / "dataset"
    manifest = dataset_dir / "manifest.csv"
    data_root = Path(cfg.data.data_root) if cfg.data.data_root else None
    if manifest.is_file():
        if data_root is not None:
            written_for = Path(load_manifest(manifest).data_root).resolve()
            if written_for != data_root.resolve():
                raise RuntimeError(
                    f"{manifest} was written for {written_for}, not --data_root {data_root}. Every stage must use "
                    f"one split: use another --work_dir, pass --dataset_dir, or delete {dataset_dir} on purpose.")
        print(f"Using the existing split {manifest}", flush=True)
        return manifest
    if data_root is None:
        if cfg.run.preset != "cpu_demo":
            raise FileNotFoundError(f"No data: pass --data_root (your spectrogram folder) or --dataset_dir (step3's "
                                    f"output). {manifest} does not exist yet.")
        data_root = simulate_demo_data(cfg, work_dir / "simulated")
    print(f"Splitting {data_root} once into {dataset_dir} (step3's prepare_dataset)", flush=True)
    d = cfg.data
    return Path(prepare_dataset(data_root, dataset_dir, seed=int(d.split_seed), val_fraction=float(d.val_fraction),
                                test_fraction=float(d.test_fraction)))


def simulate_demo_data(cfg: DictConfig, out_dir: Path) -> Path:
    from microdoppler_finetune.simulator import simulate_dataset

    if (out_dir / "simulation_info.json").is_file():
        return out_dir
    sim = cfg.simulate
    loud(f"No --data_root: simulating the CPU demo dataset into {out_dir} ({sim.people} people x {sim.per_person}).")
    simulate_dataset(out_dir, people=int(sim.people), per_person=int(sim.per_person), seed=int(sim.seed),
                     image_size=int(sim.image_size), layout=str(sim.layout),
                     conditions=list(sim.conditions) if sim.conditions else None)
    return out_dir


# ----------------------------------------------------------------------------------------------- stage inputs


def init_checkpoint_for(cfg: DictConfig, stage: dict, vae_dir: Path, finished: dict) -> Optional[Path]:
    """Where the stage's weights come from (None: random init)."""
    source = stage["init_from"]
    if source == S.INIT_RANDOM:
        return None
    if source == S.INIT_PRETRAINED:
        path = find_pretrained_vae(cfg)
        return path
    if source in finished and finished[source].chosen_checkpoint:
        return S.StageFolder(vae_dir, source).resolve(finished[source].chosen_checkpoint)
    return S.StageFolder(vae_dir, source).chosen_checkpoint()


def vae_config_of_checkpoint(path: Path) -> dict:
    """The VA-VAE config stored in one of our checkpoints (to rebuild the architecture before resuming)."""
    from models.checkpoints import load_torch_file

    try:
        state = load_torch_file(path)
    except (ValueError, RuntimeError, EOFError) as exc:  # truncated, corrupt, or needs unpickling
        raise ValueError(f"{path} cannot be read ({str(exc).splitlines()[0][:300]}). It holds the stage's training "
                         f"state: restore it, or move it away (e.g. rename it to last.ckpt.damaged) and rerun the "
                         f"same command to restart the stage from its beginning.") from exc
    if "vavae_config" not in state:
        raise KeyError(f"{path} has no 'vavae_config': it was not written by vae_training. Delete it to restart "
                       f"the stage, or move it away.")
    return dict(state["vavae_config"])


def feature_cache_for(cfg: DictConfig, target: AlignmentTarget):
    """Foundation features computed once per image (and flip) for the whole run, shared by all stages.

    On disk under <work_dir>/vae/feature_cache (one folder per target model, weights and input size), so a
    resumed run or the next stage does not recompute them either.
    """
    if not bool(cfg.vae_train.feature_cache):
        return None
    from models.foundation import FoundationFeatureCache

    dtype = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}.get(
        str(cfg.vae_train.feature_cache_dtype))
    if dtype is None:
        raise ValueError(f"vae_train.feature_cache_dtype={cfg.vae_train.feature_cache_dtype}: use float16, "
                         f"bfloat16 or float32.")
    return FoundationFeatureCache.for_model(
        target.model, cache_dir=Path(cfg.run.work_dir) / "vae" / "feature_cache", in_memory=True,
        storage_dtype=dtype, flip_flag_required=bool(cfg.data.flip), write=_rank_zero())  # DDP: rank 0 writes


# ----------------------------------------------------------------------------------------------- one stage


@dataclass
class StageModel:
    module: VAVAEFineTuneModule
    target: AlignmentTarget
    perceptual_description: str
    notes: list
    init_fingerprint: str  # of the VA-VAE weights the stage starts from (provenance, checked by tests)


def build_stage_model(cfg: DictConfig, stage: dict, *, init_checkpoint: Optional[Path],
                      resume_from: Optional[Path] = None, target_cache: Optional[dict] = None) -> StageModel:
    """The Lightning module of one stage: VA-VAE (initialised as the stage says), discriminator, LPIPS, target."""
    target_cache = {} if target_cache is None else target_cache
    if resume_from is not None:
        # Architecture from the checkpoint; Lightning restores its weights and optimizer state in fit().
        from models.vavae import create_vavae

        vae_init = VAEInit(create_vavae(vae_config_of_checkpoint(resume_from)), stage["init_from"],
                           str(init_checkpoint) if init_checkpoint else None, [f"resuming from {resume_from}"])
    else:
        vae_init = build_vae(cfg, stage["init_from"], init_checkpoint)

    latent_size = int(cfg.data.image_size) // int(vae_init.model.downsample_factor)
    if latent_size not in target_cache:
        target_cache[latent_size] = build_alignment_target(cfg, latent_size)
    target: AlignmentTarget = target_cache[latent_size]
    if resume_from is None:
        vae_init = match_projection(vae_init, target, cfg)
    elif int(vae_init.model.config.foundation_dim) != target.feature_dim:
        raise ValueError(f"{resume_from} projects latents to {vae_init.model.config.foundation_dim} dims but the "
                         f"alignment target '{target.description}' gives {target.feature_dim}: resume with the "
                         f"--vf_model the stage started with.")

    discriminator = build_discriminator(cfg)
    if resume_from is None:
        vae_init.notes.append(init_discriminator(discriminator, init_checkpoint,
                                                 released=stage["init_from"] == S.INIT_PRETRAINED,
                                                 trust_pickle=bool(cfg.vae.trust_pickle)))
    perceptual = build_perceptual(cfg)
    train_cfg = to_plain(cfg.vae_train)
    train_cfg["freeze_encoder_levels"] = int(cfg.vae.freeze_encoder_levels)
    fingerprint = state_dict_fingerprint(vae_init.model) if resume_from is None else ""
    module = VAVAEFineTuneModule(
        vae_init.model, discriminator, stage=stage, loss_cfg=to_plain(cfg.vae_loss), train_cfg=train_cfg,
        perceptual=perceptual, foundation=target.model, feature_cache=feature_cache_for(cfg, target),
        alignment_target=target.description)
    return StageModel(module, target, describe_perceptual(perceptual), vae_init.notes, fingerprint)


def run_stage(cfg: DictConfig, stage: dict, folder: S.StageFolder, manifest: Path, *, target_cache: dict,
              finished: dict, deadline: Optional[float]) -> S.StageResult:
    train = cfg.vae_train
    if _rank_zero():
        for stale in remove_stale_temporaries(folder.checkpoints):
            print(f"[{stage['name']}] removed {stale.name}, left by an interrupted checkpoint write", flush=True)
    resume_from = folder.last_checkpoint if folder.last_checkpoint.is_file() else None
    init_ckpt = init_checkpoint_for(cfg, stage, folder.root.parent, finished)
    if resume_from is not None:
        print(f"[{stage['name']}] resuming from {resume_from}", flush=True)
    built = build_stage_model(cfg, stage, init_checkpoint=init_ckpt, resume_from=resume_from,
                              target_cache=target_cache)
    module, target = built.module, built.target
    image_size = int(cfg.data.image_size)
    from vae_training.datamodule import VAEDataModule

    datamodule = VAEDataModule(manifest, image_size=image_size, batch_size=int(train.batch_size),
                               num_workers=int(cfg.data.num_workers), flip=bool(cfg.data.flip),
                               seed=torch.initial_seed())  # run.seed + stage index (seed_everything): every rank
    datamodule.setup()

    if _rank_zero():
        write_stage_config(cfg, stage, folder, resumed=resume_from is not None)
        if resume_from is None and init_ckpt is None:
            save_initial_weights(module.vae, folder)

    hardware = trainer_hardware(train)
    best = pl.callbacks.ModelCheckpoint(
        dirpath=folder.checkpoints, filename="epoch={epoch:03d}-val_psnr={val_psnr:.2f}",
        auto_insert_metric_name=False, monitor=MONITOR, mode="max", save_top_k=int(train.save_top_k),
        save_weights_only=True, save_last=False)
    history = ValidationHistory()
    steps_per_epoch = _ae_steps_per_epoch(datamodule, train, hardware["world_size"])
    callbacks = [
        best,
        LastCheckpoint(folder.last_checkpoint, int(train.checkpoint_every_n_steps or 0)),
        GracefulStop(folder.last_checkpoint, deadline=deadline, stop_after_ae_steps=train.stop_after_ae_steps,
                     nonfinite_checkpoint=folder.checkpoints / "nonfinite_stop.ckpt"),
        history,
        ReconstructionGrid(datamodule.fixed_val_images(int(train.grid_images)), folder.reconstructions),
        LossCurves(folder.logs, folder.loss_curves, title=f"{stage['name']}: {target.description}"),
    ]
    if bool(train.progress_bar):
        callbacks.append(StageProgress(stage["name"], steps_per_epoch * int(stage["epochs"]),
                                       int(train.log_every_n_steps)))
    trainer = pl.Trainer(
        accelerator=hardware["accelerator"], devices=hardware["devices"], strategy=hardware["strategy"],
        # A 16-mixed run passes its precision as a plugin (own grad scaler), which excludes the precision flag.
        precision=None if hardware["plugins"] else hardware["precision"],
        plugins=list(hardware["plugins"]) + [AtomicCheckpointIO()],
        max_epochs=int(stage["epochs"]),
        logger=stage_loggers(folder), callbacks=callbacks, detect_anomaly=bool(train.detect_anomaly),
        num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False,  # StageProgress instead
        use_distributed_sampler=False,  # the data module shards (and resumes mid-epoch) itself
        # Lightning counts log intervals in batches: one autoencoder step is `gradient_accumulation` batches.
        log_every_n_steps=max(1, int(train.log_every_n_steps)) * max(1, int(train.gradient_accumulation)),
        limit_train_batches=train.limit_train_batches, limit_val_batches=train.limit_val_batches,
        default_root_dir=str(folder.root),
    )

    _announce(stage, built, hardware, steps_per_epoch, folder)
    previous = folder.read_result()
    result = S.StageResult(stage=stage["name"], status=S.STATUS_RUNNING, monitor=MONITOR,
                           alignment_target=target.description, perceptual=built.perceptual_description,
                           hardware=hardware["description"],
                           init_from=stage["init_from"], init_checkpoint=str(init_ckpt) if init_ckpt else None,
                           init_fingerprint=built.init_fingerprint or (previous.init_fingerprint if previous else ""),
                           stage_config=dict(stage), message="; ".join(built.notes))
    if trainer.is_global_zero:
        folder.write_result(result)

    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None,
                weights_only=True)

    if module.stop_reason == STOP_NONFINITE:
        stop_ckpt = folder.checkpoints / "nonfinite_stop.ckpt"
        status = S.STATUS_NONFINITE
        message = (f"stopped after {module.nonfinite_in_a_row} non-finite losses/gradients in a row at autoencoder "
                   f"step {module.ae_steps}; state at the stop: {stop_ckpt}; last good state: "
                   f"{folder.last_checkpoint if folder.last_checkpoint.is_file() else 'none yet'}. Likely causes: "
                   f"{nonfinite_causes(cfg, stage, module)}. Find the exact place with --detect_anomaly.")
    elif module.stop_reason is not None:
        status = S.STATUS_INTERRUPTED
        message = f"stopped cleanly ({module.stop_reason}) at autoencoder step {module.ae_steps}; rerun to continue"
    else:
        status = S.STATUS_FINISHED
        message = "; ".join(built.notes)
    best_path = best.best_model_path or None
    best_score = float(best.best_model_score) if best.best_model_score is not None else None
    result.status = status
    result.message = message
    result.chosen_checkpoint = folder.relative(best_path)
    result.chosen_metric = best_score
    result.last_checkpoint = folder.relative(folder.last_checkpoint) if folder.last_checkpoint.is_file() else None
    result.epochs_done = int(trainer.current_epoch)
    result.ae_steps = int(module.ae_steps)
    result.global_step = int(trainer.global_step)
    result.nonfinite_skipped_total = int(module.nonfinite_total)
    result.amp_skipped_steps = int(module.amp_skipped_steps)
    result.val_history = history.history
    if trainer.is_global_zero:
        folder.write_result(result)
    print(f"[{stage['name']}] {status}: {message}\n[{stage['name']}] chosen checkpoint: {best_path} "
          f"({MONITOR}={best_score})", flush=True)
    return result


def nonfinite_causes(cfg: DictConfig, stage: dict, module: VAVAEFineTuneModule) -> str:
    """The likely causes of a non-finite stop, most likely first, each with its fix."""
    causes = []
    if str(cfg.vae_train.precision) == "16-mixed":
        causes.append(f"fp16 overflow ({module.amp_skipped_steps} steps the grad scaler skipped): train with "
                      f"--precision 32 or bf16-mixed")
    if module.ae_steps == 0:
        causes.append("the data: not one step was finite, so look for broken images (rerun step3 and read "
                      "problems.csv) before the learning rate")
    causes.append(f"a learning rate too high (lower --learning_rate, now {float(stage['learning_rate']):g}, or set "
                  f"--gradient_clip_val)")
    if module.ae_steps > 0:
        causes.append("the data: a batch with NaN/Inf pixels (rerun step3 and read problems.csv)")
    return "; ".join(causes)


def stage_loggers(folder: S.StageFolder) -> list:
    """CSV and TensorBoard logs of one run segment, side by side in ``<stage>/logs/version_N/`` (a resumed run
    adds a version). Both get the same rows; their x value is the autoencoder step (the module logs 'step')."""
    version = S.next_log_version(folder.logs)
    return [pl.loggers.CSVLogger(str(folder.root), name="logs", version=version),
            pl.loggers.TensorBoardLogger(str(folder.root), name="logs", version=version, default_hp_metric=False)]


INITIAL_WEIGHTS = "initial_weights.safetensors"


def save_initial_weights(vae: torch.nn.Module, folder: S.StageFolder) -> Path:
    """A stage that starts without a checkpoint (random init) keeps its starting weights: step5 measures
    "before fine-tuning" on them when the released weights are not available (the demo)."""
    from models.vavae import save_ldm_safetensors

    folder.root.mkdir(parents=True, exist_ok=True)
    return save_ldm_safetensors(vae, folder.root / INITIAL_WEIGHTS, {"note": "weights before the first step"})


def _rank_zero() -> bool:
    """Before the Trainer exists: DDP child processes carry their rank in the environment Lightning reads."""
    return pl.utilities.rank_zero_only.rank == 0


def write_stage_config(cfg: DictConfig, stage: dict, folder: S.StageFolder, *, resumed: bool) -> Path:
    """The resolved config of the run with this stage's resolved entry; a resumed run keeps the first one."""
    resolved = to_plain(cfg)
    resolved["vae_train"]["stages"] = S.resolve_stages(cfg)  # the whole resolved schedule, overrides applied
    resolved["vae_train"]["stage_overrides"] = {}
    resolved["stage"] = dict(stage)
    path = folder.config_file
    if resumed and path.is_file():
        path = folder.root / f"config_resumed_{time.strftime('%Y%m%d-%H%M%S')}.yaml"
    return save_config(OmegaConf.create(resolved), path)


def _ae_steps_per_epoch(datamodule, train: DictConfig, world_size: int) -> int:
    import math

    batches = math.ceil(len(datamodule.train_set) / (int(train.batch_size) * world_size))
    limit = train.limit_train_batches
    if limit is not None:
        batches = min(batches, int(limit)) if float(limit) >= 1 else max(1, int(batches * float(limit)))
    return math.ceil(batches / max(1, int(train.gradient_accumulation)))


def _announce(stage, built: StageModel, hardware, steps_per_epoch, folder) -> None:
    if not _rank_zero():
        return
    lines = [
        f"=== VA-VAE {stage['name']}: {stage['epochs']} epochs, lr {stage['learning_rate']}, vf_weight "
        f"{stage['vf_weight']}, margins {stage['distmat_margin']}/{stage['cos_margin']}, GAN term after "
        f"{stage['disc_start']} autoencoder steps (disc_start; official global step {S.official_disc_start(stage)}), "
        f"init {stage['init_from']} ===",
        f"    model: {'; '.join(built.notes)}",
        f"    alignment target: {built.target.description}",
        f"    perceptual loss: {built.perceptual_description}",
        f"    hardware: {hardware['description']}; {steps_per_epoch} autoencoder steps per epoch",
        f"    run folder: {folder.root}",
    ]
    print("\n".join(lines), flush=True)


# ----------------------------------------------------------------------------------------------- all stages


def train_vavae(cfg: DictConfig, stages: Optional[Sequence[int | str] | str] = None) -> dict:
    """Run the selected stages (1-based numbers or names; None: all). Returns the run summary."""
    start = time.time()
    budget = S.parse_duration(cfg.vae_train.time_budget)
    deadline = start + budget if budget else None
    schedule = S.resolve_stages(cfg)
    selected = S.select_stages(schedule, stages)
    vae_dir = Path(cfg.run.work_dir) / "vae"
    manifest = ensure_manifest(cfg)
    finished: dict[str, S.StageResult] = {}
    summary = {"work_dir": str(Path(cfg.run.work_dir).resolve()), "manifest": str(manifest), "stages": {}}
    target_cache: dict = {}
    for index, stage in enumerate(schedule):
        if stage not in selected:
            continue
        folder = S.StageFolder(vae_dir, stage["name"])
        previous = folder.read_result()
        if previous is not None and previous.status == S.STATUS_FINISHED:
            print(f"[{stage['name']}] already finished ({folder.result_file}); skipping.", flush=True)
            finished[stage["name"]] = previous
            summary["stages"][stage["name"]] = previous.to_dict()
            continue
        if deadline is not None and time.time() >= deadline:
            print(f"Time budget spent before {stage['name']}; rerun the same command to continue.", flush=True)
            break
        pl.seed_everything(int(cfg.run.seed) + index, workers=True, verbose=False)
        result = run_stage(cfg, stage, folder, manifest, target_cache=target_cache, finished=finished,
                           deadline=deadline)
        summary["stages"][stage["name"]] = result.to_dict()
        if result.status != S.STATUS_FINISHED:
            break
        finished[stage["name"]] = result
    summary["seconds"] = round(time.time() - start, 1)
    summary["complete"] = all(summary["stages"].get(s["name"], {}).get("status") == S.STATUS_FINISHED
                              for s in selected)
    if _rank_zero():
        vae_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(vae_dir / "summary.json", to_plain(summary))
    return summary
