from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from contract import routes
from contract.errors import ErrorCode
from scheduler.api.deps import RuntimeDep
from scheduler.errors import NotFound
from scheduler.storage import LocalStorage, ObjectNotFound

router = APIRouter(tags=["downloads"])


@router.get(routes.DOWNLOAD, response_class=StreamingResponse)
def download(signed: str, rt: RuntimeDep) -> StreamingResponse:
    """Serve a local-storage object behind a signed, expiring link (from the artifacts listing). No token is
    needed: the signature is the permission."""
    storage = rt.storage
    if not isinstance(storage, LocalStorage):
        raise NotFound("downloads are served by the S3 endpoint; list the artifacts for a presigned link")
    try:
        key = storage.unsign(signed)
        size = storage.size(key)
    except ObjectNotFound as exc:
        message = str(exc) if "link" in str(exc) else "the file no longer exists"
        raise NotFound(message, code=ErrorCode.DOWNLOAD_NOT_FOUND) from exc
    name = key.rsplit("/", 1)[-1]
    return StreamingResponse(
        storage.iter_bytes(key),
        media_type="application/octet-stream",
        headers={"Content-Length": str(size), "Content-Disposition": f'attachment; filename="{name}"'},
    )
