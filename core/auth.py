"""API keys and role checks. The caller's identity always comes from the key, never the body."""

import hashlib
import hmac
import os
import secrets
import time
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import delete
from sqlmodel import Session, col, select

from core.db import session_scope
from core.models import RevokedSession, Role, User, utcnow
from core.settings import get_settings

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


# Browser sessions (web UI): signing in with a key sets an HMAC-signed cookie naming the user and a
# prefix of its key hash, so revoking or deactivating the key ends the session; signing out revokes the cookie
# itself (`RevokedSession`). The cookie is HttpOnly, SameSite=Strict and Secure (`session_cookie_secure`); on
# top of that every cookie-authenticated write must echo the CSRF token (derived from the cookie) in the
# `X-CSRF-Token` header.
SESSION_COOKIE = "hitl_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_MAX_AGE = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@lru_cache
def _secret_for(path: Path) -> bytes:
    """Signing secret shared by every worker using this data dir (created once, mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another worker may be writing it right now
            if value := path.read_text().strip():
                return value.encode()
            time.sleep(0.02)
        raise
    value = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value.encode()


def session_secret() -> bytes:
    settings = get_settings()
    if settings.session_secret:
        return settings.session_secret.encode()
    return _secret_for(settings.data_dir.resolve() / "session.secret")


def _sign(message: str) -> str:
    return hmac.new(session_secret(), message.encode(), hashlib.sha256).hexdigest()


def make_session_token(user: User) -> str:
    """Opaque cookie value: `<user id>.<key hash prefix>.<issued at>.<signature>`."""
    body = f"{user.id}.{user.key_hash[:16]}.{int(time.time())}"
    return f"{body}.{_sign(body)}"


def csrf_token(session_token: str) -> str:
    return _sign(f"csrf:{session_token}")


def user_for_session(session: Session, token: str) -> User | None:
    try:
        user_id, key_prefix, issued, signature = token.split(".")
        user_id_int, issued_at = int(user_id), int(issued)
    except ValueError:
        return None
    if not hmac.compare_digest(signature, _sign(f"{user_id}.{key_prefix}.{issued}")):
        return None
    if time.time() - issued_at > SESSION_MAX_AGE or session.get(RevokedSession, hash_key(token)) is not None:
        return None
    user = session.get(User, user_id_int)
    if user is None or not user.active or not hmac.compare_digest(user.key_hash[:16], key_prefix):
        return None
    return user


def revoke_session(session: Session, token: str) -> None:
    """Sign out server-side (a copy of the cookie stops working too); forget revocations past their expiry."""
    now = utcnow()
    session.execute(delete(RevokedSession).where(col(RevokedSession.expires_at) < now))
    if session.get(RevokedSession, hash_key(token)) is None:
        session.add(RevokedSession(token_hash=hash_key(token), expires_at=now + timedelta(seconds=SESSION_MAX_AGE)))
        session.flush()


def secure_cookie(request: Request) -> bool:
    """`session_cookie_secure`, by default on unless the site is served as localhost (behind an ingress the
    request itself may be plain http)."""
    setting = get_settings().session_cookie_secure
    return setting if setting is not None else request.url.hostname not in ("localhost", "127.0.0.1", "::1")


def check_csrf(request: Request, token: str) -> bool:
    sent = request.headers.get(CSRF_HEADER, "")
    return bool(sent) and hmac.compare_digest(sent, csrf_token(token))


def current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> User:
    """The caller: from the Bearer key, or else from the web UI's session cookie (+ CSRF on writes).

    Uses its own short session, so a long request (a chat being generated) holds no connection."""
    with session_scope() as session:
        return _authenticate(request, session, credentials)


def _authenticate(request: Request, session: Session, credentials: HTTPAuthorizationCredentials | None) -> User:
    if credentials is None:
        token = request.cookies.get(SESSION_COOKIE)
        if token is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing API key", {"WWW-Authenticate": "Bearer"})
        user = user_for_session(session, token)
        if user is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "session expired; sign in again",
                                {"WWW-Authenticate": "Bearer"})
        if request.method not in SAFE_METHODS and not check_csrf(request, token):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token")
        return user
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
