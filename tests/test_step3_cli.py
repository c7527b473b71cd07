"""step3_prepare_dataset.py as users run it: as a script, as a module, with --kaggle, on simulated data."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "microdoppler_finetune" / "step3_prepare_dataset.py"


def make_people(root: Path, people=3, recordings=4, frames=4, size=40, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for p in range(1, people + 1):
        for r in range(1, recordings + 1):
            for f in range(1, frames + 1):
                path = root / f"ID_{p}" / f"ID{p}_case{r}_1_Doppler{f}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(path)
    return root


def read_rows(path: Path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run(args, cwd, env=None, module=False):
    command = [sys.executable, "-m", "microdoppler_finetune.step3_prepare_dataset"] if module \
        else [sys.executable, str(SCRIPT)]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MDF_")}
    environment.update(env or {})
    return subprocess.run(command + [str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                          env=environment, timeout=120, check=False)


def test_script_writes_manifest_and_refuses_a_silent_overwrite(tmp_path):
    data = make_people(tmp_path / "data")
    out = tmp_path / "out"
    first = run(["--data_root", data, "--output_dir", out, "--seed", "1"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "Split summary" in first.stdout and "Checked 48 image files" in first.stdout
    rows = read_rows(out / "manifest.csv")
    assert len(rows) == 48 and {r["split"] for r in rows} == {"train", "val", "test"}
    for name in ("user_labels.json", "problems.csv", "problems.json", "split_summary.txt"):
        assert (out / name).is_file()
    manifest_bytes = (out / "manifest.csv").read_bytes()

    again = run(["--data_root", data, "--output_dir", out, "--seed", "1"], cwd=tmp_path, module=True)
    assert again.returncode == 0, again.stderr
    assert (out / "manifest.csv").read_bytes() == manifest_bytes

    other_seed = run(["--data_root", data, "--output_dir", out, "--seed", "2"], cwd=tmp_path)
    assert other_seed.returncode == 2 and "--overwrite" in other_seed.stderr and "Traceback" not in other_seed.stderr
    assert (out / "manifest.csv").read_bytes() == manifest_bytes
    forced = run(["--data_root", data, "--output_dir", out, "--seed", "2", "--overwrite"], cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert json.loads((out / "user_labels.json").read_text())["seed"] == 2

    # default output folder: ./work_dir/dataset of the current directory
    default = run(["--data_root", data], cwd=tmp_path)
    assert default.returncode == 0, default.stderr
    assert (tmp_path / "work_dir" / "dataset" / "manifest.csv").is_file()


def test_clear_failures_without_traceback(tmp_path):
    data = make_people(tmp_path / "data", people=2, recordings=3, frames=2)
    (data / "ID_3").mkdir()
    (data / "ID_3" / "ID3_case1_1_Doppler1.jpg").write_text("not an image")
    broken = run(["--data_root", data, "--output_dir", tmp_path / "out"], cwd=tmp_path)
    assert broken.returncode == 2 and "Traceback" not in broken.stderr
    assert "ID_3" in broken.stderr and "not_an_image" in broken.stderr

    unknown = run(["--data_root", tmp_path / "missing"], cwd=tmp_path)
    assert unknown.returncode == 2 and "Supported layouts" in unknown.stderr

    inside = run(["--data_root", data, "--output_dir", data / "ID_1" / "x"], cwd=tmp_path)
    assert inside.returncode == 2 and "inside the data folder" in inside.stderr
    assert not (data / "ID_1" / "x").exists()

    nothing = run([], cwd=tmp_path)
    assert nothing.returncode == 2 and "--data_root" in nothing.stderr


def test_kaggle_flag_finds_the_input_and_writes_to_working(tmp_path):
    inputs, working = tmp_path / "kaggle_input", tmp_path / "kaggle_working"
    make_people(inputs / "my-spectrograms" / "data", people=2, recordings=3, frames=3)
    (inputs / "vavae-weights").mkdir()
    working.mkdir()
    env = {"MDF_KAGGLE_INPUT": str(inputs), "MDF_KAGGLE_WORKING": str(working)}
    result = run(["--kaggle"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert str(inputs / "my-spectrograms" / "data") in result.stdout
    labels = json.loads((working / "work_dir" / "dataset" / "user_labels.json").read_text())
    assert labels["data_root"] == str((inputs / "my-spectrograms" / "data").resolve())
    assert labels["num_persons"] == 2


def test_step3_on_a_small_simulated_dataset(tmp_path):
    from microdoppler_finetune.simulator import simulate_dataset

    data = tmp_path / "simulated"
    simulate_dataset(data, people=3, per_person=20, image_size=64, seed=0, workers=1, progress=False)
    out = tmp_path / "dataset"
    result = run(["--data_root", data, "--output_dir", out], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    labels = json.loads((out / "user_labels.json").read_text())
    assert labels["person_names"] == ["ID_1", "ID_2", "ID_3"]
    assert sum(labels["counts"].values()) == 60 and labels["skipped_files"] == 0
    rows = read_rows(out / "manifest.csv")
    # the simulator names recordings, so every recording stays in one split
    split_of = {}
    for r in rows:
        assert r["recording"] and r["frame"]
        assert split_of.setdefault((r["person"], r["recording"]), r["split"]) == r["split"]
    assert all(labels["counts"][s] > 0 for s in ("train", "val", "test"))
    # the frame overlap is measured from the images: the simulator's 3-s frames start 0.5 s apart, so a frame
    # overlaps its next 5 (here: all the others of its 3 or 4). A recording of 3 frames has 2 pairs only, which
    # can both match better a stride off: then its overlap comes out smaller, never none.
    summary = json.loads((out / "split_summary.json").read_text())
    exact = [rec["overlapping_frames"] == min(5, rec["frames"] - 1) and
             rec["overlap_fraction"] == pytest.approx(5 / 6, abs=0.02) for rec in summary["overlap"]]
    assert sum(exact) >= 0.9 * len(exact) and all(rec["overlapping_frames"] > 0 for rec in summary["overlap"])
    assert summary["leak_check"]["probable_leaks"] == []
    assert "Frame overlap, measured from the images" in result.stdout


def test_split_unit_block_and_strict(tmp_path):
    from microdoppler_finetune.data.splits import SplitUnit, split_cells
    from microdoppler_finetune.simulator import simulate_dataset

    data = tmp_path / "simulated"
    simulate_dataset(data, people=2, per_person=40, recordings_per_person=4, image_size=64, seed=0, workers=1,
                     progress=False)
    block = run(["--data_root", data, "--output_dir", tmp_path / "block", "--split_unit", "block"], cwd=tmp_path)
    assert block.returncode == 0, block.stderr
    assert "cut into blocks" in block.stdout and "gap frames at cuts" in block.stdout
    assert json.loads((tmp_path / "block" / "user_labels.json").read_text())["split_unit"] == "block"
    assert {r["split"] for r in read_rows(tmp_path / "block" / "manifest.csv")} == {"train", "val", "test", "gap"}

    # ID_1's last recording replaced by its first one, exported again under the last one's name
    names = sorted({p.name.split("_Doppler")[0] for p in (data / "ID_1").glob("*.jpg")})
    first, last = names[0], names[-1]
    for path in (data / "ID_1").glob(f"{first}_Doppler*.jpg"):
        with Image.open(path) as img:
            img.save(path.with_name(path.name.replace(first, last)), quality=90)
    units = [SplitUnit((r, f), r.split("_", 1)[1], (0, f, ())) for r in names for f in range(10)]
    for seed in range(50):  # a seed that puts one copy in training and the other in val/test
        assignments, _ = split_cells({("ID_1", "default"): units}, seed=seed, val_fraction=0.15, test_fraction=0.15)
        if sorted([assignments[(first, 0)].split == "train", assignments[(last, 0)].split == "train"]) == [0, 1]:
            break
    strict = run(["--data_root", data, "--output_dir", tmp_path / "strict", "--seed", seed, "--strict"], cwd=tmp_path)
    assert strict.returncode == 2 and "Traceback" not in strict.stderr
    assert "exported twice" in strict.stderr and "without --strict" in strict.stderr
    assert not (tmp_path / "strict" / "manifest.csv").exists()
    warned = run(["--data_root", data, "--output_dir", tmp_path / "strict", "--seed", seed], cwd=tmp_path)
    assert warned.returncode == 0 and "WARNING" in warned.stdout
    leaks = json.loads((tmp_path / "strict" / "split_summary.json").read_text())["leak_check"]["probable_leaks"]
    assert len(leaks) == 10 and {leak["train_recording"].split("/")[1] for leak in leaks} <= {
        first.split("_", 1)[1], last.split("_", 1)[1]}
