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
    "dit.sample.per_person=3", "dit.sample.num_sampling_steps=3", "dit.sample.batch_size=9",
    "evaluate.fractions=[1.0]", "evaluate.epochs=1", "evaluate.batch_size=8", "evaluate.image_size=32",
    "evaluate.classification_accuracy_score=false", "evaluate.cross_condition=true",
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
    assert by_stage["sample"]["images"] == 27  # 3 people x 3 walking conditions x 3
    evaluation = by_stage["evaluate"]
    accuracy = evaluation["identification_test_accuracy"]
    assert {"real@100%", "real+generated@100%", "real+augmentation@100%"} <= set(accuracy)
    assert {name for name in accuracy if name.startswith("cross-condition:")}  # conditions against each other
    identified = evaluation["generated_identified_by_real_classifier"]
    assert identified["chance"] == pytest.approx(1 / 3, abs=1e-3) and identified["images"] == 27
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


TINY_STUDY = ["study.seeds=[0,1]", "study.recipes={base: {epochs: 1}}", "study.guidance_scales=[1.0,2.0]",
              "study.augmentations={none: {}, time_roll: {max_time_shift: 0.25}}", "study.amounts=[0.5,1.0]",
              "study.filter_thresholds=[0.0,0.3]", "study.num_sampling_steps=3", "study.sample_batch_size=16"]


def test_study_on_the_demo_work_dir_tunes_on_validation_tests_over_seeds_and_resumes(demo_run):
    from microdoppler_finetune import run_augmentation_study

    args = ["--work_dir", str(demo_run)] + [a for item in TINY_STUDY for a in ("--set", item)]
    assert run_augmentation_study.main(args) == 0
    study = demo_run / "study"
    results = json.loads((study / "results.json").read_text())
    assert set(results["rows"]) == {"real", "real+augmentation", "real+generated", "real+generated+augmentation"}
    for row in results["rows"].values():
        assert row["test"]["n"] == 2 and row["seeds"] == [0, 1]  # one value per seed, mean and std over them
        assert row["test_withheld"]["n"] == 2  # the withheld pairs' test images are scored apart
    generated = results["rows"]["real+generated"]
    assert generated["generated_images"] > 0 and results["rows"]["real"]["generated_images"] == 0
    # Every knob was chosen on validation; tuning runs never scored the test split.
    assert {"tune:recipe", "tune:augmentation", "tune:guidance", "tune:amount", "tune:filter"} <= set(results["tuning"])
    for run_file in (study / "runs").glob("tune*.json"):
        assert "test" not in json.loads(run_file.read_text())
    # The generated images are exactly the withheld (never trained on) person x condition pairs.
    info = json.loads(next((study / "generated").glob("*/generation_info.json")).read_text())
    assert info["files"] and not any(f["seen_in_training"] for f in info["files"])
    assert set(results["cross_condition"]) <= set(results["condition_names"])
    assert set(results["goals"]) >= {"withheld_gain", "overall_vs_augmentation"}
    markdown = (study / "results.md").read_text()
    assert "±" in markdown and "python -m microdoppler_finetune.run_augmentation_study" in markdown
    for plot in results["plots"]:
        assert Path(plot).is_file()
    # A rerun resumes: every run comes from its file, nothing is trained again.
    before = {p: p.stat().st_mtime_ns for p in (study / "runs").glob("*.json")}
    assert run_augmentation_study.main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in (study / "runs").glob("*.json")} == before


def test_dit_steps_benchmark_retrains_on_a_copy_and_reproduces_the_run(demo_run, tmp_path):
    """benchmarks/bench_demo_dit_steps.py: the DiT, samples and evaluation redone on a copy of a finished work dir;
    at the profile's own step count and seed it gives the run's own numbers, and the work dir is left as it was."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_demo_dit_steps", Path(__file__).resolve().parents[1] / "benchmarks" / "bench_demo_dit_steps.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    before = sorted(p.relative_to(demo_run) for p in demo_run.rglob("*"))
    out = tmp_path / "rows.json"
    overrides = [arg for item in TINY for arg in ("--set", item)]
    assert bench.main(["--work_dir", str(demo_run), "--steps", "4", "--seeds", "0",
                       "--runs_dir", str(tmp_path / "runs"), "--out", str(out), *overrides]) == 0
    [row] = json.loads(out.read_text())
    assert row["steps"] == 4 and row["seed"] == 0
    assert sorted(p.relative_to(demo_run) for p in demo_run.rglob("*")) == before
    generation = json.loads((demo_run / "evaluation/generation/generation_metrics.json").read_text())
    identification = json.loads((demo_run / "evaluation/identification/identification_results.json").read_text())
    assert row["identifiability"] == generation["real_classifier_on_generated"]["accuracy"]
    assert row["fid"] == pytest.approx(generation["overall"]["generated"]["fid"], rel=1e-6)
    assert row["real_plus_generated"] == next(r["test_accuracy"] for r in identification["rows"]
                                              if r["variant"] == "real+generated@100%")
