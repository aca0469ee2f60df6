"""Dataclass and TypedDict bodies validated per field without pydantic, with pydantic's (so FastAPI's)
errors: the same ``type``, ``loc``, ``msg``, ``input`` and ``ctx`` for a missing field, a value of the
wrong type, a nested model, a list item, a ``Literal``. Extra fields are ignored, as pydantic does.

With pydantic installed, ``params`` validates through ``pydantic.TypeAdapter`` instead (the errors'
``ctx`` made JSON-safe by ``jsonable_ctx``, as FastAPI's ``jsonable_encoder`` does). This module is the
fallback for the types percore binds without it: ``str``, ``int``, ``float``, ``bool``, ``None``,
``T | None``, ``list[T]``, ``dict[str, T]``, ``Literal[...]``, nested dataclasses and TypedDicts; any
other annotation accepts its value as is.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union, get_args, get_origin

Errors = list[dict[str, Any]]
Validator = Callable[[Any, list[Any], Errors], Any]

_MISSING = object()


def jsonable_ctx(ctx: dict[str, Any]) -> dict[str, Any]:
    """A pydantic error's ``ctx`` as FastAPI's ``jsonable_encoder`` writes it: an exception (a
    ``value_error``'s) becomes ``{}``, other objects their ``str``."""

    def encode(value: Any) -> Any:
        if value is None or isinstance(value, str | int | float | bool):
            return value
        if isinstance(value, dict):
            return {str(k): encode(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [encode(v) for v in value]
        if isinstance(value, BaseException):
            return {}
        return str(value)

    return encode(ctx)


def _error(errors: Errors, kind: str, loc: list[Any], msg: str, value: Any, ctx: dict | None = None) -> None:
    entry: dict[str, Any] = {"type": kind, "loc": list(loc), "msg": msg, "input": value}
    if ctx is not None:
        entry["ctx"] = ctx
    errors.append(entry)


def _is_typed_dict(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, dict) and hasattr(annotation, "__total__")


def _str(value: Any, loc: list[Any], errors: Errors) -> Any:
    if isinstance(value, str):
        return value
    _error(errors, "string_type", loc, "Input should be a valid string", value)
    return _MISSING


def _int(value: Any, loc: list[Any], errors: Errors) -> Any:
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        _error(
            errors,
            "int_from_float",
            loc,
            "Input should be a valid integer, got a number with a fractional part",
            value,
        )
        return _MISSING
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            _error(
                errors,
                "int_parsing",
                loc,
                "Input should be a valid integer, unable to parse string as an integer",
                value,
            )
            return _MISSING
    _error(errors, "int_type", loc, "Input should be a valid integer", value)
    return _MISSING


def _float(value: Any, loc: list[Any], errors: Errors) -> Any:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            _error(
                errors,
                "float_parsing",
                loc,
                "Input should be a valid number, unable to parse string as a number",
                value,
            )
            return _MISSING
    _error(errors, "float_type", loc, "Input should be a valid number", value)
    return _MISSING


_TRUE = {"1", "on", "t", "true", "y", "yes"}
_FALSE = {"0", "off", "f", "false", "n", "no"}


def _bool(value: Any, loc: list[Any], errors: Errors) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    if isinstance(value, int | float | str):
        _error(
            errors, "bool_parsing", loc, "Input should be a valid boolean, unable to interpret input", value
        )
    else:
        _error(errors, "bool_type", loc, "Input should be a valid boolean", value)
    return _MISSING


def _none(value: Any, loc: list[Any], errors: Errors) -> Any:
    if value is None:
        return None
    _error(errors, "none_required", loc, "Input should be None", value)
    return _MISSING


def _any(value: Any, loc: list[Any], errors: Errors) -> Any:
    return value


def validator(annotation: Any) -> Validator:
    """A function ``(value, loc, errors) -> value`` (``_MISSING`` after appending errors)."""
    if annotation is Any:
        return _any
    simple = {str: _str, int: _int, float: _float, bool: _bool, type(None): _none, None: _none}
    try:
        if annotation in simple:
            return simple[annotation]
    except TypeError:  # an unhashable annotation: none of these
        pass
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = get_args(annotation)
        if type(None) in members:
            rest = [m for m in members if m is not type(None)]
            inner = validator(rest[0] if len(rest) == 1 else Union[tuple(rest)])  # noqa: UP007

            def nullable(value: Any, loc: list[Any], errors: Errors) -> Any:
                return None if value is None else inner(value, loc, errors)

            return nullable
        return _any  # a union of several types: pydantic's smart mode is beyond this fallback
    if origin is Literal:
        expected = get_args(annotation)
        shown = [repr(e) for e in expected]
        text = shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"

        def literal(value: Any, loc: list[Any], errors: Errors) -> Any:
            if value in expected:
                return value
            _error(errors, "literal_error", loc, f"Input should be {text}", value, {"expected": text})
            return _MISSING

        return literal
    if origin is list or annotation is list:
        item = validator((get_args(annotation) or (Any,))[0])

        def list_of(value: Any, loc: list[Any], errors: Errors) -> Any:
            if not isinstance(value, list | tuple):
                _error(errors, "list_type", loc, "Input should be a valid list", value)
                return _MISSING
            out = [item(v, [*loc, i], errors) for i, v in enumerate(value)]
            return out if _MISSING not in out else _MISSING

        return list_of
    if origin is dict or annotation is dict:
        args = get_args(annotation)
        item = validator(args[1]) if len(args) == 2 else _any

        def dict_of(value: Any, loc: list[Any], errors: Errors) -> Any:
            if not isinstance(value, dict):
                _error(errors, "dict_type", loc, "Input should be a valid dictionary", value)
                return _MISSING
            out = {k: item(v, [*loc, k], errors) for k, v in value.items()}
            return out if _MISSING not in out.values() else _MISSING

        return dict_of
    if dataclasses.is_dataclass(annotation) or _is_typed_dict(annotation):
        return _model(annotation)
    return _any


def _model(annotation: Any) -> Validator:
    fields: list[tuple[str, Validator, bool]] = []  # (name, validator, required)
    resolved: list[tuple[str, Validator, bool]] | None = None

    def field_list() -> list[tuple[str, Validator, bool]]:
        # Resolved on first use: a field may name a class defined after this one (or itself).
        nonlocal resolved
        if resolved is None:
            hints = typing.get_type_hints(annotation)
            if dataclasses.is_dataclass(annotation):
                for f in dataclasses.fields(annotation):
                    if not f.init:
                        continue
                    required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                    fields.append((f.name, validator(hints.get(f.name, Any)), required))
            else:
                required_keys = getattr(annotation, "__required_keys__", frozenset(hints))
                for name, hint in hints.items():
                    fields.append((name, validator(hint), name in required_keys))
            resolved = fields
        return resolved

    is_dataclass = dataclasses.is_dataclass(annotation)
    name = annotation.__name__

    def model(value: Any, loc: list[Any], errors: Errors) -> Any:
        if is_dataclass and isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            if is_dataclass:
                message = f"Input should be a dictionary or an instance of {name}"
                _error(errors, "dataclass_type", loc, message, value, {"class_name": name})
            else:
                _error(errors, "dict_type", loc, "Input should be a valid dictionary", value)
            return _MISSING
        out: dict[str, Any] = {}
        failed = False
        for field_name, check, required in field_list():
            if field_name not in value:
                if required:
                    _error(errors, "missing", [*loc, field_name], "Field required", value)
                    failed = True
                continue
            checked = check(value[field_name], [*loc, field_name], errors)
            failed = failed or checked is _MISSING
            out[field_name] = checked
        if failed:
            return _MISSING
        return annotation(**out) if is_dataclass else out

    return model


def converter(annotation: Any) -> Callable[[Any], tuple[bool, Any]]:
    """``params``' body converter without pydantic: ``(True, value)`` or ``(False, errors)``."""
    check = validator(annotation)

    def convert(value: Any) -> tuple[bool, Any]:
        errors: Errors = []
        checked = check(value, ["body"], errors)
        if errors or checked is _MISSING:
            return False, errors
        return True, checked

    return convert
