"""The pipeline's stages, one function each: simulate (when no data) -> split -> VA-VAE -> export -> DiT ->
samples -> evaluation.

Each stage reads the previous stage's output folder under ``run.work_dir``; nothing is re-split later. A stage
whose outputs exist is skipped (or resumed by its own trainer), so rerunning the same command continues an
interrupted run.
"""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Callable, Optional

from omegaconf import DictConfig

from microdoppler_finetune.config import save_config
from microdoppler_finetune.utils.plain import to_plain
from microdoppler_finetune.workflow.context import PipelineContext, StageIncomplete


def stage_setup(ctx: PipelineContext) -> dict:
    from microdoppler_finetune.environment import run_setup

    info, path, problems = run_setup(kaggle=False, work_dir=str(ctx.work_dir))
    if problems:
        raise RuntimeError("Environment problems:\n  " + "\n  ".join(problems))
    return {"environment_info": str(path), "recommended_preset": info["recommended_preset"]}


def stage_simulate(ctx: PipelineContext) -> dict:
    from microdoppler_finetune.simulator import simulate_dataset
    from microdoppler_finetune.simulator.radar import RadarSettings

    if ctx.cfg.data.data_root:
        return {"skipped": f"real data given: {ctx.cfg.data.data_root}"}
    info_file = ctx.simulated_dir / "simulation_info.json"
    if info_file.is_file():
        return {"skipped": f"already simulated: {ctx.simulated_dir}"}
    sim = ctx.cfg.simulate
    summary = simulate_dataset(
        ctx.simulated_dir, people=sim.people, per_person=sim.per_person, seed=sim.seed,
        image_size=sim.image_size, layout=sim.layout,
        conditions=list(sim.conditions) if sim.conditions else None,
        recordings_per_person=int(sim.recordings_per_person), settings=RadarSettings.for_band(str(sim.band)),
    )
    return {"data_root": str(ctx.simulated_dir), "summary": to_plain(summary)}


def stage_prepare(ctx: PipelineContext) -> dict:
    from microdoppler_finetune.data import load_manifest, prepare_dataset

    manifest_path = ctx.dataset_dir / "manifest.csv"
    if manifest_path.is_file():
        manifest = load_manifest(manifest_path)
        if Path(manifest.data_root).resolve() != ctx.data_root.resolve():
            raise RuntimeError(
                f"{manifest_path} was written for {manifest.data_root}, not {ctx.data_root}. Later stages "
                f"depend on that split: use another --work_dir, or delete {ctx.dataset_dir} on purpose."
            )
        return {"skipped": f"manifest exists: {manifest_path}"}
    d = ctx.cfg.data
    path = prepare_dataset(ctx.data_root, ctx.dataset_dir, seed=d.split_seed, val_fraction=d.val_fraction,
                           test_fraction=d.test_fraction, split_unit=str(d.split_unit), strict=bool(d.split_strict),
                           withhold=d.withhold or None)
    return {"manifest": str(path)}


def stage_preview(ctx: PipelineContext) -> dict:
    from microdoppler_finetune.data.preview import write_dataset_preview

    path = write_dataset_preview(ctx.dataset_dir, ctx.work_dir / "preview.png")
    return {"preview": str(path)}


def run_in_own_process(ctx: PipelineContext, program: list, config_name: str) -> None:
    """Run a step script as a child process with this run's resolved config (saved as ``config_name``)."""
    import subprocess

    config_file = save_config(ctx.cfg, ctx.work_dir / config_name)
    command = program + ["--config", str(config_file), "--preset", str(ctx.cfg.run.preset),
                         "--work_dir", str(ctx.work_dir)]
    print("Launching: " + " ".join(shlex.quote(c) for c in command), flush=True)
    subprocess.run(command, check=True)


def run_step4_as_process(ctx: PipelineContext) -> dict:
    """Lightning's DDP starts each extra rank by rerunning the current command: that must be step4 alone, not
    the whole pipeline, so a multi-device VA-VAE run is its own process with this run's resolved config."""
    run_in_own_process(ctx, [sys.executable, "-m", "microdoppler_finetune.step4_train_vavae"], "vae_ddp_config.yaml")
    return json.loads((ctx.work_dir / "vae" / "summary.json").read_text())


def stage_vae(ctx: PipelineContext) -> dict:
    import os

    from vae_training.hardware import trainer_hardware
    from vae_training.train import train_vavae

    if trainer_hardware(ctx.cfg.vae_train)["world_size"] > 1 and "LOCAL_RANK" not in os.environ:
        summary = run_step4_as_process(ctx)
    else:
        summary = train_vavae(ctx.cfg)
    stages = {name: {"status": r.get("status"), "chosen_val_psnr": r.get("chosen_metric"),
                     "epochs": r.get("epochs_done"), "ae_steps": r.get("ae_steps")}
              for name, r in summary["stages"].items()}
    if not summary["complete"]:
        raise StageIncomplete(f"VA-VAE fine-tuning stopped before its last stage finished ({stages}).")
    return {"vae_dir": str(ctx.work_dir / "vae"), "stages": stages}


