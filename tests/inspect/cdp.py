"""A minimal headless-Chromium driver for the gallery tests, over the DevTools protocol on a pipe.

`--remote-debugging-pipe` makes Chromium read commands on fd 3 and write replies and events on fd 4, as JSON
messages ending in a NUL byte: no port, no websocket library, no chromedriver. Only what the tests need: open a
page, evaluate JavaScript, click an element with real mouse events, collect console errors, take a screenshot.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

# Flags that keep Chromium from stalling on the closed network of CI machines.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--allow-file-access-from-files", "--window-size=1400,1000"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


class CDPError(RuntimeError):
    pass


class Browser:
    def __init__(self, executable: str, profile: Path, timeout: float = 30.0):
        self.timeout = timeout
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        profile.mkdir(parents=True, exist_ok=True)
        self.log = profile / "chromium.log"
        log = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        devnull = os.open(os.devnull, os.O_RDONLY)
        # Map our pipe ends onto fds 3 and 4 (via two high fds, so neither can overwrite the other first).
        d2, close = os.POSIX_SPAWN_DUP2, os.POSIX_SPAWN_CLOSE
        actions = [(d2, devnull, 0), (d2, log, 1), (d2, log, 2), (d2, to_browser_r, 200), (d2, from_browser_w, 201),
                   (d2, 200, 3), (d2, 201, 4), (close, 200), (close, 201)]
        args = [executable, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
        self.pid = os.posix_spawn(executable, args, dict(os.environ), file_actions=actions)
        self.returncode: int | None = None
        for fd in (to_browser_r, from_browser_w, log, devnull):
            os.close(fd)
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self.events: list[dict] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.session: str | None = None

    def poll(self) -> int | None:
        """The browser's exit status, or None while it runs."""
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._cond.notify_all()
                return
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            with self._cond:
                for raw in messages:
                    msg = json.loads(raw)
                    if "id" in msg:
                        self._replies[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                self._cond.notify_all()

    def send(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while self._next_id not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self.poll() is not None:
                    raise CDPError(f"no reply to {method} (browser exit code {self.poll()}); "
                                   f"see {self.log}")
                self._cond.wait(left)
            reply = self._replies.pop(self._next_id)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, since: int = 0) -> dict:
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while True:
                for event in self.events[since:]:
                    if event.get("method") == method:
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CDPError(f"no {method} event")
                self._cond.wait(left)

    # -- page helpers ------------------------------------------------------------------------------------------
    def open(self, url: str) -> None:
        if self.session is None:
            target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
            self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                     session=False)["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                self.send(f"{domain}.enable")
        # Via about:blank, so that a URL differing only in its #hash is still a full page load (with a load event).
        for target in ("about:blank", url):
            mark = len(self.events)
            self.send("Page.navigate", {"url": target})
            self.wait_event("Page.loadEventFired", since=mark)

    def eval(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise CDPError(f"{expression!r} threw {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element (scrolled into view first)."""
        box = self.eval(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                        "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
                        "return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left",
                                                   "clickCount": 1})

    def console_errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads seen so far."""
        found = []
        with self._cond:
            events = list(self.events)
        for e in events:
            p = e.get("params", {})
            if e.get("method") == "Runtime.exceptionThrown":
                found.append(f"exception: {p['exceptionDetails'].get('text')} {p['exceptionDetails'].get('exception', {}).get('description', '')}")
            elif e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                found.append(f"console.{p['type']}: {[a.get('value', a.get('description')) for a in p.get('args', [])]}")
            elif e.get("method") == "Log.entryAdded" and p["entry"].get("level") == "error":
                found.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return found

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"]))

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False)
        except (CDPError, OSError):
            pass
        deadline = time.monotonic() + 10
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
