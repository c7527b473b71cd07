"""Fault hooks installed in a child process (see faults.launch), driven by environment variables.

MDF_FAULT_WATCH=sub1,sub2   print ``MDF_FAULT open <path>`` when a file whose path contains one of the substrings
                            is opened for writing, and ``MDF_FAULT replaced <path>`` when one is renamed into place
MDF_FAULT_PAUSE=sub:n       at the n-th write-open of a path containing ``sub``: write nothing more, print
                            ``MDF_FAULT paused <path>`` and sleep (the test kills the process there: a crash in the
                            middle of writing that file)

torch.save and safetensors' save_file are routed through Python's open (they write from C++/Rust otherwise), so
checkpoint and shard writes are seen too. Markers go straight to file descriptor 2 (no buffering; forked
workers included).
"""
import builtins
import io
import os
import shutil
import sys
import time

_state = {"paused_count": 0}


def _rank() -> str:
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))


def _say(event: str, path) -> None:
    """One marker line: event, path, then (after a tab) the process's rank and id."""
    line = f"MDF_FAULT {event} {os.fsdecode(path)}\trank={_rank()} pid={os.getpid()}\n"
    os.write(2, line.encode("utf-8", "replace"))


def _watched(path: str) -> bool:
    watch = [w for w in os.environ.get("MDF_FAULT_WATCH", "").split(",") if w]
    return any(w in path for w in watch)


def _maybe_pause(path: str) -> None:
    spec = os.environ.get("MDF_FAULT_PAUSE", "")
    if not spec:
        return
    sub, _, nth = spec.rpartition(":")
    if sub not in path:
        return
    _state["paused_count"] += 1
    if _state["paused_count"] == int(nth):
        _say("paused", path)
        time.sleep(3600)


def install() -> None:
    if _state.get("installed"):
        return
    _state["installed"] = True
    if os.environ.get("MDF_FAULT_WATCH"):
        _say("process", sys.argv[0] if sys.argv else "?")
    original_open = builtins.open

    def open_hook(file, mode="r", *args, **kwargs):
        handle = original_open(file, mode, *args, **kwargs)
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
            path = os.fsdecode(file)
            if _watched(path):
                _say("open", path)
            _maybe_pause(path)
        return handle

    builtins.open = open_hook
    io.open = open_hook

    def renamed(original):
        def hook(src, dst, *args, **kwargs):
            result = original(src, dst, *args, **kwargs)
            if _watched(os.fsdecode(dst)):
                _say("replaced", dst)
            return result
        return hook

    os.replace = renamed(os.replace)
    os.rename = renamed(os.rename)
    shutil.move = renamed(shutil.move)

    import torch

    original_save = torch.save

    def save_hook(obj, f, *args, **kwargs):
        if isinstance(f, (str, bytes, os.PathLike)):
            buffer = io.BytesIO()
            original_save(obj, buffer, *args, **kwargs)
            with builtins.open(f, "wb") as handle:
                handle.write(buffer.getvalue())
            return None
        return original_save(obj, f, *args, **kwargs)

    torch.save = save_hook

    import safetensors.torch

    def save_file_hook(tensors, filename, metadata=None):
        data = safetensors.torch.save(tensors, metadata=metadata)
        with builtins.open(filename, "wb") as handle:
            handle.write(data)

    safetensors.torch.save_file = save_file_hook