def _step5_done(ctx: PipelineContext, name: str, checkpoint: Path, parts) -> bool:
    summary_file = ctx.work_dir / "validation" / name / "step5_summary.json"
    if not summary_file.is_file():
        return False
    summary = json.loads(summary_file.read_text())
    return Path(summary.get("checkpoint", "")).resolve() == checkpoint.resolve() and set(parts) <= set(
        summary.get("parts", []))


def _split_metrics(summary: dict) -> dict:
    """PSNR/SSIM (and LPIPS when its weights were there) per split from a step5 summary."""
    metrics = summary.get("metrics", {})
    lpips = metrics.get("lpips")
    result = {}
    for split, values in metrics.get("summary", {}).items():
        result[split] = {"psnr": round(values["psnr"], 3), "ssim": round(values["ssim"], 4)}
        if "lpips" in values:
            result[split]["lpips"] = round(values["lpips"], 4)
    if isinstance(lpips, str):
        result["lpips"] = lpips.split(" (")[0]
    return result


def before_finetuning_weights(ctx: PipelineContext) -> Optional[Path]:
    """What "before fine-tuning" means for this run: the released VA-VAE when it is on the machine, else the
    random starting weights the first stage saved (the demo)."""
    from vae_training.builders import find_pretrained_vae
    from vae_training.train import INITIAL_WEIGHTS

    found = find_pretrained_vae(ctx.cfg)
    if found is not None:
        return found
    saved = sorted((ctx.work_dir / "vae").glob(f"*/{INITIAL_WEIGHTS}"))
    return saved[0] if saved else None


def stage_export(ctx: PipelineContext) -> dict:
    """step5 on the chosen checkpoint (all parts), plus the metrics of the weights before fine-tuning."""
    from microdoppler_finetune.workflow.validate_export import PARTS, choose_from_run, describe_checkpoint, run_step5

    result = {}
    before = before_finetuning_weights(ctx)
    if before is not None:
        choice = describe_checkpoint(before)
        choice.name = "before_finetuning"
        if not _step5_done(ctx, choice.name, Path(choice.path), ["metrics"]):
            run_step5(ctx.cfg, choice, parts=("metrics",))
        summary = json.loads((ctx.work_dir / "validation" / choice.name / "step5_summary.json").read_text())
        result["before_finetuning"] = {"weights": str(before), **_split_metrics(summary)}
    choice = choose_from_run(ctx.work_dir / "vae")
    if not _step5_done(ctx, choice.name, Path(choice.path), PARTS):
        run_step5(ctx.cfg, choice, parts=PARTS)
    summary = json.loads((ctx.work_dir / "validation" / choice.name / "step5_summary.json").read_text())
    result["after_finetuning"] = {"weights": str(choice.path), **_split_metrics(summary)}
    result["export"] = summary.get("export", {}).get("export")
    result["latent_cache"] = summary.get("cache", {}).get("latent_cache")
    return result


def _gpus_for_ddp(cfg: DictConfig) -> int:
    """GPUs the DiT stage should spread over (0/1: train in this process)."""
    import os

    import torch

    if "LOCAL_RANK" in os.environ or str(cfg.dit.train.device) not in ("auto", "cuda"):
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_dit_with_torchrun(ctx: PipelineContext, gpus: int) -> dict:
    """DDP needs one process per GPU: rerun the DiT trainer under torchrun with this run's resolved config."""
    from microdoppler_finetune.dit.checkpointing import CHECKPOINT_DIRNAME, list_checkpoints
    from microdoppler_finetune.dit.data import run_dir_of

    run_in_own_process(ctx, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc_per_node={gpus}", "-m", "microdoppler_finetune.train_conditional_dit"],
                       "dit_torchrun_config.yaml")
    saved = list_checkpoints(run_dir_of(ctx.cfg) / CHECKPOINT_DIRNAME)
    step = saved[-1][0] if saved else 0
    return {"status": "finished" if step >= int(ctx.cfg.dit.train.steps) else "time_budget", "step": step,
            "latest_checkpoint": str(saved[-1][1]) if saved else None, "gpus": gpus}


def stage_dit(ctx: PipelineContext) -> dict:
    from microdoppler_finetune.dit.trainer import STOP_FINISHED, train_dit

    gpus = _gpus_for_ddp(ctx.cfg)
    if gpus > 1:
        result = run_dit_with_torchrun(ctx, gpus)
        if result["status"] != STOP_FINISHED:
            raise StageIncomplete(f"DiT training stopped at step {result['step']} ({result['status']}).")
        return result
    result = train_dit(ctx.cfg)
    if result["status"] != STOP_FINISHED:
        raise StageIncomplete(f"DiT training stopped at step {result['step']} ({result['status']}).")
    return {k: result[k] for k in ("step", "best_val_loss", "latest_checkpoint", "precision", "total_params")}


