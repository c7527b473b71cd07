"""Write a whole simulated dataset in the layouts real micro-Doppler datasets use.

Layouts (n from 1, frames from 1 within each recording):

* ``flat``:       ``<out>/ID_n/IDn_caseX_Y_DopplerN.jpg``
* ``conditions``: ``<out>/<Condition>/ID_n/IDn_caseX_Y_DopplerN.jpg``

Each ``ID_n`` folder holds ``per_person`` images from ``recordings_per_person`` recordings (``caseX_Y``:
session X, take Y). The frames of one recording are consecutive, overlapping time windows of one long
spectrogram, exactly like real data, so a per-image random split would leak. In the flat layout the
recordings cycle through ``conditions`` (default: Normal_line only); in the conditions layout every
condition folder has its own recordings (default: all eight conditions).

Next to the images, every ``ID_n`` folder has ``parameters.jsonl``: one JSON object per image (file name,
person, condition, recording, frame, time span, and every person / recording parameter that produced it).
The output root gets ``simulation_info.json`` (generator, version, seed, arguments, radar settings,
counts) once everything is written; its presence means "complete".
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from microdoppler_finetune.simulator.gait import cycle_duration_s, gait_regime, relative_velocity
from microdoppler_finetune.simulator.people import (
    CONDITION_NAMES,
    check_condition,
    recording_name,
    sample_person,
    sample_recording,
)
from microdoppler_finetune.simulator.radar import RadarSettings, column_times_s, frame_slices, stft_power
from microdoppler_finetune.simulator.render import colormap_lut, encode_jpeg, spectrogram_image
from microdoppler_finetune.simulator.scene import nominal_cycle_duration, simulate_signal
from microdoppler_finetune.utils.files import TMP_MARK, atomic_write_bytes, atomic_write_json, atomic_write_text

SIMULATOR_VERSION = "1.1.0"
GENERATOR = "microdoppler_finetune.simulator"
INFO_FILE = "simulation_info.json"
IN_PROGRESS_FILE = ".simulation_in_progress.json"
PARAMETERS_FILE = "parameters.jsonl"
LAYOUTS = ("flat", "conditions")
DEFAULT_FLAT_CONDITIONS = ("Normal_line",)
IMAGE_NAME = re.compile(r"^ID(\d+)_case(\d+)_(\d+)_Doppler(\d+)\.jpg$")
PERSON_DIR = re.compile(r"^ID_(\d+)$")


def image_file_name(person_index: int, recording: str, frame: int) -> str:
    return f"ID{person_index}_{recording}_Doppler{frame}.jpg"


# ----------------------------------------------------------------------------------------------- one recording


def recording_record(seed: int, person_index: int, condition: str, recording_index: int,
                     settings: RadarSettings) -> dict:
    """Everything that determines a recording, as stored in parameters.jsonl."""
    person = sample_person(seed, person_index)
    rec = sample_recording(seed, person, condition, recording_index)
    rv = relative_velocity(rec.speed_mps, person.height_m)
    return {
        "person": f"ID_{person_index}",
        "person_index": person_index,
        "condition": condition,
        "recording": recording_name(recording_index),
        "recording_index": recording_index,
        "direction": rec.direction,
        "speed_mps": rec.speed_mps,
        "relative_velocity": rv,
        "gait_regime": gait_regime(rv),
        "model_cycle_duration_s": cycle_duration_s(rec.speed_mps, person.height_m),
        "cycle_duration_s": nominal_cycle_duration(person, rec.speed_mps),
        "torso_doppler_hz": 2 * rec.speed_mps / settings.wavelength,
        "person_parameters": person.to_dict(),
        "recording_parameters": rec.to_dict(),
    }


def recording_power(seed: int, person_index: int, condition: str, recording_index: int, num_frames: int,
                    settings: RadarSettings) -> np.ndarray:
    """Power spectrogram (Doppler bins x columns) of one recording, long enough for ``num_frames`` images."""
    person = sample_person(seed, person_index)
    rec = sample_recording(seed, person, condition, recording_index)
    signal = simulate_signal(person, rec, settings, settings.samples_for_frames(num_frames))
    return stft_power(signal, settings)


def frame_images(power: np.ndarray, num_frames: int, settings: RadarSettings, image_size: int,
                 lut: np.ndarray) -> List[Tuple[np.ndarray, float, float]]:
    """Cut a recording's spectrogram into overlapping frames -> [(RGB uint8, t_start_s, t_end_s)]."""
    times = column_times_s(power.shape[1], settings)
    return [(spectrogram_image(power[:, cols], image_size, settings.dynamic_range_db, lut),
             float(times[cols.start]), float(times[cols.stop - 1]))
            for cols in frame_slices(num_frames, settings)]


