"""The one-time conversion of the pickled VA-VAE release to safetensors (derived data, in our cache folder).

The released ``.pt`` is a Lightning training checkpoint and needs full unpickling. It is unpickled exactly once,
here, and only when its sha256 was checked against the Hub (now, in a recorded earlier run, or by the ETag
huggingface_hub named its cached copy after) or the user passed ``--trust_pickle``. The conversion keeps:

* the VA-VAE (``encoder.*``, ``decoder.*``, ``quant_conv.*``, ``post_quant_conv.*``, ``linear_proj.*``), with its
  architecture and the latent statistics in the metadata (and in ``latents_stats.json``);
* the released PatchGAN discriminator (``loss.discriminator.*``, under its released names), which stage 1 loads
  as the official fine-tuning does. When the release has none (or one that is not a PatchGAN) that is logged and
  recorded in the index as ``discriminator: null``, and stage 1 starts from a random discriminator.

The frozen DINOv2 copy (``foundation_model.*``) and the rest of the loss state (LPIPS, logvar) are dropped.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Optional

from microdoppler_finetune.utils.files import atomic_write_json
from microdoppler_finetune.weights.locate import origin_of
from microdoppler_finetune.weights.registry import LATENTS_STATS_JSON, REGISTRY, VAVAE_CONVERTED_NAME
from microdoppler_finetune.weights.verify import HUB_BACKED_SOURCES, Expected, file_record

VAVAE_KEEP_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "linear_proj.")
DISCRIMINATOR_PREFIX = "loss.discriminator."  # = models.discriminator.RELEASED_DISCRIMINATOR_PREFIX
# 1: VA-VAE only. 2: the released discriminator is kept too (older conversions are redone when the release is here).
CONVERSION_VERSION = 2


def conversion_outdated(entry: dict) -> bool:
    """Our own conversion, written before the discriminator was kept."""
    record = entry.get("converted") or {}
    return record.get("origin") == "cache" and int(record.get("conversion_version", 1)) < CONVERSION_VERSION


def converted_vavae_ready(entry: dict, attached: list, rehash: bool, log: Callable[[str], None]) -> bool:
    """The conversion exists (ours, or ``attached`` as an input) and is unchanged since it was recorded."""
    record = entry.get("converted")
    if record and Path(record["path"]).is_file():
        checked = file_record(Path(record["path"]), record.get("origin", "cache"), None, record,
                              Expected(record["size"], record["sha256"], "recorded at conversion"), rehash, log)
        for key in ("source_sha256", "conversion_version"):
            if key in record:
                checked[key] = record[key]
        entry.update(converted=checked, primary=record["path"], ready=True)
        log(f"  {VAVAE_CONVERTED_NAME}: converted earlier from sha256 {str(record.get('source_sha256'))[:12]}...")
        return True
    if attached:
        path = attached[0]
        checked = file_record(path, origin_of(path), None, None, Expected(), rehash, log)
        entry.update(converted=checked, primary=str(path), ready=True, discriminator=_attached_discriminator(path))
        log(f"  {VAVAE_CONVERTED_NAME}: using attached conversion {path} (sha256 {checked['sha256'][:12]}..., "
            f"first-use; discriminator: {'kept' if entry['discriminator'] else 'none'})")
        return True
    return False


def _attached_discriminator(path: Path) -> Optional[dict]:
    from models.checkpoints import read_safetensors_metadata

    value = read_safetensors_metadata(path).get("discriminator")
    return json.loads(value) if value else None


def _released_discriminator(state: dict, source: str, log: Callable[[str], None]) -> tuple[dict, Optional[dict]]:
    """The release's discriminator tensors (released names) and what they are; ({}, None) when absent or unusable."""
    from models.discriminator import create_discriminator, infer_discriminator_config, load_discriminator_state

    tensors = {k: v for k, v in state.items() if k.startswith(DISCRIMINATOR_PREFIX)}
    if not tensors:
        log(f"  {source} holds no discriminator ({DISCRIMINATOR_PREFIX}*): stage 1 will start from a random one.")
        return {}, None
    inner = {k[len(DISCRIMINATOR_PREFIX):]: v for k, v in tensors.items()}
    try:
        config = infer_discriminator_config(inner)
        report = load_discriminator_state(create_discriminator(config), inner,
                                          source=f"{source} [{DISCRIMINATOR_PREFIX}*]")
    except (KeyError, ValueError) as exc:
        log(f"  WARNING: {source}: the {len(tensors)} {DISCRIMINATOR_PREFIX}* tensors are not a PatchGAN this "
            f"project can load, so they are not kept ({exc}). Stage 1 will start from a random discriminator.")
        return {}, None
    log("  " + report.describe().replace("\n", "\n  "))
    return tensors, {"prefix": DISCRIMINATOR_PREFIX, "tensors": len(tensors), "config": config}


