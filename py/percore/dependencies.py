"""Dependencies (``Depends``), resolved once per route at registration.

FastAPI walks a route's dependency graph on every request, in Python. Here ``solve`` walks it once:

- every parameter of the whole graph (the handler's and every dependency's, recursively) is flattened
  into the route's one parameter set, which the Rust side binds per request like any handler's
  (a name declared twice must mean the same thing: same source, wire name, type, default; otherwise a
  ``ConfigurationError`` names both declarations). A 422 therefore names a dependency's missing query
  parameter exactly as it would the handler's (``["query", "q"]``), as FastAPI does;
- the graph becomes a plan: the dependencies in topological order, each called once per request
  (twice only where ``use_cache=False`` asks), and the handler last. The plan is compiled into one
  Python function (source generated here, ``exec``'d once), so per request only the calls remain;
- ``yield`` dependencies (sync and async generators) are entered in order. If the handler (or a later
  dependency) raises, or the request is cancelled (client gone), the exception is thrown into them,
  innermost first, before the app's exception handlers see it (as FastAPI). On success those with
  ``Depends(scope="function")`` are closed as soon as the handler returns; the others are closed
  after the response is produced: the rest of their body runs in a task on the request's loop, which
  first runs the request's ``BackgroundTasks`` and then closes the generators innermost first. That task
  starts on the loop's next iteration, after the response was handed to the connection (the loop driver
  lets connections write between iterations), so cleanup never delays the response — FastAPI ≥ 0.118
  likewise exits request-scoped dependencies after the response is sent. An exception in cleanup or in
  a background task is logged; the response has already gone.

A route without dependencies, ``BackgroundTasks`` or ``response_model`` is served exactly as before:
no wrapper at all.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._logging import logger
from .background import BackgroundTasks, run_after_response
from .exceptions import ConfigurationError
from .params import Depends, Param, Security, SecurityScopes, analyse, check_one_body_kind

__all__ = ["Depends", "Solved", "solve"]


@dataclass(frozen=True)
class Solved:
    """What the server registers for one route: the Rust-bound parameters and the callable to call."""

    params: list[Param]
    endpoint: Callable[..., Any]
    #: Security schemes (``percore.security``) anywhere in the graph with their OAuth2 scopes, for
    #: OpenAPI: ``((scheme, [scope, ...]), ...)``.
    security: tuple[tuple[Any, list[str]], ...] = ()


@dataclass
class _Node:
    function: Callable[..., Any]
    style: str  # call | await | gen | agen
    args: list[tuple[str, str]] = field(default_factory=list)  # (keyword, expression)
    #: ``Depends(scope="function")``: a generator closed as soon as the handler returns.
    function_scope: bool = False


def _callable_target(function: Callable[..., Any]) -> Any:
    if not inspect.isroutine(function) and not inspect.isclass(function) and callable(function):
        return function.__call__
    return function


def _style(function: Callable[..., Any]) -> str:
    target = _callable_target(function)
    if inspect.isasyncgenfunction(target):
        return "agen"
    if inspect.isgeneratorfunction(target):
        return "gen"
    if inspect.iscoroutinefunction(target):
        return "await"
    return "call"


def _same(a: Param, b: Param) -> bool:
    if (a.source, a.key, a.kind, a.required) != (b.source, b.key, b.kind, b.required):
        return False
    if a.source == "body" and a.annotation != b.annotation:
        return False
    try:
        return bool(a.default == b.default)
    except Exception:
        return a.default is b.default


def _name(function: Any) -> str:
    return getattr(function, "__qualname__", None) or type(function).__qualname__


_SOURCE_ORDER = ("path", "query", "header", "cookie", "body", "request", "websocket")
#: Form fields and files are the body, in the order declared (as FastAPI validates them).
_BODY_SOURCES = {"form": "body", "file": "body"}


class _Graph:
    def __init__(self, method: str, path: str, path_params: list[str]) -> None:
        self.method = method
        self.path = path
        self.path_params = path_params
        self.params: dict[str, tuple[Param, str]] = {}  # slot -> (param, who declared it)
        self.request_slot: str | None = None
        self.websocket_slot: str | None = None
        self.nodes: list[_Node] = []
        self.cache: dict[Any, int] = {}
        self.background = False
        self.security: dict[Any, list[str]] = {}  # scheme -> scopes (merged, as FastAPI)
        #: Values fixed at registration that calls take (``SecurityScopes``): ``_percore_c<i>``.
        self.constants: list[Any] = []

    def where(self) -> str:
        return f"route {self.method} {self.path}"

    def arguments(
        self, function: Callable[..., Any], stack: tuple[Any, ...], scopes: tuple[str, ...] = ()
    ) -> list[tuple[str, str]]:
        # A dependency marked private (security schemes) keeps its parameters to itself: they are bound
        # under a prefixed name so they never clash with the app's, and stay out of the OpenAPI list.
        private = getattr(function, "_percore_private_params", False)
        analysed = analyse(self.method, self.path, function, self.path_params)
        expressions: dict[str, str] = {}
        # Dependencies first, then this function's own parameters by source: the order FastAPI validates
        # in, so a 422 lists its errors in the same order.
        for param in analysed:
            if param.source == "depends":
                expressions[param.name] = self.node(param.default, stack, scopes)
            elif param.source == "security_scopes":
                self.constants.append(SecurityScopes(list(scopes)))
                expressions[param.name] = f"_percore_c{len(self.constants) - 1}"
            elif param.source == "background":
                self.background = True
                expressions[param.name] = "_percore_bg"
        for source in _SOURCE_ORDER:
            for param in analysed:
                if _BODY_SOURCES.get(param.source, param.source) == source:
                    expressions[param.name] = self.bind(function, param, private)
        return [(param.name, expressions[param.name]) for param in analysed]

    def bind(self, function: Callable[..., Any], param: Param, private: bool) -> str:
        """Adds ``param`` to the route's bound parameters; the name it is bound under."""
        if param.source == "request":
            if self.request_slot is None:
                self.request_slot = "_percore_req" if private else param.name
                self.params[self.request_slot] = (
                    dataclasses.replace(param, name=self.request_slot, key=self.request_slot),
                    _name(function),
                )
            return self.request_slot
        if param.source == "websocket":  # one connection object, whoever declares it (WebSocket routes)
            if self.websocket_slot is None:
                self.websocket_slot = param.name
                self.params[param.name] = (param, _name(function))
            return self.websocket_slot
        slot = f"_percore_{id(function):x}_{param.name}" if private else param.name
        param = dataclasses.replace(param, name=slot)
        known = self.params.get(slot)
        if known is None:
            self.params[slot] = (param, _name(function))
        elif not _same(known[0], param):
            raise ConfigurationError(
                f"{self.where()}: parameter {slot!r} is declared differently by {known[1]} "
                f"({known[0].source} {known[0].key!r}, {known[0].kind}) and by {_name(function)} "
                f"({param.source} {param.key!r}, {param.kind}); rename one of them"
            )
        return slot

    def node(self, depends: Depends, stack: tuple[Any, ...], scopes: tuple[str, ...] = ()) -> str:
        function = depends.dependency
        if function is None or not callable(function):
            raise ConfigurationError(f"{self.where()}: {depends!r} does not name a callable")
        if isinstance(depends, Security):
            scopes = (*scopes, *depends.scopes)
        try:
            key: tuple[Any, ...] = (function, scopes)
            hash(key)
        except TypeError:
            key = (id(function), scopes)
        if depends.use_cache and key in self.cache:
            return f"_percore_d{self.cache[key]}"
        if any(function is seen for seen in stack):
            cycle = " -> ".join(_name(f) for f in (*stack, function))
            raise ConfigurationError(f"{self.where()}: dependency cycle {cycle}")
        if getattr(function, "_percore_security_scheme", None) is not None:
            merged = self.security.setdefault(function, [])
            merged += [scope for scope in scopes if scope not in merged]
        node = _Node(function, _style(function), function_scope=depends.scope == "function")
        node.args = self.arguments(function, (*stack, function), scopes)
        if node.style in ("gen", "agen") and not node.function_scope:
            for _, expression in node.args:
                if expression.startswith("_percore_d") and self.nodes[int(expression[10:])].function_scope:
                    raise ConfigurationError(
                        f'{self.where()}: the dependency {_name(function)} has a scope of "request", it '
                        'cannot depend on dependencies with scope "function"'
                    )
        self.nodes.append(node)
        index = len(self.nodes) - 1
        if depends.use_cache:
            self.cache[key] = index
        return f"_percore_d{index}"


