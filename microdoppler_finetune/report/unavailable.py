"""What this run had to do without (no released weights, a random LPIPS backbone or alignment target, no Inception
weights, no GPU), found in the files the stages wrote, for the box at the top of the report.

Each fact is said once, with the files it was found in, so a reader sees at a glance which numbers are only a
demonstration of the machinery.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

from microdoppler_finetune.report.readers import natural_key, read_json

# Phrases the stages use when they fall back to something that is not the real thing.
FALLBACK = re.compile(r"NOT PRETRAINED|NOT pretrained|random[- ]init|random (?:weights|backbone|starting weights)|"
                      r"\bunavailable\b|not available|could not be loaded|offline", re.IGNORECASE)


@dataclass
class Fact:
    key: str
    text: str
    sources: list = field(default_factory=list)


class Facts:
    def __init__(self):
        self.items: dict = {}

    def add(self, key: str, text: str, source: str) -> None:
        fact = self.items.setdefault(key, Fact(key, text))
        if source not in fact.sources:
            fact.sources.append(source)

    def __iter__(self):
        return iter(self.items.values())


def _rel(path: Path, work_dir: Path) -> str:
    try:
        return str(path.relative_to(work_dir))
    except ValueError:
        return str(path)


def from_vae_stages(work_dir: Path, facts: Facts) -> None:
    for path in sorted((work_dir / "vae").glob("*/stage_result.json"), key=lambda p: natural_key(p.parent.name)):
        result = read_json(path)
        if not isinstance(result, dict):
            continue
        source = _rel(path, work_dir)
        target = str(result.get("alignment_target") or "")
        if FALLBACK.search(target):
            facts.add("alignment", f"Random alignment target: the VA-VAE was aligned to {target}, not to the "
                                   f"pretrained DINOv2 features (its VF loss teaches nothing useful).", source)
        perceptual = str(result.get("perceptual") or "")
        if FALLBACK.search(perceptual):
            facts.add("lpips_loss", f"Random LPIPS backbone in the training loss: {perceptual}.", source)
        message = str(result.get("message") or "")
        if re.search(r"random init|random weights|starts from random", message, re.IGNORECASE):
            facts.add("weights", f"No released VA-VAE weights: {result.get('stage')} started from random weights "
                                 f"({message}). 'Before fine-tuning' means these random weights.", source)


def from_validation(work_dir: Path, facts: Facts) -> None:
    for path in sorted((work_dir / "validation").glob("*/metrics.json")):
        data = read_json(path)
        if not isinstance(data, dict):
            continue
        if data.get("lpips_available") is False:
            facts.add("lpips_metric", f"LPIPS metric: {_short(data.get('lpips') or 'unavailable')}: PSNR and SSIM "
                                      f"are reported (the LPIPS backbone file: docs/TROUBLESHOOTING.md).",
                      _rel(path, work_dir))


def _short(text: str, limit: int = 160) -> str:
    """A long message up to its first parenthesis (the full one stays in the file named as the source)."""
    text = str(text)
    return text.split(" (")[0] if len(text) > limit else text


def from_generation(work_dir: Path, facts: Facts) -> None:
    path = work_dir / "evaluation" / "generation" / "generation_metrics.json"
    data = read_json(path)
    if not isinstance(data, dict):
        return
    fid = data.get("inception_fid")
    if isinstance(fid, dict) and fid.get("value") is None:
        facts.add("inception", f"Inception FID: {fid.get('status') or 'not computed'} (the classifier-feature FID "
                               f"is reported instead).", _rel(path, work_dir))


def from_environment(work_dir: Path, facts: Facts) -> None:
    path = work_dir / "environment_info.json"
    info = read_json(path)
    if isinstance(info, dict) and not info.get("gpus"):
        facts.add("gpu", f"No CUDA GPU: everything ran on {info.get('cpu_count', '?')} CPU core(s) with the "
                         f"'{info.get('recommended_preset', 'cpu_demo')}' profile (small images, tiny models).",
                  _rel(path, work_dir))


def _strings(value, path: str = "") -> Iterable[tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, f"{path}[{i}]")
    elif isinstance(value, str):
        yield path, value


def from_log(log: Optional[Sequence[dict]], facts: Facts) -> None:
    """Fallback notes in the pipeline's stage log (report.json) that the files above did not already say."""
    for entry in log or []:
        stage = entry.get("stage", "?")
        before = entry.get("before_finetuning")
        if isinstance(before, dict) and str(before.get("weights", "")).endswith("initial_weights.safetensors"):
            facts.add("weights", "No released VA-VAE weights: 'before fine-tuning' is the random starting point of "
                                 "stage 1.", f"report.json ({stage})")
        for where, text in _strings(entry):
            if FALLBACK.search(text) and not _said(facts, text):
                short = text if len(text) <= 300 else text[:297] + "…"
                facts.add(f"log:{short}", f"{where}: {short}", f"report.json ({stage})")


def _said(facts: Facts, text: str) -> bool:
    lowered = text.lower()
    for fact in facts:
        if lowered in fact.text.lower():
            return True
    keys = {fact.key for fact in facts}
    if "lpips" in lowered and ({"lpips_metric", "lpips_loss"} & keys):
        return True
    if "alignment" in lowered and "alignment" in keys:
        return True
    return False


def collect(work_dir, log: Optional[Sequence[dict]] = None) -> list[Fact]:
    work_dir = Path(work_dir)
    facts = Facts()
    from_vae_stages(work_dir, facts)
    from_validation(work_dir, facts)
    from_generation(work_dir, facts)
    from_environment(work_dir, facts)
    from_log(log, facts)
    order = ["weights", "alignment", "lpips_loss", "lpips_metric", "inception", "gpu"]
    return sorted(facts, key=lambda f: order.index(f.key) if f.key in order else len(order))
