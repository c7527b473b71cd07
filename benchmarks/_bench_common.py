"""Helpers shared by the benchmark scripts: interleaved timing (fair on a shared, drifting machine), device names,
peak memory, random training images."""
from __future__ import annotations

import platform
import statistics
import time
from typing import Callable, Mapping

import torch


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved(parts: Mapping[str, Callable[[], object]], *, repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each callable, the callables run in turn (A B C A B C ...), so a change of the machine's
    speed during the measurement hits every part alike. Ratios of two parts timed here are the figures to quote."""
    for _ in range(warmup):
        for fn in parts.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(repeats):
        for name, fn in parts.items():
            synchronize()
            started = time.perf_counter()
            fn()
            synchronize()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def paired_ratio(a: Callable[[], object], b: Callable[[], object], *, repeats: int = 7,
                 warmup: int = 1) -> dict[str, float]:
    """Times a and b in turn; the ratio b/a (a's speed-up over b) is the median of the per-pair ratios."""
    for _ in range(warmup):
        a()
        b()
    ta, tb, ratios = [], [], []
    for _ in range(repeats):
        synchronize()
        started = time.perf_counter()
        a()
        synchronize()
        middle = time.perf_counter()
        b()
        synchronize()
        ended = time.perf_counter()
        ta.append(middle - started)
        tb.append(ended - middle)
        ratios.append((ended - middle) / max(middle - started, 1e-12))
    return {"a_seconds": statistics.median(ta), "b_seconds": statistics.median(tb),
            "speedup_b_over_a": statistics.median(ratios), "repeats": repeats}


def device_description() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"


class RandomImages(torch.utils.data.Dataset):
    """Seeded random images in [-1, 1] with the fields the VA-VAE module reads (``path`` keys the feature cache)."""

    def __init__(self, count: int, size: int, prefix: str = "bench"):
        self.images = torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
        self.prefix = prefix

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "path": f"{self.prefix}/{i}.jpg", "index": i, "person_id": 0,
                "condition_id": 0, "flipped": False}
