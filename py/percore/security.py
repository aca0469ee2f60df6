"""Security schemes as ``fastapi.security`` has them, used as dependencies and listed in OpenAPI.

    from percore import Depends
    from percore.security import HTTPAuthorizationCredentials, HTTPBearer

    bearer = HTTPBearer()

    @api.get("/me")
    def me(credentials: Annotated[HTTPAuthorizationCredentials, Depends(bearer)]):
        return {"token": credentials.credentials}

Each scheme reads its header, cookie or query parameter through the ordinary parameter binding (in
Rust, under a private name that never clashes with the app's parameters and stays out of the OpenAPI
parameter list); the route's OpenAPI operation gets ``security`` and the scheme goes under
``components.securitySchemes``. Without credentials (or with malformed ones) a scheme raises
``HTTPException(401, "Not authenticated")`` with the ``WWW-Authenticate`` header FastAPI 0.165 sends
(``Bearer``, ``Basic`` (or ``Basic realm="..."``), ``APIKey``); ``auto_error=False`` returns None instead.
"""

from __future__ import annotations

import binascii
import inspect
from base64 import b64decode
from dataclasses import dataclass
from typing import Annotated, Any

from .exceptions import HTTPException
from .params import Cookie, Form, Header, Query, SecurityScopes

__all__ = [
    "APIKeyCookie",
    "APIKeyHeader",
    "APIKeyQuery",
    "HTTPAuthorizationCredentials",
    "HTTPBase",
    "HTTPBasic",
    "HTTPBasicCredentials",
    "HTTPBearer",
    "HTTPDigest",
    "OAuth2PasswordBearer",
    "OAuth2PasswordRequestForm",
    "SecurityBase",
    "SecurityScopes",
]


@dataclass
class HTTPAuthorizationCredentials:
    scheme: str
    credentials: str


@dataclass
class HTTPBasicCredentials:
    username: str
    password: str


def _value_signature(marker: Any) -> inspect.Signature:
    """The signature the dependency graph sees: one optional value, read where ``marker`` says."""
    parameter = inspect.Parameter(
        "value", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[str | None, marker]
    )
    return inspect.Signature([parameter])


def _authorization_param(authorization: str | None) -> tuple[str, str]:
    """``"Bearer abc"`` → ``("Bearer", "abc")``, as FastAPI's ``get_authorization_scheme_param``."""
    if not authorization:
        return "", ""
    scheme, _, param = authorization.partition(" ")
    return scheme, param.strip()


class SecurityBase:
    """A dependency that authenticates and describes itself to OpenAPI (``openapi_scheme()``)."""

    #: Marks a security scheme for the dependency graph (OpenAPI ``security``).
    _percore_security_scheme = True
    #: Its parameters are bound under private names (see ``percore.dependencies``).
    _percore_private_params = True
    scheme_name: str
    auto_error: bool
    description: str | None = None
    __signature__: inspect.Signature = _value_signature(Header(None, alias="authorization"))

    def openapi_scheme(self) -> dict[str, Any]:
        raise NotImplementedError

    def _described(self, scheme: dict[str, Any]) -> dict[str, Any]:
        if self.description:
            scheme["description"] = self.description
        return scheme

    def make_authenticate_headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}

    def make_not_authenticated_error(self) -> HTTPException:
        return HTTPException(401, "Not authenticated", headers=self.make_authenticate_headers())

    def _fail(self) -> None:
        if self.auto_error:
            raise self.make_not_authenticated_error()


class HTTPBase(SecurityBase):
    def __init__(
        self,
        *,
        scheme: str,
        scheme_name: str | None = None,
        description: str | None = None,
        auto_error: bool = True,
    ) -> None:
        self.scheme = scheme
        self.scheme_name = scheme_name or type(self).__name__
        self.description = description
        self.auto_error = auto_error

    def openapi_scheme(self) -> dict[str, Any]:
        return self._described({"type": "http", "scheme": self.scheme})

    def make_authenticate_headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": self.scheme.title()}

    def __call__(self, value=None):
        scheme, credentials = _authorization_param(value)
        if not (value and scheme and credentials):
            return self._fail()
        return HTTPAuthorizationCredentials(scheme=scheme, credentials=credentials)


class HTTPBearer(HTTPBase):
    """``Authorization: Bearer <token>`` → ``HTTPAuthorizationCredentials``."""

    def __init__(
        self,
        *,
        bearerFormat: str | None = None,
        scheme_name: str | None = None,
        description: str | None = None,
        auto_error: bool = True,
    ) -> None:
        super().__init__(
            scheme="bearer", scheme_name=scheme_name, description=description, auto_error=auto_error
        )
        self.bearer_format = bearerFormat

    def openapi_scheme(self) -> dict[str, Any]:
        scheme = super().openapi_scheme()
        if self.bearer_format:
            scheme["bearerFormat"] = self.bearer_format
        return scheme

    def __call__(self, value=None):
        scheme, credentials = _authorization_param(value)
        if not (value and scheme and credentials) or scheme.lower() != "bearer":
            return self._fail()
        return HTTPAuthorizationCredentials(scheme=scheme, credentials=credentials)


