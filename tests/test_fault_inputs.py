"""Bad input: every kind of file and folder a user's data folder can hold, through step3's command line.

Each case either ends in problems.csv with the file and the reason (skipped, or kept with a warning) while the run
succeeds, or stops with exit status 2 and one clear ERROR line that names the folder and what to do; never a
traceback, never a silently smaller dataset. tests/test_data.py covers the plain broken-file cases (zero-byte,
half-truncated, text-as-JPEG, RGBA, grayscale, CMYK, too small, duplicates); these are the others.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from microdoppler_finetune import step3_prepare_dataset as step3
from microdoppler_finetune.data import MicroDopplerDataset, load_manifest

_RNG = np.random.default_rng(7)


def save(path: Path, size=(40, 40), mode="RGB", fmt=None, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray((_RNG.random((size[1], size[0], 3)) * 255).astype(np.uint8))
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path, format=fmt, **kwargs)
    return path


def people(root: Path, numbers=(1, 2, 3), recordings=3, frames=2) -> Path:
    for p in numbers:
        for r in range(1, recordings + 1):
            for f in range(1, frames + 1):
                save(root / f"ID_{p}" / f"ID{p}_case{r}_1_Doppler{f}.jpg")
    return root


def step3_run(root: Path, out: Path, capsys) -> tuple:
    """step3's main in this process (an uncaught exception here is what a user would see as a traceback)."""
    code = step3.main(["--data_root", str(root), "--output_dir", str(out), "--workers", "1"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def problems(out: Path) -> dict:
    with open(out / "problems.csv", newline="", encoding="utf-8") as handle:
        return {(row["path"], row["reason"]): row for row in csv.DictReader(handle)}


def one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[0].startswith("ERROR: "), err
    return lines[0]


def test_broken_jpegs_odd_modes_and_sizes_are_listed_with_file_and_reason(tmp_path, capsys):
    root = people(tmp_path / "data")
    good = (root / "ID_1" / "ID1_case1_1_Doppler1.jpg").read_bytes()
    header_gone = bytearray(good)
    header_gone[2:40] = bytes(38)
    (root / "ID_1" / "ID1_bad_1_Doppler1.jpg").write_bytes(bytes(header_gone))  # corrupt header
    (root / "ID_1" / "ID1_bad_1_Doppler2.jpg").write_bytes(good[:20])  # cut inside the header
    (root / "ID_1" / "ID1_bad_1_Doppler3.jpg").write_bytes(good[:-30])  # cut inside the image data
    (root / "ID_2" / "ID2_pdf_1_Doppler1.jpg").write_bytes(b"%PDF-1.4 a document with an image name")
    (root / "ID_2" / "ID2_html_1_Doppler1.png").write_text("<html>a web page</html>")
    save(root / "ID_2" / "ID2_pal_1_Doppler1.png", mode="P", fmt="PNG")  # palette without transparency
    save(root / "ID_2" / "ID2_pal_1_Doppler2.png", mode="P", fmt="PNG", transparency=0)  # palette + alpha
    Image.fromarray((_RNG.random((40, 40)) * 65535).astype(np.uint16)).save(root / "ID_3" / "ID3_w16_1_Doppler1.png")
    save(root / "ID_3" / "ID3_big_1_Doppler1.jpg", size=(64, 64))  # square, but not the size of the others
    bomb = io.BytesIO()
    Image.new("L", (20000, 20000)).save(bomb, "PNG")  # 400 M pixels in a few hundred kB
    (root / "ID_3" / "ID3_bomb_1_Doppler1.png").write_bytes(bomb.getvalue())

    out = tmp_path / "out"
    code, _, err = step3_run(root, out, capsys)
    assert code == 0, err
    found = problems(out)
    expected = {
        ("ID_1/ID1_bad_1_Doppler1.jpg", "not_an_image"): "skipped",
        ("ID_1/ID1_bad_1_Doppler2.jpg", "not_an_image"): "skipped",
        ("ID_1/ID1_bad_1_Doppler3.jpg", "truncated"): "skipped",
        ("ID_2/ID2_pdf_1_Doppler1.jpg", "not_an_image"): "skipped",
        ("ID_2/ID2_html_1_Doppler1.png", "not_an_image"): "skipped",
        ("ID_2/ID2_pal_1_Doppler1.png", "palette"): "warning",
        ("ID_2/ID2_pal_1_Doppler2.png", "alpha"): "warning",
        ("ID_3/ID3_w16_1_Doppler1.png", "grayscale"): "warning",
        ("ID_3/ID3_big_1_Doppler1.jpg", "unusual_size"): "warning",
        ("ID_3/ID3_bomb_1_Doppler1.png", "too_many_pixels"): "skipped",
    }
    for key, severity in expected.items():
        assert key in found, f"{key} not reported: {sorted(found)}"
        assert found[key]["severity"] == severity and found[key]["detail"]
    assert set(found) == set(expected)
    manifest = load_manifest(out)
    paths = {e["path"] for e in manifest.entries}
    assert paths.isdisjoint(k[0] for k, s in expected.items() if s == "skipped")
    assert len(paths) == 3 * 3 * 2 + 4  # every good file and every file kept with a warning
    dataset = MicroDopplerDataset(manifest, "all", image_size=32)
    for i in range(len(dataset)):
        assert dataset[i]["image"].shape == (3, 32, 32)


def test_symbolic_link_loops_and_dangling_links_are_listed_not_fatal(tmp_path, capsys):
    root = people(tmp_path / "data")
    os.symlink("ID1_loop_1_Doppler2.jpg", root / "ID_1" / "ID1_loop_1_Doppler1.jpg")
    os.symlink("ID1_loop_1_Doppler1.jpg", root / "ID_1" / "ID1_loop_1_Doppler2.jpg")  # a file loop
    os.symlink("gone.jpg", root / "ID_2" / "ID2_gone_1_Doppler1.jpg")  # a link to nothing
    os.symlink("..", root / "ID_2" / "up")  # a folder loop back to the data root
    os.symlink(root, root / "ID_3" / "again")
    out = tmp_path / "out"
    code, printed, err = step3_run(root, out, capsys)
    assert code == 0, err
    found = problems(out)
    for path in ("ID_1/ID1_loop_1_Doppler1.jpg", "ID_1/ID1_loop_1_Doppler2.jpg", "ID_2/ID2_gone_1_Doppler1.jpg"):
        assert found[(path, "unreadable")]["severity"] == "skipped"
    assert "symbolic links" in found[("ID_1/ID1_loop_1_Doppler1.jpg", "unreadable")]["detail"]
    assert "subfolder" in printed  # the folder links are not followed into: noted
    assert len(load_manifest(out).entries) == 3 * 3 * 2


def test_unreadable_files_are_skipped_and_an_unreadable_folder_stops_with_the_fix(tmp_path, capsys, monkeypatch):
    # Tests run as root here, where chmod 000 does not stop reads: the refusal is simulated where files and
    # folders are read.
    root = people(tmp_path / "data")
    locked_file = root / "ID_1" / "ID1_case2_1_Doppler1.jpg"
    real_read_bytes = Path.read_bytes

    def read_bytes(self):
        if self == locked_file:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    code, _, err = step3_run(root, tmp_path / "out", capsys)
    assert code == 0, err
    row = problems(tmp_path / "out")[("ID_1/ID1_case2_1_Doppler1.jpg", "unreadable")]
    assert row["severity"] == "skipped" and "Permission denied" in row["detail"]

    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path=".": (_ for _ in ()).throw(
        PermissionError(13, "Permission denied", str(path))) if str(path).endswith("ID_2") else real_scandir(path))
    code, _, err = step3_run(root, tmp_path / "out2", capsys)
    assert code == 2
    line = one_error_line(err)
    assert str(root / "ID_2") in line and "chmod" in line and "Permission denied" in line
    assert not (tmp_path / "out2" / "manifest.csv").exists()


def test_names_with_spaces_commas_quotes_and_non_ascii_survive_the_manifest(tmp_path, capsys):
    root = people(tmp_path / "data")
    odd = ["ID_1/ID1 case 7 1 Doppler1.jpg", "ID_1/ID1_café_7_Doppler2.jpg", "ID_2/ID2_日本_7_Doppler1.jpg",
           'ID_2/ID2,comma"quote_7_Doppler1.jpg']
    for name in odd:
        save(root / name)
    (root / "ID 4").mkdir()  # a person folder with a space
    for f in range(1, 4):
        save(root / "ID 4" / f"ID4_case{f}_1_Doppler1.jpg")
    out = tmp_path / "out"
    code, _, err = step3_run(root, out, capsys)
    assert code == 0, err
    manifest = load_manifest(out)
    paths = {e["path"] for e in manifest.entries}
    assert set(odd) <= paths and "ID 4" in manifest.person_names
    dataset = MicroDopplerDataset(manifest, "all", image_size=32)
    assert len(dataset) == 3 * 3 * 2 + len(odd) + 3
    for i in range(len(dataset)):
        dataset[i]  # every listed file opens


def test_person_folders_empty_missing_duplicated_and_extra_folders(tmp_path, capsys):
    # One person missing from the numbering: kept going, but said (and listed).
    gap = people(tmp_path / "gap", numbers=(1, 2, 4))
    code, _, err = step3_run(gap, tmp_path / "out_gap", capsys)
    assert code == 0, err
    row = problems(tmp_path / "out_gap")[("ID_3", "missing_person")]
    assert row["severity"] == "warning" and "ID_1..ID_4" in row["detail"]

    # An empty person folder: that person would silently vanish, so step3 stops and says what to do.
    empty = people(tmp_path / "empty")
    (empty / "ID_4").mkdir()
    code, _, err = step3_run(empty, tmp_path / "out_empty", capsys)
    assert code == 2 and "Traceback" not in err
    assert "ID_4" in err and "move the folder out" in err
    assert not (tmp_path / "out_empty" / "manifest.csv").exists()

    # The same image filed under two people: both copies are skipped (label unknown), each listed.
    dup = people(tmp_path / "dup")
    shutil.copy(dup / "ID_1" / "ID1_case1_1_Doppler1.jpg", dup / "ID_2" / "ID2_case9_1_Doppler1.jpg")
    code, _, err = step3_run(dup, tmp_path / "out_dup", capsys)
    assert code == 0, err
    found = problems(tmp_path / "out_dup")
    assert {("ID_1/ID1_case1_1_Doppler1.jpg", "duplicate_across_people"),
            ("ID_2/ID2_case9_1_Doppler1.jpg", "duplicate_across_people")} <= set(found)

    # Unrelated folders without images (notes, hidden, macOS resource forks) are not data: ignored.
    extra = people(tmp_path / "extra")
    (extra / "notes").mkdir()
    (extra / "notes" / "readme.txt").write_text("how we recorded")
    save(extra / "__MACOSX" / "ID_1" / "._ID1_case1_1_Doppler1.jpg")
    save(extra / ".ipynb_checkpoints" / "x.png")
    code, _, err = step3_run(extra, tmp_path / "out_extra", capsys)
    assert code == 0, err
    assert len(load_manifest(tmp_path / "out_extra").entries) == 3 * 3 * 2
    # ... while an unrelated folder WITH images stops the run: are they a person or not?
    save(extra / "thumbnails" / "a.jpg")
    code, _, err = step3_run(extra, tmp_path / "out_extra2", capsys)
    assert code == 2 and "thumbnails" in one_error_line(err)


def test_missing_walking_condition_of_one_person_is_listed(tmp_path, capsys):
    root = tmp_path / "data"
    for condition in ("Normal_line", "Backpack_line"):
        for p in (1, 2):
            if (condition, p) == ("Backpack_line", 2):
                continue
            for r in range(1, 4):
                save(root / condition / f"ID_{p}" / f"ID{p}_case{r}_1_Doppler1.jpg")
    code, _, err = step3_run(root, tmp_path / "out", capsys)
    assert code == 0, err
    row = problems(tmp_path / "out")[("Backpack_line/ID_2", "missing_condition")]
    assert row["severity"] == "warning" and row["person"] == "ID_2"


@pytest.mark.parametrize("kind", ["file", "empty", "missing"])
def test_a_data_root_that_is_a_file_empty_or_missing_stops_with_one_line(tmp_path, capsys, kind):
    root = tmp_path / "data"
    if kind == "file":
        save(root, fmt="JPEG")
    elif kind == "empty":
        root.mkdir()
    code, _, err = step3_run(root, tmp_path / "out", capsys)
    assert code == 2
    line = one_error_line(err)
    assert str(root) in line
    assert ("no subfolders" if kind == "empty" else "is not a folder") in line
    assert "Supported layouts" in err  # followed by what a data folder should look like
