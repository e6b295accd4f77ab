"""The rendered leaderboard in a real headless Chromium, used as a person would (SPEC §8).

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
messages separated by NUL bytes on file descriptors 3 and 4), so no websocket or browser-driver
package is needed. The page is opened from a file:// URL; it fetches nothing.

Checks: no JavaScript exceptions or console errors, the expected number of rows, a click on a
column header re-orders the rows (and a second click reverses them), the filter box hides rows,
and every plot image decodes (naturalWidth > 0). A full-page screenshot is saved to
``$RRB_ARTIFACTS`` (default ``test-artifacts/`` at the repository root) for CI.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 30.0


def find_chromium() -> str | None:
    for candidate in (os.environ.get("RRB_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (path := shutil.which(candidate)):
            return path
    return None


def _load_test_report():
    # The synthetic-store builder lives in test_report.py; load it by path so this works in any import mode.
    spec = importlib.util.spec_from_file_location("_rrb_test_report", Path(__file__).with_name("test_report.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


class Chromium:
    """A headless Chromium and one page, spoken to over the DevTools protocol on a pipe."""

    def __init__(self, binary: str, profile_dir: Path) -> None:
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
                f"--user-data-dir={profile_dir}", "--remote-debugging-pipe", "about:blank"]
        # Chromium reads commands on fd 3 and writes replies on fd 4: the shell moves our pipe ends there.
        self.process = subprocess.Popen(
            ["/bin/sh", "-c", 'exec "$@" 3<&0 4>&1 </dev/null >/dev/null', "sh", *args],
            stdin=to_browser_read, stdout=from_browser_write, stderr=subprocess.DEVNULL)
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        self.session: str | None = None

    def send(self, method: str, params: dict | None = None, *, session: bool = True) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        reply = self._wait(lambda m: m.get("id") == self._next_id)
        if "error" in reply:
            raise RuntimeError(f"{method} failed: {reply['error']}")
        return reply.get("result", {})

    def forget(self, method: str) -> None:
        """Drop stored events of one kind, so a later wait_event sees only new ones."""
        self.events = [event for event in self.events if event.get("method") != method]

    def navigate(self, url: str) -> None:
        self.forget("Page.loadEventFired")
        self.send("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired")

    def wait_event(self, method: str) -> dict:
        for event in self.events:
            if event.get("method") == method:
                self.events.remove(event)
                return event
        return self._wait(lambda m: m.get("method") == method, keep=False)

    def _wait(self, wanted, keep: bool = True) -> dict:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if wanted(message):
                    return message
                if "method" in message:
                    self.events.append(message)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.process.poll() is not None:
                raise TimeoutError("Chromium did not answer over the DevTools pipe")
            ready, _, _ = select.select([self._from_browser], [], [], remaining)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self._buffer += chunk

    def open_page(self) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)
        attached = self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True},
                             session=False)
        self.session = attached["sessionId"]
        for domain in ("Page.enable", "Runtime.enable", "Log.enable"):
            self.send(domain)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": 1500, "height": 1000, "deviceScaleFactor": 1, "mobile": False})

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluating {expression!r} raised {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click (press + release) at the centre of the element, as a person would."""
        box = self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                            "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
                            "return [r.left + r.width / 2, r.top + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left",
                                                   "clickCount": 1})

    def errors(self) -> list[str]:
        """JavaScript exceptions and console/log errors seen so far."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(json.dumps(params.get("exceptionDetails", {}))[:500])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(json.dumps(params.get("args", []))[:500])
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                found.append(params["entry"].get("text", "")[:500])
        return found

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False)
            self.process.wait(timeout=10)
        except Exception:
            self.process.kill()
            self.process.wait(timeout=10)
        finally:
            os.close(self._to_browser)
            os.close(self._from_browser)


@pytest.fixture(scope="module")
def chromium():
    binary = find_chromium()
    if binary is None:
        pytest.skip("no headless Chromium found (looked for $RRB_CHROMIUM, chromium, chromium-browser, "
                    "google-chrome); install it, e.g. `apt-get install -y chromium`, to run the browser test")
    with tempfile.TemporaryDirectory(prefix="rrb-chromium-") as profile:
        browser = Chromium(binary, Path(profile))
        try:
            browser.open_page()
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    report_tests = _load_test_report()
    from benchmark.report import BoardKey, render_leaderboards

    results, telemetry = report_tests.synthetic_store(report_tests.standard_specs(), plugin_attack=True)
    out = tmp_path_factory.mktemp("browser-leaderboard")
    render_leaderboards(results, telemetry, out)
    return out / f"{BoardKey('digits', 'smoke', 'rob28', 1).slug}.html"


def entries(browser: Chromium) -> list[str]:
    return browser.evaluate("Array.from(document.querySelectorAll('#leaderboard tbody tr'))"
                            ".filter(r => !r.hidden).map(r => r.cells[1].textContent)")


def header_selector(browser: Chromium, label: str) -> str:
    index = browser.evaluate("Array.from(document.querySelectorAll('#leaderboard thead th'))"
                             f".findIndex(th => th.textContent.trim() === {json.dumps(label)})")
    assert index >= 0, f"no column {label!r}"
    return f"#leaderboard thead th:nth-child({index + 1})"


def test_leaderboard_page_in_headless_chromium(chromium, page):
    chromium.navigate(page.as_uri())

    # Rows in ERS order, the malicious entry shown as text, and no script of its making ran.
    by_ers = ["act", "my-defense(beta=0.7)", "evil(<script>alert(1)</script>|x)", "nt"]
    assert entries(chromium) == by_ers
    assert chromium.evaluate("document.querySelectorAll('script').length") == 1
    assert chromium.evaluate("document.getElementById('shown').textContent") == "4 of 4 entries shown"

    # Click R@1: numbers start descending (nt has the best benign recall), a second click reverses.
    chromium.click(header_selector(chromium, "R@1"))
    by_r1 = ["nt", "evil(<script>alert(1)</script>|x)", "my-defense(beta=0.7)", "act"]
    assert entries(chromium) == by_r1
    chromium.click(header_selector(chromium, "R@1"))
    assert entries(chromium) == by_r1[::-1]
    # Text columns sort A–Z first.
    chromium.click(header_selector(chromium, "Entry"))
    assert entries(chromium) == sorted(by_ers, key=str.lower)
    # ERS again (a fresh column starts descending): the page's own order comes back.
    chromium.click(header_selector(chromium, "ERS"))
    assert entries(chromium) == by_ers

    # Typing in the filter box hides the rows that do not match.
    chromium.click("#filter")
    chromium.send("Input.insertText", {"text": "plugin"})
    assert entries(chromium) == ["my-defense(beta=0.7)"]
    assert chromium.evaluate("document.getElementById('shown').textContent") == "1 of 4 entries shown"
    chromium.evaluate("const f = document.getElementById('filter'); f.value = '';"
                      "f.dispatchEvent(new Event('input'))")
    assert len(entries(chromium)) == 4

    # Every plot decodes.
    widths = chromium.evaluate("Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) == 4 and all(w > 0 for w in widths), widths

    assert chromium.errors() == []

    # Full-page screenshot for the CI artifacts, wide enough to show the whole table.
    width = max(1500, chromium.evaluate("document.getElementById('leaderboard').scrollWidth + 64"))
    chromium.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": 1000, "deviceScaleFactor": 1, "mobile": False})
    chromium.evaluate("document.querySelector('.scroll').scrollLeft = 0; window.scrollTo(0, 0)")
    height = chromium.evaluate("Math.ceil(document.documentElement.scrollHeight)")
    shot = chromium.send("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
    artifacts = Path(os.environ.get("RRB_ARTIFACTS", REPO / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    png = base64.b64decode(shot["data"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    (artifacts / "leaderboard.png").write_bytes(png)


def test_index_page_links_to_the_leaderboard(chromium, page):
    chromium.navigate((page.parent / "index.html").as_uri())
    links = chromium.evaluate("Array.from(document.querySelectorAll('#boards a')).map(a => a.getAttribute('href'))")
    assert links == [page.name, page.with_suffix(".md").name]
    chromium.forget("Page.loadEventFired")
    chromium.click("#boards a")
    chromium.wait_event("Page.loadEventFired")
    assert chromium.evaluate("location.pathname").endswith(page.name)
    assert chromium.errors() == []
