"""Reports render offline: open index.html and a quick report of notebook 01 from file:// in headless
Chromium with all name resolution blocked, and check for console errors, network requests and that the
interactive head view drew its SVG.

Chromium is driven through the DevTools protocol over ``--remote-debugging-pipe`` (standard library
only). Skipped when ``/usr/bin/chromium`` is missing (``scripts/install_browser.sh`` installs it).
Screenshots are left in the test's tmp folder (see the printed path).
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from pathlib import Path

import pytest

from bertology import cli, report

CHROMIUM = os.environ.get("BERTOLOGY_CHROMIUM", "/usr/bin/chromium")
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:", "chrome:", "devtools:")

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"{CHROMIUM} not found: headless Chromium is needed for the offline rendering test "
    "(install it with scripts/install_browser.sh, or set BERTOLOGY_CHROMIUM)",
)


class Browser:
    """A minimal DevTools-protocol client for one headless Chromium with networking blocked."""

    def __init__(self, profile_dir: Path, width: int = 1280, height: int = 900):
        r_in, w_in = os.pipe()  # we write commands, Chromium reads them on fd 3
        r_out, w_out = os.pipe()  # Chromium writes replies and events on fd 4

        def child_fds():
            os.dup2(r_in, 3)
            os.dup2(w_out, 4)

        args = [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
            "--disable-extensions", "--host-resolver-rules=MAP * ~NOTFOUND", "--hide-scrollbars",
            f"--window-size={width},{height}", f"--user-data-dir={profile_dir}", "--remote-debugging-pipe",
            "about:blank",
        ]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, pass_fds=(3, 4), preexec_fn=child_fds)
        os.close(r_in)
        os.close(w_out)
        self._w = os.fdopen(w_in, "wb", buffering=0)
        self._r = os.fdopen(r_out, "rb", buffering=0)
        self._next = 0
        self._replies: dict[int, queue.Queue] = {}
        self.events: list[dict] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        self.width, self.height = width, height
        self.session = None

    def _read(self) -> None:
        buf = b""
        while True:
            chunk = self._r.read(65536)
            if not chunk:
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self._lock:
                        q = self._replies.get(msg["id"])
                    if q is not None:
                        q.put(msg)
                else:
                    with self._lock:
                        self.events.append(msg)

    def send(self, method: str, params: dict | None = None, session: bool = True, timeout: float = 30) -> dict:
        with self._lock:
            self._next += 1
            mid = self._next
            q = self._replies[mid] = queue.Queue()
        msg = {"id": mid, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        self._w.write(json.dumps(msg).encode() + b"\0")
        try:
            reply = q.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no reply to {method} within {timeout} s") from None
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def open(self) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})

    def navigate(self, url: str, timeout: float = 60, settle: float = 0.5) -> list[dict]:
        """Load ``url``; return the events it caused (after the load event plus ``settle`` seconds)."""
        with self._lock:
            start = len(self.events)
        self.send("Page.navigate", {"url": url})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if any(e.get("method") == "Page.loadEventFired" for e in self.events[start:]):
                    break
            time.sleep(0.05)
        else:
            raise TimeoutError(f"{url} did not finish loading within {timeout} s")
        time.sleep(settle)
        with self._lock:
            return list(self.events[start:])

    def mark(self) -> int:
        with self._lock:
            return len(self.events)

    def events_since(self, mark: int) -> list[dict]:
        with self._lock:
            return list(self.events[mark:])

    def evaluate(self, expression: str):
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in res:
            raise RuntimeError(f"evaluate failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def screenshot(self, path: Path, fmt: str = "png", clip: dict | None = None) -> Path:
        """Save the viewport (or ``clip``: x, y, width, height in page pixels) as an image."""
        import base64

        params = {"format": fmt}
        if clip:
            params.update(clip={"scale": 1, **clip}, captureBeyondViewport=True)
        data = self.send("Page.captureScreenshot", params)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False, timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._w.close()


def problems(events: list[dict]) -> dict[str, list[str]]:
    """Console errors, uncaught exceptions and non-local network requests among DevTools events."""
    errors, external = [], []
    for e in events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            errors.append("exception: " + str(d.get("exception", {}).get("description") or d.get("text")))
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            errors.append("log: " + p["entry"].get("text", "") + " " + p["entry"].get("url", ""))
        elif method == "Network.requestWillBeSent":
            url = p.get("request", {}).get("url", "")
            if not url.startswith(LOCAL_SCHEMES):
                external.append(url)
        elif method == "Network.loadingFailed":
            errors.append(f"load failed: {p.get('errorText')} ({p.get('type')})")
    return {"errors": errors, "external": external}


VIEWS_JS = """JSON.stringify(Array.from(document.querySelectorAll('.bv-view')).map(function (e) {
  var svg = e.querySelector('svg');
  return {id: e.id, rendered: e.getAttribute('data-bv-rendered'), lines: +e.getAttribute('data-bv-lines'),
          paths: svg ? svg.querySelectorAll('path').length : 0, texts: svg ? svg.querySelectorAll('text').length : 0,
          width: svg ? svg.getBoundingClientRect().width : 0};
}))"""


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory) -> Path:
    """A quick report of notebook 01 (reused from BERTOLOGY_REPORT_DIR when that holds one)."""
    reuse = os.environ.get("BERTOLOGY_REPORT_DIR")
    if reuse and (Path(reuse) / "minilm" / "01_attention_patterns.html").is_file():
        return Path(reuse)
    out = tmp_path_factory.mktemp("offline_report")
    rc = cli.main(["run", "--notebooks", "01", "--quick", "--out", str(out)])
    assert rc == 0, f"bertology run failed with exit code {rc}"
    return out


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser(tmp_path_factory.mktemp("chromium_profile"))
    try:
        b.open()
        yield b
    finally:
        b.close()


def test_blocking_catches_external_loads_and_errors(browser, tmp_path):
    """The harness itself: a page with a CDN script and a JS error must be caught."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><script src="https://cdn.example.com/x.js"></script></head>'
                    "<body><script>console.error('boom'); undefinedFn();</script></body></html>")
    found = problems(browser.navigate(page.as_uri()))
    assert found["external"] == ["https://cdn.example.com/x.js"]
    assert any("boom" in e for e in found["errors"]) and any("undefinedFn" in e for e in found["errors"])


