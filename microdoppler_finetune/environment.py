"""Where we are running: Kaggle or not, which GPUs, and which hardware preset fits.

Every stage asks this module for its default folders instead of naming /kaggle paths itself, so the
Kaggle roots can be redirected in tests (``MDF_KAGGLE_INPUT`` / ``MDF_KAGGLE_WORKING``).
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

KAGGLE_INPUT_ENV = "MDF_KAGGLE_INPUT"
KAGGLE_WORKING_ENV = "MDF_KAGGLE_WORKING"
WORK_DIR_ENV = "MDF_WORK_DIR"
REPO_ROOT = Path(__file__).resolve().parents[1]
# Every third-party module the package imports (tests/test_layout.py checks this list against the code).
REQUIRED_MODULES = ("torch", "torchvision", "lightning", "diffusers", "timm", "lpips", "omegaconf", "safetensors",
                    "huggingface_hub", "skimage", "sklearn", "scipy", "peft", "torchmetrics", "tqdm", "tensorboard",
                    "matplotlib", "PIL", "numpy", "threadpoolctl")


def kaggle_input_root() -> Path:
    """Read-only inputs attached to a Kaggle notebook."""
    return Path(os.environ.get(KAGGLE_INPUT_ENV, "/kaggle/input"))


def kaggle_working_root() -> Path:
    """The writable, persisted output folder of a Kaggle notebook."""
    return Path(os.environ.get(KAGGLE_WORKING_ENV, "/kaggle/working"))


def running_on_kaggle() -> bool:
    """Kaggle kernels set KAGGLE_KERNEL_RUN_TYPE; the input folder alone is not proof."""
    return bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE")) or os.environ.get(KAGGLE_INPUT_ENV) is not None


def default_work_dir(kaggle: bool = False) -> Path:
    """Root folder of all run outputs: ./work_dir locally, /kaggle/working/work_dir on Kaggle."""
    if os.environ.get(WORK_DIR_ENV):
        return Path(os.environ[WORK_DIR_ENV])
    if kaggle:
        return kaggle_working_root() / "work_dir"
    return Path("work_dir")


@dataclass
class GPUInfo:
    index: int
    name: str
    total_memory_gb: float
    compute_capability: str
    bf16: bool
    fp16: bool


@dataclass
class EnvironmentInfo:
    python: str
    platform: str
    kaggle: bool
    cpu_count: int
    gpus: list = field(default_factory=list)
    packages: dict = field(default_factory=dict)
    recommended_preset: str = "cpu_demo"
    preset_reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def detect_gpus() -> list[GPUInfo]:
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        major, minor = props.major, props.minor
        gpus.append(
            GPUInfo(
                index=i,
                name=props.name,
                total_memory_gb=round(props.total_memory / 1024**3, 2),
                compute_capability=f"{major}.{minor}",
                # Native bf16 needs Ampere (8.0+); P100 (6.0) and T4 (7.5) emulate it slowly or not at all.
                bf16=major >= 8,
                # fp16 tensor cores from Volta/Turing (7.0+); P100 has fp16 math but no tensor cores.
                fp16=major >= 6,
            )
        )
    return gpus


def recommend_preset(gpus: list[GPUInfo]) -> tuple[str, str]:
    """Map the detected hardware to one of the presets in configs/."""
    if not gpus:
        return "cpu_demo", "no CUDA GPU found: tiny models and small images so the demo finishes on a CPU"
    names = " ".join(g.name for g in gpus)
    if len(gpus) >= 2 and "T4" in names:
        return "t4x2", "two T4 GPUs: DDP over both, fp16-mixed where the stage allows it"
    if "P100" in names:
        return "p100", "one P100 (16 GB, no bf16, no tensor cores): single GPU, fp32, batch 4 x accumulation 4"
    if len(gpus) == 1 and "T4" in names:
        return "p100", "one T4 (16 GB): the single-16GB-GPU preset"
    return "gpu", f"{len(gpus)} GPU(s) ({names}): generic GPU preset"


def package_versions(names=REQUIRED_MODULES) -> dict:
    """Version of each package, or an error string when it does not import (e.g. a torch/torchvision mismatch)."""
    import importlib

    versions = {}
    for name in names:
        try:
            module = importlib.import_module(name)
            versions[name] = getattr(module, "__version__", "unknown")
        except Exception as exc:  # noqa: BLE001 - we report any import failure, whatever its type
            versions[name] = f"NOT IMPORTABLE: {type(exc).__name__}: {exc}"
    try:
        import torchvision.ops  # noqa: F401 - the mismatch shows only when the C++ ops load

        versions["torchvision.ops"] = "ok"
    except Exception as exc:  # noqa: BLE001
        versions["torchvision.ops"] = f"NOT IMPORTABLE: {type(exc).__name__}: {exc}"
    return versions


def collect_environment_info(kaggle: Optional[bool] = None) -> EnvironmentInfo:
    gpus = detect_gpus()
    preset, reason = recommend_preset(gpus)
    return EnvironmentInfo(
        python=sys.version.split()[0],
        platform=platform.platform(),
        kaggle=running_on_kaggle() if kaggle is None else kaggle,
        cpu_count=os.cpu_count() or 1,
        gpus=[asdict(g) for g in gpus],
        packages=package_versions(),
        recommended_preset=preset,
        preset_reason=reason,
    )


# ------------------------------------------------------------------------ step 1: check, install, report


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
