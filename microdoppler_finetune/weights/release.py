"""Former home of the released-weights code, kept so that older imports keep working.

The code now lives in one module per job: :mod:`.registry` (the released files), :mod:`.locate` (finding them),
:mod:`.index` (pretrained_index.json), :mod:`.verify` (size/sha256), :mod:`.hub` (Hub metadata and downloads),
:mod:`.convert` (the VA-VAE safetensors conversion) and :mod:`.download` (step2's work). Import from those.
"""
from __future__ import annotations

from microdoppler_finetune.weights.download import DownloadResult, download_pretrained, missing_files_message
from microdoppler_finetune.weights.locate import default_cache_dir, find_pretrained
from microdoppler_finetune.weights.registry import REGISTRY, registry_item_for_timm_model, resolve_name

__all__ = ["DownloadResult", "download_pretrained", "missing_files_message", "default_cache_dir", "find_pretrained",
           "REGISTRY", "registry_item_for_timm_model", "resolve_name"]
