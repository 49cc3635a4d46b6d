"""Users, API tokens (stored as SHA-256) and the session cookie of the web UI."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

import sqlalchemy as sa
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy.orm import Session

from contract.errors import ErrorCode
from scheduler.db import ApiTokenModel, UserModel, new_id, utcnow
from scheduler.errors import Conflict, Forbidden, InvalidRequest, Unauthorized

USER_PREFIX = "twk_u_"
WORKER_PREFIX = "twk_w_"
SESSION_COOKIE = "twinkle_session"
SESSION_MAX_AGE_S = 14 * 24 * 3600


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _mint(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)  # 256 bits, so a fast hash is enough


@dataclass
class Principal:
    """Who is calling: a user, a worker token, or the admin token."""

    kind: str  # "user" | "worker" | "admin"
    token: ApiTokenModel | None = None
    user: UserModel | None = None


def create_user(session: Session, name: str) -> tuple[UserModel, str]:
    name = name.strip()
    if not name or len(name) > 128:
        raise InvalidRequest("user name must be 1 to 128 characters", fields={"name": "1 to 128 characters"})
    if session.scalar(sa.select(UserModel.id).where(UserModel.name == name)):
        raise Conflict(f"a user named {name!r} exists already", code=ErrorCode.USER_EXISTS, fields={"name": "taken"})
    user = UserModel(id=new_id(), name=name, created_at=utcnow())
    session.add(user)
    session.flush()
    token = create_user_token(session, user)
    return user, token


def get_or_create_user(session: Session, name: str) -> tuple[UserModel, str]:
    """The user ``name`` (created if missing) and a fresh token for it."""
    user = session.scalar(sa.select(UserModel).where(UserModel.name == name))
    if user is None:
        return create_user(session, name)
    return user, create_user_token(session, user)


def create_user_token(session: Session, user: UserModel) -> str:
    token = _mint(USER_PREFIX)
    session.add(
        ApiTokenModel(id=new_id(), token_hash=hash_token(token), kind="user", user_id=user.id, created_at=utcnow())
    )
    session.flush()
    return token


def create_worker_token(
    session: Session, owner: str, *, trusted: bool = False, approved: bool = False, pool: bool = False
) -> str:
    """A worker token for ``owner``'s machines. ``trusted`` marks a platform pool (never a donor): its attempts
    are not spot-checked and its workers replay donors' attempts. ``approved``: its workers get jobs at once, even
    where the deployment requires approval (``up``'s local worker); else an admin approves them. ``pool``: a
    pool's token, shared by its nodes (one live worker per name, not per token). ``trusted`` and ``pool`` are
    approved too."""
    owner = owner.strip()
    if not owner or len(owner) > 128:
        raise InvalidRequest("owner must be 1 to 128 characters", fields={"owner": "1 to 128 characters"})
    token = _mint(WORKER_PREFIX)
    now = utcnow()
    session.add(
        ApiTokenModel(
            id=new_id(), token_hash=hash_token(token), kind="worker", owner=owner, created_at=now, trusted=trusted,
            approved_at=now if approved or pool or trusted else None, pool=pool,
        )
    )
    session.flush()
    return token


def authenticate(session: Session, token: str, admin_token: str | None) -> Principal:
    if admin_token and hmac.compare_digest(token.encode(), admin_token.encode()):
        return Principal(kind="admin")
    row = session.scalar(sa.select(ApiTokenModel).where(ApiTokenModel.token_hash == hash_token(token)))
    if row is None:
        raise Unauthorized("the token is not valid; create one with `twinkle-scheduler create-user`")
    if row.revoked_at is not None:
        raise_revoked()
    return Principal(kind=row.kind, token=row, user=row.user)


def raise_revoked() -> None:
    raise Forbidden(
        "this worker token was revoked by its owner or the admin; ask the platform admin for a new one",
        code=ErrorCode.TOKEN_REVOKED,
    )


def principal_from_token_id(session: Session, token_id: str) -> Principal:
    row = session.get(ApiTokenModel, token_id)
    if row is None or row.kind != "user" or row.revoked_at is not None:
        raise Unauthorized("the session has ended; sign in again")
    return Principal(kind="user", token=row, user=row.user)


def require_user(p: Principal) -> UserModel:
    if p.kind == "worker":
        raise Forbidden(
            "this is a worker token (twk_w_...), which can only register, heartbeat and report attempts; "
            "use a user token (twk_u_...) here",
            code=ErrorCode.WRONG_TOKEN_KIND,
        )
    if p.kind == "admin" or p.user is None:
        raise Forbidden(
            "the admin token only creates users and worker tokens; use a user token (twk_u_...) here",
            code=ErrorCode.WRONG_TOKEN_KIND,
        )
    return p.user


def require_worker(p: Principal) -> ApiTokenModel:
    if p.kind != "worker" or p.token is None:
        raise Forbidden(
            "worker routes need a worker token (twk_w_...); create one with `twinkle-scheduler create-worker-token`",
            code=ErrorCode.WRONG_TOKEN_KIND,
        )
    return p.token


def require_admin(p: Principal) -> None:
    if p.kind != "admin":
        raise Forbidden(
            "this route needs the admin token (TWINKLE_SCHEDULER_ADMIN_TOKEN)", code=ErrorCode.ADMIN_REQUIRED
        )


def session_serializer(secret_key: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_key, salt="twinkle-session")


def sign_session(secret_key: str, token_id: str) -> str:
    return session_serializer(secret_key).dumps(token_id)


def unsign_session(secret_key: str, cookie: str) -> str:
    try:
        return str(session_serializer(secret_key).loads(cookie, max_age=SESSION_MAX_AGE_S))
    except BadSignature as exc:
        raise Unauthorized("the session cookie is invalid or expired; sign in again") from exc
