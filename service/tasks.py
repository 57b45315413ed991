"""Background jobs of the serving domain."""

import asyncio
import logging

from core.db import session_scope
from service import service
from service.backends import Backend
from service.backends.canary import CanaryBackend, Spec

log = logging.getLogger(__name__)


def alias_specs() -> dict[str, Spec]:
    """What the `champion` and `challenger` aliases point at now."""
    with session_scope() as session:
        return {alias: Spec(row.version, row.base_path, row.adapter_path)
                for alias, row in service.aliased_versions(session).items()}


async def sync_aliases(backend: Backend) -> None:
    """Serve what the registry says: swap the champion if its alias moved, load or drop the challenger."""
    specs = await asyncio.to_thread(alias_specs)
    champion = specs.get("champion")
    if champion and champion.version != backend.version:
        log.info("champion moved to %s; swapping", champion.version)
        await backend.swap(champion.base_path, champion.version, champion.adapter_path)
    if isinstance(backend, CanaryBackend):
        await backend.set_challenger(specs.get("challenger"))


async def follow_champion(backend: Backend, interval_s: float = 2.0) -> None:
    """Hot-swap the backend whenever the `champion` (or `challenger`) alias moves, from any process."""
    failing = None
    while True:
        await asyncio.sleep(interval_s)
        try:
            await sync_aliases(backend)
            failing = None
        except Exception as exc:  # keep serving the current models; retry next tick, log each new failure once
            if str(exc) != failing:
                log.exception("following the registry aliases failed")
            failing = str(exc)
