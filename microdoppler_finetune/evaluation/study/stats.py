"""Rows over seeds: mean ± std, and whether two rows differ by more than their spread."""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence


def summarise(values: Sequence[float]) -> Dict[str, float]:
    """mean, std (sample std, n-1; 0 for one value), n and the values themselves."""
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not values:
        return {"mean": float("nan"), "std": float("nan"), "n": 0, "values": []}
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(values), "values": values}


def spread(a: Dict[str, float], b: Dict[str, float]) -> float:
    """The larger of the two rows' standard deviations: a difference below it is within what a seed moves."""
    return max(a.get("std", 0.0) or 0.0, b.get("std", 0.0) or 0.0)


def compare(row: Dict[str, float], baseline: Dict[str, float]) -> Dict[str, object]:
    """How ``row`` stands against ``baseline`` (both summarise() results): the difference of the means, and a
    verdict that says "no measurable difference" when it is not larger than their spread."""
    diff = row["mean"] - baseline["mean"]
    margin = spread(row, baseline)
    if math.isnan(diff):
        verdict = "not comparable"
    elif abs(diff) <= margin:
        verdict = "no measurable difference"
    else:
        verdict = "better" if diff > 0 else "worse"
    return {"difference": diff, "spread": margin, "verdict": verdict}


def format_row(summary: Optional[Dict[str, float]], digits: int = 3) -> str:
    """``0.812 ± 0.021 (n=3)``; an empty cell for a missing row."""
    if not summary or not summary.get("n"):
        return ""
    return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f} (n={summary['n']})"
