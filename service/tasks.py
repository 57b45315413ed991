"""Background jobs of the serving domain."""

import asyncio
import logging

from core.db import session_scope
from service import service
from service.backends import Backend

log = logging.getLogger(__name__)


def champion_spec() -> tuple[str, str, str | None] | None:
    with session_scope() as session:
        current = service.champion(session)
        return (current.version, current.base_path, current.adapter_path) if current else None


async def follow_champion(backend: Backend, interval_s: float = 2.0) -> None:
    """Hot-swap the backend whenever the `champion` alias moves (promotion or rollback, any process)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            spec = await asyncio.to_thread(champion_spec)
            if spec and spec[0] != backend.version:
                version, base_path, adapter_path = spec
                log.info("champion moved to %s; swapping", version)
                await backend.swap(base_path, version, adapter_path)
        except Exception:  # keep serving the current model; retry next tick
            log.exception("champion swap failed")
