"""Headless Chromium driven over the DevTools protocol, for the page tests and ``msimaging screenshots``.

Standard library only (a minimal WebSocket client): start Chromium with ``--remote-debugging-port=0``,
open a page, evaluate JavaScript, click an element with real mouse events, collect every console
message and uncaught exception, and capture screenshots. The browser is the Debian ``chromium``
package (``make browser``); nothing is downloaded.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


class BrowserError(RuntimeError):
    """Chromium could not be started or did not answer."""


def find_chromium() -> str | None:
    for name in BROWSERS:
        exe = shutil.which(name)
        if exe:
            return exe
    return None


class _WebSocket:
    """A blocking WebSocket client: text frames, client masking, fragmented messages."""

    def __init__(self, url: str, timeout_s: float):
        assert url.startswith("ws://")
        hostport, _, path = url[5:].partition("/")
        host, _, port = hostport.partition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        request = (f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(request.encode("ascii"))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise BrowserError("DevTools closed the connection during the WebSocket handshake")
            head += chunk
        status, _, rest = head.partition(b"\r\n\r\n")
        if b" 101 " not in status.split(b"\r\n", 1)[0]:
            raise BrowserError(f"DevTools refused the WebSocket: {status[:200]!r}")
        self.buffer = rest

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buffer)))
            if not chunk:
                raise BrowserError("DevTools connection closed")
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def send(self, text: str) -> None:
        data = text.encode("utf-8")
        n = len(data)
        header = bytes([0x81])
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data)) if n < 4096 else _mask(data, mask)
        self.sock.sendall(header + mask + masked)

    def recv(self) -> str:
        parts = []
        while True:
            b0, b1 = self._read(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = _mask(payload, mask)
            if opcode == 0x8:
                raise BrowserError("DevTools closed the WebSocket")
            if opcode == 0x9:  # ping
                continue
            parts.append(payload)
            if b0 & 0x80:
                return b"".join(parts).decode("utf-8")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:  # pragma: no cover
            pass


def _mask(data: bytes, mask: bytes) -> bytes:
    import numpy as np

    arr = np.frombuffer(data, np.uint8)
    key = np.resize(np.frombuffer(mask, np.uint8), arr.size)
    return (arr ^ key).tobytes()


class Chromium:
    """One headless Chromium with one page; use as a context manager."""

    def __init__(self, exe: str | None = None, width: int = 1400, height: int = 1000, timeout_s: float = 60.0):
        self.exe = exe or find_chromium()
        if not self.exe:
            raise BrowserError("headless Chromium is not installed (make browser, or apt-get install chromium)")
        self.width, self.height, self.timeout_s = width, height, timeout_s
        self.messages: list[dict[str, Any]] = []  # console messages and uncaught exceptions
        self._id = 0
        self._events: list[dict[str, Any]] = []

    def __enter__(self) -> "Chromium":
        self.profile = tempfile.mkdtemp(prefix="msimaging-chromium-")
        self.proc = subprocess.Popen(
            [self.exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             "--disable-extensions", "--remote-debugging-port=0", "--remote-allow-origins=*",
             f"--user-data-dir={self.profile}", f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port = self._port()
            self.ws = _WebSocket(self._page_url(port), self.timeout_s)
            for domain in ("Page", "Runtime", "Log"):
                self.send(f"{domain}.enable")
            self.send("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                      deviceScaleFactor=1, mobile=False)
        except Exception:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def _port(self) -> int:
        marker = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if marker.is_file():
                lines = marker.read_text().split()
                if lines:
                    return int(lines[0])
            if self.proc.poll() is not None:
                raise BrowserError(f"{self.exe} exited with status {self.proc.returncode} at start")
            time.sleep(0.05)
        raise BrowserError(f"{self.exe} did not open its DevTools port within {self.timeout_s:.0f} s")

    def _page_url(self, port: int) -> str:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=self.timeout_s) as resp:
                targets = json.loads(resp.read().decode("utf-8"))
            pages = [t for t in targets if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
            if pages:
                return str(pages[0]["webSocketDebuggerUrl"])
            time.sleep(0.1)
        raise BrowserError("Chromium has no page target")

    # --- the protocol ---------------------------------------------------------------------------
    def _record(self, msg: dict[str, Any]) -> None:
        method = msg.get("method")
        params = msg.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.messages.append({"source": "console", "level": params.get("type"), "text": text})
        elif method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails", {})
            self.messages.append({"source": "exception", "level": "error",
                                  "text": d.get("exception", {}).get("description") or d.get("text", "")})
        elif method == "Log.entryAdded":
            e = params.get("entry", {})
            self.messages.append({"source": e.get("source"), "level": e.get("level"), "text": e.get("text")})
        self._events.append(msg)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        my_id = self._id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise BrowserError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))
            self._record(msg)

    def _wait_event(self, method: str, timeout_s: float) -> dict[str, Any]:
        for i, msg in enumerate(self._events):
            if msg.get("method") == method:
                return self._events.pop(i)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            self._record(msg)
            if msg.get("method") == method:
                self._events.remove(msg)
                return msg
        raise BrowserError(f"no {method} within {timeout_s:.0f} s")

    # --- what tests and screenshots use ----------------------------------------------------------
    def open(self, path_or_url: str | Path) -> None:
        """Load a page (a file path or a URL) and wait for its load event."""
        url = str(path_or_url)
        if "://" not in url:
            url = Path(url).resolve().as_uri()
        self._events.clear()
        self.send("Page.navigate", url=url)
        self._wait_event("Page.loadEventFired", self.timeout_s)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises are awaited)."""
        res = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise BrowserError(f"{expression[:80]}: {res['exceptionDetails'].get('text')}")
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout_s: float | None = None) -> Any:
        """Poll a JavaScript expression until it is truthy; returns its value."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {expression!r}")
            time.sleep(0.1)

    def box(self, selector: str) -> dict[str, float]:
        """The element's box in page coordinates (scrolled into view first)."""
        sel = json.dumps(selector)
        value = self.evaluate(f"(function(){{var e=document.querySelector({sel});if(!e)return null;"
                              "e.scrollIntoView({block:'center'});var r=e.getBoundingClientRect();"
                              "return {x:r.left+window.scrollX,y:r.top+window.scrollY,w:r.width,h:r.height,"
                              "vx:r.left,vy:r.top};})()")
        if not value:
            raise BrowserError(f"no element {selector!r}")
        return dict(value)

    def click(self, selector: str) -> None:
        """A real left click (mouse pressed and released) at the centre of the element."""
        b = self.box(selector)
        x, y = b["vx"] + b["w"] / 2, b["vy"] + b["h"] / 2
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                      clickCount=0 if kind == "mouseMoved" else 1)

    def wheel(self, selector: str, delta_y: float) -> None:
        """A mouse-wheel turn over the centre of the element (negative: away from the user)."""
        b = self.box(selector)
        self.send("Input.dispatchMouseEvent", type="mouseWheel", x=b["vx"] + b["w"] / 2, y=b["vy"] + b["h"] / 2,
                  deltaX=0, deltaY=delta_y)

    def screenshot(self, out_png: str | Path, selector: str | None = None, full_page: bool = False,
                   padding: int = 0) -> Path:
        """A PNG of the viewport, the whole page or one element."""
        params: dict[str, Any] = {"format": "png"}
        if selector:
            b = self.box(selector)
            params.update(clip={"x": max(0.0, b["x"] - padding), "y": max(0.0, b["y"] - padding),
                                "width": b["w"] + 2 * padding, "height": b["h"] + 2 * padding, "scale": 1},
                          captureBeyondViewport=True)
        elif full_page:
            size = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params.update(clip={"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1},
                          captureBeyondViewport=True)
        data = self.send("Page.captureScreenshot", **params)["data"]
        out = Path(out_png)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(data))
        return out

    def errors(self) -> list[dict[str, Any]]:
        """Console errors and warnings, uncaught exceptions and browser log errors so far."""
        self.evaluate("0")  # drain pending events
        return [m for m in self.messages if m.get("level") in ("error", "warning", "assert")
                or m.get("source") == "exception"]


