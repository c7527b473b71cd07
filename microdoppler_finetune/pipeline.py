"""One entry for the whole pipeline: simulate (when no data) -> split -> VA-VAE -> export -> DiT -> samples ->
evaluation -> report.

Each stage reads the previous stage's output folder under ``run.work_dir``; nothing is re-split later.
A stage whose outputs exist is skipped (or resumed by its own trainer), so rerunning the same command
continues an interrupted run.

    python -m microdoppler_finetune.pipeline demo              # CPU demo on simulated data
    python -m microdoppler_finetune.pipeline vae --data_root D --preset p100   # split + VA-VAE + export
    python -m microdoppler_finetune.pipeline dit --data_root D --preset p100   # DiT + samples + evaluation
    python -m microdoppler_finetune.pipeline both --data_root D               # everything, preset from the GPU
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from omegaconf import DictConfig

from microdoppler_finetune.config import load_config, save_config
from microdoppler_finetune.environment import default_work_dir, kaggle_input_root

# Which stages each mode runs, in order. Stage functions are registered below.
FULL = ("setup", "simulate", "prepare", "preview", "vae", "export", "dit", "sample", "evaluate")
MODES = {
    "demo": FULL,  # the CPU demo profile on simulated data unless --preset/--data_root say otherwise
    "both": FULL,  # the same on your data and hardware preset
    "data": ("setup", "simulate", "prepare", "preview"),
    "vae": ("setup", "simulate", "prepare", "preview", "vae", "export"),
    "dit": ("setup", "dit", "sample", "evaluate"),  # needs the export and latent cache of a vae run
}


class StageIncomplete(RuntimeError):
    """A stage stopped cleanly before its end (time budget): rerunning the same command continues it."""


class PipelineContext:
    """Paths and bookkeeping shared by the stages of one run."""

    def __init__(self, cfg: DictConfig, command: str):
        self.cfg = cfg
        self.command = command
        self.work_dir = Path(cfg.run.work_dir)
        self.log: list[dict] = []

    @property
    def simulated_dir(self) -> Path:
        return self.work_dir / "simulated"

    @property
    def dataset_dir(self) -> Path:
        return Path(self.cfg.data.dataset_dir) if self.cfg.data.dataset_dir else self.work_dir / "dataset"

    @property
    def samples_dir(self) -> Path:
        return self.work_dir / "samples"

    @property
    def data_root(self) -> Path:
        return Path(self.cfg.data.data_root) if self.cfg.data.data_root else self.simulated_dir


def stage_setup(ctx: PipelineContext) -> dict:
    from microdoppler_finetune.setup_env import run_setup

    info, path, problems = run_setup(kaggle=False, work_dir=str(ctx.work_dir))
    if problems:
        raise RuntimeError("Environment problems:\n  " + "\n  ".join(problems))
    return {"environment_info": str(path), "recommended_preset": info["recommended_preset"]}


def stage_simulate(ctx: PipelineContext) -> dict:
    from microdoppler_finetune.simulator import simulate_dataset

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
        recordings_per_person=int(sim.recordings_per_person),
    )
    return {"data_root": str(ctx.simulated_dir), "summary": _jsonable(summary)}


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
    path = prepare_dataset(ctx.data_root, ctx.dataset_dir, seed=d.split_seed,
                           val_fraction=d.val_fraction, test_fraction=d.test_fraction)
    return {"manifest": str(path)}


def stage_preview(ctx: PipelineContext) -> dict:
    from microdoppler_finetune.preview import write_dataset_preview

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
    from microdoppler_finetune.evaluation.validate_export import (PARTS, choose_from_run, describe_checkpoint,
                                                                   run_step5)

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
    from microdoppler_finetune.dit_training.checkpointing import CHECKPOINT_DIRNAME, list_checkpoints
    from microdoppler_finetune.dit_training.data import run_dir_of

    run_in_own_process(ctx, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc_per_node={gpus}", "-m", "microdoppler_finetune.train_conditional_dit"],
                       "dit_torchrun_config.yaml")
    saved = list_checkpoints(run_dir_of(ctx.cfg) / CHECKPOINT_DIRNAME)
    step = saved[-1][0] if saved else 0
    return {"status": "finished" if step >= int(ctx.cfg.dit.train.steps) else "time_budget", "step": step,
            "latest_checkpoint": str(saved[-1][1]) if saved else None, "gpus": gpus}


def stage_dit(ctx: PipelineContext) -> dict:
    from microdoppler_finetune.dit_training.trainer import STOP_FINISHED, train_dit

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
    from microdoppler_finetune.dit_sampling import INFO_FILE, SamplerSettings, generate_dataset
    from microdoppler_finetune.dit_training.checkpointing import CHECKPOINT_DIRNAME, latest_checkpoint
    from microdoppler_finetune.dit_training.data import export_dir_of, run_dir_of

    dit = ctx.cfg.dit
    run_dir = run_dir_of(ctx.cfg)
    checkpoint = latest_checkpoint(run_dir / CHECKPOINT_DIRNAME)
    if checkpoint is None:
        raise FileNotFoundError(f"No DiT checkpoint in {run_dir / CHECKPOINT_DIRNAME}: run the dit stage first.")
    out_dir = ctx.samples_dir
    info_file = out_dir / INFO_FILE
    if info_file.is_file():
        info = json.loads(info_file.read_text())
        if Path(info.get("checkpoint", "")) == checkpoint.resolve():
            return {"skipped": f"samples of {checkpoint.name} exist: {out_dir}", "images": len(info["files"])}
    s = dit.sample
    settings = SamplerSettings(steps=int(s.steps), sampler=str(s.sampler), cfg_scale=float(s.cfg_scale),
                               cfg_interval_start=float(s.cfg_interval_start), shift=float(s.shift),
                               seed=int(s.seed), batch_size=int(s.batch_size))
    info = generate_dataset(checkpoint, export_dir_of(ctx.cfg), out_dir, per_person=int(s.per_person),
                            settings=settings, image_size=s.image_size, use_ema=bool(s.use_ema),
                            device=str(dit.train.device))
    return {"samples": str(out_dir), "images": len(info["files"]), "checkpoint": str(checkpoint),
            "seconds_per_image": info["seconds_per_image"]}


def step6_command(ctx: PipelineContext, generated: Optional[Path]) -> str:
    """The step6 command line that redoes this evaluation (each result row appends its --variants)."""
    from microdoppler_finetune.identification import current_command

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
    return current_command("microdoppler_finetune.step6_evaluate", argv)


def stage_evaluate(ctx: PipelineContext) -> dict:
    """step6: identification with/without generated data on the one test split, then the generation metrics."""
    from microdoppler_finetune.evaluate_generation import evaluate_generation
    from microdoppler_finetune.identification import (FEATURE_CLASSIFIER_DIR, IdentificationConfig,
                                                      run_identification_experiments)
    from microdoppler_finetune.step6_evaluate import default_vae_encoder

    e = ctx.cfg.evaluate
    config = IdentificationConfig(preset=str(e.classifier), image_size=int(e.image_size), epochs=int(e.epochs),
                                  patience=int(e.patience), batch_size=int(e.batch_size),
                                  learning_rate=float(e.learning_rate), seed=int(e.seed), device=str(e.device),
                                  num_workers=int(ctx.cfg.data.num_workers))
    generated = ctx.samples_dir if ctx.samples_dir.is_dir() else None
    out = ctx.work_dir / "evaluation"
    command = step6_command(ctx, generated)
    results = run_identification_experiments(
        ctx.dataset_dir, generated, out / "identification", list(e.fractions), config=config,
        methods=list(e.methods), cross_condition=bool(e.cross_condition), command=command,
        max_generated_per_person=e.max_generated_per_person)
    summary = {"identification_test_accuracy": {r["variant"]: round(r["test_accuracy"], 4) for r in results["rows"]},
               "identification": str(out / "identification")}
    if generated is not None and bool(e.generation_metrics):
        classifier = out / "identification" / FEATURE_CLASSIFIER_DIR
        metrics = evaluate_generation(
            ctx.dataset_dir, generated, out / "generation",
            classifier=str(classifier) if (classifier / "config.json").is_file() else None, config=config,
            classification_accuracy_score=bool(e.classification_accuracy_score),
            max_generated_per_person=e.max_generated_per_person, command=command,
            vae_encoder=default_vae_encoder(ctx.work_dir))
        for key, name in (("real_classifier_on_generated", "generated_identified_by_real_classifier"),
                          ("reconstruction_classifier_on_generated", "generated_identified_behind_the_vae")):
            if key in metrics:
                ident = metrics[key]
                summary[name] = {"accuracy": round(ident["accuracy"], 4), "chance": round(ident["chance"], 4),
                                 "real_test_accuracy": round(ident["real_test_accuracy"], 4),
                                 "images": ident["images"]}
        summary["generation_metrics"] = {k: metrics["overall"]["generated"].get(k) for k in
                                         ("fid", "kid", "precision", "recall", "density", "coverage")}
        if "classification_accuracy_score" in metrics:
            summary["classification_accuracy_score"] = metrics["classification_accuracy_score"]["test_accuracy"]
    return summary


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


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def run_pipeline(cfg: DictConfig, mode: str, command: str = "") -> Path:
    if mode not in MODES:
        raise ValueError(f"Unknown mode '{mode}'. Choose one of: {', '.join(MODES)}")
    ctx = PipelineContext(cfg, command)
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, ctx.work_dir / f"pipeline_{mode}_config.yaml")
    for name in MODES[mode]:
        print(f"\n=== stage: {name} ===", flush=True)
        start = time.time()
        try:
            result = STAGES[name](ctx)
        except StageIncomplete as stop:
            ctx.log.append({"stage": name, "seconds": round(time.time() - start, 1), "incomplete": str(stop)})
            write_report(ctx, mode)
            raise
        seconds = round(time.time() - start, 1)
        ctx.log.append({"stage": name, "seconds": seconds, **_jsonable(result)})
        print(json.dumps({"stage": name, "seconds": seconds, **result}, indent=2, default=str), flush=True)
    return write_report(ctx, mode)


def write_report(ctx: PipelineContext, mode: str) -> Path:
    lines = [f"# Pipeline report ({mode})", "", f"Command: `{ctx.command}`", "",
             f"Preset: {ctx.cfg.run.preset}; work dir: {ctx.work_dir.resolve()}", "",
             "| stage | seconds | result |", "|---|---|---|"]
    for entry in ctx.log:
        rest = {k: v for k, v in entry.items() if k not in ("stage", "seconds")}
        lines.append(f"| {entry['stage']} | {entry['seconds']} | {json.dumps(rest, default=str)[:300]} |")
    path = ctx.work_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    (ctx.work_dir / "report.json").write_text(json.dumps(ctx.log, indent=2, default=str))
    print(f"\nReport written to {path}")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=sorted(MODES), help="which stages to run")
    parser.add_argument("--preset", default=None, help="hardware preset (configs/<preset>.yaml); "
                        "default: cpu_demo for 'demo', else the one step1 recommends")
    parser.add_argument("--config", default=None, help="YAML overriding the preset")
    parser.add_argument("--data_root", default=None, help="your spectrogram folder (default: with --kaggle the "
                        "dataset found under /kaggle/input, else simulate one)")
    parser.add_argument("--work_dir", default=None, help="output root (default ./work_dir)")
    parser.add_argument("--kaggle", action="store_true", help="outputs under /kaggle/working")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set data.image_size=128 (repeatable)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    preset = args.preset
    if preset is None:
        from microdoppler_finetune.environment import detect_gpus, recommend_preset

        preset = "cpu_demo" if args.mode == "demo" else recommend_preset(detect_gpus())[0]
    overrides = list(args.overrides)
    work_dir = args.work_dir or str(default_work_dir(kaggle=args.kaggle))
    overrides.append(f"run.work_dir={work_dir}")
    if args.kaggle and not args.data_root and args.mode != "demo":
        from microdoppler_finetune.data import DatasetError, discover_data_root

        try:
            args.data_root = str(discover_data_root(kaggle_input_root()))
        except DatasetError as error:
            raise SystemExit(f"ERROR: {error}") from None
        print(f"--kaggle: using the dataset found at {args.data_root}", flush=True)
    if args.data_root:
        if not Path(args.data_root).is_dir():
            hint = f" Attached Kaggle inputs are under {kaggle_input_root()}." if args.kaggle else ""
            raise SystemExit(f"--data_root {args.data_root} is not a folder.{hint}")
        overrides.append(f"data.data_root={args.data_root}")
    cfg = load_config(preset, args.config, overrides)
    command = "python -m microdoppler_finetune.pipeline " + " ".join(shlex.quote(a) for a in argv)
    from microdoppler_finetune.data import DatasetError

    try:
        run_pipeline(cfg, args.mode, command)
    except StageIncomplete as stop:
        print(f"\n{stop}\nNothing is lost: rerun the same command to continue.\n  {command}", file=sys.stderr)
        return 3
    except (FileNotFoundError, DatasetError) as error:
        # Missing inputs (a folder, an earlier stage's output, weights): the message names the file and the fix.
        print(f"\nERROR: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
