"""``percore.security``: FastAPI's security schemes as dependencies, their 401s and OpenAPI entries.
(tests/test_depends.py compares every scheme's answers with FastAPI's on the same app.)"""

import base64
from typing import Annotated

import percore
from percore import Depends, Header
from percore.security import (
    APIKeyCookie,
    APIKeyHeader,
    HTTPAuthorizationCredentials,
    HTTPBasic,
    HTTPBasicCredentials,
    HTTPBearer,
    OAuth2PasswordBearer,
)
from percore.testing import TestClient

from .conftest import Client

bearer = HTTPBearer(bearerFormat="JWT", description="a token")
basic = HTTPBasic()
key = APIKeyHeader(name="X-Key", auto_error=False)
oauth2 = OAuth2PasswordBearer(tokenUrl="/token", scopes={"read": "read things"})


def current_user(creds: Annotated[HTTPAuthorizationCredentials, Depends(bearer)]):
    return creds.credentials


served = percore.App()


@served.get("/me")
def me(user: Annotated[str, Depends(current_user)], authorization: Annotated[str | None, Header()] = None):
    # The app's own `authorization` parameter and the scheme's never clash.
    return {"user": user, "raw": authorization}


@served.get("/either")
def either(
    k: Annotated[str | None, Depends(key)],
    b: Annotated[HTTPBasicCredentials | None, Depends(HTTPBasic(auto_error=False))],
):
    return {"key": k, "basic": None if b is None else b.username}


@served.get("/scoped")
def scoped(token: Annotated[str, Depends(oauth2)], cookie: Annotated[str, Depends(APIKeyCookie(name="sid"))]):
    return {"token": token, "cookie": cookie}


def test_schemes_answer_401_with_fastapis_headers_and_pass_credentials():
    with TestClient(served) as client:
        denied = client.get("/me")
        assert (denied.status_code, denied.json(), denied.headers["www-authenticate"]) == (
            401,
            {"detail": "Not authenticated"},
            "Bearer",
        )
        ok = client.get("/me", headers={"Authorization": "Bearer t0k"})
        assert ok.json() == {"user": "t0k", "raw": "Bearer t0k"}
        assert client.get("/either").json() == {"key": None, "basic": None}
        both = client.get(
            "/either",
            headers={"x-key": "k", "authorization": "Basic " + base64.b64encode(b"ada:pw").decode()},
        )
        assert both.json() == {"key": "k", "basic": "ada"}
        no_cookie = client.get("/scoped", headers={"authorization": "Bearer x"})
        assert (no_cookie.status_code, no_cookie.headers["www-authenticate"]) == (401, "APIKey")
        scoped_ok = client.get("/scoped", headers={"authorization": "Bearer x", "cookie": "sid=s1"})
        assert scoped_ok.json() == {"token": "x", "cookie": "s1"}


def test_basic_realm_header():
    api = percore.App()

    @api.get("/b")
    def b(creds: Annotated[HTTPBasicCredentials, Depends(HTTPBasic(realm="shop"))]):
        return creds.username

    with TestClient(api) as client:
        assert client.get("/b").headers["www-authenticate"] == 'Basic realm="shop"'


def test_openapi_security_schemes_and_requirements():
    schema = served.openapi()
    assert schema["components"]["securitySchemes"] == {
        "HTTPBearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "a token"},
        "APIKeyHeader": {"type": "apiKey", "in": "header", "name": "X-Key"},
        "HTTPBasic": {"type": "http", "scheme": "basic"},
        "OAuth2PasswordBearer": {
            "type": "oauth2",
            "flows": {"password": {"scopes": {"read": "read things"}, "tokenUrl": "/token"}},
        },
        "APIKeyCookie": {"type": "apiKey", "in": "cookie", "name": "sid"},
    }
    assert schema["paths"]["/me"]["get"]["security"] == [{"HTTPBearer": []}]
    assert [p["name"] for p in schema["paths"]["/me"]["get"]["parameters"]] == ["authorization"]
    assert schema["paths"]["/either"]["get"]["security"] == [{"APIKeyHeader": []}, {"HTTPBasic": []}]
    assert "parameters" not in schema["paths"]["/either"]["get"]


def test_served_security_answers(serve):
    server = serve("tests.test_security:served")
    client = Client(server.port)
    try:
        denied = client.get("/me")
        assert (denied.status, denied.json(), denied.headers["www-authenticate"]) == (
            401,
            {"detail": "Not authenticated"},
            "Bearer",
        )
        ok = client.request("GET", "/me", headers={"authorization": "Bearer tok"})
        assert ok.json() == {"user": "tok", "raw": "Bearer tok"}
    finally:
        client.close()
