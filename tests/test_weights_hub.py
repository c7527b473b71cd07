"""The one "is the Hub reachable?" helper (microdoppler_finetune.utils.hub) and downloads into the HF cache.

No test touches the network: the endpoint is a closed local port, or huggingface_hub's session is replaced.
"""
from __future__ import annotations

import threading
import time

import huggingface_hub
import huggingface_hub.constants as constants
import huggingface_hub.utils
import pytest

from microdoppler_finetune.utils.hub import forget_probes, hub_unreachable_reason, offline_mode
from microdoppler_finetune.weights.hub import HubAccess
from microdoppler_finetune.weights.registry import REGISTRY


@pytest.fixture
def hub_online(monkeypatch):
    """huggingface_hub's offline mode off and no remembered probe; both restored afterwards."""
    forget_probes()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield monkeypatch
    forget_probes()


class FakeSession:
    def __init__(self, status=200, wait=None):
        self.status, self.wait, self.calls = status, wait, 0

    def head(self, url, timeout=None):
        self.calls += 1
        if self.wait is not None:
            self.wait.wait(60)  # a Hub that never answers (released at teardown)
        return type("Response", (), {"status_code": self.status})()


def no_session():
    raise AssertionError("the Hub was asked although the answer was known")


def test_offline_mode_answers_without_any_request(monkeypatch):
    forget_probes()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.utils, "get_session", no_session)
    assert offline_mode() and "HF_HUB_OFFLINE" in hub_unreachable_reason()


def test_unreachable_hub_is_probed_once_and_switches_huggingface_hub_offline(hub_online):
    hub_online.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # closed port: refused at once
    started = time.monotonic()
    reason = hub_unreachable_reason(timeout=3)
    assert time.monotonic() - started < 5
    assert reason.startswith("cannot reach the Hugging Face Hub at http://127.0.0.1:9")
    assert constants.is_offline_mode()  # every later huggingface_hub call fails at once / uses the cache
    hub_online.setattr(huggingface_hub.utils, "get_session", no_session)
    assert hub_unreachable_reason() == reason  # remembered, with its reason
    forget_probes()
    assert not constants.HF_HUB_OFFLINE  # switched back by the module that switched it


def test_a_hub_that_never_answers_costs_the_timeout_only(hub_online):
    release = threading.Event()
    hub_online.setattr(huggingface_hub.utils, "get_session", lambda: FakeSession(wait=release))
    try:
        started = time.monotonic()
        reason = hub_unreachable_reason(timeout=0.5)
        assert time.monotonic() - started < 3 and "no answer within" in reason
    finally:
        release.set()


def test_reachable_hub_keeps_offline_mode_off(hub_online):
    session = FakeSession(status=200)
    hub_online.setattr(huggingface_hub.utils, "get_session", lambda: session)
    assert hub_unreachable_reason() is None and hub_unreachable_reason() is None
    assert session.calls == 1 and not offline_mode()
    broken = FakeSession(status=503)
    hub_online.setattr(huggingface_hub.utils, "get_session", lambda: broken)
    assert "HTTP 503" in hub_unreachable_reason(refresh=True)


def test_hub_access_reports_the_helpers_reason_and_downloads_into_the_hf_cache(hub_online, tmp_path):
    hub_online.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    hub = HubAccess(timeout=3, log=lambda _: None)
    remote = REGISTRY["vavae"].files[1]
    assert hub.metadata(remote) is None and "cannot reach" in hub.reason

    calls = []

    def fake_download(**kwargs):
        calls.append(kwargs)
        return str(tmp_path / "hf" / "snapshots" / "abc" / kwargs["filename"])

    hub_online.setattr(huggingface_hub, "hf_hub_download", fake_download)
    path = HubAccess(timeout=3).download(remote)
    assert path.name == "latents_stats.pt"
    assert calls == [{"repo_id": remote.repo_id, "filename": remote.filename, "etag_timeout": 3.0}]  # no local_dir
