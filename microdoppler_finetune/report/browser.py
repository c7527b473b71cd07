"""Open a report in headless Chromium and check it: every image decoded (naturalWidth > 0), no console error, no
uncaught exception; optionally save a full-page screenshot.

Talks the DevTools protocol over ``--remote-debugging-pipe`` (JSON messages ending in NUL on file descriptors 3
and 4), so it needs no websocket library and no network port. Standard library only.

    python -m microdoppler_finetune.report work_dir --check [--screenshot page.png]
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

CHROMIUM_ENV = "MDF_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Headless as root in a container: no sandbox, no GPU, nothing that reaches the network by itself.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--disable-extensions", "--disable-default-apps", "--mute-audio",
         "--hide-scrollbars", "--no-default-browser-check", "--remote-debugging-pipe")

IMAGES_JS = """
Promise.all(Array.from(document.images).map(img => img.decode().then(() => null, () => null))).then(() =>
  Array.from(document.images).map(img => ({alt: img.alt, complete: img.complete, width: img.naturalWidth,
                                           height: img.naturalHeight, data: img.src.startsWith('data:image/')})))
"""


def find_chromium() -> Optional[str]:
    if os.environ.get(CHROMIUM_ENV):
        return os.environ[CHROMIUM_ENV]
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageCheck:
    images: int = 0
    broken: list = field(default_factory=list)  # images that did not decode (alt text)
    errors: list = field(default_factory=list)  # console errors, exceptions, failed loads
    title: str = ""
    height: int = 0
    seconds: float = 0.0


def _above(fd: int, lowest: int = 10) -> int:
    import fcntl

    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, lowest)
    os.close(fd)
    return moved


class DevToolsPipe:
    """A Chromium process and its DevTools pipe: send commands, collect events."""

    def __init__(self, binary: str, user_data_dir: str, timeout: float = 60.0):
        self.timeout = timeout
        to_chrome_read, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_write = os.pipe()
        # Above 3 and 4, so placing them there in the child never overwrites one with the other (a fresh process
        # may get exactly 3 and 4 from os.pipe(), and dup2 of a descriptor onto itself keeps it close-on-exec).
        to_chrome_read, from_chrome_write = _above(to_chrome_read), _above(from_chrome_write)

        def child_fds():  # Chromium reads commands on fd 3 and writes replies on fd 4
            os.dup2(to_chrome_read, 3)
            os.dup2(from_chrome_write, 4)

        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
                                        stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                        preexec_fn=child_fds, close_fds=False)
        os.close(to_chrome_read)
        os.close(from_chrome_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list = []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self._from_chrome], [], [], left)
            if ready:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed its DevTools pipe: " + self.stderr_tail())
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message.decode("utf-8"))

    def send(self, method: str, params: Optional[dict] = None, session: Optional[str] = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        try:
            os.write(self._to_chrome, json.dumps(message).encode("utf-8") + b"\0")
        except BrokenPipeError:
            self.process.wait(timeout=10)
            raise RuntimeError(f"Chromium exited (code {self.process.returncode}) before {method}: "
                               + self.stderr_tail()) from None
        deadline = time.time() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: Optional[float] = None) -> dict:
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        deadline = time.time() + (timeout or self.timeout)
        while True:
            event = self._read_message(deadline)
            if event.get("method") == method:
                return event
            self.events.append(event)

    def stderr_tail(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-2000:]

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                try:
                    self.send("Browser.close")
                except (RuntimeError, TimeoutError, OSError):
                    pass
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=10)
        finally:
            for fd in (self._to_chrome, self._from_chrome):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.log.close()


def console_errors(events: list) -> list[str]:
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in
                                                 params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            errors.append("exception: " + str(details.get("exception", {}).get("description") or details.get("text")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            errors.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip())
    return errors


def check_page(path, *, screenshot: Optional[str] = None, width: int = 1280, max_height: int = 16000,
               timeout: float = 90.0, binary: Optional[str] = None) -> PageCheck:
    """Load ``path`` (file://) in headless Chromium and report undecoded images and console errors."""
    binary = binary or find_chromium()
    if binary is None:
        raise FileNotFoundError("No Chromium found (apt-get install chromium, or set MDF_CHROMIUM).")
    started = time.time()
    url = Path(path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="mdf_chromium_") as profile:
        pipe = DevToolsPipe(binary, profile, timeout)
        try:
            targets = pipe.send("Target.getTargets")["targetInfos"]
            page = next((t for t in targets if t.get("type") == "page"), None)
            target_id = page["targetId"] if page else pipe.send("Target.createTarget", {"url": "about:blank"})[
                "targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target_id, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": 900, "deviceScaleFactor": 1,
                                                             "mobile": False}, session=session)
            pipe.send("Page.navigate", {"url": url}, session=session)
            pipe.wait_for("Page.loadEventFired", timeout)
            images = pipe.send("Runtime.evaluate", {"expression": IMAGES_JS, "awaitPromise": True,
                                                    "returnByValue": True}, session=session)["result"]["value"]
            result = PageCheck(images=len(images), seconds=0.0)
            result.broken = [f"{i['alt'] or '(no alt)'}: {i['width']}x{i['height']}"
                             + ("" if i["data"] else " (not a data:image URI)")
                             for i in images if not i["complete"] or i["width"] <= 0 or not i["data"]]
            result.title = pipe.send("Runtime.evaluate", {"expression": "document.title", "returnByValue": True},
                                     session=session)["result"]["value"]
            metrics = pipe.send("Page.getLayoutMetrics", session=session)
            size = metrics.get("cssContentSize") or metrics.get("contentSize") or {}
            result.height = int(size.get("height", 0))
            if screenshot:
                height = max(1, min(result.height, max_height))
                pipe.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                                 "deviceScaleFactor": 1, "mobile": False},
                          session=session)
                shot = pipe.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                            "clip": {"x": 0, "y": 0, "width": width,
                                                                     "height": height, "scale": 1}},
                                 session=session)
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
            time.sleep(0.2)  # late console messages
            pipe.send("Runtime.evaluate", {"expression": "1", "returnByValue": True}, session=session)
            result.errors = console_errors(pipe.events)
        finally:
            pipe.close()
    result.seconds = round(time.time() - started, 2)
    return result
