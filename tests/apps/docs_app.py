"""An app whose API docs pages (/docs, /redoc) the browser tests drive (tests/test_docs.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import percore

api = percore.App(title="Docs under test")


@dataclass
class Item:
    name: str
    price: float
    tags: list[str] = field(default_factory=list)


@api.get("/items/{item_id}")
async def read_item(item_id: int, q: str | None = None) -> dict[str, object]:
    """One item, by its number."""
    return {"item_id": item_id, "q": q, "answered_by": "percore-docs-app"}


@api.post("/items", status_code=201)
async def create_item(item: Item) -> dict[str, object]:
    return {"created": dataclasses.asdict(item)}


@api.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
