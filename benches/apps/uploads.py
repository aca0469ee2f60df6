"""The work behind `POST /upload`, shared by the native and FastAPI bench apps: a 1 MB multipart upload
(a file and a text field) whose file is read whole and described back. benches/upload.lua sends the same
bytes as `upload_body()` (run.py's pre-flight request)."""

BOUNDARY = "percore-bench-boundary"
FILE_SIZE = 1_000_000  # under the 1 MiB spooling threshold of both percore and python-multipart: in memory


def upload_body() -> tuple[bytes, str]:
    """(body, content type), byte for byte what benches/upload.lua sends."""
    content = b"0123456789abcdef" * (FILE_SIZE // 16)
    body = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="note"\r\n\r\nbench\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="upload.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body += content + f"\r\n--{BOUNDARY}--\r\n".encode()
    return body, f"multipart/form-data; boundary={BOUNDARY}"


def upload_result(filename: str | None, data: bytes, note: str) -> dict:
    return {"filename": filename, "size": len(data), "note": note}
