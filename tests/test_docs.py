"""The API docs pages (py/percore/_openapi.py) in a real headless browser (Debian's chromium, tests/browser.py)
against a real server: with ``percore[docs]`` /docs is Swagger UI and /redoc ReDoc, without it the built-in
page; each loads with no network but the server's, lists the operations, shows the request body's schema, and
sends a request whose answer it shows.

`scripts/dev test` installs chromium and sets PERCORE_BROWSER: then a missing browser fails these tests;
elsewhere they are skipped without one."""

from __future__ import annotations

import json
import os

import pytest
from percore import _openapi

from .browser import Browser, chromium

OPERATIONS = {"GET /items/{item_id}", "POST /items", "GET /health"}


@pytest.fixture
def browser():
    executable = os.environ.get("PERCORE_BROWSER") or chromium()
    if not executable:
        pytest.skip("no chromium (scripts/dev test installs it)")
    assert os.access(executable, os.X_OK), f"PERCORE_BROWSER={executable} is not an executable"
    # Generous: Swagger UI's 1.5 MB bundle on a busy 2-core machine.
    opened = Browser(executable, timeout=120)
    try:
        yield opened
    finally:
        opened.close()


SWAGGER_OP = """[...document.querySelectorAll(".opblock")].find(op =>
    op.querySelector(".opblock-summary-method").innerText.trim() + " " +
    op.querySelector(".opblock-summary-path").dataset.path === %s)"""


@pytest.mark.timeout(600)
def test_swagger_ui_lists_the_operations_shows_the_body_schema_and_tries_a_get(serve, browser):
    if _openapi.swagger_ui_dir() is None:
        pytest.skip("percore[docs] (swagger-ui-bundle-v2) is not installed")
    server = serve("tests.apps.docs_app:api")
    browser.open(f"http://127.0.0.1:{server.port}/docs")
    browser.wait_for("document.querySelectorAll('.opblock').length >= 3", "Swagger UI's operations")
    listed = browser.evaluate(
        """[...document.querySelectorAll(".opblock")].map(op =>
            op.querySelector(".opblock-summary-method").innerText.trim() + " " +
            op.querySelector(".opblock-summary-path").dataset.path)"""
    )
    assert set(listed) == OPERATIONS

    # The POST's request body: its schema (the example Swagger UI makes from it names every field).
    create = SWAGGER_OP % json.dumps("POST /items")
    browser.evaluate(f"{create}.querySelector('.opblock-summary-control').click()")
    body = browser.wait_for(
        f"(() => {{ const s = {create}.querySelector('.opblock-section-request-body'); return s && s.innerText; }})()",
        "the request body section",
    )
    assert "application/json" in body
    for field in ('"name"', '"price"', '"tags"'):
        assert field in body, body

    # Try it out -> item_id 42 -> Execute: the server's answer on the page.
    read = SWAGGER_OP % json.dumps("GET /items/{item_id}")
    browser.evaluate(f"{read}.querySelector('.opblock-summary-control').click()")
    browser.wait_for(f"!!{read}.querySelector('.try-out__btn')", "the Try it out button")
    browser.evaluate(f"{read}.querySelector('.try-out__btn').click()")
    browser.wait_for(f"!!{read}.querySelector('input[placeholder=\"item_id\"]')", "the item_id input")
    browser.evaluate(f"{read}.querySelector('input[placeholder=\"item_id\"]').focus()")
    browser.type_text("42")
    # Swagger UI takes the typed value after a debounce: Execute until it sends (it says the field is
    # missing until then), then the answer appears.
    answer = browser.wait_for(
        f"""(() => {{
            const table = {read}.querySelector('.live-responses-table');
            if (table) return table.innerText;
            {read}.querySelector('.execute').click();
            return null;
        }})()""",
        "the server's answer",
    )
    assert "200" in answer
    assert "percore-docs-app" in answer and '"item_id": 42' in answer, answer
    assert browser.outside == []


@pytest.mark.timeout(600)
def test_redoc_lists_the_operations_and_the_body_schema(serve, browser):
    if _openapi.redoc_script() is None:
        pytest.skip("no package that ships redoc.standalone.js is installed")
    server = serve("tests.apps.docs_app:api")
    browser.open(f"http://127.0.0.1:{server.port}/redoc")
    text = browser.wait_for(
        "document.querySelectorAll('[data-section-id^=\"operation/\"]').length >= 3 && document.body.innerText",
        "ReDoc's operations",
    )
    text = text.lower()  # ReDoc upper-cases some headings with CSS, which innerText follows
    for summary in ("read item", "create item", "health", "/items/{item_id}"):
        assert summary in text
    assert "request body schema" in text and "price" in text, text
    assert browser.outside == []


@pytest.mark.timeout(600)
def test_the_built_in_page_without_the_docs_extra(serve, browser):
    server = serve("tests.apps.docs_fallback_app:api")
    assert "swagger-ui" not in server.get("/docs").text
    assert server.get("/redoc").status == 404  # no ReDoc, no page
    browser.open(f"http://127.0.0.1:{server.port}/docs")
    browser.wait_for("document.querySelectorAll('.op').length >= 3", "the operations")
    text = browser.evaluate("document.body.innerText")
    for operation in OPERATIONS:
        method, path = operation.split()
        assert f"{method.lower()}\n{path}" in text or f"{method.upper()}{path}" in text.replace(" ", "")
    # Types in words, not raw schema JSON; the body's schema and an example to edit.
    placeholders = browser.evaluate("[...document.querySelectorAll('input')].map(i => i.placeholder)")
    assert "integer" in placeholders and not any("{" in p for p in placeholders), placeholders
    assert "Item {name: string, price: number, tags?: array of string" in text
    example = browser.evaluate("JSON.parse(document.querySelector('textarea').value)")
    assert example == {"name": "string", "price": 0, "tags": ["string"]}

    op = "[...document.querySelectorAll('.op')].find(o => o.innerText.includes('/items/{item_id}'))"
    browser.evaluate(f"{op}.querySelector('input[data-name=\"item_id\"]').value = '7'")
    browser.evaluate(f"{op}.querySelector('button').click()")
    answer = browser.wait_for(f"{op}.querySelector('pre:not([hidden])')?.innerText", "the server's answer")
    assert answer.startswith("200") and '"item_id":7' in answer.replace(" ", "")
    create = "[...document.querySelectorAll('.op')].find(o => o.querySelector('textarea'))"
    browser.evaluate(f"{create}.querySelector('button').click()")
    created = browser.wait_for(f"{create}.querySelector('pre:not([hidden])')?.innerText", "the POST's answer")
    assert created.startswith("201"), created
    assert browser.outside == []
