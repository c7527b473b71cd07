"""The study's generated images: one folder per (guidance scale, sampling seed), written by the DiT's own
sampling code (dit/sampling.py) in the dataset layout, and reused when a rerun asks for the same thing."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional, Sequence

from microdoppler_finetune.dit.sampling import INFO_FILE, SamplerSettings, generate_dataset
from microdoppler_finetune.utils.files import swap_in_folder, temporary_sibling


def pool_folder(root: Path, scale: float, seed: int) -> Path:
    return Path(root) / f"cfg{scale:g}_seed{seed}"


def generate_pool(trained: Path, vae_encoder: Path, out_dir: Path, *, per_pair: int, conditions: Optional[str],
                  pairs: str, settings: SamplerSettings, image_size: Optional[int] = None,
                  device: str = "auto") -> Path:
    """``per_pair`` images of every chosen person x condition pair; an existing folder made by the same DiT with
    the same settings and at least as many images per pair is kept (rerun = resume)."""
    out_dir = Path(out_dir)
    wanted = {"checkpoint": str(Path(trained).resolve()), "sampler": settings.describe(), "pairs": pairs}
    info_file = out_dir / INFO_FILE
    if info_file.is_file():
        info = json.loads(info_file.read_text())
        same = all(info.get(k) == v for k, v in wanted.items())
        if same and int(info.get("per_person", 0)) >= per_pair:
            return out_dir
    tmp = temporary_sibling(out_dir)
    if tmp.exists():
        shutil.rmtree(tmp)
    generate_dataset(trained, vae_encoder, tmp, per_person=per_pair, conditions=conditions, pairs=pairs,
                     settings=settings, image_size=image_size, device=device)
    info = json.loads((tmp / INFO_FILE).read_text())
    info.update(wanted)
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=2))
    return swap_in_folder(tmp, out_dir)


def per_pair_for(amount: float, real_train_images: int, pairs: Sequence) -> int:
    """Images per generated pair so that all pairs together add ``amount`` x the real training images."""
    return max(1, int(round(amount * real_train_images / max(1, len(pairs)))))
