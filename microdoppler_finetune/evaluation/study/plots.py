"""The study's plots (matplotlib, PNG): accuracy on validation against each knob, and the test rows per
condition and per person."""
from __future__ import annotations

from pathlib import Path
from typing import List

KNOB_AXES = {"tune:guidance": "guidance scale", "tune:amount": "generated / real training images",
             "tune:filter": "filter threshold (real classifier's probability of the intended person)"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def knob_curves(results: dict, out: Path) -> Path:
    plt = _pyplot()
    groups = [g for g in KNOB_AXES if g in results["tuning"]]
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.4), squeeze=False)
    for ax, group in zip(axes[0], groups):
        curve = results["tuning"][group]
        x = [float(c["label"]) for c in curve["candidates"]]
        for key, style in (("val", "o-"), ("val_withheld", "s--")):
            y = [c[key]["mean"] for c in curve["candidates"]]
            if any(c[key]["n"] for c in curve["candidates"]):
                ax.plot(x, y, style, label="all validation" if key == "val" else "withheld validation pairs")
        ax.axvline(float(curve["chosen"]), color="gray", lw=0.8, ls=":")
        ax.set_xlabel(KNOB_AXES[group], fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.set_title(f"{group.split(':')[1]} (chosen: {curve['chosen']})", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "knobs_on_validation.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def grouped_bars(results: dict, out: Path, key: str, names: List[str], title: str, filename: str) -> Path:
    plt = _pyplot()
    rows = results["rows"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) * len(rows) / 2), 3.6))
    width = 0.8 / len(rows)
    for i, (row_name, row) in enumerate(rows.items()):
        means = [row[key][n]["mean"] for n in names]
        stds = [row[key][n]["std"] for n in names]
        ax.bar([j + i * width for j in range(len(names))], means, width, yerr=stds, capsize=2, label=row_name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))])
    ax.set_xticklabels(names, fontsize=8, rotation=20)
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy (mean ± std over seeds)", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = out / filename
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_plots(results: dict, out: Path) -> List[Path]:
    out = Path(out)
    paths = [knob_curves(results, out)]
    paths.append(grouped_bars(results, out, "per_condition", results["condition_names"],
                              "Test accuracy per walking condition", "per_condition.png"))
    paths.append(grouped_bars(results, out, "per_person", results["person_names"],
                              "Test accuracy per person", "per_person.png"))
    return paths
