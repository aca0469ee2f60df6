"""Granian's raw RSGI interface, no framework: the same work as percore's native app (apps/native.py)
written by hand against Granian's lowest-level Python API — the ceiling of a Python handler under Granian."""

import json
from urllib.parse import parse_qs

from benches.apps.common import cpu_result, sleep_result

JSON = [("content-type", "application/json")]
TEXT = [("content-type", "text/plain; charset=utf-8")]
HELLO = '{"message":"Hello, World!"}'


async def app(scope, proto):
    path = scope.path
    if path == "/json":
        proto.response_str(200, JSON, HELLO)
    elif path == "/plaintext":
        proto.response_str(200, TEXT, "Hello, World!")
    elif path.startswith("/users/"):
        query = parse_qs(scope.query_string)
        q = query["q"][-1] if "q" in query else None
        proto.response_str(
            200, JSON, json.dumps({"id": path[len("/users/") :], "q": q}, separators=(",", ":"))
        )
    elif path == "/echo" and scope.method == "POST":
        body = await proto()
        try:
            payload = json.loads(body)
        except ValueError:
            proto.response_str(400, TEXT, "Malformed JSON body")
            return
        if not isinstance(payload, dict):
            proto.response_str(422, TEXT, "body must be an object")
            return
        proto.response_str(200, JSON, json.dumps(payload, separators=(",", ":")))
    elif path == "/cpu":
        proto.response_str(200, JSON, json.dumps(cpu_result(), separators=(",", ":")))
    elif path == "/sleep":
        proto.response_str(200, JSON, json.dumps(await sleep_result(), separators=(",", ":")))
    else:
        proto.response_str(404, TEXT, "Not Found")