def convert_vavae(cache: Path, entry: dict, paths: dict, trust_pickle: bool, log: Callable[[str], None]) -> dict:
    """Unpickle the released .pt once (trusted by hash or flag) and write the kept weights as safetensors."""
    from models.checkpoints import PickleRefusedError, load_torch_file, save_safetensors
    from models.vavae import _json_config, load_vavae_state_dict

    item = REGISTRY["vavae"]
    pt_name, stats_name = item.files[0].filename, item.files[1].filename
    pt_record = entry["files"][pt_name]
    verified = pt_record.get("sha256_source") in HUB_BACKED_SOURCES
    allow_pickle = verified or trust_pickle
    try:
        content = load_torch_file(paths[pt_name], trust_pickle=allow_pickle)
        stats = load_torch_file(paths[stats_name], trust_pickle=allow_pickle)
    except PickleRefusedError as exc:
        raise PickleRefusedError(
            f"{paths[pt_name]} must be unpickled once to convert it to safetensors, but its sha256 "
            f"({pt_record['sha256'][:16]}...) was never checked against the Hugging Face Hub (it was found locally "
            f"while offline). Either run step2 once with internet access (the Hub's hash is then recorded), or pass "
            f"--trust_pickle if you trust this copy."
        ) from exc
    if allow_pickle:
        why = f"its sha256 matched the {pt_record['sha256_source']} value" if verified else "--trust_pickle was given"
        log(f"  unpickled {paths[pt_name].name} for conversion ({why}).")
    state = content.get("state_dict", content) if isinstance(content, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{paths[pt_name]}: no 'state_dict' in the file; not the released VA-VAE checkpoint.")
    keep = {k: v for k, v in state.items() if k.startswith(VAVAE_KEEP_PREFIXES)}
    mean, std = stats["mean"].flatten().tolist(), stats["std"].flatten().tolist()
    # Load the kept weights into a model: proves every key maps and records the inferred architecture.
    model = load_vavae_state_dict(keep, source=str(paths[pt_name]), latent_stats=(mean, std))
    log("  " + model.load_report.describe().replace("\n", "\n  "))
    discriminator, described = _released_discriminator(state, str(paths[pt_name]), log)
    out = cache / "vavae" / VAVAE_CONVERTED_NAME
    metadata = {
        "format": "ldm-vavae",
        "source_file": pt_name,
        "source_sha256": pt_record["sha256"],
        "conversion_version": str(CONVERSION_VERSION),
        "vavae_config": json.dumps(_json_config(model)),
        "latents_mean": json.dumps(mean),
        "latents_std": json.dumps(std),
    }
    if described:
        metadata["discriminator"] = json.dumps(described)
    save_safetensors({**keep, **discriminator}, out, metadata)
    stats_json = atomic_write_json(cache / "vavae" / LATENTS_STATS_JSON, {
        "mean": mean, "std": std, "source_file": stats_name, "source_sha256": entry["files"][stats_name]["sha256"]},
        indent=1)
    converted = file_record(out, "cache", None, None, Expected(), True, log)
    converted.update(source_sha256=pt_record["sha256"], conversion_version=CONVERSION_VERSION)
    log(f"  wrote {out} ({len(keep)} VA-VAE + {len(discriminator)} discriminator tensors, "
        f"{converted['size'] / 1e6:.1f} MB) and {stats_json}")
    return {"converted": converted, "primary": str(out), "latents_stats_json": str(stats_json),
            "discriminator": described}


def remove_release_copy(path: Path, origin: str, log: Callable[[str], None]) -> bool:
    """Delete a downloaded copy of the release (--remove_pickled): the cached file, and its blob in the HF cache.

    Copies the user provided (--local_dir, Kaggle inputs) are never touched.
    """
    if origin not in ("hub", "hf-cache", "cache"):
        log(f"  kept {path} (--remove_pickled only deletes downloaded copies; this one is from {origin}).")
        return False
    target = Path(os.path.realpath(path))
    if target != path and target.is_file():
        target.unlink()  # the Hugging Face cache's blob; the snapshot entry is a link to it
    if path.exists() or path.is_symlink():
        path.unlink()
    log(f"  removed {path} (--remove_pickled); the conversion records its sha256.")
    return True
