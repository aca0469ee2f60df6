"""Exception handlers that raise exceptions, served end to end by tests/test_app.py.

Starlette and FastAPI give an exception raised by an exception handler one more pass through the
handlers (with the same request); one raised by that second handler is a logged 500.
"""

from __future__ import annotations

import asyncio

import percore
from percore import HTTPException

api = percore.App(openapi_url=None)


class PaymentFailed(Exception):
    pass


class OutOfStock(Exception):
    pass


class Fraud(Exception):
    pass


@api.middleware
async def tag(request, call_next):
    response = await call_next(request)
    response.headers.append(("x-middleware", "saw it"))
    return response


@api.middleware
async def guard(request, call_next):
    # Inner middleware raising: its exceptions reach the handlers too, outside the chain.
    if request.headers.get("x-token") == "bad":
        raise HTTPException(401, f"bad token for {request.path}")
    if request.headers.get("x-token") == "stale":
        raise OutOfStock("token refresh service")
    return await call_next(request)


@api.get("/orders/{kind}")
async def order(kind: str):
    if kind == "payment":
        raise PaymentFailed("card declined")
    if kind == "fraud":
        raise Fraud("stolen card")
    if kind == "conflict":
        raise KeyError("order 7")
    return {"ok": kind}


@api.exception_handler(PaymentFailed)
async def payment_failed(request: percore.Request, error: PaymentFailed):
    raise OutOfStock(f"cannot retry: {error}")


@api.exception_handler(OutOfStock)
async def out_of_stock(request: percore.Request, error: OutOfStock):
    await asyncio.sleep(0)
    return percore.JSONResponse({"error": str(error), "path": request.path}, status_code=503)


@api.exception_handler(Fraud)
def fraud(request: percore.Request, error: Fraud):
    raise PaymentFailed(f"flagged: {error}")  # whose handler raises again: a 500


@api.exception_handler(KeyError)
def missing(request: percore.Request, error: KeyError):
    raise HTTPException(409, f"conflict on {request.path}")
