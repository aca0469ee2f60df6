"""A raw ASGI app for the WebSocket limits (tests/test_websocket_limits.py); serve it with ``--loops 1``.

- ``/ws-hoard``: accepts, then receives nothing until ``GET /release``; then reads every message (each
  starts with its 4-byte index) and answers ``"<count> in order"`` or the first index out of order.
- ``/ws-flood``: accepts and sends 1 MiB messages for as long as ``send()`` returns, while waiting for
  ``websocket.disconnect`` (logged as ``disconnect CODE``).
- ``/ws-echo``: accepts and echoes text until the client leaves.
- ``/ws-sender``: accepts and sends text in a loop without ever receiving; logs ``sender: <Error>`` when
  ``send()`` raises.
- ``/ws-adversarial``: hands ``send()`` objects whose Python code calls back into ``receive()``/``send()``
  while the server reads them (a header iterable, a key whose ``__eq__`` runs, a byte sequence, a close
  code's ``__index__``), then reports what those callbacks got.
- ``/log``: the log as JSON; ``/plaintext``: a plain 200.
"""

from __future__ import annotations

import asyncio
import json

LOG: list[str] = []
released = asyncio.Event()  # created without a loop (3.10+): bound on first use, on the one loop


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] == "http":
        body = b"ok"
        if scope["path"] == "/release":
            released.set()
        elif scope["path"] == "/log":
            body = json.dumps(LOG).encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": body})
        return
    assert (await receive())["type"] == "websocket.connect"
    handler = {
        "/ws-hoard": hoard,
        "/ws-flood": flood,
        "/ws-echo": echo,
        "/ws-sender": sender,
        "/ws-adversarial": adversarial,
    }[scope["path"]]
    await handler(receive, send)


async def hoard(receive, send):
    await send({"type": "websocket.accept"})
    await released.wait()
    count = 0
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            LOG.append(f"disconnect {message['code']}")
            return
        if message["bytes"] == b"done":
            await send({"type": "websocket.send", "text": f"{count} in order"})
            continue
        index = int.from_bytes(message["bytes"][:4], "big")
        if index != count:
            await send({"type": "websocket.send", "text": f"got {index}, expected {count}"})
        count += 1


async def flood(receive, send):
    await send({"type": "websocket.accept"})

    async def sending():
        while True:
            await send({"type": "websocket.send", "bytes": b"x" * (1 << 20)})

    sender = asyncio.ensure_future(sending())
    message = await receive()
    LOG.append(f"disconnect {message['code']}")
    sender.cancel()


async def echo(receive, send):
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", "text": message["text"]})


async def sender(receive, send):
    await send({"type": "websocket.accept"})
    try:
        while True:
            await send({"type": "websocket.send", "text": "tick"})
    except Exception as error:  # what send() raised once the client is gone is the report
        LOG.append(f"sender: {type(error).__name__}")


async def adversarial(receive, send):
    got = []

    def call_back(label):
        """Calls receive() and send() as the server reads the app's objects; records what they gave."""
        pending = receive()
        got.append(f"{label}: receive gave {type(pending).__name__}")
        try:
            send({"type": "websocket.send", "text": f"from {label}"})
            got.append(f"{label}: send ok")
        except Exception as error:  # what the server raised is the report
            got.append(f"{label}: send raised {type(error).__name__}")
        if hasattr(pending, "cancel"):
            pending.cancel()  # a pending receive() left behind would make the next one "concurrent"

    def headers():
        call_back("headers")
        yield (b"x-adversarial", b"1")

    await send({"type": "websocket.accept", "headers": headers()})

    class Sneaky:
        """A key whose hash collides with "text": looking "text" up runs its ``__eq__`` (once armed: putting
        it in the dict compares it with "text" too)."""

        armed = False

        def __hash__(self):
            return hash("text")

        def __eq__(self, other):
            if self.armed:
                call_back("__eq__")
            return False

    class OddDict(dict):
        """A dict subclass whose ``__getitem__`` calls back (the server reads the dict directly)."""

        def __getitem__(self, key):
            call_back("__getitem__ of the message")
            return super().__getitem__(key)

    class Bytes:
        """Not bytes: converting it runs ``__len__``/``__getitem__``."""

        def __len__(self):
            return 2

        def __getitem__(self, index):
            if index >= 2:
                raise IndexError(index)
            call_back("__getitem__")
            return 104 + index  # b"hi"

    sneaky = Sneaky()
    message = OddDict()
    message[sneaky] = None  # first, so a lookup of "text" meets it before the real "text"
    message.update({"type": "websocket.send", "text": "sneaky"})
    sneaky.armed = True
    await send(message)
    await send({"type": "websocket.send", "bytes": Bytes()})
    await send({"type": "websocket.send", "text": json.dumps(got)})

    class Code:
        def __index__(self):
            call_back("__index__")
            return 4000

    await send({"type": "websocket.close", "code": Code()})
    LOG.append("adversarial done")
