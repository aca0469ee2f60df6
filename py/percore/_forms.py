"""Form fields and uploads of native routes: what ``params.analyse`` needs to declare them, the factory
the Rust side calls to make an ``UploadFile``, the OpenAPI ``requestBody`` FastAPI writes for them, and
the encoding ``TestClient(data=, files=)`` sends.

The body itself is parsed in Rust as it streams in (``runtime/src/forms.rs``, with ``multer``), bound
per request like any other parameter (``runtime/src/python/params.rs``).
"""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, get_args, get_origin

from .datastructures import UploadFile
from .exceptions import ConfigurationError


def is_upload(annotation: Any) -> bool:
    """``UploadFile`` or ``list[UploadFile]``: a file parameter even without ``File()``, as FastAPI."""
    if get_origin(annotation) is list:
        (annotation,) = get_args(annotation) or (None,)
    return isinstance(annotation, type) and issubclass(annotation, UploadFile)


def file_kind(annotation: Any, where: str, name: str) -> str:
    """The Rust kind of a ``File()`` parameter: ``upload``/``bytes``, or ``list[...]`` of them."""
    many = get_origin(annotation) is list
    item = (get_args(annotation) or (bytes,))[0] if many else annotation
    if isinstance(item, type) and issubclass(item, UploadFile):
        kind = "upload"
    elif item is bytes:
        kind = "bytes"
    else:
        raise ConfigurationError(
            f"route {where}: file parameter {name!r} has type {annotation!r}; supported: UploadFile, "
            "bytes and list[...] of them"
        )
    return f"list[{kind}]" if many else kind


def upload_file(
    filename: str,
    content_type: str | None,
    headers: list[tuple[str, str]],
    size: int,
    data: bytes | None,
    raw: io.FileIO | None,
) -> UploadFile:
    """Called from Rust per uploaded file: its contents are ``data`` (in memory) or the unlinked temporary
    file ``raw`` (spooled to disk, already a Python object: it closes itself if this fails)."""
    file: Any = io.BytesIO(data) if raw is None else io.BufferedRandom(raw)
    part_headers: dict[str, str] = {}
    for key, value in headers:
        part_headers[key] = f"{part_headers[key]}, {value}" if key in part_headers else value
    if content_type is not None:
        part_headers.setdefault("content-type", content_type)
    return UploadFile(file, size=size, filename=filename, headers=part_headers)


def _operation_id(function: Any, path: str, method: str) -> str:
    """FastAPI's ``generate_unique_id``: the ``Body_...`` schema of a form is named after it."""
    name = getattr(function, "__name__", "handler")
    return re.sub(r"\W", "_", f"{name}{path}") + f"_{method.lower()}"


def _field_schema(param: Any) -> dict[str, Any]:
    from ._openapi import _kind_schema

    binary = {"type": "string", "contentMediaType": "application/octet-stream"}
    if param.kind in ("upload", "bytes"):
        schema = dict(binary)
    elif param.kind in ("list[upload]", "list[bytes]"):
        schema = {"items": dict(binary), "type": "array"}
    else:
        schema = _kind_schema(param.kind)
    if not param.required and param.default is None:
        schema = {"anyOf": [schema, {"type": "null"}]}
    schema["title"] = param.name.replace("_", " ").title()
    if not param.required and param.default is not None:
        default = param.default
        schema["default"] = str(default) if isinstance(default, uuid.UUID) else default
    return schema


def request_body(route: Any, params: Iterable[Any], components: dict[str, Any]) -> dict[str, Any]:
    """The operation's ``requestBody`` for its form parameters, as FastAPI writes it: a
    ``Body_<operation id>`` object schema under ``components/schemas``, ``multipart/form-data`` when a
    file is among them, else ``application/x-www-form-urlencoded``."""
    params = list(params)
    title = f"Body_{_operation_id(route.function, route.path, route.method)}"
    schema: dict[str, Any] = {
        "properties": {p.key: _field_schema(p) for p in params},
        "type": "object",
    }
    required = [p.key for p in params if p.required]
    if required:
        schema["required"] = required
    schema["title"] = title
    components[title] = schema
    multipart = any(p.source == "file" for p in params)
    media_type = "multipart/form-data" if multipart else "application/x-www-form-urlencoded"
    body: dict[str, Any] = {"content": {media_type: {"schema": {"$ref": f"#/components/schemas/{title}"}}}}
    if required:
        body["required"] = True
    return body


FileSpec = bytes | tuple[str, bytes] | tuple[str, bytes, str]


def encode(
    data: Mapping[str, Any] | None, files: Mapping[str, FileSpec] | Iterable[tuple[str, FileSpec]] | None
) -> tuple[bytes, str]:
    """``(body, content type)`` for ``data`` (fields; a list value repeats the name) and ``files``
    (``{name: (filename, content[, content_type])}`` or a list of such pairs), as httpx encodes them:
    urlencoded without files, multipart with."""
    fields: list[tuple[str, str]] = []
    for key, value in (data or {}).items():
        for item in value if isinstance(value, list | tuple) else [value]:
            fields.append((key, str(item)))
    file_items = list(files.items() if isinstance(files, Mapping) else files or [])
    if not file_items:
        from urllib.parse import urlencode

        return urlencode(fields).encode(), "application/x-www-form-urlencoded"
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for key, value in fields:
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'.encode())
        out.write(value.encode() + b"\r\n")
    for key, spec in file_items:
        filename, content, content_type = (
            ("upload", spec, "application/octet-stream")
            if isinstance(spec, bytes)
            else (*spec, "application/octet-stream")[:3]
        )
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n".encode()
        )
        out.write(content + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"
