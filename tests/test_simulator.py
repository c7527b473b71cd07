"""The micro-Doppler simulator: physics, determinism, layouts, safety of the output folder, separability."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from microdoppler_finetune.simulator import (
    CONDITION_NAMES,
    INFO_FILE,
    PARAMETERS_FILE,
    RadarSettings,
    render_preview_grid,
    sample_person,
    sample_recording,
    simulate_dataset,
    simulate_recording_frames,
)
from microdoppler_finetune.simulator.gait import (
    JOINT_NAMES,
    BodyDimensions,
    GaitModel,
    cycle_duration_s,
    cycle_length_m,
)
from microdoppler_finetune.simulator.people import PersonParameters, RecordingParameters
from microdoppler_finetune.simulator.radar import stft_power
from microdoppler_finetune.simulator.scatterers import SEGMENTS, Scatterer, ellipsoid_rcs, scatterer_rcs
from microdoppler_finetune.simulator.scene import plan_walk, simulate_signal
from microdoppler_finetune.simulator.separability import held_out_recording_accuracy

REPO = Path(__file__).resolve().parents[1]
NAME = re.compile(r"^ID(\d+)_case(\d+)_(\d+)_Doppler(\d+)\.jpg$")
SMALL = dict(per_person=4, recordings_per_person=2, image_size=32, workers=1, progress=False)


def _person(height=1.80, speed=1.3, **kw):
    base = dict(person_index=1, height_m=height, preferred_speed_mps=speed, cadence_factor=1.0, arm_swing_gain=1.0,
                arm_left_right_ratio=1.0, leg_asymmetry=0.0, torso_sway_gain=1.0, torso_bounce_gain=1.0, girth=1.0,
                dominant_hand="right")
    base.update(kw)
    return PersonParameters(**base)


def _straight_walk(person, direction="toward", radar_height=1.25):
    return RecordingParameters(condition="Normal_line", recording_index=0, speed_mps=person.preferred_speed_mps,
                               start_phase=0.0, aspect_deg=0.0, direction=direction, range_m=40.0,
                               radar_height_m=radar_height, cycle_jitter=0.0, snr_db=30.0, clutter_db=-20.0)


# ----------------------------------------------------------------------------------------------- physics


def test_ellipsoid_rcs_at_known_angles():
    a, b, c = 0.1, 0.2, 0.4
    assert ellipsoid_rcs(a, b, c, 0.0, 0.0) == pytest.approx(np.pi * a**2 * b**2 / c**2)  # along the long axis
    assert ellipsoid_rcs(a, b, c, np.pi / 2, 0.0) == pytest.approx(np.pi * b**2 * c**2 / a**2)  # along a
    assert ellipsoid_rcs(a, b, c, np.pi / 2, np.pi / 2) == pytest.approx(np.pi * a**2 * c**2 / b**2)  # along b
    assert ellipsoid_rcs(0.3, 0.3, 0.3, 0.7, 1.1) == pytest.approx(np.pi * 0.3**2)  # sphere: pi r^2 everywhere
    # The vectorised form (line of sight and body axes as vectors) agrees with the angle form.
    theta, phi = 0.6, 0.9
    los = np.array([[np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)]])
    sc = Scatterer("x", np.zeros((1, 3)), np.array([[0.0, 0.0, 1.0]]), a, b, c)
    lateral = np.array([[0.0, 1.0, 0.0]])  # b axis along y, so a is along x
    assert scatterer_rcs(sc, los, lateral)[0] == pytest.approx(float(ellipsoid_rcs(a, b, c, theta, phi)))


def test_cycle_formulas_and_simulated_gait_period():
    height, speed = 1.80, 1.3
    ht = 0.491 * height
    rv = speed / ht
    assert BodyDimensions(height).leg_length == pytest.approx(ht)
    assert cycle_duration_s(speed, height) == pytest.approx(1.346 * np.sqrt(rv) / rv)
    assert cycle_length_m(speed, height) == pytest.approx(1.346 * np.sqrt(rv) * ht)
    assert cycle_length_m(speed, height) / cycle_duration_s(speed, height) == pytest.approx(speed)

    # The simulated ankle repeats with that period: autocorrelation of its forward velocity.
    person = _person(height, speed)
    prf = 500.0
    walk = plan_walk(person, _straight_walk(person), int(8 * prf), prf, jitter=False)
    model = GaitModel(BodyDimensions(height), rv, walk.cycle_duration_s)
    joints = model.joints(walk.phase)
    assert sorted(joints) == sorted(JOINT_NAMES) and len(JOINT_NAMES) == 17 and len(SEGMENTS) == 16
    vel = np.gradient(joints["r_ankle"][:, 0]) * prf
    vel -= vel.mean()
    corr = np.correlate(vel, vel, mode="full")[vel.size - 1:]
    lo = int(0.6 * prf)  # skip the zero-lag peak and half-cycle (other leg) structure
    period = (lo + np.argmax(corr[lo:int(2.0 * prf)])) / prf
    assert period == pytest.approx(cycle_duration_s(speed, height), abs=2 / prf)


@pytest.mark.parametrize("direction, sign", [("toward", 1.0), ("away", -1.0)])
def test_torso_doppler_is_two_v_over_lambda(direction, sign):
    person = _person(1.80, 1.3)
    settings = RadarSettings()
    rec = _straight_walk(person, direction, radar_height=0.491 * 1.80 + 0.144 * 1.80)  # torso centre height
    duration = cycle_duration_s(1.3, 1.80)
    n = int(round(4 * duration * settings.prf_hz))  # whole cycles: the torso's bounce averages out
    s = simulate_signal(person, rec, settings, n, only=["torso"], noise=False, jitter=False)
    expected = sign * 2 * 1.3 / settings.wavelength
    inst_freq = np.angle(s[1:] * np.conj(s[:-1])) * settings.prf_hz / (2 * np.pi)
    assert np.mean(inst_freq) == pytest.approx(expected, rel=0.01)
    # The spectrogram's strongest line sits at the same Doppler.
    power = stft_power(s, settings)
    freqs = settings.doppler_axis_hz()
    peak = np.mean(freqs[np.argmax(power, axis=0)])
    assert peak == pytest.approx(expected, abs=0.1 * abs(expected))


def test_limbs_reach_several_times_the_torso_doppler():
    person = _person(1.75, 1.3)
    settings = RadarSettings()
    rec = _straight_walk(person, "toward", radar_height=1.0)
    n = int(3 * settings.prf_hz)
    power = stft_power(simulate_signal(person, rec, settings, n, noise=False, jitter=False), settings)
    freqs = settings.doppler_axis_hz()
    torso = 2 * 1.3 / settings.wavelength
    visible = power.max(axis=1) > power.max() * 10 ** (-40 / 10)  # within 40 dB of the peak
    assert 3.0 * torso < freqs[visible].max() < 5.0 * torso
    assert freqs[visible].min() < 0.0  # some body parts move away from the radar (stance foot, arm back-swing)


def test_first_frames_do_not_depend_on_recording_length():
    one = simulate_recording_frames(0, 1, "Normal_free", 0, 1, image_size=32)
    three = simulate_recording_frames(0, 1, "Normal_free", 0, 3, image_size=32)
    assert np.array_equal(one[0][0], three[0][0])
    assert three[1][1]["t_start_s"] - three[0][1]["t_start_s"] == pytest.approx(RadarSettings().frame_hop_s, rel=0.02)
    assert three[0][1]["t_end_s"] > three[1][1]["t_start_s"]  # consecutive frames overlap in time


def test_parameters_are_deterministic_and_conditions_change_recordings():
    assert sample_person(7, 3) == sample_person(7, 3)
    assert sample_person(7, 3) != sample_person(8, 3)
    person = sample_person(7, 3)
    assert sample_recording(7, person, "Bag_free", 2) == sample_recording(7, person, "Bag_free", 2)
    assert sample_recording(7, person, "Bag_free", 2) != sample_recording(7, person, "Bag_line", 2)
    assert len(CONDITION_NAMES) == 8 and "Bag_Phone_line" in CONDITION_NAMES
    with pytest.raises(ValueError, match="unknown walking condition"):
        sample_recording(7, person, "Sprint_line", 0)


# ----------------------------------------------------------------------------------------------- datasets


def _files(root: Path):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


def test_same_seed_gives_identical_images_and_different_seed_differs(tmp_path):
    simulate_dataset(tmp_path / "a", people=2, seed=5, **SMALL)
    simulate_dataset(tmp_path / "b", people=2, seed=5, **dict(SMALL, workers=2))  # worker count must not matter
    simulate_dataset(tmp_path / "c", people=2, seed=6, **SMALL)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(a) == 8 and a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)


def test_flat_layout_names_parameters_and_info(tmp_path):
    out = tmp_path / "sim"
    summary = simulate_dataset(out, people=3, seed=1, **dict(SMALL, per_person=5, recordings_per_person=2))
    assert summary["num_images"] == 15
    assert sorted(p.name for p in out.iterdir()) == ["ID_1", "ID_2", "ID_3", INFO_FILE]
    for n in (1, 2, 3):
        folder = out / f"ID_{n}"
        images = sorted(p.name for p in folder.glob("*.jpg"))
        assert len(images) == 5 and all(NAME.match(f) and NAME.match(f).group(1) == str(n) for f in images)
        assert {NAME.match(f).group(2, 3) for f in images} == {("1", "1"), ("1", "2")}  # case1_1, case1_2
        assert f"ID{n}_case1_1_Doppler1.jpg" in images and f"ID{n}_case1_1_Doppler3.jpg" in images
        records = [json.loads(line) for line in (folder / PARAMETERS_FILE).read_text().splitlines()]
        assert sorted(r["file"] for r in records) == images
        r = records[0]
        assert r["person"] == f"ID_{n}" and r["condition"] == "Normal_line"
        for key in ("height_m", "preferred_speed_mps", "cadence_factor", "arm_swing_gain", "arm_left_right_ratio",
                    "leg_asymmetry", "torso_sway_gain", "torso_bounce_gain", "girth"):
            assert key in r["person_parameters"]
        for key in ("speed_mps", "start_phase", "aspect_deg", "range_m", "direction", "cycle_jitter", "snr_db",
                    "clutter_db"):
            assert key in r["recording_parameters"]
    info = json.loads((out / INFO_FILE).read_text())
    assert info["seed"] == 1 and info["args"]["layout"] == "flat" and info["version"]
    from PIL import Image
    assert Image.open(out / "ID_1" / "ID1_case1_1_Doppler1.jpg").size == (32, 32)


def test_conditions_layout(tmp_path):
    out = tmp_path / "sim"
    simulate_dataset(out, people=2, layout="conditions", conditions=["Normal_line", "Bag_Phone_free"], **SMALL)
    for cond in ("Normal_line", "Bag_Phone_free"):
        for n in (1, 2):
            folder = out / cond / f"ID_{n}"
            assert len(list(folder.glob("*.jpg"))) == 4
            records = [json.loads(x) for x in (folder / PARAMETERS_FILE).read_text().splitlines()]
            assert {r["condition"] for r in records} == {cond}
    assert not (out / "Backpack_line").exists()

    # Flat layout with several conditions: the recordings of each person cycle through them.
    flat = tmp_path / "flat"
    simulate_dataset(flat, people=1, conditions=["Normal_line", "Bag_line"], **dict(SMALL, per_person=2))
    records = [json.loads(x) for x in (flat / "ID_1" / PARAMETERS_FILE).read_text().splitlines()]
    assert [(r["recording"], r["condition"]) for r in records] == [("case1_1", "Normal_line"), ("case1_2", "Bag_line")]


def test_output_folder_safety(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("precious")
    with pytest.raises(FileExistsError, match="not the output of a previous simulation"):
        simulate_dataset(foreign, people=1, **SMALL)
    assert [p.name for p in foreign.iterdir()] == ["thesis.docx"]

    # A previous simulation is replaced, but a file the user added inside it survives.
    out = tmp_path / "sim"
    simulate_dataset(out, people=3, **SMALL)
    (out / "ID_3" / "notes.txt").write_text("keep me")
    simulate_dataset(out, people=2, **SMALL)
    assert (out / "ID_3" / "notes.txt").read_text() == "keep me"
    assert not list((out / "ID_3").glob("*.jpg"))
    assert json.loads((out / INFO_FILE).read_text())["args"]["people"] == 2

    # A symbolic link inside a previous output is never followed when clearing it.
    (foreign / "ID1_case1_1_Doppler1.jpg").write_bytes(b"user image")
    (out / "ID_9").symlink_to(foreign, target_is_directory=True)
    simulate_dataset(out, people=1, **SMALL)
    assert (foreign / "ID1_case1_1_Doppler1.jpg").read_bytes() == b"user image"


def test_cli_and_preview(tmp_path):
    out = tmp_path / "cli"
    preview = tmp_path / "preview.png"
    cmd = [sys.executable, "-m", "microdoppler_finetune.simulate", "--out", str(out), "--people", "2",
           "--per-person", "2", "--recordings-per-person", "1", "--image-size", "32", "--workers", "1",
           "--seed", "3", "--preview", str(preview)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (out / "ID_2").glob("*.jpg")) == ["ID2_case1_1_Doppler1.jpg",
                                                                    "ID2_case1_1_Doppler2.jpg"]
    from PIL import Image
    assert Image.open(preview).size[1] > 300  # a labelled grid with one row per person (2 here)
    refused = subprocess.run(cmd[:4] + [str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "Refusing" in refused.stderr


def test_render_preview_grid_writes_png(tmp_path):
    path = render_preview_grid(tmp_path / "grid.png", people=[1], conditions=["Normal_line", "Backpack_free"],
                               image_size=32)
    from PIL import Image
    assert Image.open(path).size[0] > 200


def test_two_people_are_distinguishable_on_held_out_recordings(tmp_path):
    p1, p2 = sample_person(0, 1), sample_person(0, 2)
    assert (p1.height_m, p1.preferred_speed_mps) != (p2.height_m, p2.preferred_speed_mps)
    out = tmp_path / "two"
    simulate_dataset(out, people=2, per_person=60, recordings_per_person=6, image_size=64, workers=2, progress=False)
    result = held_out_recording_accuracy(out, test_recordings=(4, 5))  # train on case1_*, case2_1; test case2_2/3
    assert result["test_images"] == 40 and result["chance"] == 0.5
    assert result["accuracy"] >= 0.8, result
