"""The work behind `POST /depends`, shared by the native and FastAPI bench apps: a pydantic body and two
chained dependencies (a tenant read from a header, then a user that needs the tenant and a bearer token),
the shape of a typical authenticated FastAPI endpoint. Each app declares it with its own `Depends`/`Header`.
"""

from pydantic import BaseModel


class OrderLine(BaseModel):
    sku: str
    quantity: int
    price: float


class Order(BaseModel):
    customer_id: int
    lines: list[OrderLine]
    note: str | None = None


def tenant_of(x_tenant: str) -> dict:
    return {"tenant": x_tenant}


def user_of(tenant: dict, authorization: str | None) -> dict:
    token = (authorization or "").partition(" ")[2]
    return {"tenant": tenant["tenant"], "user": token or "anonymous"}


def order_result(order: Order, user: dict) -> dict:
    total = sum(line.quantity * line.price for line in order.lines)
    return {"user": user, "customer": order.customer_id, "lines": len(order.lines), "total": round(total, 2)}