def _enter_failed(function: Any) -> RuntimeError:
    return RuntimeError(f"dependency {_name(function)} did not yield a value")


def _unwind_sync(stack: list[Any], error: BaseException) -> BaseException:
    """Throws ``error`` into the open sync generators, innermost first; returns what comes out."""
    for generator in reversed(stack):
        try:
            generator.throw(error)
        except StopIteration:
            pass  # it swallowed the exception: the original still propagates
        except BaseException as raised:
            error = raised
        else:
            generator.close()
    return error


async def _unwind(stack: list[Any], error: BaseException) -> BaseException:
    for generator in reversed(stack):
        try:
            if inspect.isasyncgen(generator):
                await generator.athrow(error)
            else:
                generator.throw(error)
        except (StopIteration, StopAsyncIteration):
            pass
        except BaseException as raised:
            error = raised
        else:
            if inspect.isasyncgen(generator):
                await generator.aclose()
            else:
                generator.close()
    return error


def _close_now_sync(stack: list[Any], function_scoped: list[Any]) -> None:
    """Closes the ``scope="function"`` generators (innermost first) as the handler returned: their
    exceptions propagate, as a handler's would (the rest of ``stack`` is then unwound with them)."""
    for generator in reversed(function_scoped):
        stack.remove(generator)
        try:
            next(generator)
        except StopIteration:
            continue
        generator.close()
        raise RuntimeError(f"dependency {generator.__qualname__} yielded more than once")


