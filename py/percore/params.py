"""Where handler parameters come from, decided once per route from the handler's signature.

    @api.get("/items/{item_id}")
    async def read(item_id: int, q: str | None = None, tags: list[str] = [],
                   x_token: str = Header(), session: str | None = Cookie(None),
                   request: Request = None): ...

- a name in the path (``{item_id}``) is a path parameter;
- ``Header()``, ``Cookie()``, ``Query()``, ``Body()`` (as the default, or inside ``Annotated[...]``) say
  so explicitly; headers are matched as ``x_token`` → ``x-token``;
- a ``dict``, ``list`` of models, dataclass, TypedDict or pydantic model is the JSON body;
- ``Form()`` is a field of a form body, ``File()`` (or an ``UploadFile`` annotation) a file of a
  multipart one (``percore._forms``); the body is parsed in Rust as it streams in;
- ``Request`` (or a parameter named ``request``) is the request; ``WebSocket`` (or ``websocket``), on
  WebSocket routes, the connection;
- anything else is a query parameter. ``list[str]``/``list[int]`` collect repeated keys.

Scalars (str, int, float, bool, UUID and lists of them) are read and converted in Rust; a body is
parsed with sonic-rs and, when it names a model, validated here by a converter built once. Invalid
input is answered 422 naming every bad field, in FastAPI's format; malformed JSON is 400.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

from . import _forms, _validation
from ._validation import jsonable_ctx
from .background import BackgroundTasks
from .exceptions import ConfigurationError
from .requests import Request
from .websockets import WebSocket


class _Required:
    def __repr__(self) -> str:
        return "required"


REQUIRED: Any = _Required()


class _Marker:
    source = ""

    def __init__(self, default: Any = REQUIRED, *, alias: str | None = None) -> None:
        self.default = default
        self.alias = alias


class Path(_Marker):
    source = "path"


class Query(_Marker):
    source = "query"


class Header(_Marker):
    source = "header"

    def __init__(
        self, default: Any = REQUIRED, *, alias: str | None = None, convert_underscores: bool = True
    ):
        super().__init__(default, alias=alias)
        self.convert_underscores = convert_underscores


class Cookie(_Marker):
    source = "cookie"


class Body(_Marker):
    source = "body"


class Form(_Marker):
    """A field of an ``application/x-www-form-urlencoded`` or ``multipart/form-data`` body."""

    source = "form"


class File(Form):
    """A file of a ``multipart/form-data`` body: ``UploadFile``, ``bytes`` or a list of them."""

    source = "file"


class Depends:
    """``Depends(f)``: the parameter is ``f``'s result, ``f`` called with its own parameters bound the same
    way (they may be dependencies too). ``Depends()`` in ``Annotated[C, Depends()]`` calls ``C``.
    ``use_cache=False``: called again for this use even if the request already called it.
    ``scope="function"`` (for ``yield`` dependencies): the code after ``yield`` runs as soon as the
    handler returns, before the response is sent; the default (``"request"``) runs it after.
    The graph is resolved once, at registration (``percore.dependencies``)."""

    def __init__(
        self,
        dependency: Callable[..., Any] | None = None,
        *,
        use_cache: bool = True,
        scope: str | None = None,
    ) -> None:
        if scope not in (None, "function", "request"):
            raise ConfigurationError(f'Depends(scope={scope!r}): use "function" or "request"')
        self.dependency = dependency
        self.use_cache = use_cache
        self.scope = scope

    def __repr__(self) -> str:
        name = getattr(self.dependency, "__qualname__", self.dependency)
        return f"Depends({name}{'' if self.use_cache else ', use_cache=False'})"


class Security(Depends):
    """``Depends`` for a security dependency, with the OAuth2 ``scopes`` it requires: they are listed in
    the OpenAPI ``security`` of the route and, with those of every ``Security`` above it in the graph,
    given to a ``SecurityScopes`` parameter of the dependency (as FastAPI's ``Security``)."""

    def __init__(
        self,
        dependency: Callable[..., Any] | None = None,
        *,
        scopes: list[str] | tuple[str, ...] | None = None,
        use_cache: bool = True,
    ) -> None:
        super().__init__(dependency, use_cache=use_cache)
        self.scopes = list(scopes or [])


class SecurityScopes:
    """Declare a parameter of this type in a dependency to get the OAuth2 scopes required by the
    ``Security(...)`` declarations on its path through the graph (``scopes``; ``scope_str`` joined)."""

    def __init__(self, scopes: list[str] | None = None) -> None:
        self.scopes: list[str] = list(scopes or [])
        self.scope_str = " ".join(self.scopes)


@dataclass(frozen=True)
class Param:
    """One keyword argument of a handler, as the Rust side binds it."""

    name: str
    #: path | query | header | cookie | body | form | file | request (+ depends | background |
    #: security_scopes | websocket)
    source: str
    key: str  # the name on the wire
    kind: str  # str | int | float | bool | uuid | list[<scalar>] | json | upload | bytes | list[upload|bytes]
    required: bool
    default: Any
    converter: Callable[[Any], tuple[bool, Any]] | None = None
    #: The declared type (bodies: for the OpenAPI schema of a body a dependency declares).
    annotation: Any = None


SCALARS = {str: "str", int: "int", float: "float", bool: "bool", uuid.UUID: "uuid"}


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0], True
    return annotation, False


