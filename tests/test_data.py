"""Dataset layer: layouts, file validation, leak-free splits, the manifest and the PyTorch dataset."""
import csv
import io
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from microdoppler_finetune.data import (
    GAP,
    KNOWN_CONDITIONS,
    SPLITS,
    ManifestExistsError,
    ManifestFormatError,
    MicroDopplerDataset,
    NoUsableImagesError,
    OutputInsideDataError,
    UnknownLayoutError,
    check_image_bytes,
    discover_data_root,
    find_dataset_roots,
    find_leaks,
    load_manifest,
    parse_image_name,
    prepare_dataset,
    scan_dataset,
)
from microdoppler_finetune.data.images import load_rgb
from microdoppler_finetune.data.splits import SplitUnit, frame_order, split_cells

_SEED = iter(range(1, 10**6))


def save_image(path: Path, size=(40, 40), mode="RGB", fmt=None) -> Path:
    """A random-noise image (unique content, so no accidental duplicates)."""
    rng = np.random.default_rng(next(_SEED))
    w, h = size
    pixels = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def make_flat(root: Path, people=3, recordings=4, frames=6, size=40) -> Path:
    for p in range(1, people + 1):
        for r in range(1, recordings + 1):
            for f in range(1, frames + 1):
                save_image(root / f"ID_{p}" / f"ID{p}_case{r}_1_Doppler{f}.jpg", (size, size))
    return root