def test_index_renders_offline(browser, quick_report, tmp_path):
    index = quick_report / "index.html"
    assert report.external_loads(index.read_text(encoding="utf-8")) == []
    found = problems(browser.navigate(index.as_uri()))
    shot = browser.screenshot(tmp_path / "index.png")
    print(f"screenshot: {shot}")
    assert found == {"errors": [], "external": []}
    assert browser.evaluate("document.querySelectorAll('table tr').length") >= 2
    assert browser.evaluate("Array.from(document.images).every(function (i) { return i.complete && i.naturalWidth > 0; })")


def test_report_renders_offline_with_head_view(browser, quick_report, tmp_path):
    page = quick_report / "minilm" / "01_attention_patterns.html"
    text = page.read_text(encoding="utf-8")
    assert report.external_loads(text) == [], "the report loads something from the network"
    found = problems(browser.navigate(page.as_uri()))
    assert found == {"errors": [], "external": []}
    views = json.loads(browser.evaluate(VIEWS_JS))
    assert len(views) == 1, views
    view = views[0]
    assert view["rendered"] == "1" and view["lines"] > 0 and view["paths"] > 0 and view["texts"] > 0, view
    assert view["width"] > 100, view
    # the model view drew one tile per head (6 layers x 12 heads)
    assert browser.evaluate("+document.querySelector('.mv-view').getAttribute('data-mv-tiles')") == 72
    # interaction: switching layer and hovering a token redraw the SVG without errors
    vid = view["id"]
    mark = browser.mark()
    hovered = browser.evaluate(f"""(function () {{
      var root = document.getElementById('{vid}'), sel = root.querySelector('.bv-layer');
      sel.value = String(sel.options.length - 1); sel.dispatchEvent(new Event('change'));
      var all = +root.getAttribute('data-bv-lines');
      root.scrollIntoView();
      root.querySelector('svg text:nth-of-type(5)').dispatchEvent(new MouseEvent('mouseenter'));
      return [all, +root.getAttribute('data-bv-lines')];
    }})()""")
    assert 0 < hovered[1] < hovered[0], hovered
    shot = browser.screenshot(tmp_path / "report.png")
    print(f"screenshot: {shot}")
    time.sleep(0.3)
    assert problems(browser.events_since(mark)) == {"errors": [], "external": []}