def simulate_recording_frames(seed: int, person_index: int, condition: str, recording_index: int,
                              num_frames: int, settings: Optional[RadarSettings] = None, image_size: int = 256,
                              colormap: str = "jet") -> List[Tuple[np.ndarray, dict]]:
    """The RGB images of one recording with their parameter records (nothing written)."""
    settings = settings or RadarSettings()
    check_condition(condition)
    power = recording_power(seed, person_index, condition, recording_index, num_frames, settings)
    base = recording_record(seed, person_index, condition, recording_index, settings)
    out = []
    for frame, (rgb, t0, t1) in enumerate(frame_images(power, num_frames, settings, image_size,
                                                       colormap_lut(colormap)), start=1):
        record = dict(base, file=image_file_name(person_index, base["recording"], frame), frame=frame,
                      t_start_s=t0, t_end_s=t1)
        out.append((rgb, record))
    return out


@dataclass(frozen=True)
class RecordingTask:
    folder: str  # relative to the output root
    seed: int
    person_index: int
    condition: str
    recording_index: int
    num_frames: int
    settings: RadarSettings
    image_size: int


def _run_task(task: RecordingTask, out_dir: str, lut: np.ndarray) -> List[dict]:
    """Simulate one recording and write its JPEGs; returns the parameter records. Runs in a worker."""
    power = recording_power(task.seed, task.person_index, task.condition, task.recording_index, task.num_frames,
                            task.settings)
    base = recording_record(task.seed, task.person_index, task.condition, task.recording_index, task.settings)
    folder = Path(out_dir) / task.folder
    records = []
    for frame, (rgb, t0, t1) in enumerate(frame_images(power, task.num_frames, task.settings, task.image_size,
                                                       lut), start=1):
        name = image_file_name(task.person_index, base["recording"], frame)
        atomic_write_bytes(folder / name, encode_jpeg(rgb))  # a killed run never leaves half an image
        records.append(dict(base, file=name, frame=frame, t_start_s=t0, t_end_s=t1))
    return records


def _run_task_star(args) -> List[dict]:
    return _run_task(*args)


def _worker_context():
    """fork on Linux: instant start and no re-import of the caller's main module (works from notebooks,
    stdin and scripts without a main guard). Workers only run numpy/PIL code, so the usual fork hazard
    (locks held by the parent's threads, e.g. torch's) does not reach them; PyTorch's DataLoader relies on
    the same. Elsewhere fork is unsafe or missing, so spawn."""
    return get_context("fork" if sys.platform.startswith("linux") else "spawn")


# ----------------------------------------------------------------------------------------------- the output folder


