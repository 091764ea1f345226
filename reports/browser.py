"""Check report pages as a user sees them: headless Chromium over the DevTools protocol.

``check_pages(paths, shots_dir)`` opens each page from ``file://``, waits until every chart
has rendered (the page sets ``window.interpReport.finished``), and reports per chart how
many data marks its SVG holds, every JavaScript exception and console error or warning, and
a full-page screenshot. Needs a Chromium/Chrome binary (Debian: ``apt-get install chromium``)
and the ``websocket-client`` package; nothing else.

Why a small DevTools client of our own rather than playwright (issue 23, measured Nov 29): the check
needs five protocol calls (navigate, evaluate, console events, screenshot, close); playwright's
wheel is 53 MB (1.65.2, a bundled Node.js driver started per session) against websocket-client's
1 MB, its own browser download cannot run here, so it would drive the same system Chromium, and
``invoke report --check`` runs from the runtime package, where a 53 MB dev-only dependency cannot be.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-default-browser-check", "--disable-extensions",
         "--hide-scrollbars", "--mute-audio", "--remote-allow-origins=*", "--window-size=1280,900")

# Per chart container: does it hold an SVG, and how many data-mark items (not axes or legends) did Vega draw.
PROBE_JS = """JSON.stringify(Array.from(document.querySelectorAll('div.chart')).map(el => ({
  id: el.id,
  svg: !!el.querySelector('svg'),
  canvas: !!el.querySelector('canvas'),
  marks: el.querySelectorAll('svg g.role-mark > *').length,
  text: el.textContent.slice(0, 200)})))"""


class BrowserError(RuntimeError):
    """No usable browser, or it did not answer."""


def find_browser() -> str | None:
    """$INTERP_CHROMIUM, else the first Chromium/Chrome binary on PATH."""
    env = os.environ.get("INTERP_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageCheck:
    path: Path
    charts: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    screenshot: Path | None = None
    state: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors and all(c["svg"] and c["marks"] > 0 for c in self.charts)


class DevTools:
    """One page target driven over its DevTools websocket (synchronous, one call at a time)."""

    def __init__(self, ws_url: str, timeout: float) -> None:
        import websocket  # websocket-client

        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, timeout: float = 30.0, **params: object) -> dict:
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise BrowserError(f"{method}: {msg['error'].get('message')}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)
        raise BrowserError(f"browser did not answer {method} within {timeout:.0f}s")

    def evaluate(self, expression: str) -> Any:  # noqa: ANN401 (whatever JSON the page's expression returns)
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise BrowserError(f"evaluating {expression[:60]!r}: {res['exceptionDetails'].get('text')}")
        return res["result"].get("value")

    def close(self) -> None:
        self.ws.close()


class Chromium:
    """A headless Chromium process with a throwaway profile; use as a context manager."""

    def __init__(self, binary: str | None = None, timeout: float = 30.0) -> None:
        found = binary or find_browser()
        if not found:
            raise BrowserError("no Chromium/Chrome found: install it (Debian: apt-get install chromium) "
                               "or set INTERP_CHROMIUM to its path")
        self.binary: str = found
        self.timeout = timeout

    def __enter__(self) -> Chromium:  # noqa: PYI034 (3.10 has no typing.Self)
        self.profile = tempfile.mkdtemp(prefix="interp-chromium-")
        self.proc = subprocess.Popen([self.binary, *FLAGS, "--remote-debugging-port=0",
                                      f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = (self.proc.stderr.read().decode(errors="replace")[-500:]
                       if self.proc.poll() is not None and self.proc.stderr is not None else "")
                self.__exit__(None, None, None)
                raise BrowserError(f"{self.binary} did not start its DevTools endpoint: {err.strip()}")
            time.sleep(0.1)
        self.port = int(port_file.read_text().split()[0])
        return self

    def new_page(self) -> DevTools:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/json/new?about:blank", method="PUT")
        with urllib.request.urlopen(req, timeout=self.timeout) as r:
            target = json.loads(r.read())
        return DevTools(target["webSocketDebuggerUrl"], self.timeout)

    def __exit__(self, *exc: object) -> None:
        if getattr(self, "proc", None) is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        shutil.rmtree(self.profile, ignore_errors=True)


def _console_text(ev: dict) -> str:
    args = ev["params"].get("args", [])
    return " ".join(str(a.get("value", a.get("description", ""))) for a in args)


def check_page(browser: Chromium, path: Path, shots_dir: Path | None = None, wait_s: float = 60.0) -> PageCheck:
    """Open one page and collect what a user would see go wrong."""
    path = Path(path).resolve()
    result = PageCheck(path)
    page = browser.new_page()
    try:
        for domain in ("Runtime", "Log", "Page"):
            page.call(f"{domain}.enable")
        page.call("Page.navigate", url=path.as_uri())
        deadline = time.monotonic() + wait_s
        while not page.evaluate("!!(window.interpReport && window.interpReport.finished)"):
            if time.monotonic() > deadline:
                result.errors.append(f"charts did not finish rendering within {wait_s:.0f}s")
                break
            time.sleep(0.2)
        result.state = json.loads(page.evaluate("JSON.stringify(window.interpReport || {})") or "{}")
        result.charts = json.loads(page.evaluate(PROBE_JS))
        if shots_dir is not None:
            result.screenshot = _screenshot(page, path, Path(shots_dir))
        page.call("Runtime.evaluate", expression="0")  # drain events that arrived meanwhile
    finally:
        page.close()
    for ev in page.events:
        method, p = ev["method"], ev["params"]
        if method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            result.errors.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            result.errors.append(f"console.{p['type']}: {_console_text(ev)}")
        elif method == "Runtime.consoleAPICalled" and p["type"] == "warning":
            result.warnings.append(f"console.warn: {_console_text(ev)}")
        elif method == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
            target = result.errors if p["entry"]["level"] == "error" else result.warnings
            target.append(f"log {p['entry']['source']}: {p['entry']['text']}")
    return result


def _screenshot(page: DevTools, path: Path, shots_dir: Path) -> Path:
    metrics = page.call("Page.getLayoutMetrics")
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    width, height = 1280, min(int(size["height"]) + 1, 16000)
    page.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
    shot = page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    shots_dir.mkdir(parents=True, exist_ok=True)
    out = shots_dir / f"{path.stem}.png"
    out.write_bytes(base64.b64decode(shot["data"]))
    return out


def check_pages(paths: list[Path], shots_dir: Path | None = None, binary: str | None = None) -> list[PageCheck]:
    with Chromium(binary) as browser:
        return [check_page(browser, p, shots_dir) for p in paths]
