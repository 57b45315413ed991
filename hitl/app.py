"""The FastAPI application: every domain's router, the model backend and the embedded scheduler."""

import asyncio
import contextlib
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from core import errors, webhooks
from core.auth import create_user
from core.db import migrate, session_scope
from core.limits import Limits
from core.models import Role, User
from core.settings import Settings, get_settings
from evaluators import endpoints as evaluators_endpoints
from evaluators import tasks as evaluators_tasks
from feedback import endpoints as feedback_endpoints
from feedback.service import ERASERS, audit_user
from feedback.tasks import check_queue_depth
from hitl import metrics
from hitl.ui import endpoints as ui_endpoints
from retrain.datasets import endpoints as datasets_endpoints
from retrain.datasets.erasure import erase as erase_from_snapshots
from retrain.training import endpoints as retrain_endpoints
from retrain.training.tasks import start_embedded_scheduler, stop_scheduler
from service import endpoints as service_endpoints
from service.backends import Backend
from service.tasks import follow_champion

log = logging.getLogger("hitl")
FRAMING = [(b"x-frame-options", b"DENY"), (b"referrer-policy", b"same-origin"), (b"x-content-type-options", b"nosniff")]
# the web UI loads only its own scripts and styles (no inline ones); the API docs keep their CDN assets
CSP = (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                                   b"form-action 'self'; frame-ancestors 'none'")


class SecurityHeaders:
    """CSP, framing, referrer and content-type headers on every response (plain ASGI middleware)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        extra = FRAMING if scope["path"].startswith(("/docs", "/redoc")) else [*FRAMING, CSP]

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def make_backend(settings: Settings) -> Backend:
    """The champion (local or remote) behind the canary router; see `service.backends.factory`."""
    from service.backends.factory import build_backend

    return build_backend(settings)


def bootstrap_admin(settings: Settings) -> None:
    """A fresh store gets one admin; its key goes to `data_dir/admin.key` (or is HITL_ADMIN_KEY)."""
    with session_scope() as session:
        if session.query(User).filter(User.role == Role.admin).first():
            return
        user, key = create_user(session, name="admin", role=Role.admin, key=settings.admin_key)
        audit_user(session, None, "user.create", user)
    if not settings.admin_key:
        path = settings.data_dir / "admin.key"
        path.write_text(key + "\n")
        path.chmod(0o600)
        log.warning("created admin key in %s", path)


def start_webhooks() -> webhooks.Dispatcher:
    """The webhook dispatcher of this process (a no-op without `HITL_WEBHOOKS`): posts due deliveries and
    checks the review queue depth."""
    return webhooks.Dispatcher(checks=[check_queue_depth]).start()


def create_app(backend: Backend | None = None) -> FastAPI:
    """Build the app from `HITL_*` settings; tests may pass a ready backend."""
    settings = get_settings()
    metrics.register()
    if erase_from_snapshots not in ERASERS:
        ERASERS.append(erase_from_snapshots)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(migrate, settings.db_url)
        await asyncio.to_thread(bootstrap_admin, settings)
        app.state.backend = backend or await asyncio.to_thread(make_backend, settings)
        await app.state.backend.start()
        watcher = asyncio.create_task(follow_champion(app.state.backend))
        scheduler = await asyncio.to_thread(start_embedded_scheduler, settings)
        if scheduler is not None:
            evaluators_tasks.schedule(scheduler)
        dispatcher = start_webhooks()
        try:
            yield
        finally:
            dispatcher.stop()
            stop_scheduler(scheduler)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await app.state.backend.close()

    app = FastAPI(
        title="hitl",
        version="0.1.0",
        summary="Human-in-the-loop feedback and continuous improvement for chatbots.",
        lifespan=lifespan,
        responses=errors.RESPONSES,
    )
    errors.install(app)
    app.add_middleware(Limits)  # inside SecurityHeaders: its answers get the headers too
    app.add_middleware(SecurityHeaders)
    app.include_router(service_endpoints.router)
    app.include_router(evaluators_endpoints.router)
    app.include_router(ui_endpoints.router)
    app.mount("/ui/static", ui_endpoints.static, name="ui-static")
    app.include_router(feedback_endpoints.router)
    app.include_router(datasets_endpoints.router)
    app.include_router(datasets_endpoints.export_router)
    app.include_router(retrain_endpoints.router)
    return app
