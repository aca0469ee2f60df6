"""Files named by the request (tests/test_files.py): $PERCORE_TEST_FILES is the public directory."""

import os

import percore

api = percore.App()
ROOT = os.environ.get("PERCORE_TEST_FILES", os.path.dirname(__file__))


@api.get("/files/{*path}")
def files(path: str):
    return percore.safe_file(ROOT, path)


@api.get("/unsafe/{*path}")
def unsafe(path: str):
    # The idiom safe_file replaces: the tests show their attacks reach files through it.
    return percore.FileResponse(ROOT + "/" + path)


@api.get("/download")
def download(name: str, disposition: str = "attachment"):
    return percore.FileResponse(
        os.path.join(ROOT, "public.txt"), filename=name, content_disposition_type=disposition
    )