def _is_typed_dict(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, dict) and hasattr(annotation, "__total__")


def _is_pydantic_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and any(c.__name__ == "BaseModel" for c in annotation.__mro__[1:])


def _is_body_type(annotation: Any) -> bool:
    base = get_origin(annotation) or annotation
    if base in (dict, list) and not (base is list and _scalar_kind(annotation)):
        return True
    return (
        dataclasses.is_dataclass(annotation) or _is_typed_dict(annotation) or _is_pydantic_model(annotation)
    )


def _scalar_kind(annotation: Any) -> str | None:
    if annotation is inspect.Parameter.empty or annotation is Any:
        return "str"
    if annotation in SCALARS:
        return SCALARS[annotation]
    if get_origin(annotation) is list:
        (item,) = get_args(annotation) or (str,)
        if item in SCALARS:
            return f"list[{SCALARS[item]}]"
    return None


def _pydantic_errors(error: Any) -> list[dict]:
    """pydantic's errors as FastAPI answers them: under ``body``, with their ``ctx`` made JSON-safe."""
    errors = []
    for e in error.errors(include_url=False):
        entry = {"type": e["type"], "loc": ["body", *e["loc"]], "msg": e["msg"], "input": e.get("input")}
        if "ctx" in e:
            entry["ctx"] = jsonable_ctx(e["ctx"])
        errors.append(entry)
    return errors


def _body_converter(annotation: Any) -> Callable[[Any], tuple[bool, Any]] | None:
    """A validator for the parsed JSON, or None when any JSON value will do."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return None
    base = get_origin(annotation) or annotation
    if base in (dict, list) and not get_args(annotation):
        expected, kind = (dict, "dict_type") if base is dict else (list, "list_type")
        message = "Input should be a valid dictionary" if base is dict else "Input should be a valid list"

        def check(value: Any) -> tuple[bool, Any]:
            if isinstance(value, expected):
                return True, value
            return False, [{"type": kind, "loc": ["body"], "msg": message, "input": value}]

        return check
    try:
        from pydantic import TypeAdapter, ValidationError
    except ImportError:  # pydantic is optional: plain dataclasses and TypedDicts still work
        return _plain_converter(annotation)
    if _is_pydantic_model(annotation):
        validate = annotation.model_validate
    else:
        validate = TypeAdapter(annotation).validate_python

    def validate_body(value: Any) -> tuple[bool, Any]:
        try:
            return True, validate(value)
        except ValidationError as error:
            return False, _pydantic_errors(error)

    return validate_body


def _plain_converter(annotation: Any) -> Callable[[Any], tuple[bool, Any]]:
    """Without pydantic: dataclasses and TypedDicts validated per field, with pydantic's errors."""
    if dataclasses.is_dataclass(annotation) or _is_typed_dict(annotation):
        return _validation.converter(annotation)
    raise ConfigurationError(f"body type {annotation!r} needs pydantic installed to be validated")


def check_one_body_kind(where: str, params: list[Param]) -> None:
    """A body is JSON or a form, not both."""
    if any(p.source == "body" for p in params) and any(p.source in ("form", "file") for p in params):
        raise ConfigurationError(
            f"route {where}: a request body is JSON or a form; this one declares a JSON body "
            f"({', '.join(p.name for p in params if p.source == 'body')}) and form fields "
            f"({', '.join(p.name for p in params if p.source in ('form', 'file'))})"
        )


def _with_dependency(depends: Depends, dependency: Callable[..., Any]) -> Depends:
    """``Depends()``/``Security()`` without a callable, given the annotated type to call."""
    if isinstance(depends, Security):
        return Security(dependency, scopes=depends.scopes, use_cache=depends.use_cache)
    return Depends(dependency, use_cache=depends.use_cache, scope=depends.scope)


def _type_hints(function: Callable[..., Any]) -> dict[str, Any]:
    """The annotations of what calling ``function`` runs: a class's ``__init__``, an instance's
    ``__call__`` (security schemes), else the function itself."""
    if inspect.isclass(function):
        target: Any = function.__init__
    elif not inspect.isroutine(function) and callable(function):
        target = function.__call__
    else:
        target = function
    return typing.get_type_hints(target, include_extras=True)


