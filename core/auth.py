"""API keys and role checks. The caller's identity always comes from the key, never the body."""

import hashlib
import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session, select

from core.db import SessionDep
from core.models import Role, User

bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer <key>`")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_user(session: Session, *, name: str, role: Role, key: str | None = None) -> tuple[User, str]:
    """Create a user and return it with its plaintext key (shown once, stored hashed)."""
    key = key or f"hitl_{role.value[:3]}_{secrets.token_urlsafe(24)}"
    user = User(name=name, role=role, key_hash=hash_key(key))
    session.add(user)
    session.flush()
    return user, key


def user_for_key(session: Session, key: str) -> User | None:
    user = session.exec(select(User).where(User.key_hash == hash_key(key))).first()
    return user if user and user.active else None


def current_user(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> User:
    if credentials is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing API key", {"WWW-Authenticate": "Bearer"})
    user = user_for_key(session, credentials.credentials)
    if user is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid API key", {"WWW-Authenticate": "Bearer"})
    return user


def require(*roles: Role):
    """Dependency that admits only the given roles (admin is always admitted)."""
    allowed = {Role.admin, *roles}

    def check(user: Annotated[User, Depends(current_user)]) -> User:
        if user.role not in allowed:
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"role '{user.role}' may not do this")
        return user

    return check


CurrentUser = Annotated[User, Depends(current_user)]
AdminUser = Annotated[User, Depends(require(Role.admin))]
ReviewerUser = Annotated[User, Depends(require(Role.reviewer))]
ServiceUser = Annotated[User, Depends(require(Role.service))]
