"""Step 1 and the config schema: the behaviour every later stage relies on."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf.errors import ConfigKeyError

from microdoppler_finetune.config import PRESETS, load_config, save_config
from microdoppler_finetune.environment import GPUInfo, default_work_dir, recommend_preset

REPO = Path(__file__).resolve().parents[1]


def _gpu(name, mem=16.0, cc="7.5"):
    major = int(cc.split(".")[0])
    return GPUInfo(0, name, mem, cc, bf16=major >= 8, fp16=True)


def test_preset_recommendation_per_hardware():
    assert recommend_preset([])[0] == "cpu_demo"
    assert recommend_preset([_gpu("Tesla P100-PCIE-16GB", cc="6.0")])[0] == "p100"
    assert recommend_preset([_gpu("Tesla T4"), _gpu("Tesla T4")])[0] == "t4x2"
    assert recommend_preset([_gpu("NVIDIA A100-SXM4-80GB", 80, "8.0")])[0] == "gpu"


def test_every_preset_loads_and_unknown_keys_fail(tmp_path):
    for name in PRESETS:
        cfg = load_config(name)
        assert cfg.run.preset == name
    assert load_config("cpu_demo").data.image_size == 64
    cfg = load_config("cpu_demo", overrides=["data.image_size=32"])
    assert cfg.data.image_size == 32
    with pytest.raises(ConfigKeyError):
        load_config("cpu_demo", overrides=["data.imagesize=32"])
    with pytest.raises(FileNotFoundError, match="Unknown hardware preset"):
        load_config("h100_cluster")
    saved = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(config_path=saved).data.image_size == 32


def test_kaggle_flag_moves_work_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("MDF_WORK_DIR", raising=False)
    monkeypatch.setenv("MDF_KAGGLE_WORKING", str(tmp_path / "working"))
    assert default_work_dir(kaggle=False) == Path("work_dir")
    assert default_work_dir(kaggle=True) == tmp_path / "working" / "work_dir"


def test_step1_cli_writes_report_and_kaggle_changes_paths(tmp_path):
    env = {**__import__("os").environ, "MDF_KAGGLE_WORKING": str(tmp_path / "kw"),
           "MDF_KAGGLE_INPUT": str(tmp_path / "ki")}
    env.pop("MDF_WORK_DIR", None)
    (tmp_path / "ki" / "micro-doppler-data").mkdir(parents=True)
    script = REPO / "microdoppler_finetune" / "step1_setup_environment.py"
    local = subprocess.run([sys.executable, str(script), "--work_dir", str(tmp_path / "local")],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    info = json.loads((tmp_path / "local" / "environment_info.json").read_text())
    assert info["recommended_preset"] in PRESETS and info["kaggle"] is False
    assert info["packages"]["torchvision.ops"] == "ok"

    kaggle = subprocess.run([sys.executable, str(script), "--kaggle"], capture_output=True, text=True,
                            env=env, cwd=tmp_path)
    assert kaggle.returncode == 0, kaggle.stderr
    info = json.loads((tmp_path / "kw" / "work_dir" / "environment_info.json").read_text())
    assert info["kaggle"] is True
    assert info["kaggle_attached_inputs"] == [str(tmp_path / "ki" / "micro-doppler-data")]
    assert not (tmp_path / "work_dir").exists()  # nothing written outside the Kaggle working dir
