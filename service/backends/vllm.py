"""vLLM fleet backend (`HITL_BACKEND=vllm`): hitl owns the LoRA adapters on a set of vLLM replicas.

Every registry version is served under its own name: the base checkpoint as the replica's own model,
any other version as a LoRA adapter of that name, loaded at run time (`POST /v1/load_lora_adapter`;
the replicas run with `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`). Serving follows the registry aliases
(`service.tasks.follow_champion`):

- a new champion or challenger is loaded on every reachable replica first; only then does this server
  send requests to it, so no request names an adapter its replica lacks;
- a version left behind stays loaded while it is among the last `keep` served (rollback needs no load),
  older ones are unloaded;
- a watcher reads each replica's `/v1/models` every `check_s`: an unreachable replica, or one that lacks a
  served adapter (restarted, new), leaves the pool, is brought up to date, and only then takes traffic
  again. A request whose replica turns out unreachable or lacking the adapter before any token (404) is
  retried on another replica.

A name is never loaded in place (`load_inplace`): registry versions are immutable, so vLLM's stale
prefix-cache entries after a same-name reload (vllm-project/vllm#42125) cannot answer for another version.
A version the fleet cannot hold is refused with the reason, and the previous one keeps serving: an adapter
above the replicas' `--max-lora-rank` (`HITL_VLLM_MAX_LORA_RANK`), or a merged base (`chaining: merge`),
which a LoRA server can only serve after a restart with that checkpoint as `--model`.
"""

import asyncio
import itertools
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
from openai import AsyncOpenAI

from service.backends.base import Backend, BackendError, Event, SamplingParams, Unavailable
from service.backends.canary import Spec
from service.backends.remote import PASSED_THROUGH, open_chat, relay, upstream_errors

log = logging.getLogger(__name__)


class Unservable(BackendError):
    """A version the LoRA fleet cannot hold as it runs (rank too high, another base)."""

    status_code = 409


def adapter_rank(path: str | Path) -> int:
    return int(json.loads((Path(path) / "adapter_config.json").read_text())["r"])


@dataclass(eq=False)
class Replica:
    url: str  # without the trailing /v1
    client: AsyncOpenAI
    in_pool: bool = False
    base_name: str | None = None  # the replica's own model name (its --model or --served-model-name)
    adapters: set[str] = field(default_factory=set)
    note: str = "not checked yet"

    def model_for(self, spec: Spec) -> str:
        return spec.version if spec.adapter_path else self.base_name or spec.version

    def leave(self, why: str) -> None:
        if self.in_pool:
            log.warning("vLLM replica %s leaves the pool: %s", self.url, why)
        self.in_pool, self.note = False, why


