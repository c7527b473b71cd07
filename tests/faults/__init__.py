"""Helpers of the fault tests (tests/test_fault_*.py): run a real command in a child process, kill it at a
seeded moment, and check what it left on disk.

The child runs under :mod:`faults.launch`, which installs :mod:`faults.hook` (markers on every file write and
rename, and an optional pause inside a chosen write) before it runs the command's module.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

TESTS_DIR = Path(__file__).resolve().parents[1]
TMP_MARK = ".tmp-"


def child_env(all_processes: bool = False, **extra: str) -> dict:
    """The environment of a child run: one thread (as the in-process references), the fault hooks importable,
    no progress bars; ``extra`` adds MDF_FAULT_* settings. ``all_processes``: the hooks are installed in every
    Python process started with this environment (faults/site/sitecustomize.py), e.g. each DDP rank."""
    env = dict(os.environ)
    paths = [str(TESTS_DIR)] + ([str(TESTS_DIR / "faults" / "site")] if all_processes else [])
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [env.get("PYTHONPATH")] if p])
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MDF_PROGRESS": "0", "PYTHONUNBUFFERED": "1"})
    env.update({k: str(v) for k, v in extra.items()})
    return env


def command(module: str, *args) -> list:
    """``python -m faults.launch MODULE ARGS``: the module's command line with the fault hooks installed."""
    return [sys.executable, "-m", "faults.launch", module, *[str(a) for a in args]]


@dataclass
class Run:
    returncode: Optional[int]
    output: str
    killed: bool
    seconds: float

    def markers(self, event: str, rank: Optional[str] = None) -> list:
        """Paths of the hook's ``event`` lines (of one rank's process when ``rank`` is given)."""
        found = []
        for line in self.output.splitlines():
            if line.startswith(f"MDF_FAULT {event} "):
                path, _, where = line.split(" ", 2)[2].partition("\t")
                if rank is None or f"rank={rank} " in where + " ":
                    found.append(path)
        return found

    def ranks_writing(self, under: str) -> set:
        """The ranks of the processes that opened a file under ``under`` for writing."""
        return {line.split("\trank=")[1].split()[0] for line in self.output.splitlines()
                if line.startswith(f"MDF_FAULT open {under}") and "\trank=" in line}

    def pid_of_rank(self, rank: str) -> Optional[int]:
        for line in self.output.splitlines():
            if line.startswith("MDF_FAULT process ") and f"\trank={rank} " in line:
                return int(line.rsplit("pid=", 1)[1])
        return None


def run(cmd: Sequence[str], *, env: dict, cwd: Optional[Path] = None, timeout: float = 240,
        kill_on: Optional[str] = None, kill_delay: float = 0.0, occurrence: int = 1,
        kill_rank: Optional[str] = None) -> Run:
    """Run ``cmd``; with ``kill_on`` (a regex), SIGKILL its whole process group ``kill_delay`` seconds after the
    ``occurrence``-th output line that matches (stdout and stderr together), or with ``kill_rank`` only the process
    of that DDP rank (the hooks name it: child_env(all_processes=True, MDF_FAULT_WATCH=...)). Fails the test on
    ``timeout``."""
    started = time.time()
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                            start_new_session=True, text=True, errors="replace")
    lines: list[str] = []
    killed = threading.Event()
    pattern = re.compile(kill_on) if kill_on else None

    def kill():
        try:
            if kill_rank is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the command and any worker it started
            else:
                pids = [int(line.rsplit("pid=", 1)[1]) for line in list(lines)
                        if line.startswith("MDF_FAULT process ") and f"\trank={kill_rank} " in line]
                os.kill(pids[-1], signal.SIGKILL)
            killed.set()
        except (ProcessLookupError, IndexError):
            pass

    def reader():
        seen = 0
        for line in proc.stdout:
            lines.append(line)
            if pattern is not None and not killed.is_set() and pattern.search(line):
                seen += 1
                if seen == occurrence:
                    timer = threading.Timer(kill_delay, kill)
                    timer.daemon = True
                    timer.start()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        thread.join(5)
        raise AssertionError(f"{' '.join(map(str, cmd))} ran past {timeout} s; output:\n{''.join(lines)[-4000:]}")
    thread.join(10)
    return Run(code, "".join(lines), killed.is_set(), time.time() - started)


