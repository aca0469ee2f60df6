"""Granian's raw RSGI interface, no framework: the ceiling of a Python handler under Granian, for `/json`
only. The peer of percore's native app (apps/native.py), not of the ASGI apps."""

BODY = '{"message":"Hello, World!"}'
HEADERS = [("content-type", "application/json")]


async def app(scope, proto):
    if scope.path == "/json":
        proto.response_str(200, HEADERS, BODY)
    else:
        proto.response_str(404, [("content-type", "text/plain")], "Not Found")
