from __future__ import annotations

from fastapi import APIRouter, Response

from contract import routes
from contract.users import (
    CreateUserRequest,
    CreateUserResponse,
    CreateWorkerTokenRequest,
    SessionRequest,
    SessionResponse,
    TokenResponse,
    User,
)
from scheduler.api.deps import AdminDep, CurrentUser, PrincipalDep, RuntimeDep, SessionDep
from scheduler.db import UserModel
from scheduler.services import users as users_service

router = APIRouter(tags=["users"])


def user_model_to_user(u: UserModel) -> User:
    return User(id=u.id, name=u.name, created_at=u.created_at)


@router.post(routes.USERS, status_code=201, response_model=CreateUserResponse)
def create_user(body: CreateUserRequest, _admin: AdminDep, session: SessionDep) -> CreateUserResponse:
    """Create a user and its first API token (admin token required). The token is shown only here."""
    user, token = users_service.create_user(session, body.name)
    session.commit()
    return CreateUserResponse(user=user_model_to_user(user), token=token)


@router.get(routes.USERS_ME, response_model=User)
async def me(user: CurrentUser) -> User:
    """The user the token (or session cookie) belongs to."""
    return user_model_to_user(user)


@router.post(routes.USERS_ME_TOKENS, status_code=201, response_model=TokenResponse)
def new_token(user: CurrentUser, session: SessionDep) -> TokenResponse:
    """Mint another API token for the calling user."""
    token = users_service.create_user_token(session, user)
    session.commit()
    return TokenResponse(token=token)


@router.post(routes.WORKER_TOKENS, status_code=201, response_model=TokenResponse)
def create_worker_token(body: CreateWorkerTokenRequest, _admin: AdminDep, session: SessionDep) -> TokenResponse:
    """Create a worker token (admin token required): it can only register one live worker at a time, heartbeat,
    claim and report on the attempts assigned to it. ``trusted``: a platform pool (not spot-checked; runs the
    replays). ``pre_approved``: its workers need no approval. ``pool``: a token the nodes of a pool share (one
    live worker per name). Trusted and pool tokens are approved."""
    token = users_service.create_worker_token(
        session, body.owner, trusted=body.trusted, approved=body.pre_approved, pool=body.pool
    )
    session.commit()
    return TokenResponse(token=token)


@router.post(routes.AUTH_SESSION, response_model=SessionResponse)
def create_session(body: SessionRequest, response: Response, rt: RuntimeDep, session: SessionDep) -> SessionResponse:
    """Sign in the web UI: checks a user token and sets the signed ``twinkle_session`` cookie."""
    p = users_service.authenticate(session, body.token, None)
    user = users_service.require_user(p)
    assert p.token is not None
    response.set_cookie(
        users_service.SESSION_COOKIE,
        users_service.sign_session(rt.settings.secret_key.get_secret_value(), p.token.id),
        max_age=users_service.SESSION_MAX_AGE_S,
        httponly=True,
        samesite="lax",
        secure=(rt.settings.public_url or "").startswith("https://"),
    )
    return SessionResponse(user=user_model_to_user(user))


@router.delete(routes.AUTH_SESSION, status_code=204)
def delete_session(response: Response) -> Response:
    """Sign out: clears the session cookie."""
    response.delete_cookie(users_service.SESSION_COOKIE)
    response.status_code = 204
    return response


__all__ = ["PrincipalDep", "router"]
