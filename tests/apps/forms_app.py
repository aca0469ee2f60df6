"""One app written for both percore and FastAPI (``make("percore")`` / ``make("fastapi")``): form fields,
uploads, dataclass and TypedDict bodies. tests/test_forms.py sends both the same bytes and compares the
answers; ``api`` is the percore one, served over real sockets.

No ``from __future__ import annotations`` here: the annotations name classes local to ``make``.
"""

import dataclasses
import os
from typing import Annotated, Any, Literal, TypedDict


@dataclasses.dataclass
class Inner:
    x: int


@dataclasses.dataclass
class Item:
    name: str
    price: float
    inner: Inner | None = None
    kind: Literal["a", "b"] = "a"
    tags: list[str] = dataclasses.field(default_factory=list)


class Movie(TypedDict):
    title: str
    year: int
    inner: Inner


def make(framework: str) -> Any:
    if framework == "percore":
        import percore as fw
        from percore.security import OAuth2PasswordRequestForm

        app = fw.App()
    else:
        import fastapi as fw
        from fastapi.security import OAuth2PasswordRequestForm

        app = fw.FastAPI()
    Form, File, UploadFile, Depends = fw.Form, fw.File, fw.UploadFile, fw.Depends

    @app.post("/login")
    async def login(
        username: Annotated[str, Form()],
        age: Annotated[int, Form()] = 0,
        tags: Annotated[list[str], Form()] = [],  # noqa: B006 (FastAPI's idiom; copied per request)
        remember: bool = Form(False),
        q: int | None = None,
    ):
        return {"username": username, "age": age, "tags": tags, "remember": remember, "q": q}

    @app.post("/upload")
    async def upload(file: UploadFile, note: str = Form("none")):
        data = await file.read()
        return {
            "filename": file.filename,
            "content_type": file.content_type,
            "size": file.size,
            "data": data.decode(),
            "note": note,
        }

    @app.post("/bytes")
    def raw(data: Annotated[bytes, File()], more: Annotated[list[UploadFile], File()] = []):  # noqa: B006
        return {"data": data.decode(), "more": [(m.filename, m.file.read().decode()) for m in more]}

    @app.post("/optional")
    async def optional(file: UploadFile | None = None, files: list[UploadFile] | None = None):
        return {
            "file": None if file is None else file.filename,
            "files": files and [f.filename for f in files],
        }

    def credentials(user: Annotated[str, Form()], password: Annotated[str, Form()]):
        return (user, len(password))

    @app.post("/token")
    async def token(who: Annotated[tuple, Depends(credentials)], scope: Annotated[str, Form()] = ""):
        return {"user": who[0], "length": who[1], "scope": scope}

    @app.post("/oauth-token")
    async def oauth_token(form: Annotated[OAuth2PasswordRequestForm, Depends()]):
        return {"user": form.username, "scopes": form.scopes, "grant": form.grant_type, "id": form.client_id}

    @app.post("/spool")
    async def spool(file: UploadFile):
        """Where the upload is: in memory, or in a temporary file on disk (then its size there)."""
        on_disk = not isinstance(file.file, __import__("io").BytesIO)
        disk_size = os.fstat(file.file.fileno()).st_size if on_disk else None
        head = await file.read(4)
        await file.seek(0)
        whole = await file.read()
        await file.close()
        return {
            "on_disk": on_disk,
            "disk_size": disk_size,
            "size": file.size,
            "head": head.decode(),
            "length": len(whole),
        }

    @app.post("/headers")
    async def headers(file: UploadFile):
        """The part's headers, looked up as a user writes them (any case)."""
        return {
            "content_type": file.headers["Content-Type"],
            "disposition": file.headers.get("CONTENT-DISPOSITION"),
            "has": ["Content-Type" in file.headers, "x-missing" in file.headers],
            "names": sorted(file.headers.keys()),
        }

    @app.post("/item")
    def item(item: Item):
        return dataclasses.asdict(item)

    @app.post("/movie")
    def movie(m: Movie):
        return {"title": m["title"], "year": m["year"]}

    return app


api = make("percore")


def _factory_fails() -> Any:
    """An app whose ``UploadFile`` factory raises at once (tests/test_forms.py: a spooled upload's
    temporary file is closed all the same)."""
    import percore
    from percore import _forms

    def refuse(*args: Any) -> Any:
        raise RuntimeError("the UploadFile factory failed")

    original, _forms.upload_file = _forms.upload_file, refuse
    try:
        app = percore.App(openapi_url=None)

        @app.post("/spool")
        async def spool(file: percore.UploadFile):
            return {"size": file.size}

        @app.get("/ping")
        async def ping():
            return "pong"

    finally:
        _forms.upload_file = original
    return app


factory_fails_api = _factory_fails()
