"""One entry for the whole pipeline: simulate (when no data) -> split -> VA-VAE -> export -> DiT -> report.

Each stage reads the previous stage's output folder under ``run.work_dir``; nothing is re-split later.
A stage whose outputs exist is skipped (or resumed by its own trainer), so rerunning the same command
continues an interrupted run.

    python -m microdoppler_finetune.pipeline demo              # CPU demo on simulated data
    python -m microdoppler_finetune.pipeline vae --data_root D --preset p100
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
MODES = {
    "demo": ("setup", "simulate", "prepare", "preview"),
    "data": ("setup", "prepare", "preview"),
}


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


STAGES: dict[str, Callable[[PipelineContext], dict]] = {
    "setup": stage_setup,
    "simulate": stage_simulate,
    "prepare": stage_prepare,
    "preview": stage_preview,
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
        result = STAGES[name](ctx)
        seconds = round(time.time() - start, 1)
        ctx.log.append({"stage": name, "seconds": seconds, **result})
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
    parser.add_argument("--data_root", default=None, help="your spectrogram folder (default: simulate one)")
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
    if args.data_root:
        if not Path(args.data_root).is_dir():
            hint = f" Attached Kaggle inputs are under {kaggle_input_root()}." if args.kaggle else ""
            raise SystemExit(f"--data_root {args.data_root} is not a folder.{hint}")
        overrides.append(f"data.data_root={args.data_root}")
    cfg = load_config(preset, args.config, overrides)
    command = "python -m microdoppler_finetune.pipeline " + " ".join(shlex.quote(a) for a in argv)
    run_pipeline(cfg, args.mode, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
