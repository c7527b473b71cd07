"""The one entry point: every stage from simulation to evaluation on a tiny profile, rerun and interruption."""
import json
import os
import shlex
from pathlib import Path

import pytest

from microdoppler_finetune import pipeline
from microdoppler_finetune.workflow.context import FULL

TINY = [
    "simulate.people=3", "simulate.per_person=12", "simulate.image_size=32", "data.image_size=32",
    "data.num_workers=0",
    "vae.vf_model=vit_small_patch14_dinov2", "vae.vf_pretrained=false",
    "vae_loss.disc_channels=8", "vae_loss.disc_num_layers=2",
    "vae_train.batch_size=4", "vae_train.grid_images=4", "vae_train.checkpoint_every_n_steps=0",
    "vae_train.stage_overrides.stage1.epochs=1", "vae_train.stage_overrides.stage2.epochs=1",
    "vae_train.stage_overrides.stage3.epochs=1",
    "export.lpips_download=false",
    "dit.model=tiny", "dit.train.steps=4", "dit.train.batch_size=8", "dit.train.val_every=2",
    "dit.train.sample_every=0", "dit.train.checkpoint_every=2", "dit.train.log_every=2",
    "dit.sample.per_person=3", "dit.sample.steps=2", "dit.sample.batch_size=9",
    "evaluate.fractions=[1.0]", "evaluate.epochs=1", "evaluate.batch_size=8", "evaluate.image_size=32",
    "evaluate.classification_accuracy_score=false",
]


def _args(mode: str, work_dir: Path, *extra: str) -> list:
    args = [mode, "--work_dir", str(work_dir)]
    for item in TINY + list(extra):
        args += ["--set", item]
    return args


@pytest.fixture(scope="module", autouse=True)
def random_lpips_backbone(tmp_path_factory):
    """Random AlexNet weights where torchvision's cache would hold the real ones (nothing is downloaded)."""
    from models.perceptual import write_random_backbone_weights

    previous = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(tmp_path_factory.mktemp("torch_home"))
    write_random_backbone_weights("alex")
    yield
    if previous is None:
        os.environ.pop("TORCH_HOME", None)
    else:
        os.environ["TORCH_HOME"] = previous


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("pipeline") / "work"
    assert pipeline.main(_args("demo", work)) == 0
    return work


def test_demo_runs_every_stage_and_reports_each(demo_run):
    log = json.loads((demo_run / "report.json").read_text())
    assert [entry["stage"] for entry in log] == list(FULL)
    by_stage = {entry["stage"]: entry for entry in log}
    export = by_stage["export"]
    assert export["before_finetuning"]["weights"].endswith("initial_weights.safetensors")
    for key in ("before_finetuning", "after_finetuning"):
        assert {"val", "test"} <= set(export[key]) and export[key]["val"]["psnr"] > 0
    assert by_stage["dit"]["step"] == 4
    assert by_stage["sample"]["images"] == 9
    evaluation = by_stage["evaluate"]
    assert set(evaluation["identification_test_accuracy"]) == {"real@100%", "real+generated@100%",
                                                               "real+augmentation@100%"}
    identified = evaluation["generated_identified_by_real_classifier"]
    assert identified["chance"] == pytest.approx(1 / 3, abs=1e-3) and identified["images"] == 9
    rows = json.loads((demo_run / "evaluation/identification/identification_results.json").read_text())["rows"]
    for row in rows:  # each row can be redone alone with step6
        assert row["command"].startswith("python -m microdoppler_finetune.step6_evaluate --work_dir ")
        assert shlex.split(row["command"])[-2:] == ["--variants", row["variant"]]
    assert (demo_run / "evaluation/generation/generation_metrics.json").is_file()
    assert (demo_run / "samples/generation_info.json").is_file()
    report = (demo_run / "report.md").read_text()
    assert "| evaluate |" in report and "python -m microdoppler_finetune.pipeline demo" in report


def test_rerun_reuses_finished_stages(demo_run, capsys):
    checkpoints = sorted((demo_run / "dit/checkpoints").glob("*.pt"))
    assert pipeline.main(_args("demo", demo_run)) == 0
    out = capsys.readouterr().out
    assert "already simulated" in out and "manifest exists" in out and "already finished" in out
    assert "samples of" in out  # the sample stage saw its own output and did not sample again
    assert sorted((demo_run / "dit/checkpoints").glob("*.pt")) == checkpoints


def test_time_budget_stop_exits_3_and_keeps_the_report_and_earlier_outputs(tmp_path, capsys):
    work = tmp_path / "work"
    code = pipeline.main(_args("vae", work, "vae_train.time_budget=1s"))
    assert code == 3
    assert "rerun the same command" in capsys.readouterr().err
    log = json.loads((work / "report.json").read_text())
    assert log[-1]["stage"] == "vae" and "incomplete" in log[-1]
    assert (work / "dataset/manifest.csv").is_file()  # earlier stages' outputs stay


def test_dit_mode_without_an_exported_encoder_names_the_missing_step(tmp_path, capsys):
    assert pipeline.main(_args("dit", tmp_path / "empty")) == 2
    message = capsys.readouterr().err
    assert message.startswith("\nERROR: ") and ("export" in message or "step5" in message)