class HTTPBasic(HTTPBase):
    """``Authorization: Basic <base64 user:password>`` → ``HTTPBasicCredentials``."""

    def __init__(
        self,
        *,
        scheme_name: str | None = None,
        realm: str | None = None,
        description: str | None = None,
        auto_error: bool = True,
    ) -> None:
        super().__init__(
            scheme="basic", scheme_name=scheme_name, description=description, auto_error=auto_error
        )
        self.realm = realm

    def make_authenticate_headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": f'Basic realm="{self.realm}"' if self.realm else "Basic"}

    def __call__(self, value=None):
        scheme, param = _authorization_param(value)
        if not value or scheme.lower() != "basic":
            return self._fail()
        try:
            data = b64decode(param).decode("ascii")
        except (ValueError, UnicodeDecodeError, binascii.Error):
            raise self.make_not_authenticated_error() from None
        username, separator, password = data.partition(":")
        if not separator:
            raise self.make_not_authenticated_error()
        return HTTPBasicCredentials(username=username, password=password)


class HTTPDigest(HTTPBase):
    """``Authorization: Digest ...`` → ``HTTPAuthorizationCredentials`` (as FastAPI: a stub that only
    extracts the credentials; verifying them is the app's job)."""

    def __init__(
        self, *, scheme_name: str | None = None, description: str | None = None, auto_error: bool = True
    ) -> None:
        super().__init__(
            scheme="digest", scheme_name=scheme_name, description=description, auto_error=auto_error
        )

    def __call__(self, value=None):
        scheme, credentials = _authorization_param(value)
        if not (value and scheme and credentials) or scheme.lower() != "digest":
            return self._fail()
        return HTTPAuthorizationCredentials(scheme=scheme, credentials=credentials)


class _APIKey(SecurityBase):
    location = ""
    marker: type[Header] | type[Query] | type[Cookie] = Header

    def __init__(
        self,
        *,
        name: str,
        scheme_name: str | None = None,
        description: str | None = None,
        auto_error: bool = True,
    ) -> None:
        self.name = name
        self.scheme_name = scheme_name or type(self).__name__
        self.description = description
        self.auto_error = auto_error
        # Headers are matched lower-case; query and cookie names exactly.
        self.__signature__ = _value_signature(
            self.marker(None, alias=name.lower() if self.location == "header" else name)
        )

    def openapi_scheme(self) -> dict[str, Any]:
        return self._described({"type": "apiKey", "in": self.location, "name": self.name})

    def make_authenticate_headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "APIKey"}

    def __call__(self, value=None):
        if not value:
            return self._fail()
        return value


class APIKeyHeader(_APIKey):
    """The key from header ``name``."""

    location = "header"
    marker = Header


class APIKeyQuery(_APIKey):
    """The key from query parameter ``name``."""

    location = "query"
    marker = Query


class APIKeyCookie(_APIKey):
    """The key from cookie ``name``."""

    location = "cookie"
    marker = Cookie


class OAuth2PasswordBearer(SecurityBase):
    """The bearer token of the OAuth2 password flow (``tokenUrl`` is where clients get one)."""

    def __init__(
        self,
        tokenUrl: str,
        scheme_name: str | None = None,
        scopes: dict[str, str] | None = None,
        description: str | None = None,
        auto_error: bool = True,
        refreshUrl: str | None = None,
    ) -> None:
        self.token_url = tokenUrl
        self.refresh_url = refreshUrl
        self.scopes = dict(scopes or {})
        self.scheme_name = scheme_name or type(self).__name__
        self.description = description
        self.auto_error = auto_error

    def openapi_scheme(self) -> dict[str, Any]:
        flow: dict[str, Any] = {"scopes": self.scopes, "tokenUrl": self.token_url}
        if self.refresh_url:
            flow["refreshUrl"] = self.refresh_url
        return self._described({"type": "oauth2", "flows": {"password": flow}})

    def __call__(self, value=None):
        scheme, param = _authorization_param(value)
        if not value or scheme.lower() != "bearer":
            return self._fail()
        return param


class OAuth2PasswordRequestForm:
    """The OAuth2 password flow's token request (a form body), as FastAPI's: use it as
    ``form: Annotated[OAuth2PasswordRequestForm, Depends()]`` on the ``tokenUrl`` route. ``scopes`` is
    ``scope`` split on spaces. (FastAPI also checks that ``grant_type``, when sent, is ``password``.)"""

    def __init__(
        self,
        *,
        grant_type: Annotated[str | None, Form()] = None,
        username: Annotated[str, Form()],
        password: Annotated[str, Form()],
        scope: Annotated[str, Form()] = "",
        client_id: Annotated[str | None, Form()] = None,
        client_secret: Annotated[str | None, Form()] = None,
    ) -> None:
        self.grant_type = grant_type
        self.username = username
        self.password = password
        self.scopes = scope.split()
        self.client_id = client_id
        self.client_secret = client_secret