def test_several_views_on_one_page(browser, tmp_path):
    """Two views (and one of a single layer and head) on one page each render into their own element."""
    import numpy as np

    from bertology import views

    rng = np.random.default_rng(0)
    parts = [views.head_view_html(rng.dirichlet(np.ones(n), size=(lay, hd, n)), [f"t{i}" for i in range(n)])
             for n, lay, hd in ((12, 2, 4), (12, 2, 4), (3, 1, 1))]
    page = tmp_path / "views.html"
    page.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>" + "".join(parts) + "</body></html>")
    found = problems(browser.navigate(page.as_uri()))
    assert found == {"errors": [], "external": []}
    rendered = json.loads(browser.evaluate(VIEWS_JS))
    assert len(rendered) == 3 and len({v["id"] for v in rendered}) == 3
    assert all(v["rendered"] == "1" and v["paths"] > 0 for v in rendered), rendered


def test_export_buttons_produce_svg_and_png(browser, tmp_path):
    """The SVG and PNG buttons hand a standalone SVG document and a PNG data URL to a download link."""
    import numpy as np

    from bertology import views

    att = np.random.default_rng(1).dirichlet(np.ones(6), size=(2, 3, 6))
    page = tmp_path / "export.html"
    page.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
                    + views.head_view_html(att, ["[CLS]", "a", "b", "c", "d", "[SEP]"]) + "</body></html>")
    assert problems(browser.navigate(page.as_uri())) == {"errors": [], "external": []}
    mark = browser.mark()
    got = json.loads(browser.evaluate("""new Promise(function (resolve) {
      var seen = [], blobs = [], origClick = HTMLAnchorElement.prototype.click, origURL = URL.createObjectURL;
      URL.createObjectURL = function (b) { blobs.push(b); return origURL.call(URL, b); };
      HTMLAnchorElement.prototype.click = function () { seen.push({name: this.download, href: this.href}); };
      var root = document.querySelector('.bv-view');
      root.querySelector('.bv-svg').click();
      root.querySelector('.bv-png').click();
      var t0 = Date.now();
      (function wait() {
        if (seen.length < 2 && Date.now() - t0 < 5000) { return setTimeout(wait, 50); }
        HTMLAnchorElement.prototype.click = origClick; URL.createObjectURL = origURL;
        blobs[0].text().then(function (svg) {
          resolve(JSON.stringify({names: seen.map(function (s) { return s.name; }), svg: svg,
                                  png: seen.length > 1 ? seen[1].href.slice(0, 40) : '', pngLen: seen.length > 1 ? seen[1].href.length : 0}));
        });
      })();
    })"""))
    assert got["names"] == ["head_view_layer1.svg", "head_view_layer1.png"], got["names"]
    assert got["svg"].startswith("<?xml") and "<svg" in got["svg"] and "<path" in got["svg"]
    assert got["png"].startswith("data:image/png;base64,") and got["pngLen"] > 2000
    (tmp_path / "exported.svg").write_text(got["svg"])
    assert problems(browser.events_since(mark)) == {"errors": [], "external": []}