def analyse(method: str, path: str, function: Callable[..., Any], path_params: list[str]) -> list[Param]:
    """The parameters of ``function`` served at ``method path``; mistakes are ConfigurationErrors.

    A ``Depends`` parameter comes back with source ``depends`` (its marker as the default) and a
    ``BackgroundTasks`` one with source ``background``: ``percore.dependencies`` resolves them."""
    where = f"{method} {path} ({getattr(function, '__qualname__', function)!r})"
    try:
        signature = inspect.signature(function)
        hints = _type_hints(function)
    except NameError as error:
        raise ConfigurationError(f"route {where}: cannot resolve an annotation: {error}") from None
    except (TypeError, ValueError) as error:
        raise ConfigurationError(f"route {where}: cannot read the handler's signature: {error}") from None
    params: list[Param] = []
    takes_any_keyword = False
    for name, parameter in signature.parameters.items():
        if parameter.kind is parameter.VAR_KEYWORD:
            takes_any_keyword = True
            continue
        if parameter.kind is parameter.VAR_POSITIONAL:
            continue
        if parameter.kind is parameter.POSITIONAL_ONLY:
            raise ConfigurationError(f"route {where}: parameter {name!r} cannot be positional-only")
        annotation = hints.get(name, parameter.annotation)
        marker = parameter.default if isinstance(parameter.default, _Marker) else None
        depends = parameter.default if isinstance(parameter.default, Depends) else None
        if get_origin(annotation) is Annotated:
            annotation, *extras = get_args(annotation)
            marker = next((e for e in extras if isinstance(e, _Marker)), marker)
            depends = next((e for e in extras if isinstance(e, Depends)), depends)
        if depends is not None:
            if depends.dependency is None:
                if annotation is inspect.Parameter.empty or not callable(annotation):
                    raise ConfigurationError(f"route {where}: {name!r} = Depends() needs a callable type")
                depends = _with_dependency(depends, annotation)
            params.append(Param(name, "depends", name, "depends", False, depends))
            continue
        if isinstance(annotation, type) and issubclass(annotation, BackgroundTasks):
            params.append(Param(name, "background", name, "background", False, None))
            continue
        if annotation is SecurityScopes:
            params.append(Param(name, "security_scopes", name, "security_scopes", False, None))
            continue
        default = marker.default if marker is not None else parameter.default
        if default is REQUIRED and not isinstance(parameter.default, _Marker):
            default = parameter.default  # `x: Annotated[str | None, Header()] = None`, as FastAPI
        if default is inspect.Parameter.empty:
            default = REQUIRED
        # As FastAPI: a parameter is optional when it has a default; `T | None` alone still requires it.
        annotation, _ = _strip_optional(annotation)
        required = default is REQUIRED
        if required:
            default = None

        if annotation is Request or (name == "request" and annotation is inspect.Parameter.empty):
            params.append(Param(name, "request", name, "str", False, None))
            continue
        if (isinstance(annotation, type) and issubclass(annotation, WebSocket)) or (
            name == "websocket" and annotation is inspect.Parameter.empty
        ):
            params.append(Param(name, "websocket", name, "websocket", False, None))
            continue
        source = marker.source if marker is not None else ""
        if name in path_params:
            source = "path"
        elif _forms.is_upload(annotation) and source in ("", "form", "body"):
            source = "file"  # as FastAPI: an UploadFile is a file whatever marks it
        elif source == "form" and (get_origin(annotation) or annotation) is bytes:
            source = "file"
        elif not source:
            source = "body" if _is_body_type(annotation) else "query"
        if source == "path" and name not in path_params:
            raise ConfigurationError(
                f"route {where}: {name!r} is marked Path() but {path!r} has no {{{name}}}"
            )
        key = (marker.alias if marker is not None and marker.alias else None) or name
        if source == "header" and not (marker and marker.alias):
            key = key.replace("_", "-") if getattr(marker, "convert_underscores", True) else key
            key = key.lower()
        if source == "file":
            kind = _forms.file_kind(annotation, where, name)
            converter = _forms.upload_file if "upload" in kind else None
            params.append(Param(name, source, key, kind, required, default, converter, annotation))
            continue
        if source == "body":
            converter = _body_converter(annotation)
            params.append(Param(name, "body", key, "json", required, default, converter, annotation))
            continue
        kind = _scalar_kind(annotation)
        if kind is None and source == "form":
            raise ConfigurationError(
                f"route {where}: form field {name!r} has type {annotation!r}; supported: str, int, "
                "float, bool, uuid.UUID, bytes and list[...] of them (files: UploadFile, bytes)"
            )
        if kind is None:
            raise ConfigurationError(
                f"route {where}: {source} parameter {name!r} has type {annotation!r}; "
                "supported: str, int, float, bool, uuid.UUID and list[...] of them"
            )
        if source == "path":
            required, default = True, None
        params.append(Param(name, source, key, kind, required, default))
    if sum(p.source == "body" for p in params) > 1:
        raise ConfigurationError(f"route {where}: only one parameter can be the request body")
    check_one_body_kind(where, params)
    bound = {p.name for p in params}
    for name in path_params:
        if name not in bound and takes_any_keyword:
            params.append(Param(name, "path", name, "str", True, None))
    return params


__all__ = [
    "Body",
    "Cookie",
    "Depends",
    "File",
    "Form",
    "Header",
    "Param",
    "Path",
    "Query",
    "Security",
    "SecurityScopes",
    "analyse",
]
