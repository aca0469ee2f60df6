"""The request object handlers receive when they ask for it (a parameter named ``request`` or annotated
``Request``). It is implemented in Rust; reading a field builds its Python value on demand."""

from __future__ import annotations

from ._runtime import Request

__all__ = ["Request"]
