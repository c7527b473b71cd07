"""Dataset layer: scan a spectrogram folder, validate every file, split it once without leaks, write the
manifest every later stage reads, and serve it to PyTorch.

    prepare_dataset(data_root, output_dir, seed=0, val_fraction=0.15, test_fraction=0.15) -> manifest path
    load_manifest(path_or_dir) -> Manifest
    MicroDopplerDataset(manifest, split, image_size=256, flip=False)
"""
from __future__ import annotations

from .errors import (
    DatasetError,
    ManifestExistsError,
    ManifestFormatError,
    NoUsableImagesError,
    OutputInsideDataError,
    UnknownLayoutError,
)
from .layouts import (
    DEFAULT_CONDITION,
    EXPECTED_LAYOUTS,
    IMAGE_EXTENSIONS,
    KNOWN_CONDITIONS,
    ScanResult,
    detect_layout,
    find_dataset_roots,
    natural_key,
    parse_image_name,
    scan_dataset,
)
from .manifest import ALL, LABELS_FILE, MANIFEST_COLUMNS, MANIFEST_FILE, Manifest, load_manifest
from .prepare import default_output_dir, discover_data_root, prepare_dataset
from .splits import GAP, SPLITS, find_leaks
from .validation import REASONS, check_image_bytes, check_image_file, validate_images

__all__ = [
    "ALL", "DEFAULT_CONDITION", "EXPECTED_LAYOUTS", "GAP", "IMAGE_EXTENSIONS", "KNOWN_CONDITIONS", "LABELS_FILE",
    "MANIFEST_COLUMNS", "MANIFEST_FILE", "REASONS", "SPLITS", "DatasetError", "Manifest", "ManifestExistsError",
    "ManifestFormatError", "MicroDopplerDataset", "NoUsableImagesError", "OutputInsideDataError", "ScanResult",
    "UnknownLayoutError", "check_image_bytes", "check_image_file", "default_output_dir", "detect_layout",
    "discover_data_root", "find_dataset_roots", "find_leaks", "load_manifest", "natural_key", "parse_image_name",
    "prepare_dataset", "scan_dataset", "validate_images",
]


def __getattr__(name: str):
    # Imported on first use: it needs torch, which step3 (scan/validate/split) does not.
    if name == "MicroDopplerDataset":
        from .dataset import MicroDopplerDataset

        return MicroDopplerDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
