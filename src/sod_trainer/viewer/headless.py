"""Load a page in headless Chromium over the DevTools protocol: DOM queries, console errors, screenshots.

For the viewer's tests, its benchmark and the docs screenshot; nothing in training uses it. Needs a Chromium
binary (Debian: ``apt-get install chromium``; or ``SOD_CHROMIUM=/path/to/chrome``) and ``websocket-client``
(``pip install websocket-client``, part of the ``tests`` extra).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["find_chromium", "HeadlessPage", "ChromiumUnavailable"]

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


class ChromiumUnavailable(RuntimeError):
    """No Chromium binary, or no ``websocket-client`` to talk to it."""


def find_chromium() -> str | None:
    """``$SOD_CHROMIUM`` or the first Chromium/Chrome on ``PATH``; None when there is none."""
    explicit = os.environ.get("SOD_CHROMIUM")
    if explicit:
        return explicit if os.path.exists(explicit) else shutil.which(explicit)
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class HeadlessPage:
    """One headless Chromium with one tab, driven over CDP; use as a context manager.

    ``errors`` collects uncaught exceptions, ``console.error`` calls and browser log errors; ``requests`` every
    URL the page asked for (to check that a page fetches nothing from the network).
    """

    def __init__(self, width: int = 1280, height: int = 900, timeout: float = 60.0, binary: str | None = None):
        self.width, self.height, self.timeout = width, height, timeout
        self.binary = binary or find_chromium()
        if self.binary is None:
            raise ChromiumUnavailable("No Chromium found: install Debian's `chromium` package (apt-get install "
                                      "chromium) or set SOD_CHROMIUM to a Chrome/Chromium binary.")
        try:
            import websocket  # noqa: F401
        except ImportError as error:
            raise ChromiumUnavailable("Talking to Chromium needs websocket-client: pip install websocket-client "
                                      "(part of sod-trainer[tests]).") from error
        self.errors: list[str] = []
        self.requests: list[str] = []
        self._events: list[dict[str, Any]] = []
        self._next_id = 0
        self._process: subprocess.Popen | None = None
        self._socket = None
        self._profile: str | None = None

    # ------------------------------------------------------------------ process and connection
    def __enter__(self) -> HeadlessPage:
        import websocket

        self._profile = tempfile.mkdtemp(prefix="sod-chromium-")
        log = open(os.path.join(self._profile, "stderr.log"), "wb")
        self._process = subprocess.Popen(
            [self.binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--remote-debugging-port=0",
             "--remote-allow-origins=*", f"--user-data-dir={self._profile}",
             f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        log.close()
        port = self._wait_for_port()
        deadline = time.monotonic() + self.timeout
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
                targets = [t for t in json.loads(response.read()) if t.get("type") == "page"]
            if targets or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if not targets:
            raise ChromiumUnavailable("Chromium started but opened no page target.")
        self._socket = websocket.create_connection(targets[0]["webSocketDebuggerUrl"], timeout=self.timeout,
                                                   suppress_origin=True)
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  width=self.width, height=self.height, deviceScaleFactor=1, mobile=False)
        return self

    def _wait_for_port(self) -> int:
        marker = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                stderr = (Path(self._profile) / "stderr.log").read_text(errors="replace")[-2000:]
                raise ChromiumUnavailable(f"Chromium exited with {self._process.returncode}: {stderr}")
            if marker.exists():
                lines = marker.read_text().split()
                if lines:
                    return int(lines[0])
            time.sleep(0.05)
        raise ChromiumUnavailable(f"Chromium did not open its DevTools port within {self.timeout:.0f} s.")

    def __exit__(self, *exc_info) -> None:
        try:
            if self._socket is not None:
                try:
                    self.send("Browser.close", wait=False)
                except Exception:  # closing anyway
                    pass
                self._socket.close()
        finally:
            if self._process is not None:
                try:
                    self._process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait(timeout=10)
            if self._profile:
                shutil.rmtree(self._profile, ignore_errors=True)

    # ------------------------------------------------------------------ protocol
    def _record(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "exception")
            self.errors.append(f"uncaught: {text}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.errors.append(f"console.{params['type']}: {args}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            self.errors.append(f"log: {params['entry'].get('text')} ({params['entry'].get('url', '')})")
        elif method == "Network.requestWillBeSent":
            self.requests.append(params.get("request", {}).get("url", ""))
        self._events.append(message)

    def send(self, method: str, wait: bool = True, **params: Any) -> dict[str, Any]:
        """Send one CDP command; returns its result (raises on a protocol error)."""
        self._next_id += 1
        ident = self._next_id
        self._socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        if not wait:
            return {}
        while True:
            message = json.loads(self._socket.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"CDP {method} failed: {message['error']}")
                return message.get("result", {})
            self._record(message)

    def _wait_event(self, method: str, timeout: float | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + (timeout or self.timeout)
        for index, event in enumerate(self._events):
            if event.get("method") == method:
                return self._events.pop(index)
        while time.monotonic() < deadline:
            message = json.loads(self._socket.recv())
            self._record(message)
            if message.get("method") == method:
                self._events.remove(message)
                return message
        raise TimeoutError(f"No {method} within {timeout or self.timeout:.0f} s.")

    # ------------------------------------------------------------------ what tests and scripts use
    def goto(self, url: str, ready: str | None = "document.body && document.body.dataset.ready === '1'") -> float:
        """Load ``url`` (a path or URL) and wait for the load event and ``ready``; returns the seconds it took."""
        if "://" not in url:
            url = Path(url).resolve().as_uri()
        self._events = [e for e in self._events if e.get("method") != "Page.loadEventFired"]
        started = time.perf_counter()
        self.send("Page.navigate", url=url)
        self._wait_event("Page.loadEventFired")
        if ready:
            self.wait_for(ready)
        return time.perf_counter() - started

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (JSON-able), evaluated in the page."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise RuntimeError(f"JavaScript error: {details.get('exception', {}).get('description', details)}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float | None = None) -> Any:
        """Poll until ``expression`` is truthy; returns its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} stayed falsy for {timeout or self.timeout:.0f} s.")
            time.sleep(0.02)

    def screenshot(self, path: str | os.PathLike, full_height: int | None = None) -> Path:
        """A PNG of the viewport (or of the top ``full_height`` pixels of the page)."""
        if full_height:
            self.send("Emulation.setDeviceMetricsOverride", width=self.width, height=full_height,
                      deviceScaleFactor=1, mobile=False)
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
