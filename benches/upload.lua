-- wrk script for `POST /upload`: a 1 MB multipart/form-data body (a text field and a 1,000,000-byte file),
-- the same bytes benches/apps/uploads.py's upload_body() gives run.py's pre-flight request.
local boundary = "percore-bench-boundary"
local content = string.rep("0123456789abcdef", 1000000 / 16)

wrk.method = "POST"
wrk.body = "--" .. boundary .. "\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nbench\r\n"
    .. "--" .. boundary .. "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"upload.bin\"\r\n"
    .. "Content-Type: application/octet-stream\r\n\r\n" .. content .. "\r\n--" .. boundary .. "--\r\n"
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
