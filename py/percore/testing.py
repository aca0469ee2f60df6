"""``TestClient``: exercise an app through the real server — Rust router, parameter binding,
serialisation, the loop's asyncio — in-process, over a loopback socket.

    from percore.testing import TestClient

    def test_hello():
        with TestClient(api) as client:
            assert client.get("/json").json() == {"message": "Hello, World!"}
"""

from __future__ import annotations

import http.client
import json as json_module
from collections.abc import Mapping
from typing import Any

from .server import Server, ServerConfig


class TestResponse:
    __test__ = False  # not a pytest test class

    def __init__(self, status_code: int, headers: list[tuple[str, str]], content: bytes) -> None:
        self.status_code = status_code
        self.headers = {name.lower(): value for name, value in headers}
        self.header_list = headers
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode()

    def json(self) -> Any:
        return json_module.loads(self.content)

    def __repr__(self) -> str:
        return f"<TestResponse {self.status_code}>"


class TestClient:
    """Serves ``app`` on one loop on a free loopback port while the client is open."""

    __test__ = False

    def __init__(self, app: Any, *, loops: str = "1", routing: str = "local", timeout: float = 30) -> None:
        self._server = Server(app, ServerConfig(port=0, loops=loops, routing=routing))
        self._timeout = timeout
        self._connection: http.client.HTTPConnection | None = None

    def __enter__(self) -> TestClient:
        self._server.start()
        self._connection = http.client.HTTPConnection("127.0.0.1", self._server.port, timeout=self._timeout)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
            self._server.stop()
            self._server.join()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> TestResponse:
        if self._connection is None:
            raise RuntimeError("use the TestClient in a `with` block (or call __enter__)")
        headers = dict(headers or {})
        body: bytes | None = None
        if json is not None:
            body = json_module.dumps(json).encode()
            headers.setdefault("Content-Type", "application/json")
        elif content is not None:
            body = content.encode() if isinstance(content, str) else content
        if params:
            from urllib.parse import urlencode

            path += ("&" if "?" in path else "?") + urlencode(params, doseq=True)
        self._connection.request(method, path, body=body, headers=headers)
        reply = self._connection.getresponse()
        return TestResponse(reply.status, reply.getheaders(), reply.read())

    def get(self, path: str, **kwargs: Any) -> TestResponse:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> TestResponse:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> TestResponse:
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> TestResponse:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> TestResponse:
        return self.request("DELETE", path, **kwargs)
