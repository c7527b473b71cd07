"""Run the stages of one pipeline mode in order, writing the run's report after each finished run."""
from __future__ import annotations

import json
import time
from pathlib import Path

from omegaconf import DictConfig

from microdoppler_finetune.config import load_config, save_config
from microdoppler_finetune.environment import default_work_dir, detect_gpus, kaggle_input_root, recommend_preset
from microdoppler_finetune.report.summary import write_report
from microdoppler_finetune.utils.plain import to_plain
from microdoppler_finetune.workflow.context import MODES, PipelineContext, StageIncomplete
from microdoppler_finetune.workflow.stages import STAGES


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
            write_report(ctx.work_dir, ctx.log, mode=mode, command=ctx.command, preset=str(cfg.run.preset),
                         stages=MODES[mode], dataset_dir=ctx.dataset_dir)
            raise
        except Exception as error:  # a crash: the report still shows what finished and what failed
            ctx.log.append({"stage": name, "seconds": round(time.time() - start, 1),
                            "failed": f"{type(error).__name__}: {error}"})
            write_report(ctx.work_dir, ctx.log, mode=mode, command=ctx.command, preset=str(cfg.run.preset),
                         stages=MODES[mode], dataset_dir=ctx.dataset_dir)
            raise
        seconds = round(time.time() - start, 1)
        ctx.log.append({"stage": name, "seconds": seconds, **to_plain(result)})
        print(json.dumps({"stage": name, "seconds": seconds, **result}, indent=2, default=str), flush=True)
    return write_report(ctx.work_dir, ctx.log, mode=mode, command=ctx.command, preset=str(cfg.run.preset),
                        stages=MODES[mode], dataset_dir=ctx.dataset_dir)


def pipeline_config(mode: str, *, preset=None, config=None, data_root=None, work_dir=None, kaggle: bool = False,
                    overrides=()) -> DictConfig:
    """The resolved config of a pipeline run from its command-line choices.

    No preset: cpu_demo for the demo, else the one that fits this machine's GPUs. With --kaggle and no data
    root (outside the demo), the dataset attached to the notebook is found under the Kaggle input folder.
    """
    from microdoppler_finetune.data import discover_data_root

    if preset is None:
        preset = "cpu_demo" if mode == "demo" else recommend_preset(detect_gpus())[0]
    overrides = list(overrides) + [f"run.work_dir={work_dir or default_work_dir(kaggle=kaggle)}"]
    if kaggle and not data_root and mode != "demo":
        data_root = str(discover_data_root(kaggle_input_root()))
        print(f"--kaggle: using the dataset found at {data_root}", flush=True)
    if data_root:
        if not Path(data_root).is_dir():
            hint = f" Attached Kaggle inputs are under {kaggle_input_root()}." if kaggle else ""
            raise FileNotFoundError(f"--data_root {data_root} is not a folder.{hint}")
        overrides.append(f"data.data_root={data_root}")
    return load_config(preset, config, overrides)
