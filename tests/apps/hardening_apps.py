"""Raw ASGI apps for the hardening tests: an app that outlives its client, apps that call back into the
server from places it reads their objects, and an echo app for differential parsing. Served by percore and,
where the test compares, by uvicorn."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
from pathlib import Path


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _text(send, status: int, body: bytes, headers=()) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


# --- an app that runs on after its client left ----------------------------------------------------------


def _mark(what: str) -> None:
    """One line per event in $PERCORE_TEST_DIR/<what>: the test process counts them (it cannot ask the
    server over HTTP while the server refuses requests)."""
    with open(Path(os.environ["PERCORE_TEST_DIR"]) / what, "a") as marks:
        marks.write("x\n")


async def lingering(scope, receive, send):
    """/linger waits for its client to leave, then runs on until the file `release` appears (ASGI apps are
    not cancelled when the client goes); /ok answers at once."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    if scope["path"] != "/linger":
        return await _text(send, 200, b"ok")
    _mark("started")
    while (await receive())["type"] != "http.disconnect":
        pass
    _mark("disconnected")
    release = Path(os.environ["PERCORE_TEST_DIR"]) / "release"
    while not release.exists():
        await asyncio.sleep(0.02)
    _mark("finished")


# --- apps that call back into the server while it reads their objects -------------------------------------


class _CallsBack:
    """The adversarial objects' hook: calls `receive()` or `send()` (not awaited: they only return an
    awaitable) from code the server runs while it reads a message."""

    def __init__(self, receive, send, how: str) -> None:
        self.receive, self.send, self.how = receive, send, how
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        try:
            if self.how == "receive":
                self.receive()
            elif self.how == "send-start":
                self.send({"type": "http.response.start", "status": 200})
            else:
                self.send({"type": "http.response.body", "body": b"early"})
        except RuntimeError:
            pass  # the server may refuse a re-entrant message: a clear error is fine, a hang is not


def _headers_generator(hook):
    yield (b"x-one", b"1")
    hook()
    yield (b"x-two", b"2")


class _Status:
    """A status with `__index__` (int-like), which calls back."""

    def __init__(self, hook) -> None:
        self.hook = hook

    def __index__(self) -> int:
        self.hook()
        return 200


class _CollidingKey:
    """A dict key hashing like "status", so looking "status" up in the message compares against it."""

    def __init__(self, hook) -> None:
        self.hook = hook

    def __hash__(self) -> int:
        return hash("status")

    def __eq__(self, other) -> bool:
        self.hook()
        return False


class _Truthy:
    def __init__(self, hook) -> None:
        self.hook = hook

    def __bool__(self) -> bool:
        self.hook()
        return False


class _Pair(list):
    """A header pair that is a list, read item by item."""

    def __init__(self, hook, name: bytes, value: bytes) -> None:
        super().__init__([name, value])
        self.hook = hook

    def __getitem__(self, index):
        self.hook()
        return super().__getitem__(index)


class _Message(dict):
    """A dict subclass whose own accessors call back (the server reads messages as plain dicts)."""

    def __init__(self, hook, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.hook = hook

    def __getitem__(self, key):
        self.hook()
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.hook()
        return super().get(key, default)


class _EqCallsTask:
    """A done-callback whose `__eq__` looks at the task it is registered on."""

    def __init__(self, task) -> None:
        self.task = task

    def __call__(self, task) -> None:
        pass

    def __eq__(self, other) -> bool:
        self.task.done()
        self.task.cancelling()
        self.task.get_coro()
        return self is other

    __hash__ = object.__hash__


def _start(status=200, headers=()):
    return {"type": "http.response.start", "status": status, "headers": headers}


async def reentrant(scope, receive, send):
    """GET /<case>/<how>: the response's messages carry objects that call receive() or send() (how:
    receive, send-start, send-body) while the server reads them. Any answer will do, a 500 included, as
    long as the loop goes on serving."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    case, _, how = scope["path"].strip("/").partition("/")
    hook = _CallsBack(receive, send, how or "receive")
    body = {"type": "http.response.body", "body": case.encode()}
    if case == "ok":
        return await _text(send, 200, b"ok")
    if case == "headers-generator":
        await send(_start(headers=_headers_generator(hook)))
    elif case == "status-index":
        await send(_start(status=_Status(hook)))
    elif case == "colliding-key":
        await send({_CollidingKey(hook): 1, **_start()})
    elif case == "header-pair":
        await send(_start(headers=[_Pair(hook, b"x-pair", b"1")]))
    elif case == "dict-subclass":
        await send(_Message(hook, _start(headers=[(b"x-sub", b"1")])))
        body = _Message(hook, body)
    elif case == "more-body":
        await send(_start())
        body = {**body, "more_body": _Truthy(hook)}
    elif case == "task-eq":
        task = asyncio.current_task()
        watcher = _EqCallsTask(task)
        task.add_done_callback(watcher)
        task.add_done_callback(_EqCallsTask(task))
        task.remove_done_callback(_EqCallsTask(task))  # compares with both: each __eq__ calls the task
        task.remove_done_callback(watcher)
        await send(_start())
    else:
        return await _text(send, 404, b"no such case")
    await send(body)


# --- an echo app for differential parsing ---------------------------------------------------------------


def fingerprint(method: bytes, target: bytes, body: bytes) -> dict:
    """How a request is compared between parsers: the method, the target (hashed when long) and the body."""
    shown = target.decode("latin-1") if len(target) <= 200 else "sha1:" + hashlib.sha1(target).hexdigest()
    return {"method": method.decode("latin-1"), "target": shown, "body": body.decode("latin-1")}


async def echo(scope, receive, send):
    """Every request is answered 200 with an `x-echo` header (a header, so HEAD carries it too): base64 JSON
    of the request's fingerprint and whether its body arrived complete."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    body, complete = b"", True
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            complete = False
            break
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    target = scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"] else b"")
    seen = {**fingerprint(scope["method"].encode(), target, body), "complete": complete}
    echoed = base64.b64encode(json.dumps(seen).encode())
    await _text(send, 200, b"echo", [(b"x-echo", echoed)])