def seeded_delay(stage: str, low: float, high: float, seed: int = 13) -> float:
    """A kill moment for one stage: random, but the same on every run of the tests."""
    return random.Random(f"{seed}:{stage}").uniform(low, high)


# ------------------------------------------------------------------------------------------- what is on disk


def temporaries(root: Path) -> list:
    """Leftovers of interrupted writes (our temporary names, or anything hidden with .tmp in it)."""
    return sorted(p for p in Path(root).rglob("*")
                  if TMP_MARK in p.name or (p.name.startswith(".") and ".tmp" in p.name))


def _is_temporary(path: Path, root: Path) -> bool:
    return any(TMP_MARK in part or (part.startswith(".") and (".tmp" in part or ".old-" in part))
               for part in path.relative_to(root).parts)


def check_file(path: Path) -> None:
    """Open ``path`` the way its readers do; raises when it is half-written (or otherwise unreadable)."""
    suffix = path.suffix.lower()
    if path.stat().st_size == 0 and suffix not in (".txt", ".log", ".csv", ".md"):
        raise ValueError(f"{path} is empty")
    if suffix == ".json":
        json.loads(path.read_text())
    elif suffix == ".jsonl":
        for line in path.read_text().splitlines():
            json.loads(line)
    elif suffix in (".jpg", ".jpeg", ".png"):
        from PIL import Image

        with Image.open(path) as image:
            image.load()
    elif suffix == ".safetensors":
        from safetensors.torch import load_file

        load_file(str(path))
    elif suffix in (".pt", ".ckpt", ".pth", ".bin"):
        import torch

        torch.load(str(path), map_location="cpu", weights_only=True)
    elif suffix in (".yaml", ".yml"):
        from omegaconf import OmegaConf

        OmegaConf.load(path)
    elif suffix == ".csv":
        import csv

        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))
        if rows and len({len(r) for r in rows if r}) > 1 and not path.name == "metrics.csv":
            raise ValueError(f"{path}: rows of different lengths (cut short?)")


def half_written(root: Path) -> list:
    """Every file under its final name (not a temporary) that cannot be read whole: '<path>: <why>' lines.
    TensorBoard event files are append-only logs and not checked."""
    bad = []
    for path in sorted(Path(root).rglob("*")):
        if not path.is_file() or _is_temporary(path, root) or path.name.startswith("events.out.tfevents"):
            continue
        try:
            check_file(path)
        except Exception as exc:  # noqa: BLE001 - any failure to read is what we look for
            bad.append(f"{path.relative_to(root)}: {type(exc).__name__}: {str(exc)[:200]}")
    return bad


def content_digest(path: Path) -> str:
    """sha256 of a file's content: its bytes, or for safetensors its tensors and metadata (the header's key order
    changes from process to process)."""
    import hashlib

    if path.suffix != ".safetensors":
        return hashlib.sha256(path.read_bytes()).hexdigest()
    from safetensors import safe_open

    digest = hashlib.sha256()
    with safe_open(str(path), framework="pt") as handle:
        digest.update(json.dumps(handle.metadata() or {}, sort_keys=True).encode())
        for key in sorted(handle.keys()):
            tensor = handle.get_tensor(key).contiguous()
            digest.update(f"{key}{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(-1).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def file_digests(root: Path, pattern: str = "**/*", skip: Sequence[str] = ()) -> dict:
    """{relative path: content digest} of the final files under ``root`` matching ``pattern``."""
    out = {}
    for path in sorted(Path(root).glob(pattern)):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not _is_temporary(path, root) and not any(re.search(s, rel) for s in skip):
            out[rel] = content_digest(path)
    return out
