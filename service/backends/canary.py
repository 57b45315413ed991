"""Champion plus an optional challenger: routes a share of new conversations to the challenger.

The champion backend is the one every other caller sees (`version`, `stream`, `swap`). The
challenger exists only while the `challenger` alias is set and `canary_share` > 0. A new
conversation goes to the challenger when a hash of its id falls below the share (stable and
reproducible); a continued conversation stays with the version that started it while that
version is still served.
"""

import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from service.backends.base import Backend, Event, SamplingParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Spec:
    """A registry row reduced to what a backend needs to serve it."""

    version: str
    base_path: str
    adapter_path: str | None = None


def in_canary(conversation_id: str, share: float) -> bool:
    """Whether a new conversation belongs to the canary share (uniform over ids)."""
    digest = hashlib.sha256(conversation_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


class CanaryBackend(Backend):
    def __init__(self, champion: Backend, make: Callable[[Spec], Backend], share: float = 0.0):
        self.champion, self.challenger = champion, None
        self._make, self.share = make, share

    @property
    def version(self) -> str:
        return self.champion.version

    @property
    def ready(self) -> bool:
        return getattr(self.champion, "ready", True)

    @property
    def versions(self) -> list[str]:
        """Versions served right now."""
        return [b.version for b in (self.champion, self.challenger) if b is not None]

    async def start(self) -> None:
        await self.champion.start()

    async def close(self) -> None:
        await self.set_challenger(None)
        await self.champion.close()

    def stream(self, messages: list[dict], params: SamplingParams) -> AsyncIterator[Event]:
        return self.champion.stream(messages, params)

    async def swap(self, base_path, version: str, adapter_path=None) -> None:
        await self.champion.swap(base_path, version, adapter_path)

    def route(self, conversation_id: str, pinned_version: str | None = None) -> Backend:
        """The backend for a request: the pinned version if still served, else by canary share."""
        challenger = self.challenger
        if pinned_version is not None:
            if challenger is not None and challenger.version == pinned_version:
                return challenger
            return self.champion
        if challenger is not None and in_canary(conversation_id, self.share):
            return challenger
        return self.champion

    async def set_challenger(self, spec: Spec | None) -> None:
        """Serve `spec` as the challenger (load, swap or drop it); no challenger while share is 0."""
        if spec is not None and (self.share <= 0 or spec.version == self.champion.version):
            spec = None
        current = self.challenger
        if spec is None:
            if current is not None:
                self.challenger = None  # route no new request to it, then let its rows finish
                await current.close()
                log.info("challenger %s dropped", current.version)
            return
        if current is None:
            backend = self._make(spec)
            await backend.start()
            self.challenger = backend
            log.info("challenger %s serving %.0f%% of new conversations", spec.version, self.share * 100)
        elif current.version != spec.version:
            await current.swap(spec.base_path, spec.version, spec.adapter_path)