class Fleet:
    """The replicas, what they hold, and which of them take traffic."""

    def __init__(self, urls: list[str], *, base_path: str | Path, api_key: str = "EMPTY", keep: int = 2,
                 max_lora_rank: int = 16, check_s: float = 2.0, timeout_s: float = 600):
        if not urls:
            raise ValueError("HITL_BACKEND=vllm needs HITL_VLLM_URLS (comma-separated replica URLs)")
        headers = {"Authorization": f"Bearer {api_key}"}
        self.replicas = [Replica(u.rstrip("/").removesuffix("/v1"), AsyncOpenAI(
            base_url=u.rstrip("/").removesuffix("/v1") + "/v1", api_key=api_key, max_retries=0, timeout=timeout_s))
            for u in urls]
        self._http = httpx.AsyncClient(headers=headers, timeout=30)
        self.base_path = Path(base_path).resolve()
        self.keep, self.max_lora_rank, self.check_s = keep, max_lora_rank, check_s
        self.served: dict[str, Spec] = {}  # versions requests may name now
        self._refs: Counter[str] = Counter()
        self.history: list[str] = []  # adapters served before, oldest first (rollback candidates)
        self._turn = itertools.count()
        self._watcher: asyncio.Task | None = None
        self._checked = asyncio.Event()
        self.refused: dict[str, str] = {}  # versions the fleet could not hold, with the reason
        self._pending: dict[str, Spec] = {}  # being loaded: a replica joining now must hold it too

    # -- what requests use ------------------------------------------------------------------------
    def pick(self, avoid: set[Replica]) -> Replica:
        pool = [r for r in self.replicas if r.in_pool and r not in avoid]
        if not pool:
            notes = "; ".join(f"{r.url}: {r.note}" for r in self.replicas)
            raise Unavailable(f"no vLLM replica is ready ({notes})")
        return pool[next(self._turn) % len(pool)]

    @property
    def ready(self) -> bool:
        return any(r.in_pool for r in self.replicas)

    def status(self) -> list[dict]:
        return [{"url": r.url, "in_pool": r.in_pool, "adapters": sorted(r.adapters), "note": r.note}
                for r in self.replicas]

    # -- serving set ------------------------------------------------------------------------------
    def check_servable(self, spec: Spec) -> None:
        try:
            self._check_servable(spec)
        except Unservable as exc:
            self.refused[spec.version] = str(exc)
            raise

    def _check_servable(self, spec: Spec) -> None:
        if Path(spec.base_path).resolve() != self.base_path:
            raise Unservable(
                f"version {spec.version} runs on base {spec.base_path} (a merged base), but the vLLM replicas serve "
                f"LoRA adapters over {self.base_path}: restart them with that checkpoint as --model, or keep "
                "chaining: stack")
        if spec.adapter_path and (rank := adapter_rank(spec.adapter_path)) > self.max_lora_rank:
            raise Unservable(f"version {spec.version} has LoRA rank {rank} > HITL_VLLM_MAX_LORA_RANK "
                             f"{self.max_lora_rank} (the replicas' --max-lora-rank)")

    async def acquire(self, spec: Spec) -> None:
        """Load `spec` on every reachable replica; raise (and serve nothing new) if any refuses it."""
        self.check_servable(spec)
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch(), name="hitl-vllm-watch")
        if not self._checked.is_set():
            await self.check_all()
        if spec.adapter_path:
            self._pending[spec.version] = spec
            try:
                results = await asyncio.gather(*(self._load(r, spec) for r in self.replicas), return_exceptions=True)
            finally:
                self._pending.pop(spec.version, None)
            if failed := [e for e in results if isinstance(e, BaseException)]:
                raise failed[0]
        self.refused.pop(spec.version, None)
        self._refs[spec.version] += 1
        self.served[spec.version] = spec
        if spec.version in self.history:
            self.history.remove(spec.version)

    async def release(self, spec: Spec) -> None:
        """A version no longer named by new requests: kept loaded among the last `keep`, else unloaded."""
        self._refs[spec.version] -= 1
        if self._refs[spec.version] > 0:
            return
        del self._refs[spec.version]
        self.served.pop(spec.version, None)
        if spec.adapter_path:
            self.history.append(spec.version)
        await self.retire()
        if not self.served:
            await self.close()

    def wanted(self) -> set[str]:
        kept = self.history[-self.keep:] if self.keep > 0 else []
        return {v for v, s in {**self.served, **self._pending}.items() if s.adapter_path} | set(kept)

    async def retire(self) -> None:
        wanted = self.wanted()
        self.history = [v for v in self.history if v in wanted]
        for replica in self.replicas:
            for name in sorted(replica.adapters - wanted):
                try:
                    response = await self._http.post(f"{replica.url}/v1/unload_lora_adapter", json={"lora_name": name})
                    if response.status_code < 300 or response.status_code == 404:
                        replica.adapters.discard(name)
                        log.info("unloaded retired adapter %s from %s", name, replica.url)
                except httpx.HTTPError as exc:  # the next check retries
                    log.warning("could not unload %s from %s: %s", name, replica.url, exc)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        for replica in self.replicas:
            await replica.client.close()
        await self._http.aclose()

    # -- replicas ---------------------------------------------------------------------------------
    async def _load(self, replica: Replica, spec: Spec) -> None:
        """Load one adapter on one replica; a refusal of the adapter raises, an unreachable replica leaves."""
        if spec.version in replica.adapters:
            return
        try:
            response = await self._http.post(f"{replica.url}/v1/load_lora_adapter", json={
                "lora_name": spec.version, "lora_path": str(Path(spec.adapter_path).resolve())})
        except httpx.HTTPError as exc:
            replica.leave(f"unreachable while loading {spec.version}: {exc}")
            return
        if response.status_code >= 300 and "already" not in response.text:
            self.refused[spec.version] = f"{replica.url}: {response.status_code} {response.text}"
            raise Unservable(f"{replica.url} refused adapter {spec.version}: {response.status_code} {response.text}")
        replica.adapters.add(spec.version)
        log.info("loaded adapter %s on %s", spec.version, replica.url)

    async def check(self, replica: Replica) -> None:
        """Read what a replica holds; bring it up to date before it (re)joins the pool."""
        try:
            response = await self._http.get(f"{replica.url}/v1/models", timeout=5)
            response.raise_for_status()
            models = response.json()["data"]
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            replica.leave(f"unreachable: {type(exc).__name__}: {exc}")
            return
        replica.base_name = next((m["id"] for m in models if not m.get("parent")), replica.base_name)
        replica.adapters = {m["id"] for m in models if m.get("parent")}
        if not self._checked.is_set():  # adapters a previous hitl process left: first to retire
            self.history = sorted(replica.adapters - set(self.served) - set(self.history)) + self.history
        needed = {**self.served, **self._pending}.values()  # a version being loaded: a joining replica needs it too
        missing = [s for s in needed if s.adapter_path and s.version not in replica.adapters]
        if lacking := [s.version for s in missing if s.version in self.served]:
            replica.leave(f"behind: lacks {', '.join(lacking)}")
        if missing:
            try:
                for spec in missing:
                    await self._load(replica, spec)
            except BackendError as exc:
                replica.note = str(exc)
                return
            if any(s.version not in replica.adapters for s in missing):
                return
        if not replica.in_pool:
            log.info("vLLM replica %s serves %s and joins the pool", replica.url, sorted(self.served))
        replica.in_pool, replica.note = True, "ok"

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(r) for r in self.replicas))
        self._checked.set()

    async def _watch(self) -> None:
        while True:
            try:
                await self.check_all()
                await self.retire()
            except Exception:  # keep watching
                log.exception("checking the vLLM replicas failed")
            await asyncio.sleep(self.check_s)


