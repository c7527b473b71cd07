"""notebooks/kaggle_quickstart.ipynb runs top to bottom on a CPU: a fake /kaggle/input with a tiny simulated
dataset (MDF_KAGGLE_INPUT / MDF_KAGGLE_WORKING), tiny models through a YAML the test writes (the notebook's
`config` setting), no weights (offline), and the report shown inline at the end."""
import json
import re
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from test_report_html import check_page  # noqa: E402 - the same page checks as the report's own tests

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "kaggle_quickstart.ipynb"
TINY_YAML = """\
data: {image_size: 32, num_workers: 0}
vae: {vf_model: vit_small_patch14_dinov2, vf_pretrained: false}
vae_loss: {disc_channels: 8, disc_num_layers: 2}
vae_train:
  batch_size: 4
  grid_images: 4
  checkpoint_every_n_steps: 0
  stage_overrides: {stage1: {epochs: 1}, stage2: {epochs: 1}, stage3: {epochs: 1}}
export: {lpips_download: false}
dit:
  model: tiny
  train: {steps: 4, batch_size: 8, val_every: 2, sample_every: 0, checkpoint_every: 2, log_every: 2}
  sample: {num_sampling_steps: 3, batch_size: 9}
"""


def test_the_notebook_is_valid_and_keeps_the_real_kaggle_defaults():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "saved without outputs"
    settings = nb.cells[2].source
    for default in ('"time_budget": ""', '"weights_required": True', '"classifier": "standard"',
                    '"classifier_image_size": 256', '"install": True', "MDF_NOTEBOOK_SETTINGS"):
        assert default in settings, default
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for script in ("step1_setup_environment.py", "step2_download_models.py", "step3_prepare_dataset.py",
                   "step4_train_vavae.py", "step5_validate_export.py", "train_conditional_dit.py", "sample_dit.py",
                   "step6_evaluate.py", "microdoppler_finetune.report", "torch.distributed.run", "--kaggle_t4"):
        assert script in code, script
    assert "run the same cells again" in nb.cells[0].source


@pytest.fixture
def fake_kaggle(tmp_path, monkeypatch):
    """/kaggle/input with a tiny simulated dataset, an empty /kaggle/working, nothing reachable."""
    from microdoppler_finetune.simulator import simulate_dataset
    from models.perceptual import write_random_backbone_weights

    kaggle_input, working = tmp_path / "input", tmp_path / "working"
    simulate_dataset(kaggle_input / "micro-doppler-data", people=3, per_person=12, seed=0, image_size=32,
                     recordings_per_person=4)
    working.mkdir()
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(TINY_YAML)
    monkeypatch.setenv("MDF_KAGGLE_INPUT", str(kaggle_input))
    monkeypatch.setenv("MDF_KAGGLE_WORKING", str(working))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MDF_PROGRESS", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MDF_PRETRAINED_DIR", raising=False)
    monkeypatch.delenv("MDF_WORK_DIR", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    write_random_backbone_weights("alex")  # LPIPS finds a backbone file instead of trying a download
    monkeypatch.setenv("MDF_NOTEBOOK_SETTINGS", json.dumps({
        "code_dir": str(REPO), "install": False, "preset": "cpu_demo", "weights_required": False,
        "config": str(tiny), "time_budget": "30m", "samples_per_person": 3, "classifier": "tiny",
        "classifier_image_size": 32, "classifier_epochs": 1, "fractions": "1.0",
        "evaluate_args": ["--batch_size", "8", "--patience", "1", "--no_cas", "--no_inception"]}))
    return working / "work_dir"


def execute(tmp_path):
    """One Kaggle session: a fresh kernel runs every cell (Run all); an exception in a cell fails the test."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    started = time.time()
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    return nb, time.time() - started


def stream_text(nb) -> str:
    return "".join(o.text for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
                   if o.output_type == "stream")


def test_the_notebook_runs_every_step_on_a_cpu_with_tiny_settings_and_resumes(fake_kaggle, tmp_path):
    nb, seconds = execute(tmp_path)
    work = fake_kaggle
    for produced in ("environment_info.json", "dataset/manifest.csv", "vae/summary.json",
                     "export/vavae_encoder_for_dit", "latents", "validation/before_finetuning/metrics.json",
                     "dit/checkpoints/0000004.pt", "samples/generation_info.json",
                     "evaluation/identification/identification_results.json",
                     "evaluation/generation/generation_metrics.json", "report.html", "report.md"):
        assert (work / produced).exists(), produced
    page = check_page(work / "report.html")
    assert "notebooks/kaggle_quickstart.ipynb" in page.page_text and "cpu_demo" in page.page_text
    assert set(re.findall(r"not run: (\w+)", page.page_text)) == {"augmentation"}  # only the optional study
    outputs = nb.cells[-1].outputs
    shown = [o for o in outputs if o.output_type == "display_data" and "text/html" in o.data]
    assert shown and "<iframe" in shown[-1].data["text/html"] and "srcdoc=\"&lt;!DOCTYPE html&gt;" in \
        shown[-1].data["text/html"]
    step_lines = [line for line in stream_text(nb).splitlines() if line.startswith("$ python ")]
    assert any("step4_train_vavae.py --kaggle --stages 1,2,3 --time_budget 30m --preset cpu_demo" in line
               for line in step_lines), step_lines
    checkpoints = sorted((work / "dit" / "checkpoints").glob("*.pt"))
    # The next session: the same cells again. Finished steps are skipped, nothing is trained twice.
    again, seconds_again = execute(tmp_path)
    text = stream_text(again)
    assert "already finished" in text and "Already exported" in text
    assert "Samples of step 4 exist" in text and "The evaluation of these samples exists" in text
    assert sorted((work / "dit" / "checkpoints").glob("*.pt")) == checkpoints
    check_page(work / "report.html")
    print(f"notebook: {seconds:.0f} s, then {seconds_again:.0f} s in the next session")
