"""OpenAPI 3.1 for a native app, generated once at startup from its routes and their parameters, and the
pages that show it, all served by percore itself (no CDN: they work offline):

- ``/docs``: Swagger UI from the ``swagger-ui-bundle-v2`` package (``pip install percore[docs]``), its
  script and stylesheet served under ``/docs/``; without it, a small built-in page that lists the
  operations, their parameters and body schemas, and can try them;
- ``/redoc``: ReDoc, only when a package that ships ``redoc.standalone.js`` is installed (``REDOC_SOURCES``;
  no PyPI package ships ReDoc alone).
"""

from __future__ import annotations

import dataclasses
import html
import importlib.util
import inspect
import json
import re
import typing
import uuid
from pathlib import Path
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
        return _plain_body_schema(annotation)
    schema = TypeAdapter(annotation).json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in schema.pop("$defs", {}).items():
        components[name] = definition
    title = schema.get("title")
    if title and schema.get("type") == "object":
        components[title] = schema
        return {"$ref": f"#/components/schemas/{title}"}
    return schema


def _plain_body_schema(annotation: Any) -> dict[str, Any]:
    """Without pydantic: a dataclass's or TypedDict's fields, typed where they are scalars or lists of them
    (what ``params`` converts without pydantic too)."""
    from .params import SCALARS, _is_typed_dict, _strip_optional

    if not (dataclasses.is_dataclass(annotation) or _is_typed_dict(annotation)):
        return {}
    try:
        hints = typing.get_type_hints(annotation)
    except Exception:
        hints = {}
    if dataclasses.is_dataclass(annotation):
        fields = dataclasses.fields(annotation)
        names = [f.name for f in fields]
        required = [
            f.name
            for f in fields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
    else:
        names = list(hints)
        required = sorted(getattr(annotation, "__required_keys__", ()))

    def field_schema(hint: Any) -> dict[str, Any]:
        hint, _ = _strip_optional(hint)
        if hint in SCALARS:
            return dict(SCALAR_SCHEMAS[SCALARS[hint]])
        if get_origin(hint) is list:
            (item,) = get_args(hint) or (Any,)
            return {"type": "array", "items": dict(SCALAR_SCHEMAS[SCALARS[item]]) if item in SCALARS else {}}
        return {}

    schema: dict[str, Any] = {
        "type": "object",
        "title": annotation.__name__,
        "properties": {name: field_schema(hints.get(name, Any)) for name in names},
    }
    if required:
        schema["required"] = required
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
            if param.source in ("request", "form", "file") or param.name.startswith("_percore"):
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
        form = [p for p in route.params if p.source in ("form", "file")]
        if form:
            from ._forms import request_body

            operation["requestBody"] = request_body(route, form, components)
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


def _script_json(value: str) -> str:
    """``value`` as a JavaScript string literal that cannot end the ``<script>`` element it is in."""
    return json.dumps(value).replace("<", "\\u003c")


#: A route the docs add: (path, media type, body); served as is.
DocsRoute = tuple[str, str, bytes]

#: Where Swagger UI's dist files are: the ``swagger_ui_bundle`` module of ``swagger-ui-bundle-v2`` (5.x).
#: The older ``swagger-ui-bundle`` package installs the same module with Swagger UI 4, which cannot show
#: OpenAPI 3.1: it is not used (the built-in page is).
SWAGGER_UI_MIN_MAJOR = 5

#: Packages that ship ReDoc's standalone bundle, and where in them: (top-level package, relative path).
#: None of them is needed to run percore; each is a plugin of a framework it pulls in with it.
REDOC_SOURCES = (
    ("fastapi_standalone_docs", "static/redoc/redoc.standalone.js"),
    ("drf_spectacular_sidecar", "static/drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js"),
)


def swagger_ui_dir() -> Path | None:
    """The directory of Swagger UI's dist files (5.x or later) if ``percore[docs]`` is installed."""
    try:
        from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-not-found]
    except ImportError:
        return None
    directory = Path(str(swagger_ui_path))
    version = re.fullmatch(r"swagger-ui-(\d+)\..*", directory.name)
    if version is None or int(version.group(1)) < SWAGGER_UI_MIN_MAJOR:
        return None
    if not (directory / "swagger-ui-bundle.js").is_file() or not (directory / "swagger-ui.css").is_file():
        return None
    return directory


