from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, Field


class User(BaseModel):
    id: str
    name: str
    created_at: dt.datetime


class CreateUserRequest(BaseModel):
    name: str = Field(min_length=1, max_length=128)


class CreateUserResponse(BaseModel):
    user: User
    token: str = Field(description="the user's API token (twk_u_...); shown once, stored only as a hash")


class TokenResponse(BaseModel):
    token: str


class CreateWorkerTokenRequest(BaseModel):
    owner: str = Field(min_length=1, max_length=128, description="who donates the machines using this token")
    trusted: bool = Field(
        default=False,
        description="a platform pool, not a donor: its attempts are not spot-checked and its workers run the "
        "replays that check donors",
    )
    pre_approved: bool = Field(
        default=False,
        description="its workers get jobs without an admin's approval (a trusted pool); only matters where the "
        "deployment requires approval",
    )
    pool: bool = Field(
        default=False,
        description="a trusted pool's token, shared by its nodes: one live worker per worker name instead of one "
        "per token; pre-approved",
    )


class SessionRequest(BaseModel):
    token: str = Field(min_length=1)


class SessionResponse(BaseModel):
    user: User
