"""Plain Python values (dict, list, str, int, float, bool, None) for JSON files and checkpoints (nanoGPT style:
no OmegaConf, numpy or Path objects inside saved files)."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any


def to_plain(value: Any, *, finite: bool = False) -> Any:
    """Recursively convert ``value`` to plain types: OmegaConf containers and dataclasses to dicts, tuples to
    lists, numpy and 0-d tensor scalars to numbers, anything else to its string. ``finite``: inf/nan become the
    strings "inf"/"nan" (JSON has no such numbers)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return str(value) if finite and not math.isfinite(value) else float(value)
    if isinstance(value, dict):
        return {str(k): to_plain(v, finite=finite) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return [to_plain(v, finite=finite) for v in items]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_plain(dataclasses.asdict(value), finite=finite)
    if isinstance(value, Path):
        return str(value)
    module = type(value).__module__.split(".")[0]
    if module == "omegaconf":
        from omegaconf import OmegaConf

        return to_plain(OmegaConf.to_container(value, resolve=True), finite=finite)
    if module == "numpy" or module == "torch":
        if getattr(value, "ndim", None) == 0 or not hasattr(value, "ndim"):
            return to_plain(value.item(), finite=finite)
        return to_plain(value.tolist(), finite=finite)
    return str(value)