def redoc_script() -> Path | None:
    """``redoc.standalone.js`` from the first installed package of ``REDOC_SOURCES``. The packages are
    located, not imported (one imports Django)."""
    for package, relative in REDOC_SOURCES:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        for location in (spec.submodule_search_locations or []) if spec else []:
            script = Path(location) / relative
            if script.is_file():
                return script
    return None


SWAGGER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>%(title)s - Swagger UI</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="%(asset)s/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="%(asset)s/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({
  url: %(openapi_json)s,
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
</script></body></html>
"""

REDOC_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>%(title)s - ReDoc</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{margin:0;padding:0}</style></head>
<body><noscript>ReDoc needs JavaScript.</noscript>
<redoc spec-url=%(openapi_attr)s></redoc>
<script src="%(asset)s/redoc.standalone.js"></script></body></html>
"""


def docs_routes(title: str, openapi_url: str, docs_url: str | None, redoc_url: str | None) -> list[DocsRoute]:
    """The pages (and their scripts and stylesheets) for ``docs_url`` and ``redoc_url``, read once."""
    routes: list[DocsRoute] = []
    names = {"title": html.escape(title), "openapi_json": _script_json(openapi_url)}
    if docs_url:
        swagger = swagger_ui_dir()
        if swagger is None:
            routes.append((docs_url, "text/html; charset=utf-8", docs_page(title, openapi_url).encode()))
        else:
            page = SWAGGER_PAGE % {**names, "asset": html.escape(docs_url.rstrip("/"))}
            routes += [
                (docs_url, "text/html; charset=utf-8", page.encode()),
                (
                    f"{docs_url.rstrip('/')}/swagger-ui-bundle.js",
                    "text/javascript; charset=utf-8",
                    (swagger / "swagger-ui-bundle.js").read_bytes(),
                ),
                (
                    f"{docs_url.rstrip('/')}/swagger-ui.css",
                    "text/css; charset=utf-8",
                    (swagger / "swagger-ui.css").read_bytes(),
                ),
            ]
    script = redoc_script() if redoc_url else None
    if redoc_url and script is not None:
        asset = redoc_url.rstrip("/")
        page = REDOC_PAGE % {
            **names,
            "openapi_attr": f'"{html.escape(openapi_url)}"',
            "asset": html.escape(asset),
        }
        routes += [
            (redoc_url, "text/html; charset=utf-8", page.encode()),
            (f"{asset}/redoc.standalone.js", "text/javascript; charset=utf-8", script.read_bytes()),
        ]
    return routes


#: The built-in page (without ``percore[docs]``): operations, parameters with their types, request bodies
#: with their schema and an example to edit, and a button that sends the request.
DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>%(title)s — API docs</title>
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;color:#222}
h1{font-size:1.6rem}.op{border:1px solid #ddd;border-radius:6px;margin:.8rem 0;padding:.6rem .9rem}
.m{display:inline-block;min-width:4.5rem;font-weight:700;text-transform:uppercase}
.get{color:#1a7f37}.post{color:#0550ae}.put,.patch{color:#9a6700}.delete{color:#cf222e}
code{background:#f6f8fa;padding:0 .25rem}table{border-collapse:collapse;margin:.4rem 0;width:100%%}
td{padding:.1rem .6rem .1rem 0;vertical-align:top}input,textarea{font:inherit;width:100%%;box-sizing:border-box}
pre{background:#f6f8fa;padding:.5rem;overflow:auto;max-height:20rem}.schema{color:#555;font-size:.9em}
</style></head><body>
<h1>%(title)s</h1><p>From <a href="%(openapi_url)s"><code>%(openapi_url)s</code></a>. Everything here is served by
this server; no network needed. <code>pip install percore[docs]</code> for Swagger UI.</p><div id="ops">Loading…</div>
<script>
const esc = s => String(s).replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));
fetch(%(openapi_json)s).then(r => r.json()).then(spec => {
  const deref = s => {
    for (let seen = 0; s && s.$ref && seen < 32; seen++) s = spec.components.schemas[s.$ref.split("/").pop()];
    return s || {};
  };
  // A schema in words: "integer", "string (uuid), default: x", "array of Item", "Item {name: string, ...}".
  const describe = (schema, depth = 0) => {
    const s = deref(schema);
    const name = schema && schema.$ref ? schema.$ref.split("/").pop() : s.title;
    let text;
    if (s.anyOf || s.oneOf) text = (s.anyOf || s.oneOf).map(x => describe(x, depth + 1)).join(" | ");
    else if (s.type === "array") text = "array of " + (s.items ? describe(s.items, depth + 1) : "any");
    else if (s.type === "object" || s.properties) {
      const required = new Set(s.required || []);
      const fields = Object.entries(s.properties || {}).map(([key, value]) =>
        `${key}${required.has(key) ? "" : "?"}: ${depth < 3 ? describe(value, depth + 1) : "…"}`);
      text = (name || "object") + (fields.length ? ` {${fields.join(", ")}}` : "");
    } else text = (s.type || "any") + (s.format ? ` (${s.format})` : "") + (s.enum ? ` one of ${s.enum.join(", ")}` : "");
    return s.default !== undefined ? `${text}, default: ${JSON.stringify(s.default)}` : text;
  };
  const example = (schema, depth = 0) => {
    const s = deref(schema);
    if (s.default !== undefined) return s.default;
    if (s.enum) return s.enum[0];
    if (s.anyOf || s.oneOf) return example((s.anyOf || s.oneOf)[0], depth + 1);
    if (s.type === "array") return depth < 4 && s.items ? [example(s.items, depth + 1)] : [];
    if (s.type === "object" || s.properties) {
      const value = {};
      if (depth < 4) for (const [key, field] of Object.entries(s.properties || {})) value[key] = example(field, depth + 1);
      return value;
    }
    return {integer: 0, number: 0, boolean: true, string: s.format === "uuid" ?
      "00000000-0000-0000-0000-000000000000" : "string", null: null}[s.type] ?? null;
  };
  const ops = document.getElementById("ops"); ops.textContent = "";
  for (const [path, methods] of Object.entries(spec.paths)) for (const [method, op] of Object.entries(methods)) {
    const div = document.createElement("div"); div.className = "op";
    const params = op.parameters || [];
    let html = `<span class="m ${method}">${method}</span><code>${esc(path)}</code> ${esc(op.summary || "")}`;
    if (op.description) html += `<p>${esc(op.description)}</p>`;
    html += "<table>" + params.map(p => `<tr><td><code>${esc(p.name)}</code> (${p.in}${p.required ? ", required" : ""})</td>
      <td><input data-name="${esc(p.name)}" data-in="${p.in}" placeholder="${esc(describe(p.schema))}"></td></tr>`).join("");
    const body = op.requestBody && (op.requestBody.content["application/json"] || {}).schema;
    if (body) html += `<tr><td>JSON body${op.requestBody.required ? " (required)" : ""}</td><td>
      <div class="schema">${esc(describe(body))}</div><textarea rows="4"></textarea></td></tr>`;
    html += `</table><button>Try it</button><pre hidden></pre>`;
    div.innerHTML = html; ops.appendChild(div);
    if (body) div.querySelector("textarea").value = JSON.stringify(example(body), null, 2);
    div.querySelector("button").onclick = async () => {
      let url = path; const query = new URLSearchParams(); const headers = {};
      for (const input of div.querySelectorAll("input")) {
        if (!input.value) continue;
        if (input.dataset.in === "path") url = url.replace(`{${input.dataset.name}}`, encodeURIComponent(input.value));
        else if (input.dataset.in === "query") query.append(input.dataset.name, input.value);
        else if (input.dataset.in === "header") headers[input.dataset.name] = input.value;
      }
      const text = div.querySelector("textarea");
      if (text) headers["content-type"] = "application/json";
      const reply = await fetch(url + (query.size ? "?" + query : ""), {method: method.toUpperCase(), headers,
        body: text ? text.value : undefined});
      const out = div.querySelector("pre"); out.hidden = false;
      out.textContent = `${reply.status} ${reply.statusText}\\n\\n` + await reply.text();
    };
  }
});
</script></body></html>
"""


def docs_page(title: str, openapi_url: str) -> str:
    return DOCS_PAGE % {
        "title": html.escape(title),
        "openapi_url": html.escape(openapi_url),
        "openapi_json": _script_json(openapi_url),
    }
