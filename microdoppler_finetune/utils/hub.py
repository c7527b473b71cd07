"""Can the Hugging Face Hub be reached? One answer per process, kept in huggingface_hub's own offline mode.

huggingface_hub has an offline mode (``HF_HUB_OFFLINE=1``, read into ``huggingface_hub.constants.HF_HUB_OFFLINE``
and asked through ``is_offline_mode()``): every Hub request then fails at once and downloads fall back to the
Hugging Face cache. :func:`hub_unreachable_reason` honours it and, when it is off, sends ONE request to the Hub
(no retries, bounded wall-clock time). When that request gets no answer it turns the offline mode on for the rest
of the process, so that timm, diffusers and our own downloads use the cache or fail within seconds instead of
spending a minute in retries.

Imports nothing else of the project (the networks in models/ use it too).
"""
from __future__ import annotations

import threading
import time
from typing import Optional

HUB_PROBE_TIMEOUT_S = 10.0

# endpoint -> reason it cannot be reached ('' when it answered); one probe per endpoint and process.
_PROBED: dict[str, str] = {}
# huggingface_hub's offline flag as it was before this module switched it on (absent: never switched).
_SWITCHED: dict[str, bool] = {}


def offline_mode() -> bool:
    """huggingface_hub's offline mode: ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``), or set by this module."""
    from huggingface_hub import constants

    is_offline = getattr(constants, "is_offline_mode", None)  # huggingface_hub >= 1.0
    return bool(is_offline()) if callable(is_offline) else bool(constants.HF_HUB_OFFLINE)


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT).rstrip("/")


def _probe(endpoint: str, timeout: float) -> str:
    """'' when the Hub answered one HEAD request within ``timeout`` seconds, else why not."""
    outcome: dict[str, str] = {}

    def ask() -> None:
        from huggingface_hub.utils import get_session

        try:
            response = get_session().head(endpoint, timeout=timeout)
            status = int(response.status_code)
            outcome["reason"] = "" if status < 500 else f"the Hub answered HTTP {status}"
        except Exception as exc:  # noqa: BLE001 - connection errors differ between huggingface_hub versions
            text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            outcome["reason"] = f"{type(exc).__name__}: {text}" if text else type(exc).__name__

    started = time.monotonic()
    # A thread bounds the whole request (name resolution included, which no socket timeout covers).
    worker = threading.Thread(target=ask, name="hf-hub-probe", daemon=True)
    worker.start()
    worker.join(timeout + 1.0)
    seconds = time.monotonic() - started
    if "reason" not in outcome:
        return f"cannot reach the Hugging Face Hub at {endpoint} (no answer within {seconds:.0f} s)"
    if outcome["reason"]:
        return f"cannot reach the Hugging Face Hub at {endpoint} ({outcome['reason']}; {seconds:.1f} s)"
    return ""


def hub_unreachable_reason(timeout: float = HUB_PROBE_TIMEOUT_S, *, refresh: bool = False) -> Optional[str]:
    """Why the Hub cannot be used now (None: it can). THE helper for "are we offline?" in this project.

    Offline mode on: says so without any request. Otherwise one HEAD request to the endpoint (``HF_ENDPOINT``),
    remembered for the process (``refresh`` asks again). No answer: huggingface_hub's offline mode is switched on
    for the rest of the process, so every later Hub call uses the cache or fails at once.
    """
    endpoint = hub_endpoint()
    if refresh:
        forget_probes()
    if offline_mode():
        return _PROBED.get(endpoint) or "HF_HUB_OFFLINE=1 is set (huggingface_hub offline mode)"
    if endpoint not in _PROBED:
        _PROBED[endpoint] = _probe(endpoint, float(timeout))
    reason = _PROBED[endpoint]
    if not reason:
        return None
    from huggingface_hub import constants

    _SWITCHED.setdefault("previous", constants.HF_HUB_OFFLINE)
    constants.HF_HUB_OFFLINE = True  # what is_offline_mode() returns; read by every huggingface_hub request
    return reason


def forget_probes() -> None:
    """Forget the answers, and undo the offline mode this module switched on (tests; a network that came back)."""
    from huggingface_hub import constants

    _PROBED.clear()
    if "previous" in _SWITCHED:
        constants.HF_HUB_OFFLINE = _SWITCHED.pop("previous")
