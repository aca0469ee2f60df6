"""A real headless browser for tests: Debian's chromium, driven over the Chrome DevTools Protocol on a pipe
(--remote-debugging-pipe: JSON messages ended by NUL on file descriptors 3 and 4; no port, no websocket).

Every request the page makes goes through ``Fetch`` interception: one for 127.0.0.1 continues, any other is
failed and recorded in ``Browser.outside`` (the pages must work with no network), and the host resolver
resolves no other name either.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from typing import Any
from urllib.parse import urlsplit

LOCAL_HOSTS = {"127.0.0.1"}


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    def __init__(self, executable: str, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.outside: list[str] = []
        self._profile = tempfile.TemporaryDirectory(prefix="percore-chromium-")
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()
        # The browser's ends moved above 9, so that making them 3 and 4 cannot overwrite one with the other.
        for low in (commands_read, replies_write):
            high = fcntl.fcntl(low, fcntl.F_DUPFD_CLOEXEC, 10)
            os.close(low)
            if low == commands_read:
                commands_read = high
            else:
                replies_write = high
        flags = [
            "--headless",
            "--no-sandbox",  # the tests run as root
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            f"--user-data-dir={self._profile.name}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        # The pipe ends become descriptors 3 (commands in) and 4 (replies out) in the browser (bash: dash takes
        # single-digit descriptors only).
        self.process = subprocess.Popen(
            [
                "bash",
                "-c",
                'exec 3<&"$1" 4>&"$2"; shift 3; exec "$@"',
                "bash",
                str(commands_read),
                str(replies_write),
                "--",
                executable,
                *flags,
            ],
            pass_fds=(commands_read, replies_write),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(commands_read)
        os.close(replies_write)
        self._next_id = 0
        self._lock = threading.Lock()
        self._replies_by_id: dict[int, dict[str, Any]] = {}
        self._arrived = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Fetch.enable", session=self.session, patterns=[{"urlPattern": "*"}])
        self.call("Runtime.enable", session=self.session)

    def _send(self, method: str, session: str | None = None, **params: Any) -> int:
        with self._lock:
            self._next_id += 1
            message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
            if session is not None:
                message["sessionId"] = session
            os.write(self._commands, json.dumps(message).encode() + b"\0")
            return self._next_id

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        number = self._send(method, session, **params)
        deadline = time.monotonic() + self.timeout
        with self._arrived:
            while number not in self._replies_by_id:
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    raise AssertionError(
                        f"chromium did not answer {method} (exit code {self.process.poll()})"
                    )
                self._arrived.wait(min(left, 0.5))
            reply = self._replies_by_id.pop(number)
        if "error" in reply:
            raise AssertionError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def _read(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self._replies, 1 << 16)
            except OSError:
                return
            if not chunk:
                with self._arrived:
                    self._arrived.notify_all()
                return
            pending += chunk
            *messages, pending = pending.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                if "id" in message:
                    with self._arrived:
                        self._replies_by_id[message["id"]] = message
                        self._arrived.notify_all()
                elif message.get("method") == "Fetch.requestPaused":
                    self._route(message)

    def _route(self, message: dict[str, Any]) -> None:
        params = message["params"]
        url = params["request"]["url"]
        session = message.get("sessionId")
        if urlsplit(url).hostname in LOCAL_HOSTS:
            self._send("Fetch.continueRequest", session, requestId=params["requestId"])
        else:
            self.outside.append(url)
            self._send(
                "Fetch.failRequest",
                session,
                requestId=params["requestId"],
                errorReason="InternetDisconnected",
            )

    def open(self, url: str) -> None:
        self.call("Page.navigate", session=self.session, url=url)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if it is a promise)."""
        result = self.call(
            "Runtime.evaluate",
            session=self.session,
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def type_text(self, text: str) -> None:
        """Types ``text`` into the focused element, as a keyboard would (input events included)."""
        self.call("Input.insertText", session=self.session, text=text)

    def wait_for(self, expression: str, what: str, timeout: float | None = None) -> Any:
        """Polls ``expression`` until it is truthy; returns its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                text = self.evaluate("document.body ? document.body.innerText.slice(0, 2000) : ''")
                raise AssertionError(f"{what}: not seen within the deadline; the page shows:\n{text}")
            time.sleep(0.2)

    def close(self) -> None:
        try:
            self._send("Browser.close")
            self.process.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        os.close(self._commands)
        self._reader.join(timeout=5)
        os.close(self._replies)
        self._profile.cleanup()
