"""Files: content hashes and writes that never leave a half-written file under its final name."""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, Path]
TMP_MARK = ".tmp-"  # temporary names carry this; a killed run's leftovers are recognisable and never loaded
# ".<name>.tmp-<pid>" (temporary_sibling) and ".<name>.old-<pid>" (swap_in_folder): the writer's process id last.
_LEFTOVER = re.compile(r"^\..+\.(?:tmp|old)-(\d+)$")


def file_sha256(path: PathLike, chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def path_sha256(path: PathLike) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, sorted)."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist.")
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path).as_posix()).encode())
        digest.update(bytes.fromhex(file_sha256(file)))
    return digest.hexdigest()


def temporary_sibling(path: PathLike) -> Path:
    """A unique temporary name next to ``path`` (same folder, so the final rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it replaces ``path`` in one rename, on error it is removed.

        with atomic_path(out / "model.pt") as tmp:
            torch.save(state, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _remove_leftovers_of(path)


def atomic_write_text(path: PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_json(path: PathLike, value, **dump_kwargs) -> Path:
    dump_kwargs.setdefault("indent", 2)
    return atomic_write_text(path, json.dumps(value, **dump_kwargs))


def atomic_save_figure(fig, path: PathLike, **savefig_kwargs) -> Path:
    """``fig.savefig`` through a temporary sibling (the format from ``path``'s extension)."""
    path = Path(path)
    savefig_kwargs.setdefault("format", path.suffix.lstrip(".").lower() or "png")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **savefig_kwargs)
    return path


def swap_in_folder(new: PathLike, target: PathLike) -> Path:
    """Replace folder ``target`` by the finished folder ``new`` (two renames; the old one is removed after)."""
    new, target = Path(new), Path(target)
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    if old.exists():
        shutil.rmtree(old)
    _remove_leftovers_of(target)
    return target


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _remove_leftovers_of(path: Path) -> None:
    """After ``path`` was written whole: the temporaries of earlier, killed writes of the same name go."""
    try:
        candidates = list(path.parent.glob(f".{glob.escape(path.name)}.*-*"))
    except OSError:
        return
    for entry in candidates:
        match = _LEFTOVER.match(entry.name)
        if match and entry.name.startswith(f".{path.name}.") and not _process_alive(int(match.group(1))):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def remove_stale_temporaries(folder: PathLike) -> list[Path]:
    """Delete the temporary files and folders (``temporary_sibling``, ``swap_in_folder``) a killed run left in
    ``folder``: those whose writing process is gone. Returns what was removed. Readers never load them anyway
    (hidden names); this only gives the disk space back."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _LEFTOVER.match(entry.name)
        if not match or _process_alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