class VllmBackend(Backend):
    """One registry version served by the fleet (champion or challenger; both share one fleet)."""

    openai_fields = PASSED_THROUGH  # tools, structured outputs, n, logprobs: vLLM's own

    def __init__(self, fleet: Fleet, spec: Spec):
        self.fleet, self.spec = fleet, spec
        self._started = False

    @property
    def version(self) -> str:
        return self.spec.version

    @property
    def ready(self) -> bool:
        return self._started and self.fleet.ready

    async def start(self) -> None:
        await self.fleet.acquire(self.spec)
        self._started = True

    async def swap(self, base_path, version: str, adapter_path=None) -> None:
        """Load the new version everywhere, then name it in requests; the old one is released after."""
        new = Spec(version, str(base_path), str(adapter_path) if adapter_path else None)
        await self.fleet.acquire(new)
        old, self.spec = self.spec, new
        if self._started:
            await self.fleet.release(old)
        self._started = True
        log.info("serving model version %s from %d vLLM replica(s)", version, len(self.fleet.replicas))

    async def close(self) -> None:
        if self._started:
            self._started = False
            await self.fleet.release(self.spec)

    async def stream(self, messages: list[dict], params: SamplingParams) -> AsyncIterator[Event]:
        spec, tried = self.spec, set()
        while True:
            replica = self.fleet.pick(tried)
            try:
                response = await open_chat(replica.client, replica.model_for(spec), messages, params, logprobs=True)
                break
            except (openai.APIConnectionError, openai.NotFoundError) as exc:  # down, or restarted without it
                tried.add(replica)
                replica.leave(f"{type(exc).__name__} on a request for {spec.version}")
            except openai.APIError as exc:
                with upstream_errors():
                    raise exc
        async for event in relay(response, spec.version, bool(params.upstream.get("logprobs"))):
            yield event