def stage_sample(ctx: PipelineContext) -> dict:
    from microdoppler_finetune.dit.data import export_dir_of, run_dir_of
    from microdoppler_finetune.dit.export import resolve_trained_dit, trained_dit_summary
    from microdoppler_finetune.dit.sample_folder import generate_into_folder
    from microdoppler_finetune.dit.sampling import INFO_FILE, SamplerSettings

    dit = ctx.cfg.dit
    run_dir = run_dir_of(ctx.cfg)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"No DiT run in {run_dir}: run the dit stage first.")
    trained = resolve_trained_dit(run_dir)  # the save_pretrained export, or a later checkpoint
    summary = trained_dit_summary(trained)
    step, uses_conditions = summary["step"], summary["num_conditions"] > 0
    out_dir = ctx.samples_dir
    info_file = out_dir / INFO_FILE
    if info_file.is_file():
        info = json.loads(info_file.read_text())
        if Path(info.get("checkpoint", "")) == trained.resolve() and int(info.get("checkpoint_step", -2)) == step:
            return {"skipped": f"samples of step {step} exist: {out_dir}", "images": len(info["files"])}
    s = dit.sample
    info = generate_into_folder(trained, export_dir_of(ctx.cfg), out_dir, per_person=int(s.per_person),
                                conditions=(s.conditions or None) if uses_conditions else None,
                                pairs=str(s.pairs) if uses_conditions and s.conditions else "all",
                                settings=SamplerSettings.from_config(s), image_size=s.image_size,
                                use_ema=bool(s.use_ema), device=str(dit.train.device))
    return {"samples": str(out_dir), "images": len(info["files"]), "checkpoint": str(trained), "step": step,
            "seconds_per_image": info["seconds_per_image"]}


def step6_command(ctx: PipelineContext, generated: Optional[Path]) -> str:
    """The step6 command line that redoes this evaluation (each result row appends its --variants)."""
    from microdoppler_finetune.utils.commands import reproducing_command

    e = ctx.cfg.evaluate
    argv = ["--work_dir", str(ctx.work_dir), "--dataset_dir", str(ctx.dataset_dir),
            "--preset", str(e.classifier), "--image_size", str(e.image_size), "--epochs", str(e.epochs),
            "--patience", str(e.patience), "--batch_size", str(e.batch_size), "--lr", str(e.learning_rate),
            "--seed", str(e.seed), "--fractions", ",".join(str(f) for f in e.fractions),
            "--methods", ",".join(e.methods)]
    if generated is not None:
        argv += ["--generated", str(generated)]
    if e.max_generated_per_person:
        argv += ["--max_generated_per_person", str(e.max_generated_per_person)]
    if not bool(e.cross_condition):
        argv.append("--no_cross_condition")
    if not bool(e.classification_accuracy_score):
        argv.append("--no_cas")
    return reproducing_command("microdoppler_finetune.step6_evaluate", argv)


def stage_evaluate(ctx: PipelineContext) -> dict:
    """step6: identification with/without generated data on the one test split, then the generation metrics."""
    from microdoppler_finetune.evaluation.identification.training import IdentificationConfig
    from microdoppler_finetune.evaluation.run import EvaluationRequest, run_evaluation
    from microdoppler_finetune.latents.export import exported_encoder_in

    e = ctx.cfg.evaluate
    config = IdentificationConfig(preset=str(e.classifier), image_size=int(e.image_size), epochs=int(e.epochs),
                                  patience=int(e.patience), batch_size=int(e.batch_size),
                                  learning_rate=float(e.learning_rate), seed=int(e.seed), device=str(e.device),
                                  num_workers=int(ctx.cfg.data.num_workers))
    generated = ctx.samples_dir if ctx.samples_dir.is_dir() else None
    return run_evaluation(EvaluationRequest(
        dataset_dir=ctx.dataset_dir, out_dir=ctx.work_dir / "evaluation", classifier_config=config,
        generated=generated, fractions=list(e.fractions), methods=list(e.methods),
        cross_condition=bool(e.cross_condition), generation_metrics=bool(e.generation_metrics),
        classification_accuracy_score=bool(e.classification_accuracy_score),
        vae_encoder=exported_encoder_in(ctx.work_dir), max_generated_per_person=e.max_generated_per_person,
        command=step6_command(ctx, generated)))


STAGES: dict[str, Callable[[PipelineContext], dict]] = {
    "setup": stage_setup,
    "simulate": stage_simulate,
    "prepare": stage_prepare,
    "preview": stage_preview,
    "vae": stage_vae,
    "export": stage_export,
    "dit": stage_dit,
    "sample": stage_sample,
    "evaluate": stage_evaluate,
}
