"""Every HTTP route of the platform, as templates both sides format.

The API mounts these paths under :data:`API_PREFIX`; clients (the worker, ``twinkle-submit``, the in-process test
worker, the web UI's ``api.js``) call them through :func:`path`, which fills in and URL-quotes the parameters.
``tests/contract`` checks that the app serves exactly these routes and that ``webui/static/api.js`` names the same.
"""

from __future__ import annotations

from urllib.parse import quote

API_PREFIX = "/api/v1"

# ---------------------------------------------------------------- users and sessions
USERS = "/users"
USERS_ME = "/users/me"
USERS_ME_TOKENS = "/users/me/tokens"
WORKER_TOKENS = "/worker-tokens"
AUTH_SESSION = "/auth/session"

# ---------------------------------------------------------------- jobs (user tokens)
SCRIPTS_INSPECT = "/scripts/inspect"
JOBS = "/jobs"
JOB = "/jobs/{job_id}"
JOB_CANCEL = "/jobs/{job_id}/cancel"
JOB_RESUBMIT = "/jobs/{job_id}/resubmit"
JOB_LOGS = "/jobs/{job_id}/logs"
JOB_LOGS_STREAM = "/jobs/{job_id}/logs/stream"
JOB_METRICS = "/jobs/{job_id}/metrics"
JOB_ARTIFACTS = "/jobs/{job_id}/artifacts"
JOB_ARTIFACTS_ZIP = "/jobs/{job_id}/artifacts/zip"
DOWNLOAD = "/downloads/{signed}"

# ---------------------------------------------------------------- workers (worker tokens)
WORKERS = "/workers"
WORKER_REGISTER = "/workers/register"
WORKER_HEARTBEAT = "/workers/{worker_id}/heartbeat"
WORKER_CLAIM = "/workers/{worker_id}/claim"
WORKER_APPROVE = "/workers/{worker_id}/approve"
WORKER_REVOKE = "/workers/{worker_id}/revoke"

# ---------------------------------------------------------------- one attempt of a job, fenced by its number
ATTEMPT_START = "/attempts/{job_id}/{attempt}/start"
ATTEMPT_BUNDLE = "/attempts/{job_id}/{attempt}/bundle"
ATTEMPT_LOGS = "/attempts/{job_id}/{attempt}/logs"
ATTEMPT_METRICS = "/attempts/{job_id}/{attempt}/metrics"
ATTEMPT_ARTIFACT = "/attempts/{job_id}/{attempt}/artifacts/{path:path}"
ATTEMPT_FINISH = "/attempts/{job_id}/{attempt}/finish"

# ---------------------------------------------------------------- outside the API prefix
HEALTHZ = "/healthz"
READYZ = "/readyz"
METRICS = "/metrics"

API_ROUTES: dict[str, str] = {
    name: value
    for name, value in dict(globals()).items()
    if name.isupper() and isinstance(value, str) and value.startswith("/") and name != "API_PREFIX"
    and value not in (HEALTHZ, READYZ, METRICS)
}
"""Every route under :data:`API_PREFIX`, by constant name."""


def path(template: str, **params: object) -> str:
    """Fill in ``template``: ``path(JOB, job_id="j1") == "/jobs/j1"``.

    Each value is URL-quoted, except a ``{name:path}`` parameter, whose slashes are kept.

    Raises:
        KeyError: a parameter of the template is missing.
    """
    out = template
    for name, value in params.items():
        if "{" + name + ":path}" in out:
            out = out.replace("{" + name + ":path}", quote(str(value), safe="/"))
        else:
            out = out.replace("{" + name + "}", quote(str(value), safe=""))
    if "{" in out:
        raise KeyError(f"route {template!r} still needs {out[out.index('{'):]!r}")
    return out
