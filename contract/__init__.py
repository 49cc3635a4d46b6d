"""What two processes of the platform say to each other, in one place both import.

The scheduler's API, the worker daemon, ``twinkle-submit``, the in-process test worker and (checked by a test) the
web UI's ``api.js`` all take their routes, bodies and error codes from here. It imports pydantic and
the standard library only: no FastAPI, SQLAlchemy, Celery or torch, so a worker or a CLI can use it alone.

- :mod:`contract.routes`: route templates and :func:`~contract.routes.path`
- :mod:`contract.errors`: :class:`~contract.errors.ErrorCode`, the error envelope, the client exception tree and
  :func:`~contract.errors.error_from_body`
- :mod:`contract.archive`: the limits on job bundles (zip) and their checker, applied at submit and at unpack
- :mod:`contract.users`, :mod:`contract.jobs`, :mod:`contract.workers`, :mod:`contract.attempts`: the pydantic
  models of every request and response body
"""

from contract import routes
from contract.errors import ApiError, ErrorCode, error_body, error_from_body

__all__ = ["ApiError", "ErrorCode", "error_body", "error_from_body", "routes"]
