"""Request dependencies as ``Annotated`` aliases: the runtime, a DB session, and who is calling."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from scheduler.db import ApiTokenModel, UserModel
from scheduler.errors import Unauthorized
from scheduler.runtime import Runtime
from scheduler.services import users as users_service
from scheduler.services.users import SESSION_COOKIE, Principal


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(rt: RuntimeDep) -> Iterator[Session]:
    with rt.db.session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_principal(request: Request, session: SessionDep, rt: RuntimeDep) -> Principal:
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        return users_service.authenticate(session, token.strip(), rt.settings.admin_token)
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        token_id = users_service.unsign_session(rt.settings.secret_key, cookie)
        return users_service.principal_from_token_id(session, token_id)
    raise Unauthorized(
        "no credentials: send 'Authorization: Bearer <token>' (twinkle-submit reads ~/.config/twinkle/config.toml)"
    )


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def get_current_user(p: PrincipalDep) -> UserModel:
    return users_service.require_user(p)


CurrentUser = Annotated[UserModel, Depends(get_current_user)]


def get_current_worker(p: PrincipalDep) -> ApiTokenModel:
    return users_service.require_worker(p)


CurrentWorker = Annotated[ApiTokenModel, Depends(get_current_worker)]


def get_admin(p: PrincipalDep) -> None:
    users_service.require_admin(p)


AdminDep = Annotated[None, Depends(get_admin)]
