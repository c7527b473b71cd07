"""Where we are running: Kaggle or not, which GPUs, and which hardware preset fits.

Every stage asks this module for its default folders instead of naming /kaggle paths itself, so the
Kaggle roots can be redirected in tests (``MDF_KAGGLE_INPUT`` / ``MDF_KAGGLE_WORKING``).
"""
from __future__ import annotations

import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

KAGGLE_INPUT_ENV = "MDF_KAGGLE_INPUT"
KAGGLE_WORKING_ENV = "MDF_KAGGLE_WORKING"
WORK_DIR_ENV = "MDF_WORK_DIR"


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
        return "p100", "one P100 (16 GB, no bf16, no tensor cores): single GPU, fp32, batch 8 x accumulation 2"
    if len(gpus) == 1 and "T4" in names:
        return "p100", "one T4 (16 GB): the single-16GB-GPU preset"
    return "gpu", f"{len(gpus)} GPU(s) ({names}): generic GPU preset"


def package_versions(names=("torch", "torchvision", "pytorch_lightning", "lightning", "diffusers", "timm",
                            "lpips", "peft", "omegaconf", "safetensors", "huggingface_hub", "torchmetrics",
                            "skimage", "numpy")) -> dict:
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
