"""``percore.UploadFile``: a file of a ``multipart/form-data`` body, as Starlette's ``UploadFile``, and
``Headers``, its part's headers (case-insensitive, read-only, as Starlette's).

The body was parsed in Rust as it arrived (``runtime/src/forms.rs``): a file up to 1 MiB is in memory
(``file`` is an ``io.BytesIO``), a larger one was written there and then to an unlinked temporary file
(``file`` is that open file: it disappears when closed or collected).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Mapping
from typing import BinaryIO

from ._threadpool import run_in_threadpool


class Headers(Mapping[str, str]):
    """Header names to values, read-only; a name is found whatever its case (``headers["Content-Type"]``)
    and listed in lower case. Built from a mapping or ``(name, value)`` pairs; a repeated name keeps the
    last value."""

    __slots__ = ("_items",)

    def __init__(self, headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None) -> None:
        pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
        self._items = {name.lower(): value for name, value in pairs}

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class UploadFile:
    """An uploaded file: ``filename``, ``content_type``, ``headers`` (the part's, a case-insensitive
    ``Headers``),
    ``size`` and ``file`` (the contents, positioned at the start); ``await read()/seek()/write()/close()``.
    On disk, ``read``/``write``/``seek``/``close`` run on the thread pool so the loop is not held up."""

    def __init__(
        self,
        file: BinaryIO,
        *,
        size: int | None = None,
        filename: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.file = file
        self.size = size
        self.filename = filename
        self.headers = Headers(headers)

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    @property
    def _in_memory(self) -> bool:
        return isinstance(self.file, io.BytesIO)

    async def write(self, data: bytes) -> None:
        if self.size is not None:
            self.size += len(data)
        if self._in_memory:
            self.file.write(data)
        else:
            await run_in_threadpool(self.file.write, data)

    async def read(self, size: int = -1) -> bytes:
        if self._in_memory:
            return self.file.read(size)
        return await run_in_threadpool(self.file.read, size)

    async def seek(self, offset: int) -> None:
        if self._in_memory:
            self.file.seek(offset)
        else:
            await run_in_threadpool(self.file.seek, offset)

    async def close(self) -> None:
        if self._in_memory:
            self.file.close()
        else:
            await run_in_threadpool(self.file.close)

    def __del__(self) -> None:
        # A file on disk the handler left open is closed with its UploadFile (at the request's end, on
        # CPython; Starlette closes it after the response), without an "unclosed file" ResourceWarning.
        file = self.__dict__.get("file")
        if file is not None and not isinstance(file, io.BytesIO) and not file.closed:
            file.close()

    def __repr__(self) -> str:
        return f"UploadFile(filename={self.filename!r}, size={self.size!r}, headers={self.headers!r})"


__all__ = ["Headers", "UploadFile"]
