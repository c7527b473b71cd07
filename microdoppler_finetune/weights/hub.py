"""The Hugging Face Hub for step2: file metadata (size, sha256) and downloads into the Hugging Face cache.

Whether the Hub can be used is decided once by :func:`microdoppler_finetune.utils.hub.hub_unreachable_reason`
(huggingface_hub's offline mode, else one short request); after that, an unreachable Hub costs nothing.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable, Optional

from microdoppler_finetune.utils.hub import HUB_PROBE_TIMEOUT_S, hub_unreachable_reason
from microdoppler_finetune.weights.registry import RemoteFile
from microdoppler_finetune.weights.verify import looks_like_sha256


class HubAccess:
    """Metadata and downloads of released files; ``reason`` says why the Hub is not used (empty: it is)."""

    def __init__(self, timeout: float = HUB_PROBE_TIMEOUT_S, log: Callable[[str], None] = print):
        self.timeout = float(timeout)
        self.log = log
        self.reason = ""

    def reachable(self) -> bool:
        if not self.reason:
            self.reason = hub_unreachable_reason(self.timeout) or ""
        return not self.reason

    def metadata(self, remote: RemoteFile) -> Optional[dict]:
        """{'size', 'sha256'} from the Hub, or None when the Hub cannot be used (``reason`` says why)."""
        if not self.reachable():
            return None
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        kwargs = {"timeout": self.timeout}
        if "retry_on_errors" in inspect.signature(get_hf_file_metadata).parameters:
            kwargs["retry_on_errors"] = False
        try:
            meta = get_hf_file_metadata(hf_hub_url(remote.repo_id, remote.filename), **kwargs)
        except Exception as exc:  # noqa: BLE001 - connection errors differ between huggingface_hub versions
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status is not None and status < 500:
                raise FileNotFoundError(f"The Hub answered {status} for {remote.url}: {exc}") from exc
            text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            self.reason = f"the Hugging Face Hub stopped answering ({type(exc).__name__}: {text})"
            return None
        etag = (meta.etag or "").strip('"').lower()
        return {"size": meta.size, "sha256": etag if looks_like_sha256(etag) else None}

    def download(self, remote: RemoteFile) -> Path:
        """Download into the Hugging Face cache (no private copy) and return the cached file's path.

        An interrupted download is resumed from its '.incomplete' file; a file already cached is not fetched again.
        """
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id=remote.repo_id, filename=remote.filename, etag_timeout=self.timeout))
