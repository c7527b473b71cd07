"""Errors of the dataset layer. Each carries a message that names the file or folder and the fix."""
from __future__ import annotations


class DatasetError(Exception):
    """Base class: the step3 CLI prints these without a traceback and exits with status 2."""


class UnknownLayoutError(DatasetError):
    """The data folder does not look like any supported layout."""


class NoUsableImagesError(DatasetError):
    """A person (or the whole data folder) ends up without a single usable image."""


class ManifestExistsError(DatasetError):
    """A manifest from other inputs or settings already exists; later stages depend on it."""


class OutputInsideDataError(DatasetError):
    """The output folder lies inside the (read-only) data folder."""


class ManifestFormatError(DatasetError):
    """manifest.csv / user_labels.json are missing, incomplete or inconsistent."""


class UnreadableFolderError(DatasetError):
    """A folder of the data cannot be listed (permissions, I/O error)."""