async def _close_now(stack: list[Any], function_scoped: list[Any]) -> None:
    for generator in reversed(function_scoped):
        stack.remove(generator)
        if not inspect.isasyncgen(generator):
            _close_now_sync([generator], [generator])
            continue
        try:
            await generator.__anext__()
        except StopAsyncIteration:
            continue
        await generator.aclose()
        raise RuntimeError(f"dependency {generator.__qualname__} yielded more than once")


async def _finish(stack: list[Any], background: BackgroundTasks | None, name: str) -> None:
    if background is not None and background.tasks:
        await background()
    for generator in reversed(stack):
        try:
            if inspect.isasyncgen(generator):
                await generator.__anext__()
            else:
                next(generator)
        except (StopIteration, StopAsyncIteration):
            continue
        except Exception:
            logger.exception("cleanup of dependency %s for %s failed", generator.__qualname__, name)
            continue
        logger.error("dependency %s for %s yielded more than once", generator.__qualname__, name)
        if inspect.isasyncgen(generator):
            await generator.aclose()
        else:
            generator.close()


def _after(stack: list[Any], background: BackgroundTasks | None, name: str) -> None:
    """Runs the request's background tasks, then closes its generators, in a task on the loop."""
    if stack or (background is not None and background.tasks):
        run_after_response(functools.partial(_finish, stack, background, name))


def _response_filter(model: Any, exclude_none: bool) -> Callable[[Any], Any]:
    """The return value validated through ``model`` and dumped as JSON-ready data (FastAPI's
    ``response_model``); a ``Response`` passes as is. Invalid data raises: a logged 500, as FastAPI."""
    from .responses import Response

    try:
        from pydantic import TypeAdapter
    except ImportError:
        if not dataclasses.is_dataclass(model):
            raise ConfigurationError(f"response_model={model!r} needs pydantic installed") from None

        def plain(value: Any) -> Any:
            if isinstance(value, Response):
                return value
            if isinstance(value, dict):
                value = model(**{f.name: value[f.name] for f in dataclasses.fields(model) if f.name in value})
            data = dataclasses.asdict(value)
            return {k: v for k, v in data.items() if v is not None} if exclude_none else data

        return plain
    adapter = TypeAdapter(model)

    def validate(value: Any) -> Any:
        if isinstance(value, Response):
            return value
        if not isinstance(value, dict | list) and dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        checked = adapter.validate_python(value, from_attributes=True)
        return adapter.dump_python(checked, mode="json", by_alias=True, exclude_none=exclude_none)

    return validate


