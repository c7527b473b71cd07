"""Generated images written as a whole folder: sampled into a temporary sibling and swapped in at the end.

A killed sampling run then never leaves half an image, or a mix of an earlier run's images and new ones, under the
output folder; its leftover (``.<out>.tmp-<pid>``) is never read and goes at the next successful run.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from microdoppler_finetune.utils.files import swap_in_folder, temporary_sibling


def generate_into_folder(checkpoint, vae_encoder, out_dir, **generate_kwargs) -> dict:
    """``generate_dataset`` (microdoppler_finetune.dit.sampling) into ``out_dir`` as a whole. ``out_dir`` must be
    new, empty or an earlier sampling output (it holds generation_info.json): anything else is refused, never
    replaced."""
    from microdoppler_finetune.dit.sampling import INFO_FILE, generate_dataset

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"--out {out_dir} is a file; give a folder for the generated images.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / INFO_FILE).is_file():
        raise FileExistsError(f"{out_dir} is not empty and is not an earlier sampling output (no {INFO_FILE}); "
                              f"refusing to replace what is in it. Give a new or empty folder for the samples.")
    tmp = temporary_sibling(out_dir)
    if tmp.exists():
        shutil.rmtree(tmp)
    info = generate_dataset(checkpoint, vae_encoder, tmp, **generate_kwargs)
    swap_in_folder(tmp, out_dir)
    print(f"Samples in {out_dir}", flush=True)
    return info