def _is_simulator_marker(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def _final_name(name: str) -> str:
    """The final name of one of our temporary files (``.<name>.tmp-<pid>``), else ``name`` itself."""
    if name.startswith(".") and TMP_MARK in name:
        return name[1:name.rindex(TMP_MARK)]
    return name


def _our_files(out_dir: Path) -> Tuple[List[Path], List[Path]]:
    """Files a previous simulation wrote (by name and place) and the folders that held them. Symbolic
    links are never followed: they may point at a user's real data."""
    def real_dir(d: Path) -> bool:
        return d.is_dir() and not d.is_symlink()

    files, folders = [], []
    candidates = [d for d in out_dir.iterdir() if real_dir(d) and PERSON_DIR.match(d.name)]
    for cond in CONDITION_NAMES:
        cdir = out_dir / cond
        if real_dir(cdir):
            candidates += [d for d in cdir.iterdir() if real_dir(d) and PERSON_DIR.match(d.name)]
            folders.append(cdir)
    for person_dir in candidates:
        for f in person_dir.iterdir():
            if f.is_file() and not f.is_symlink() and (IMAGE_NAME.match(_final_name(f.name))
                                                        or _final_name(f.name) == PARAMETERS_FILE):
                files.append(f)  # ours, or the temporary of one of ours left by a killed run
        folders.insert(0, person_dir)
    for name in (INFO_FILE, IN_PROGRESS_FILE):
        if (out_dir / name).is_file():
            files.append(out_dir / name)
    return files, folders


def prepare_output_dir(out_dir) -> Path:
    """Create ``out_dir`` or clear a previous simulation in it. Anything else in a non-empty folder is
    refused, and files that do not look like ours are never deleted."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"--out {out_dir} is a file; give a folder path for the simulated dataset")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        out_dir.mkdir(parents=True, exist_ok=True)
        return out_dir
    if not (_is_simulator_marker(out_dir / INFO_FILE) or _is_simulator_marker(out_dir / IN_PROGRESS_FILE)):
        raise FileExistsError(
            f"{out_dir} is not empty and is not the output of a previous simulation (no {INFO_FILE} written by "
            f"{GENERATOR}). Refusing to write into it so nothing of yours is overwritten: choose an empty or "
            f"new folder for --out.")
    files, folders = _our_files(out_dir)
    for f in files:
        f.unlink()
    for d in folders:
        try:
            d.rmdir()  # only if empty: anything a user put there stays
        except OSError:
            pass
    left = [p for p in out_dir.rglob("*") if p.is_file()]
    if left:
        print(f"[simulate] note: {len(left)} file(s) in {out_dir} are not simulator output and were left alone "
              f"(e.g. {left[0]})", file=sys.stderr)
    return out_dir


# ----------------------------------------------------------------------------------------------- the dataset


def split_frames(per_person: int, recordings: int) -> List[int]:
    """Frames per recording: as even as possible, earlier recordings take the remainder."""
    recordings = min(recordings, per_person)
    base, extra = divmod(per_person, recordings)
    return [base + (1 if r < extra else 0) for r in range(recordings)]


def plan_tasks(*, people: int, per_person: int, seed: int, image_size: int, layout: str,
               conditions: Sequence[str], recordings_per_person: int, settings: RadarSettings) -> List[RecordingTask]:
    tasks = []
    frames = split_frames(per_person, recordings_per_person)
    for person_index in range(1, people + 1):
        if layout == "flat":
            for r, n in enumerate(frames):
                tasks.append(RecordingTask(f"ID_{person_index}", seed, person_index, conditions[r % len(conditions)],
                                           r, n, settings, image_size))
        else:
            for condition in conditions:
                for r, n in enumerate(frames):
                    tasks.append(RecordingTask(f"{condition}/ID_{person_index}", seed, person_index, condition, r, n,
                                               settings, image_size))
    return tasks


def _check_args(people, per_person, image_size, layout, recordings_per_person, seed):
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    for name, value, low in (("people", people, 1), ("per_person", per_person, 1), ("image_size", image_size, 8),
                             ("recordings_per_person", recordings_per_person, 1)):
        if int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def simulate_dataset(out_dir, *, people: int = 31, per_person: int = 150, seed: int = 0, image_size: int = 256,
                     layout: str = "flat", conditions: Optional[Sequence[str]] = None, workers: Optional[int] = None,
                     recordings_per_person: int = 6, settings: Optional[RadarSettings] = None,
                     colormap: str = "jet", progress: bool = True) -> dict:
    """Simulate ``people`` walkers and write their spectrogram images (see the module docstring for the
    layouts). ``per_person`` is the number of images in each ``ID_n`` folder. Same arguments -> the same
    bytes in every image. Returns a summary (also written to ``simulation_info.json``)."""
    _check_args(people, per_person, image_size, layout, recordings_per_person, seed)
    if conditions is None:
        conditions = DEFAULT_FLAT_CONDITIONS if layout == "flat" else CONDITION_NAMES
    conditions = [check_condition(c) for c in conditions]
    if not conditions:
        raise ValueError("conditions is empty: give at least one of " + ", ".join(CONDITION_NAMES))
    settings = settings or RadarSettings()
    workers = max(1, int(workers or os.cpu_count() or 1))
    lut = colormap_lut(colormap)
    out_dir = prepare_output_dir(out_dir)
    args = {"people": people, "per_person": per_person, "seed": seed, "image_size": image_size, "layout": layout,
            "conditions": list(conditions), "recordings_per_person": recordings_per_person, "colormap": colormap}
    atomic_write_json(out_dir / IN_PROGRESS_FILE, {"generator": GENERATOR, "version": SIMULATOR_VERSION, "args": args})

    tasks = plan_tasks(people=people, per_person=per_person, seed=seed, image_size=image_size, layout=layout,
                       conditions=conditions, recordings_per_person=recordings_per_person, settings=settings)
    for folder in sorted({t.folder for t in tasks}):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    total = sum(t.num_frames for t in tasks)
    start = time.perf_counter()
    records: Dict[str, List[dict]] = {}
    job_args = [(t, str(out_dir), lut) for t in tasks]
    if workers == 1:
        results = map(_run_task_star, job_args)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=_worker_context())
        results = pool.map(_run_task_star, job_args, chunksize=max(1, len(tasks) // (workers * 8)))
    done, last_report = 0, start
    try:
        for task, task_records in zip(tasks, results):
            records.setdefault(task.folder, []).extend(task_records)
            done += task.num_frames
            now = time.perf_counter()
            if progress and now - last_report >= 10.0:
                print(f"[simulate] {done}/{total} images ({now - start:.0f} s)", flush=True)
                last_report = now
    except BrokenProcessPool as err:
        raise RuntimeError(
            f"a simulator worker process died ({err}). If you call simulate_dataset from a script on a system "
            f"that spawns workers, put the call under `if __name__ == \"__main__\":`; or pass workers=1.") from err
    finally:
        if pool is not None:
            pool.shutdown()

    for folder, folder_records in records.items():
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in folder_records)
        atomic_write_text(out_dir / folder / PARAMETERS_FILE, lines)
    elapsed = time.perf_counter() - start
    summary = {
        "generator": GENERATOR,
        "version": SIMULATOR_VERSION,
        "seed": seed,
        "args": args,
        "radar": settings.to_dict(),
        "num_images": total,
        "num_recordings": len(tasks),
        "folders": {folder: len(r) for folder, r in sorted(records.items())},
        "parameters_file": f"{PARAMETERS_FILE} in every ID_n folder, one JSON object per image",
        "image_naming": "ID<n>_case<session>_<take>_Doppler<frame>.jpg",
        "elapsed_s": round(elapsed, 2),
        "images_per_s": round(total / max(elapsed, 1e-9), 1),
        "workers": workers,
        "numpy_version": np.__version__,
    }
    atomic_write_json(out_dir / INFO_FILE, summary)  # last: its presence means the simulation finished
    (out_dir / IN_PROGRESS_FILE).unlink()
    if progress:
        print(f"[simulate] wrote {total} images of {people} people to {out_dir} in {elapsed:.1f} s "
              f"({summary['images_per_s']} images/s)", flush=True)
    return dict(summary, out_dir=str(out_dir))