def read_csv(path: Path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def tree_state(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


# ----------------------------------------------------------------------------------------------- names/layouts


def test_file_names_give_recording_and_frame():
    assert parse_image_name("ID1_case1_1_Doppler17")[:2] == ("case1_1", 17)
    assert parse_image_name("ID12_case3_2_doppler5").name_person == 12
    assert parse_image_name("rec3_0012")[:2] == ("rec3", 12)
    assert parse_image_name("img_0012")[:2] == ("", 12)  # a label word is not a recording
    assert parse_image_name("0007")[:2] == ("", 7)
    assert parse_image_name("spectrogram")[:2] == ("", None)


def test_flat_layout_people_in_natural_order(tmp_path):
    root = tmp_path / "data"
    for p in (10, 2, 1):
        for f in range(3):
            save_image(root / f"ID_{p}" / f"ID{p}_case1_1_Doppler{f}.jpg")
    (root / "ID_2" / "ID2_case1_1_Doppler0.json").write_text("{}")  # simulator parameter files are ignored
    scan = scan_dataset(root)
    assert scan.layout == "person"
    assert scan.persons == ["ID_1", "ID_2", "ID_10"]
    assert len(scan.images) == 9 and scan.ignored_files[".json"] == 1
    image = next(im for im in scan.images if im.rel_path == "ID_10/ID10_case1_1_Doppler2.jpg")
    assert (image.recording, image.frame, image.condition) == ("case1_1", 2, "default")


def test_condition_layouts_scan_to_the_same_people_and_conditions(tmp_path):
    conditions = ["Bag_line", "Normal_free", "Backpack_free"]
    cond_first, person_first = tmp_path / "cf", tmp_path / "pf"
    for c in conditions:
        for p in (1, 2, 11):
            for f in range(2):
                save_image(cond_first / c / f"ID_{p}" / f"ID{p}_case1_1_Doppler{f}.png", fmt="PNG")
                save_image(person_first / f"{p:02d}" / c / f"{f}.bmp", fmt="BMP")
    a, b = scan_dataset(cond_first), scan_dataset(person_first)
    assert a.layout == "condition/person" and b.layout == "person/condition"
    assert a.persons == ["ID_1", "ID_2", "ID_11"] and b.persons == ["01", "02", "11"]
    expected = [c for c in KNOWN_CONDITIONS if c in conditions]  # the fixed condition order, not alphabetical
    assert a.conditions == expected and b.conditions == expected
    assert len(a.images) == len(b.images) == 18


def test_unknown_layouts_name_the_folder_and_show_the_layouts(tmp_path):
    loose = tmp_path / "loose"
    save_image(loose / "a.jpg")
    with pytest.raises(UnknownLayoutError, match="holds images directly") as err:
        scan_dataset(loose)
    assert str(loose) in str(err.value) and "<root>/ID_1 ... ID_31/*.jpg" in str(err.value)

    odd = tmp_path / "odd"
    save_image(odd / "cats" / "a.jpg")
    with pytest.raises(UnknownLayoutError, match="cats"):
        scan_dataset(odd)

    wrapper = tmp_path / "wrapper"
    make_flat(wrapper / "inner" / "spectrograms", people=2, recordings=1, frames=1)
    with pytest.raises(UnknownLayoutError) as err:
        scan_dataset(wrapper)
    assert f"--data_root {wrapper / 'inner' / 'spectrograms'}" in str(err.value)

    split_already = tmp_path / "split"
    for part in ("train", "test"):
        save_image(split_already / part / "ID_1" / "a1.jpg")
    with pytest.raises(UnknownLayoutError, match="existing train/test split"):
        scan_dataset(split_already)


# -------------------------------------------------------------------------------------------------- validation


def test_broken_files_are_listed_with_reasons_and_the_run_succeeds(tmp_path):
    root = make_flat(tmp_path / "data", people=3, recordings=3, frames=5)
    bad = root / "ID_1"
    (bad / "ID1_zero_Doppler1.jpg").write_bytes(b"")
    good_bytes = (root / "ID_3" / "ID3_case1_1_Doppler1.jpg").read_bytes()
    (bad / "ID1_trunc_Doppler1.jpg").write_bytes(good_bytes[: len(good_bytes) // 2])
    (bad / "ID1_text_Doppler1.jpg").write_text("this is not an image")
    save_image(bad / "ID1_rgba_Doppler1.png", mode="RGBA", fmt="PNG")
    save_image(bad / "ID1_gray_Doppler1.jpg", mode="L")
    save_image(bad / "ID1_cmyk_Doppler1.jpg", mode="CMYK")
    save_image(bad / "ID1_wide_Doppler1.jpg", size=(60, 40))
    save_image(bad / "ID1_tiny_Doppler1.jpg", size=(8, 8))
    shutil.copy(root / "ID_2" / "ID2_case2_1_Doppler3.jpg", bad / "ID1_copy_Doppler1.jpg")  # across people
    shutil.copy(root / "ID_3" / "ID3_case1_1_Doppler2.jpg", root / "ID_3" / "ID3_case1_1_Doppler99.jpg")  # within

    out = tmp_path / "out"
    manifest_path = prepare_dataset(root, out, log=None)
    problems = {(p["path"], p["reason"]): p for p in json.loads((out / "problems.json").read_text())}
    expected = {
        ("ID_1/ID1_zero_Doppler1.jpg", "empty_file"): "skipped",
        ("ID_1/ID1_trunc_Doppler1.jpg", "truncated"): "skipped",
        ("ID_1/ID1_text_Doppler1.jpg", "not_an_image"): "skipped",
        ("ID_1/ID1_tiny_Doppler1.jpg", "too_small"): "skipped",
        ("ID_1/ID1_copy_Doppler1.jpg", "duplicate_across_people"): "skipped",
        ("ID_2/ID2_case2_1_Doppler3.jpg", "duplicate_across_people"): "skipped",
        ("ID_3/ID3_case1_1_Doppler99.jpg", "duplicate_within_person"): "skipped",
        ("ID_1/ID1_rgba_Doppler1.png", "alpha"): "warning",
        ("ID_1/ID1_gray_Doppler1.jpg", "grayscale"): "warning",
        ("ID_1/ID1_cmyk_Doppler1.jpg", "cmyk"): "warning",
        ("ID_1/ID1_wide_Doppler1.jpg", "non_square"): "warning",
    }
    for key, severity in expected.items():
        assert key in problems, f"{key} not reported; got {sorted(problems)}"
        assert problems[key]["severity"] == severity and problems[key]["detail"]
    assert len(problems) == len(expected)
    assert len(read_csv(out / "problems.csv")) == len(expected)

    manifest = load_manifest(manifest_path)
    paths = {e["path"] for e in manifest.entries}
    skipped = {k[0] for k, s in expected.items() if s == "skipped"}
    warned = {k[0] for k, s in expected.items() if s == "warning"}
    assert not paths & skipped and warned <= paths
    assert "ID_3/ID3_case1_1_Doppler2.jpg" in paths  # the first copy of a within-person duplicate stays
    labels = json.loads((out / "user_labels.json").read_text())
    assert labels["skipped_files"] == len(skipped)

    # Files kept with a warning load as RGB squares of the requested size.
    dataset = MicroDopplerDataset(manifest, "all", image_size=32)
    by_path = {row["path"]: i for i, row in enumerate(dataset.rows)}
    for path in warned:
        if path in by_path:
            image = dataset[by_path[path]]["image"]
            assert image.shape == (3, 32, 32) and image.min() >= -1 and image.max() <= 1


def test_corrupt_and_large_images_and_conversions_of_unusual_modes(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (80, 80), (10, 20, 30)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    check = check_image_bytes(bytes(data), max_side=64)
    assert [reason for reason, _ in check.problems] == ["large"] and check.usable
    data[data.index(b"IDAT") + 6] ^= 0xFF  # the chunk's CRC no longer matches
    check = check_image_bytes(bytes(data))
    assert [reason for reason, _ in check.problems] == ["corrupt"] and not check.usable

    # every mode the validator keeps loads as 8-bit RGB of the requested size
    wide = Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 15)  # 16-bit grayscale
    images = {"wide.png": wide, "la.png": Image.new("LA", (50, 30), (100, 7)),
              "pal.png": Image.new("P", (40, 40), 3), "cmyk.jpg": Image.new("CMYK", (40, 40), (0, 255, 0, 0))}
    for name, img in images.items():
        kwargs = {"transparency": 0} if name == "pal.png" else {}
        img.save(tmp_path / name, **kwargs)
        rgb = load_rgb(tmp_path / name, 32)
        assert rgb.mode == "RGB" and rgb.size == (32, 32), name
    wide_rgb = np.asarray(load_rgb(tmp_path / "wide.png"))
    assert wide_rgb.min() == 0 and wide_rgb.max() == 255  # 16-bit range scaled, not clipped


def test_a_person_with_only_broken_files_fails_naming_the_folder(tmp_path):
    root = make_flat(tmp_path / "data", people=2, recordings=3, frames=2)
    broken = root / "ID_3"
    broken.mkdir()
    (broken / "ID3_a_Doppler1.jpg").write_bytes(b"")
    save_image(broken / "ID3_a_Doppler2.jpg", size=(8, 8))
    with pytest.raises(NoUsableImagesError) as err:
        prepare_dataset(root, tmp_path / "out", log=None)
    message = str(err.value)
    assert "ID_3" in message and str(broken) in message
    assert "empty_file" in message and "too_small" in message
    assert not (tmp_path / "out" / "manifest.csv").exists()


# ------------------------------------------------------------------------------------------------------ splits


def _random_cells(rng: random.Random):
    cells = {}
    for p in range(rng.randint(1, 6)):
        for c in range(rng.randint(1, 3)):
            units = []
            named = rng.random() < 0.7
            for r in range(rng.randint(1, 8) if named else 1):
                start = rng.randint(0, 5)
                for f in range(start, start + rng.randint(1, 40)):
                    units.append(SplitUnit(key=(p, c, r, f), recording=f"case{r}" if named else "",
                                           order=frame_order(f, f"{f}.jpg")))
            rng.shuffle(units)
            cells[(f"ID_{p}", f"cond{c}")] = units
    return cells


def _rows(cells, assignments):
    rows = []
    for (person, condition), units in cells.items():
        for u in units:
            a = assignments[u.key]
            rows.append({"person": person, "condition": condition, "recording": u.recording, "order": u.order,
                         "split": a.split, "group": a.group})
    return rows


def test_split_never_puts_a_recording_or_its_neighbours_in_two_splits():
    for trial in range(150):
        rng = random.Random(trial)
        cells = _random_cells(rng)
        val, test = rng.choice([(0.15, 0.15), (0.1, 0.2), (0.0, 0.2), (0.25, 0.0), (0.3, 0.3)])
        gap = rng.randint(0, 4)
        assignments, reports = split_cells(cells, seed=trial, val_fraction=val, test_fraction=test, gap_frames=gap)
        rows = _rows(cells, assignments)
        assert find_leaks(rows, gap) == [], f"trial {trial}"
        for report in reports:
            units = cells[(report.person, report.condition)]
            if report.method == "recordings":
                # whole recordings: each recording in exactly one split, no gaps
                split_of = {}
                for u in units:
                    assert split_of.setdefault(u.recording, assignments[u.key].split) == assignments[u.key].split
                assert report.counts[GAP] == 0
            for split, fraction in (("val", val), ("test", test)):
                # a requested split is present unless the cell was too small for it (said in the note)
                dropped = f"no {split}" in report.note or report.method == "train_only"
                assert (report.counts[split] > 0) == (fraction > 0 and not dropped), (trial, report)


def test_leak_checker_catches_planted_leaks():
    rows = [{"person": "ID_1", "condition": "c", "recording": "r1", "order": (0, i, ()), "split": s, "group": g}
            for i, (s, g) in enumerate([("train", "r1@train"), ("train", "r1@train"), ("gap", "r1@gap"),
                                        ("test", "r1@test")])]
    assert find_leaks(rows, 1) == []
    assert find_leaks(rows, 2)  # only one frame between train and test
    rows[0]["group"] = "r1@test"
    assert any("group" in leak for leak in find_leaks(rows, 1))


def test_split_fractions_by_image_count_and_one_recording_each_when_possible():
    units = [SplitUnit(key=(r, f), recording=f"case{r}", order=(0, f, ())) for r in range(20) for f in range(10)]
    assignments, (report,) = split_cells({("ID_1", "default"): units}, seed=0, val_fraction=0.15,
                                         test_fraction=0.15, gap_frames=2)
    assert report.method == "recordings"
    assert report.counts == {"train": 140, "val": 30, "test": 30, GAP: 0}

    # Three equal recordings: whole recordings even though val and test get 33% each (the note says so) ...
    units = [SplitUnit(key=(r, f), recording=f"case{r}", order=(0, f, ())) for r in range(3) for f in range(50)]
    assignments, (report,) = split_cells({("ID_1", "default"): units}, seed=0, val_fraction=0.15,
                                         test_fraction=0.15, gap_frames=2)
    assert report.method == "recordings" and report.counts == {"train": 50, "val": 50, "test": 50, GAP: 0}
    assert "whole recordings" in report.note and "--split_unit block" in report.note
    # ... and cut into blocks with gaps only when asked to.
    assignments, (report,) = split_cells({("ID_1", "default"): units}, seed=0, val_fraction=0.15,
                                         test_fraction=0.15, gap_frames=2, split_unit="block")
    assert report.method == "blocks"
    assert 20 <= report.counts["val"] <= 23 and 20 <= report.counts["test"] <= 23
    assert find_leaks(_rows({("ID_1", "default"): units}, assignments), 2) == []


def test_names_without_recordings_use_contiguous_blocks_with_gaps(tmp_path):
    root = tmp_path / "data"
    for p in (1, 2):
        for f in range(1, 31):
            save_image(root / f"ID_{p}" / f"frame_{f:03d}.jpg")
    out = tmp_path / "out"
    manifest = load_manifest(prepare_dataset(root, out, gap_frames=2, log=None))
    for person in ("ID_1", "ID_2"):
        rows = sorted((e for e in manifest.entries if e["person"] == person), key=lambda e: e["frame"])
        labels = [e["split"] for e in rows]
        # one contiguous block per split, 2 gap frames at each cut
        runs = [labels[0]] + [b for a, b in zip(labels, labels[1:]) if a != b]
        assert sorted(r for r in runs if r != GAP) == ["test", "train", "val"]
        assert labels.count(GAP) == 4
    rows = [dict(e, order=frame_order(e["frame"], e["path"])) for e in manifest.entries]
    assert find_leaks(rows, 2) == []


# ------------------------------------------------------------------------------------ manifest, reruns, safety


def test_same_input_and_seed_give_the_same_manifest_and_other_settings_are_refused(tmp_path):
    root = make_flat(tmp_path / "data", people=3, recordings=6, frames=3)
    first = prepare_dataset(root, tmp_path / "a", seed=7, log=None)
    second = prepare_dataset(root, tmp_path / "b", seed=7, log=None)
    assert first.read_bytes() == second.read_bytes()
    assert (tmp_path / "a" / "user_labels.json").read_bytes() == (tmp_path / "b" / "user_labels.json").read_bytes()
    other = prepare_dataset(root, tmp_path / "c", seed=8, log=None)
    assert other.read_bytes() != first.read_bytes()

    before = first.read_bytes()
    prepare_dataset(root, tmp_path / "a", seed=7, log=None)  # rerun: same manifest, no complaint
    assert first.read_bytes() == before
    with pytest.raises(ManifestExistsError, match="seed: 7 -> 8") as err:
        prepare_dataset(root, tmp_path / "a", seed=8, log=None)
    assert "--overwrite" in str(err.value)
    assert first.read_bytes() == before
    save_image(root / "ID_1" / "ID1_case9_1_Doppler1.jpg")  # the data changed
    with pytest.raises(ManifestExistsError):
        prepare_dataset(root, tmp_path / "a", seed=7, log=None)
    prepare_dataset(root, tmp_path / "a", seed=8, overwrite=True, log=None)
    assert load_manifest(tmp_path / "a").labels["seed"] == 8


def test_nothing_is_written_into_the_data_folder(tmp_path):
    root = make_flat(tmp_path / "data", people=2, recordings=3, frames=3)
    state = tree_state(root)
    prepare_dataset(root, tmp_path / "out", log=None)
    assert tree_state(root) == state
    for inside in (root, root / "ID_1" / "manifest_here"):
        with pytest.raises(OutputInsideDataError, match="inside the data folder"):
            prepare_dataset(root, inside, log=None)
    assert tree_state(root) == state


def test_manifest_columns_labels_and_loading(tmp_path):
    root = tmp_path / "data"
    for c in ("Normal_free", "Backpack_line"):
        for p in (1, 2, 3):
            for r in range(3):
                for f in range(4):
                    save_image(root / c / f"ID_{p}" / f"ID{p}_case{r}_1_Doppler{f}.jpg")
    out = tmp_path / "out"
    path = prepare_dataset(root, out, seed=3, val_fraction=0.2, test_fraction=0.2, log=None)
    header = path.read_text().splitlines()[0].split(",")
    for column in ("path", "person_id", "person", "condition_id", "condition", "recording", "frame", "split",
                   "sha256", "width", "height"):
        assert column in header
    labels = json.loads((out / "user_labels.json").read_text())
    assert labels["persons"] == {"ID_1": 0, "ID_2": 1, "ID_3": 2}
    assert labels["conditions"] == {"Normal_free": 0, "Backpack_line": 1}
    assert labels["seed"] == 3 and labels["val_fraction"] == 0.2 and labels["data_root"] == str(root.resolve())
    assert sum(labels["counts"].values()) == 72

    manifest = load_manifest(out)
    assert manifest.num_persons == 3 and manifest.num_conditions == 2
    assert manifest.data_root == root.resolve()
    assert [e["index"] for e in manifest.entries] == list(range(72))
    assert not Path(manifest.entries[0]["path"]).is_absolute()
    for e in manifest.entries:
        assert e["condition"] in e["path"] and manifest.image_path(e).is_file()
    # every (person, condition) gets val and test images
    seen = {(e["person"], e["condition"], e["split"]) for e in manifest.entries}
    assert all((p, c, s) in seen for p in labels["persons"] for c in labels["conditions"] for s in SPLITS)
    assert len(manifest.entries_for("all")) == sum(labels["counts"][s] for s in SPLITS)
    assert manifest.entries_for(["val", "test"]) == [e for e in manifest.entries if e["split"] in ("val", "test")]
    with pytest.raises(ValueError, match="Unknown split"):
        manifest.entries_for("validation")
    assert load_manifest(path, data_root=tmp_path / "moved").data_root == tmp_path / "moved"

    (out / "user_labels.json").unlink()
    with pytest.raises(ManifestFormatError, match="user_labels.json"):
        load_manifest(out)
    with pytest.raises(ManifestFormatError, match="step3"):
        load_manifest(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------------ dataset


def test_dataset_items_range_shape_and_ids(tmp_path):
    root = make_flat(tmp_path / "data", people=3, recordings=4, frames=3, size=48)
    manifest = load_manifest(prepare_dataset(root, tmp_path / "out", log=None))
    train = MicroDopplerDataset(manifest, "train", image_size=32)
    assert len(train) == len(manifest.entries_for("train")) > 0
    item = train[0]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 32, 32)
    assert -1.0 <= item["image"].min() < item["image"].max() <= 1.0
    row = manifest.entries[item["index"]]
    assert (item["person_id"], item["condition_id"], item["path"]) == (row["person_id"], row["condition_id"],
                                                                       row["path"])
    assert item["flipped"] is False

    # Values are the pixels mapped linearly to [-1, 1] (image_size = stored size: no resampling).
    full = MicroDopplerDataset(manifest, "train", image_size=48)[0]["image"]
    pixels = np.asarray(Image.open(manifest.image_path(row)).convert("RGB"), dtype=np.float32)
    assert torch.allclose(full, torch.from_numpy(pixels).permute(2, 0, 1) / 127.5 - 1, atol=1e-6)

    everything = MicroDopplerDataset(tmp_path / "out", "all", image_size=16)
    assert len(everything) == len(manifest.entries_for(["train", "val", "test"]))
    assert sorted(set(everything.person_ids)) == [0, 1, 2]

    torch.manual_seed(0)
    flipping = MicroDopplerDataset(manifest, "train", image_size=48, flip=True)
    flips = [flipping[0] for _ in range(12)]
    assert {f["flipped"] for f in flips} == {True, False}
    for f in flips:
        assert torch.equal(f["image"], full.flip(-1) if f["flipped"] else full)

    with pytest.raises(FileNotFoundError, match="data_root"):
        MicroDopplerDataset(manifest, "train", data_root=tmp_path / "missing")


# ----------------------------------------------------------------------------------------------------- kaggle


def test_kaggle_discovery_finds_the_dataset_without_knowing_its_name(tmp_path, monkeypatch):
    inputs = tmp_path / "input"
    make_flat(inputs / "some-user-dataset" / "data", people=2, recordings=1, frames=1)
    (inputs / "vavae-pretrained").mkdir(parents=True)
    (inputs / "vavae-pretrained" / "weights.pt").write_bytes(b"x")
    monkeypatch.setenv("MDF_KAGGLE_INPUT", str(inputs))
    assert discover_data_root() == inputs / "some-user-dataset" / "data"

    # a condition layout is found at its top, not at one of its condition folders
    for c in ("Normal_free", "Bag_line"):
        save_image(inputs / "cond-data" / c / "ID_1" / "a1.jpg")
    assert find_dataset_roots(inputs) == [inputs / "cond-data", inputs / "some-user-dataset" / "data"]
    with pytest.raises(UnknownLayoutError, match="Several folders"):
        discover_data_root()
    with pytest.raises(UnknownLayoutError, match="No folder"):
        discover_data_root(tmp_path / "empty")
