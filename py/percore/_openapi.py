"""OpenAPI 3.1 for a native app, generated once at startup from its routes and their parameters, and a
self-contained docs page (no CDN: it works offline) that lists the operations and can try them."""

from __future__ import annotations

import dataclasses
import inspect
import typing
import uuid
from typing import Any, get_args, get_origin

SCALAR_SCHEMAS = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "uuid": {"type": "string", "format": "uuid"},
}

VALIDATION_ERROR = {
    "type": "object",
    "properties": {
        "detail": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                    "input": {},
                },
                "required": ["loc", "msg", "type"],
            },
        }
    },
}


def _kind_schema(kind: str) -> dict[str, Any]:
    if kind.startswith("list["):
        return {"type": "array", "items": SCALAR_SCHEMAS[kind[5:-1]]}
    return dict(SCALAR_SCHEMAS.get(kind, {}))


def _body_schema(annotation: Any, components: dict[str, Any]) -> dict[str, Any]:
    if annotation in (inspect.Parameter.empty, Any):
        return {}
    base = get_origin(annotation) or annotation
    if base is dict and not get_args(annotation):
        return {"type": "object"}
    if base is list and not get_args(annotation):
        return {"type": "array"}
    try:
        from pydantic import TypeAdapter
    except ImportError:
        if dataclasses.is_dataclass(annotation):
            return {"type": "object", "title": annotation.__name__}
        return {}
    schema = TypeAdapter(annotation).json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in schema.pop("$defs", {}).items():
        components[name] = definition
    title = schema.get("title")
    if title and schema.get("type") == "object":
        components[title] = schema
        return {"$ref": f"#/components/schemas/{title}"}
    return schema


def generate(routes: list, title: str, version: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    components: dict[str, Any] = {"HTTPValidationError": VALIDATION_ERROR}
    security_schemes: dict[str, Any] = {}
    for route in routes:
        function = route.function
        hints = {}
        try:
            hints = typing.get_type_hints(function)
        except Exception:
            pass
        operation: dict[str, Any] = {
            "operationId": f"{getattr(function, '__name__', 'handler')}_{route.method.lower()}",
            "summary": (getattr(function, "__name__", "") or "").replace("_", " ").strip().capitalize(),
            "responses": {str(route.status_code): {"description": "Successful Response"}},
        }
        doc = inspect.getdoc(function)
        if doc:
            operation["description"] = doc
        parameters = []
        for param in route.params:
            if param.source in ("request",) or param.name.startswith("_percore"):
                continue
            if param.source == "body":
                operation["requestBody"] = {
                    "required": param.required,
                    "content": {
                        "application/json": {
                            "schema": _body_schema(
                                param.annotation
                                if param.annotation is not None
                                else hints.get(param.name, Any),
                                components,
                            )
                        }
                    },
                }
                continue
            entry = {
                "name": param.key,
                "in": param.source,
                "required": param.required,
                "schema": _kind_schema(param.kind),
            }
            if not param.required and param.default is not None and not isinstance(param.default, list):
                entry["schema"]["default"] = (
                    param.default if not isinstance(param.default, uuid.UUID) else str(param.default)
                )
            parameters.append(entry)
        if parameters:
            operation["parameters"] = parameters
        _add_response_model(operation, route, components)
        _add_security(operation, route, security_schemes)
        if parameters or "requestBody" in operation:
            operation["responses"]["422"] = {
                "description": "Validation Error",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
                },
            }
        paths.setdefault(route.path.replace("{*", "{"), {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            **({"securitySchemes": security_schemes} if security_schemes else {}),
        },
    }


def _add_response_model(operation: dict[str, Any], route: Any, components: dict[str, Any]) -> None:
    """``response_model=``: the success response's JSON schema."""
    model = getattr(route, "response_model", None)
    if model is None:
        return
    response = operation["responses"][str(route.status_code)]
    response["content"] = {"application/json": {"schema": _body_schema(model, components)}}


def _add_security(operation: dict[str, Any], route: Any, schemes: dict[str, Any]) -> None:
    """The route's security schemes (``percore.security``, used as dependencies): the operation's
    ``security`` requirements and ``components.securitySchemes``."""
    for scheme, scopes in getattr(route, "security", ()):
        schemes[scheme.scheme_name] = scheme.openapi_scheme()
        operation.setdefault("security", []).append({scheme.scheme_name: list(scopes)})


DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>%(title)s — API docs</title>
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;color:#222}
h1{font-size:1.6rem}.op{border:1px solid #ddd;border-radius:6px;margin:.8rem 0;padding:.6rem .9rem}
.m{display:inline-block;min-width:4.5rem;font-weight:700;text-transform:uppercase}
.get{color:#1a7f37}.post{color:#0550ae}.put,.patch{color:#9a6700}.delete{color:#cf222e}
code{background:#f6f8fa;padding:0 .25rem}table{border-collapse:collapse;margin:.4rem 0}
td{padding:.1rem .6rem .1rem 0;vertical-align:top}input,textarea{font:inherit;width:100%%;box-sizing:border-box}
pre{background:#f6f8fa;padding:.5rem;overflow:auto;max-height:20rem}
</style></head><body>
<h1>%(title)s</h1><p>From <a href="%(openapi_url)s"><code>%(openapi_url)s</code></a>. Everything here is served by
this server; no network needed.</p><div id="ops">Loading…</div>
<script>
const esc = s => String(s).replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));
fetch(%(openapi_json)s).then(r => r.json()).then(spec => {
  const ops = document.getElementById("ops"); ops.textContent = "";
  for (const [path, methods] of Object.entries(spec.paths)) for (const [method, op] of Object.entries(methods)) {
    const div = document.createElement("div"); div.className = "op";
    const params = op.parameters || [];
    let html = `<span class="m ${method}">${method}</span><code>${esc(path)}</code> ${esc(op.summary || "")}`;
    if (op.description) html += `<p>${esc(op.description)}</p>`;
    html += "<table>" + params.map(p => `<tr><td><code>${esc(p.name)}</code> (${p.in}${p.required ? ", required" : ""})</td>
      <td><input data-name="${esc(p.name)}" data-in="${p.in}" placeholder="${esc(JSON.stringify(p.schema))}"></td></tr>`).join("");
    if (op.requestBody) html += `<tr><td>JSON body</td><td><textarea rows="3"></textarea></td></tr>`;
    html += `</table><button>Try it</button><pre hidden></pre>`;
    div.innerHTML = html; ops.appendChild(div);
    div.querySelector("button").onclick = async () => {
      let url = path; const query = new URLSearchParams(); const headers = {};
      for (const input of div.querySelectorAll("input")) {
        if (!input.value) continue;
        if (input.dataset.in === "path") url = url.replace(`{${input.dataset.name}}`, encodeURIComponent(input.value));
        else if (input.dataset.in === "query") query.append(input.dataset.name, input.value);
        else if (input.dataset.in === "header") headers[input.dataset.name] = input.value;
      }
      const body = div.querySelector("textarea");
      if (body) headers["content-type"] = "application/json";
      const reply = await fetch(url + (query.size ? "?" + query : ""), {method: method.toUpperCase(), headers,
        body: body ? body.value : undefined});
      const out = div.querySelector("pre"); out.hidden = false;
      out.textContent = `${reply.status} ${reply.statusText}\\n\\n` + await reply.text();
    };
  }
});
</script></body></html>
"""


def docs_page(title: str, openapi_url: str) -> str:
    import json

    return DOCS_PAGE % {"title": title, "openapi_url": openapi_url, "openapi_json": json.dumps(openapi_url)}
