"""The package keeps its declared shape: layers and no cycles (import-linter), entry points and subpackages only
at the top of microdoppler_finetune/, small modules, and every third-party import declared and checked by step1."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from microdoppler_finetune.environment import REQUIRED_MODULES

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "microdoppler_finetune"
ENTRY_POINTS = {"step1_setup_environment.py", "step2_download_models.py", "step3_prepare_dataset.py",
                "step4_train_vavae.py", "step5_validate_export.py", "step6_evaluate.py", "train_conditional_dit.py",
                "sample_dit.py", "simulate.py", "pipeline.py", "run_augmentation_study.py"}
MAX_MODULE_LINES = 600


def test_import_contracts_hold_without_ignored_imports():
    contract = (REPO / ".importlinter").read_text()
    assert "ignore_imports" not in contract
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache", "--config", str(REPO / ".importlinter")], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_top_level_holds_entry_points_config_environment_and_subpackages_only():
    for path in PACKAGE.iterdir():
        if path.name.startswith((".", "__pycache__")):
            continue
        if path.is_dir():
            assert (path / "__init__.py").is_file(), f"{path} is a folder without __init__.py"
            continue
        assert path.name in ENTRY_POINTS | {"__init__.py", "config.py", "environment.py"}, path.name


def test_entry_points_stay_thin_and_library_modules_small():
    for path in sorted(PACKAGE.rglob("*.py")) + sorted((REPO / "vae_training").rglob("*.py")):
        lines = len(path.read_text().splitlines())
        limit = 140 if path.parent == PACKAGE and path.name in ENTRY_POINTS else MAX_MODULE_LINES
        assert lines <= limit, f"{path.relative_to(REPO)} has {lines} lines (at most {limit})"


def _third_party_imports() -> set:
    local = {"microdoppler_finetune", "vae_training", "models", "__future__"}
    found = set()
    for folder in ("microdoppler_finetune", "vae_training", "models"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                found.update(n.split(".")[0] for n in names)
    return {n for n in found - local if n not in sys.stdlib_module_names}


def test_every_third_party_import_is_checked_by_step1():
    optional = {"torch_fidelity"}  # the Inception FID extra (pip install .[fid]); step6 says when it is missing
    assert _third_party_imports() - optional == set(REQUIRED_MODULES)
