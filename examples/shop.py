"""A realistic percore app: CRUD with models, query filters, errors, middleware, per-loop state.

runtime serve examples.shop:api --loops auto --routing least-loaded
open http://127.0.0.1:8000/docs
"""

from __future__ import annotations

import itertools
import threading
import time

import percore
from percore import Header, HTTPException
from pydantic import BaseModel, Field

api = percore.App(title="percore shop", version="1.0")
api.add_cors(allow_origins=["http://localhost:3000"])


class ProductIn(BaseModel):
    name: str = Field(min_length=1)
    price: float = Field(gt=0)
    tags: list[str] = []


class Product(ProductIn):
    id: int


# The catalogue is process-wide and shared by every loop: guard it (loops run truly in parallel on 3.13t).
_catalogue: dict[int, Product] = {}
_catalogue_lock = threading.Lock()
_ids = itertools.count(1)


@api.on_loop_start
def open_loop_resources(state: dict) -> None:
    # Loop-bound resources (DB pools, HTTP clients) are created here, once per loop, on that loop.
    state["opened_at"] = time.time()
    state["served"] = 0  # per-loop counter: no lock needed, only this loop touches it


@api.middleware
async def count_and_time(request, call_next):
    started = time.perf_counter()
    request.state["served"] += 1
    response = await call_next(request)
    response.headers.append(("server-timing", f"app;dur={(time.perf_counter() - started) * 1000:.3f}"))
    return response


products = percore.Router(prefix="/products")


@products.get("")
async def list_products(tag: str | None = None, max_price: float | None = None, limit: int = 50) -> list:
    """Products, optionally filtered by tag and maximum price."""
    with _catalogue_lock:
        found = list(_catalogue.values())
    if tag is not None:
        found = [p for p in found if tag in p.tags]
    if max_price is not None:
        found = [p for p in found if p.price <= max_price]
    return [p.model_dump() for p in found[:limit]]


@products.post("", status_code=201)
async def create_product(product: ProductIn, x_user: str = Header()):
    if x_user != "admin":
        raise HTTPException(403, "only admin may create products")
    created = Product(id=next(_ids), **product.model_dump())
    with _catalogue_lock:
        _catalogue[created.id] = created
    return created.model_dump()


@products.get("/{product_id}")
async def read_product(product_id: int):
    with _catalogue_lock:
        product = _catalogue.get(product_id)
    if product is None:
        raise HTTPException(404, f"product {product_id} not found")
    return product.model_dump()


@products.delete("/{product_id}", status_code=204)
async def delete_product(product_id: int, x_user: str = Header()):
    if x_user != "admin":
        raise HTTPException(403, "only admin may delete products")
    with _catalogue_lock:
        if _catalogue.pop(product_id, None) is None:
            raise HTTPException(404, f"product {product_id} not found")


api.include_router(products)


@api.get("/products/export")
async def export_products():
    """All products as newline-delimited JSON, streamed as they are produced."""

    async def lines():
        with _catalogue_lock:
            snapshot = list(_catalogue.values())
        for product in snapshot:
            yield product.model_dump_json() + "\n"

    return percore.StreamingResponse(lines(), media_type="application/x-ndjson")


@api.get("/loop")
async def loop_info(request: percore.Request):
    """Which loop answered, and how many requests it has served."""
    return {"loop": request.loop_index, "served": request.state["served"]}
