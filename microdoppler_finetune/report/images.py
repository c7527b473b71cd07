"""Images of the report as base64 data URIs (the page needs no other file and no network), plus the few plots
the report draws itself (from the CSV/JSON logs the stages wrote) and image strips for sample comparisons.

Every function returns None instead of raising when a file is missing or unreadable: the report shows a note.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Optional, Sequence

MAX_SIDE = 1600  # larger figures are scaled down: the report stays a few MB
MAX_EMBED_BYTES = 400_000  # larger files are re-encoded (photo-like PNG figures as JPEG: a fraction of the size)
MIME = {"PNG": "image/png", "JPEG": "image/jpeg"}


def _encode(image, fmt: str = "PNG", quality: int = 85) -> str:
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format="PNG", optimize=True)
    return f"data:{MIME[fmt]};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def pil_uri(image, fmt: str = "PNG", quality: int = 85) -> str:
    return _encode(image, fmt, quality)


def file_uri(path, max_side: int = MAX_SIDE) -> Optional[str]:
    """A PNG or JPEG file as a data URI: the bytes as they are when small, else scaled down and re-encoded."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with Image.open(path) as image:
            image.load()
            fmt = image.format
            too_big = max(image.size) > max_side or path.stat().st_size > MAX_EMBED_BYTES
            if fmt in MIME and not too_big:
                return f"data:{MIME[fmt]};base64," + base64.b64encode(path.read_bytes()).decode("ascii")
            image = image.copy()
    except (OSError, ValueError, SyntaxError):
        return None
    image.thumbnail((max_side, max_side))
    transparent = "transparency" in image.info or (
        image.mode in ("RGBA", "LA") and image.getchannel("A").getextrema()[0] < 255)  # matplotlib: RGBA, opaque
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGBA" if transparent else "RGB")
    return _encode(image, "PNG" if transparent else "JPEG", quality=90)


def strip_uri(paths: Sequence, thumb: int = 72, gap: int = 2) -> Optional[str]:
    """Up to len(paths) images side by side, each scaled to thumb x thumb (unreadable files left blank)."""
    from PIL import Image

    if not paths:
        return None
    canvas = Image.new("RGB", (len(paths) * (thumb + gap) - gap, thumb), (255, 255, 255))
    drawn = 0
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                tile = image.convert("RGB").resize((thumb, thumb), Image.BICUBIC)
        except (OSError, ValueError, SyntaxError):
            continue
        canvas.paste(tile, (i * (thumb + gap), 0))
        drawn += 1
    return _encode(canvas, "JPEG", 88) if drawn else None


def line_plot(panels: Sequence[dict], *, title: str = "", width: float = 4.4, height: float = 2.9) -> Optional[str]:
    """Side-by-side panels of line plots as one PNG data URI.

    Each panel: {"title": str, "xlabel": str, "ylabel": str, "logy": bool, "series": [{"label", "x", "y",
    "style": "line"|"dots"}]}. Panels without points are dropped; None when none is left.
    """
    panels = [p for p in panels if any(len(s.get("x", [])) for s in p.get("series", []))]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), height), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for series in panel["series"]:
            if not len(series.get("x", [])):
                continue
            style = dict(marker="o", markersize=3, linestyle="--") if series.get("style") == "dots" else {}
            ax.plot(series["x"], series["y"], linewidth=1.2, label=series.get("label"), **style)
        if panel.get("logy"):
            positive = all(v > 0 for s in panel["series"] for v in s.get("y", []) if v == v)
            if positive:
                ax.set_yscale("log")
        ax.set_title(panel.get("title", ""), fontsize=9)
        ax.set_xlabel(panel.get("xlabel", ""), fontsize=8)
        ax.set_ylabel(panel.get("ylabel", ""), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if any(s.get("label") for s in panel["series"]):
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