def page_screenshots(output_dir: str | Path, docs: str | Path, subject: str | None = None,
                     exe: str | None = None) -> list[Path]:
    """Screenshots of a run's cohort.html and of a subject page's viewer centred on a lesion (README).

    The subject is the first with a follow-up visit that has counted lesions (else the first); the
    viewer is that visit's, centred on its first new lesion (else its first lesion) by clicking its row.
    Returns the PNG paths: ``cohort.png`` (top of the page), ``cohort-trajectories.png`` and ``viewer.png``.
    """
    from msimaging import io
    from msimaging import layout as L

    out, docs = Path(output_dir), Path(docs)
    rows = io.read_table(out / L.ENDPOINTS_CSV)
    if not rows:
        raise BrowserError(f"{out / L.ENDPOINTS_CSV} has no rows")
    follow_ups = [r for r in rows if r.get("is_baseline") != "true" and (subject is None or r["subject"] == subject)]
    chosen = follow_ups[0] if follow_ups else next(r for r in rows if subject is None or r["subject"] == subject)
    sub, ses = chosen["subject"], chosen["session"]
    shots = []
    with Chromium(exe, width=1400, height=900) as b:
        b.open(out / L.COHORT_HTML)
        b.wait_for("Array.prototype.every.call(document.images, function(i){return i.complete})")
        shots.append(b.screenshot(docs / "cohort.png"))
        shots.append(b.screenshot(docs / "cohort-trajectories.png", "img[alt='trajectories']", padding=4))
        b.open(out / L.qc_page(sub))
        b.wait_for("document.body.dataset.viewersReady")
        viewer = f"sub-{sub}_ses-{ses}-viewer"
        rows_sel = f"tr.msv-lesion[data-viewer='{viewer}']"
        new = b.evaluate(f"(function(){{var r=Array.prototype.filter.call(document.querySelectorAll(\"{rows_sel}\"),"
                         "function(t){return t.textContent.indexOf('new')>=0});return r.length?r[0].dataset.lesion:null})()")
        if new is not None:
            b.click(f"{rows_sel}[data-lesion='{new}']")
        elif b.evaluate(f"document.querySelectorAll(\"{rows_sel}\").length"):
            b.click(rows_sel)
        shots.append(b.screenshot(docs / "viewer.png", f"#{viewer}", padding=6))
    return shots