def solve(
    method: str,
    path: str,
    function: Callable[..., Any],
    path_params: list[str],
    dependencies: tuple[Depends, ...] = (),
    response_model: Any = None,
    response_model_exclude_none: bool = False,
) -> Solved:
    """The route's bound parameters and the callable the server calls (``function`` itself when it has
    no dependencies, background tasks or response model)."""
    graph = _Graph(method, path, path_params)
    for depends in dependencies:
        if not isinstance(depends, Depends):
            raise ConfigurationError(
                f"{graph.where()}: dependencies=[...] takes Depends(...), not {depends!r}"
            )
        graph.node(depends, ())
    handler_args = graph.arguments(function, (function,))
    if not graph.nodes and not graph.background and not graph.constants and response_model is None:
        return Solved(analyse(method, path, function, path_params), function)
    params = [param for param, _ in graph.params.values()]
    check_one_body_kind(graph.where(), params)
    bodies = [p for p in params if p.source == "body"]
    if len(bodies) > 1:
        raise ConfigurationError(
            f"{graph.where()}: only one parameter can be the request body; the handler and its "
            f"dependencies declare {', '.join(repr(p.name) for p in bodies)}"
        )
    name = f"{method} {path}"
    namespace: dict[str, Any] = {
        "_percore_handler": function,
        "_percore_BackgroundTasks": BackgroundTasks,
        "_percore_after": _after,
        "_percore_unwind": _unwind,
        "_percore_unwind_sync": _unwind_sync,
        "_percore_enter_failed": _enter_failed,
        "_percore_close_now": _close_now,
        "_percore_close_now_sync": _close_now_sync,
        "_percore_name": name,
    }
    is_async = _style(function) in ("await", "agen") or any(n.style in ("await", "agen") for n in graph.nodes)
    generators = any(n.style in ("gen", "agen") for n in graph.nodes)
    body: list[str] = []
    if graph.background:
        body.append("_percore_bg = _percore_BackgroundTasks()")
    function_scoped = any(n.function_scope and n.style in ("gen", "agen") for n in graph.nodes)
    if generators:
        body.append("_percore_stack = []")
    if function_scoped:
        body.append("_percore_fstack = []")
    steps: list[str] = []

    def call(callee: str, args: list[tuple[str, str]]) -> str:
        return f"{callee}({', '.join(f'{k}={v}' for k, v in args)})"

    for index, constant in enumerate(graph.constants):
        namespace[f"_percore_c{index}"] = constant
    for index, node in enumerate(graph.nodes):
        callee = f"_percore_f{index}"
        namespace[callee] = node.function
        target = f"_percore_d{index}"
        invocation = call(callee, node.args)
        if node.style == "call":
            steps.append(f"{target} = {invocation}")
        elif node.style == "await":
            steps.append(f"{target} = await {invocation}")
        else:
            steps.append(f"_percore_g = {invocation}")
            steps.append("try:")
            if node.style == "gen":
                steps.append(f"    {target} = _percore_g.__next__()")
                steps.append("except StopIteration:")
            else:
                steps.append(f"    {target} = await _percore_g.__anext__()")
                steps.append("except StopAsyncIteration:")
            steps.append(f"    raise _percore_enter_failed({callee}) from None")
            steps.append("_percore_stack.append(_percore_g)")
            if node.function_scope:
                steps.append("_percore_fstack.append(_percore_g)")
    invocation = call("_percore_handler", handler_args)
    if _style(function) == "await":
        steps.append(f"_percore_r = await {invocation}")
    else:
        steps.append(f"_percore_r = {invocation}")
    if function_scoped:
        close = "await _percore_close_now" if is_async else "_percore_close_now_sync"
        steps.append(f"{close}(_percore_stack, _percore_fstack)")
    if response_model is not None:
        namespace["_percore_model"] = _response_filter(response_model, response_model_exclude_none)
        steps.append("_percore_r = _percore_model(_percore_r)")
    if generators:
        body.append("try:")
        body += ["    " + line for line in steps]
        body.append("except BaseException as _percore_e:")
        unwind = "await _percore_unwind" if is_async else "_percore_unwind_sync"
        body.append(f"    _percore_raised = {unwind}(_percore_stack, _percore_e)")
        body.append("    if _percore_raised is _percore_e:")
        body.append("        raise")
        body.append("    raise _percore_raised")
    else:
        body += steps
    if generators or graph.background:
        body.append(
            f"_percore_after({'_percore_stack' if generators else '[]'}, "
            f"{'_percore_bg' if graph.background else 'None'}, _percore_name)"
        )
    body.append("return _percore_r")
    signature = ", ".join(p.name for p in params)
    source = (
        f"{'async ' if is_async else ''}def _percore_solved({'*, ' + signature if signature else ''}):\n"
        + "\n".join("    " + line for line in body)
        + "\n"
    )
    exec(compile(source, f"<percore dependencies of {name}>", "exec"), namespace)
    endpoint = namespace["_percore_solved"]
    endpoint.__qualname__ = endpoint.__name__ = getattr(function, "__name__", "handler")
    endpoint._percore_source = source  # for debugging: the plan as Python
    return Solved(params, endpoint, tuple(graph.security.items()))
