"""DiT training checkpoints: ``<run_dir>/checkpoints/{step:07d}.pt``, found by step number, written atomically.

A checkpoint holds plain types and tensors only (``torch.load(weights_only=True)`` reads it):

    step, model, ema, ema_state, opt, scaler, rng, best_val_loss, dit_config, lora, data, config

``model``/``ema`` are the state_dicts of the trained module (with LoRA adapters when LoRA is on: ``lora`` then
says how to rebuild them); ``ema`` has the released LightningDiT layout (a state_dict under the model's names) and
``ema_state`` the counters and settings of diffusers' EMAModel (checkpoints written before it have
``ema_updates`` instead). ``dit_config`` is the DiT constructor config (resuming forces this architecture, as in
nanoGPT), ``data`` what the DiT was trained on (person and condition names, latent statistics, VA-VAE identity,
the person x condition pairs seen in training), ``config`` the resolved pipeline config as plain dicts.
"""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from microdoppler_finetune.utils.files import atomic_path
from microdoppler_finetune.utils.plain import to_plain
from models.checkpoints import load_torch_file

CHECKPOINT_DIRNAME = "checkpoints"
_STEP_FILE = re.compile(r"^(\d{7,})\.pt$")


def checkpoint_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"{int(step):07d}.pt"


def list_checkpoints(directory: str | Path) -> List[Tuple[int, Path]]:
    """(step, path) of every ``{step:07d}.pt`` in ``directory``, sorted by step number.

    The step is read from the file NAME: never by size or modification time (a copied or touched old file must
    not win over the newest one).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _STEP_FILE.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(directory: str | Path) -> Optional[Path]:
    """The checkpoint with the highest step number, or None when there is none."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def load_latest_readable(directory: str | Path, log=print) -> Tuple[Optional[Path], Optional[dict]]:
    """The newest checkpoint that reads whole, and its content; (None, None) when there is none.

    A newer file that cannot be read (copied in half, damaged on disk, or needing full unpickling) is named in a
    warning and passed over: the run resumes from the last complete state instead of failing or restarting.
    """
    for _, path in reversed(list_checkpoints(directory)):
        try:
            return path, load_checkpoint(path)
        except (ValueError, RuntimeError, EOFError) as exc:
            log(f"WARNING: {path} cannot be read ({str(exc).splitlines()[0][:200]}); not resuming from it. Move it "
                f"away to silence this warning; an earlier checkpoint is tried instead.")
    return None, None


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """torch.save to a temporary name, then rename: an interrupted save never looks like a checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | Path, *, trust_pickle: bool = False) -> dict:
    """A DiT training checkpoint, read weights-only (no mmap: the optimizer state is copied into tensors)."""
    content = load_torch_file(path, trust_pickle=trust_pickle, mmap=False)
    if not isinstance(content, dict):
        raise ValueError(f"{path} holds a {type(content).__name__}, not a checkpoint dict.")
    return content


def prune_checkpoints(directory: str | Path, keep: int) -> List[Path]:
    """Delete all but the ``keep`` highest-step checkpoints; returns the deleted paths."""
    if keep <= 0:
        return []
    found = list_checkpoints(directory)
    removed = []
    for _, path in found[:-keep]:
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


# ----------------------------------------------------------------------------------------------- RNG states


def capture_rng_state() -> dict:
    """Python and torch (CPU + every CUDA device) generator states, as plain types and tensors."""
    state = {"python": to_plain(random.getstate()), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Optional[dict]) -> None:
    if not state:
        return
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
