"""A picture of what a dataset (real or generated) holds: one row per person, a few images each."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import matplotlib

matplotlib.use("Agg")  # headless machines and Kaggle kernels have no display
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from microdoppler_finetune.data import load_manifest  # noqa: E402


def write_dataset_preview(
    dataset_dir: Union[str, Path],
    out_path: Union[str, Path],
    *,
    max_persons: int = 8,
    per_person: int = 6,
    split: str = "train",
    title: Optional[str] = None,
) -> Path:
    """Grid of the first frames of each person's recordings in one split of the manifest."""
    manifest = load_manifest(dataset_dir)
    entries = manifest.entries_for(split)
    persons = sorted({e["person_id"] for e in entries})[:max_persons]
    if not persons:
        raise ValueError(f"The {split} split of {manifest.path} is empty: nothing to preview.")
    fig, axes = plt.subplots(len(persons), per_person, figsize=(1.6 * per_person, 1.7 * len(persons)),
                             squeeze=False)
    for row, person in enumerate(persons):
        rows = [e for e in entries if e["person_id"] == person]
        # Spread the picks over recordings so the row shows variety, not near-duplicate neighbours.
        step = max(1, len(rows) // per_person)
        picks = rows[::step][:per_person]
        for col in range(per_person):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(picks):
                entry = picks[col]
                with Image.open(manifest.image_path(entry)) as img:
                    ax.imshow(img.convert("RGB"))
                ax.set_title(f"{entry['condition']}\n{entry['recording']}", fontsize=6)
            else:
                ax.axis("off")
        axes[row, 0].set_ylabel(manifest.person_names[person], fontsize=8)
    fig.suptitle(title or f"{manifest.data_root.name}: {split} split, {manifest.num_persons} people", fontsize=9)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
