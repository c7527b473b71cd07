"""Library side of step 1: idempotent environment check, optional install, environment_info.json."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from microdoppler_finetune.environment import (
    collect_environment_info,
    default_work_dir,
    kaggle_input_root,
    kaggle_working_root,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
REQUIRED_MODULES = ("torch", "torchvision", "pytorch_lightning", "diffusers", "timm", "lpips", "omegaconf",
                    "safetensors", "huggingface_hub", "skimage", "peft", "torchmetrics")


def missing_modules() -> list[str]:
    return [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]


def install_project(python: str = sys.executable) -> None:
    """pip install -e the project, pinning whatever torch/torchvision is already there.

    Kaggle ships a CUDA torch matched to its drivers; letting pip "upgrade" it breaks the GPU runtime,
    so an installed pair is passed to pip as a constraint.
    """
    cmd = [python, "-m", "pip", "install", "-e", str(REPO_ROOT)]
    pins = []
    for name in ("torch", "torchvision"):
        try:
            module = __import__(name)
            pins.append(f"{name}=={module.__version__.split('+')[0]}")  # local label would clash with caps
        except Exception:  # noqa: BLE001 - absent or broken: let pip choose
            pass
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write("\n".join(pins) + "\n")
        constraints = handle.name
    if pins:
        cmd += ["--constraint", constraints]
    print("Installing:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def attached_kaggle_inputs() -> list[str]:
    root = kaggle_input_root()
    if not root.is_dir():
        return []
    return sorted(str(p) for p in root.iterdir() if p.is_dir())


def run_setup(kaggle: bool = False, work_dir: Optional[str] = None, install: bool = False):
    """Check the environment, install if asked, write environment_info.json; returns (info, path, problems)."""
    missing = missing_modules()
    if missing and install:
        install_project()
        importlib.invalidate_caches()
        missing = missing_modules()
    out_dir = Path(work_dir) if work_dir else default_work_dir(kaggle=kaggle)
    out_dir.mkdir(parents=True, exist_ok=True)

    info = collect_environment_info(kaggle=kaggle).to_dict()
    info["work_dir"] = str(out_dir.resolve())
    info["missing_modules"] = missing
    if kaggle:
        info["kaggle_input_root"] = str(kaggle_input_root())
        info["kaggle_working_root"] = str(kaggle_working_root())
        info["kaggle_attached_inputs"] = attached_kaggle_inputs()

    problems = [f"module '{m}' is not installed: run with --install or `pip install -e .`" for m in missing]
    problems += [f"{name}: {version}" for name, version in info["packages"].items()
                 if str(version).startswith("NOT IMPORTABLE") and name not in missing]
    path = out_dir / "environment_info.json"
    path.write_text(json.dumps(info, indent=2))
    return info, path, problems
