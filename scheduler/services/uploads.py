"""Reading a job upload (multipart ``file`` plus form fields) completely and safely, before anything else looks
at it: oversize bodies are 413, truncated ones 400, a missing file 422."""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request

from contract.errors import ErrorCode
from scheduler.errors import BadRequest, InvalidRequest, PayloadTooLarge

# room for the multipart framing and the small form fields around the file
MULTIPART_OVERHEAD = 1024 * 1024


async def read_upload(request: Request, max_bytes: int) -> tuple[str, bytes, dict[str, str]]:
    """Read a multipart upload completely, refusing oversize (413) and truncated (400) bodies.

    The body is read here rather than by FastAPI's form parsing because that parser silently accepts a body
    cut off before its closing boundary.
    """
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise InvalidRequest(
            "send the job as multipart/form-data with a 'file' field", fields={"file": "multipart upload expected"}
        )
    limit = max_bytes + MULTIPART_OVERHEAD
    declared = request.headers.get("content-length")
    mb = max_bytes / 1024 / 1024
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"the upload is {int(declared) / 1024 / 1024:.1f} MB; bundles may be at most {mb:g} MB "
            "(MAX_BUNDLE_MB); leave data and checkpoints out of the bundle",
            fields={"file": f"at most {mb:g} MB"},
        )
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the upload exceeds {mb:g} MB (MAX_BUNDLE_MB)", fields={"file": "too large"})
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise BadRequest(
            f"the upload broke off after {size} bytes; nothing was stored", code=ErrorCode.TRUNCATED_UPLOAD
        ) from exc
    body = b"".join(chunks)
    if declared and declared.isdigit() and int(declared) != len(body):
        raise BadRequest(
            f"Content-Length says {declared} bytes but {len(body)} arrived; nothing was stored",
            code=ErrorCode.TRUNCATED_UPLOAD,
        )
    boundary = ""
    for part in ctype.split(";")[1:]:
        k, _, v = part.strip().partition("=")
        if k.lower() == "boundary":
            boundary = v.strip('"')
    if not boundary or not body.rstrip(b"\r\n").endswith(b"--" + boundary.encode() + b"--"):
        raise BadRequest(
            "the upload is truncated (the multipart body has no closing boundary); nothing was stored",
            code=ErrorCode.TRUNCATED_UPLOAD,
        )
    request._body = body  # lets Starlette's parser read the bytes we already hold
    try:
        form = await request.form(max_files=1, max_fields=16)
    except Exception as exc:  # any parser failure is a malformed upload
        raise BadRequest(f"the multipart body could not be parsed: {exc}", code=ErrorCode.BAD_UPLOAD) from exc
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise InvalidRequest("the 'file' field (a .py script or a .zip bundle) is missing", fields={"file": "required"})
    data = await upload.read()
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"the bundle is {len(data) / 1024 / 1024:.1f} MB; at most {mb:g} MB is accepted (MAX_BUNDLE_MB)",
            fields={"file": f"at most {mb:g} MB"},
        )
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    return upload.filename or "train.py", data, fields
