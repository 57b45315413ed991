"""Thin routes: the OpenAI-compatible chat API, conversation reads and health/metrics."""

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from core.auth import AdminUser, ServiceUser
from core.db import SessionDep, get_engine, session_scope
from core.errors import database_unavailable
from core.settings import Settings, get_settings
from service import service
from service.backends import Backend, BackendError, Delta, Generation, SamplingParams, Started
from service.backends.canary import CanaryBackend
from service.metrics import CHAT_LATENCY, CHAT_REQUESTS, TOKENS
from service.models import ConversationPublic, MessagePublic, new_id
from service.schemas import (
    AssistantMessage, ChatCompletion, ChatCompletionRequest, Choice, ChoiceInfo, HitlInfo, ModelCard, ModelList, Usage,
    chunk,
)

router = APIRouter()
log = logging.getLogger(__name__)


def get_backend(request: Request) -> Backend:
    return request.app.state.backend


BackendDep = Annotated[Backend, Depends(get_backend)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def sampling(body: ChatCompletionRequest, settings: Settings, target: Backend) -> SamplingParams:
    """The request's sampling, else `HITL_TEMPERATURE` / `HITL_TOP_P`, else the model's generation_config (a
    remote upstream gets no value and applies its own); optional OpenAI fields the backend cannot honour: 422."""
    max_tokens = body.max_completion_tokens or body.max_tokens or settings.max_tokens
    if max_tokens > settings.max_tokens_limit:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"max_tokens {max_tokens} exceeds the limit {settings.max_tokens_limit}")
    used = body.optional_fields()
    if unsupported := [f for f in used if f not in getattr(target, "openai_fields", ())]:
        legacy = {"functions", "function_call"} & set(unsupported)
        hint = "; deprecated by OpenAI: use tools and tool_choice" if legacy else \
            "; HITL_BACKEND=openai or vllm passes it on"
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"{', '.join(unsupported)}: not supported with HITL_BACKEND={settings.backend}{hint}")
    defaults = getattr(target, "sampling_defaults", None) or {}

    def pick(name: str) -> float | None:
        for value in (getattr(body, name), getattr(settings, name)):
            if value is not None:
                return value
        return defaults.get(name)

    return SamplingParams(temperature=pick("temperature"), top_p=pick("top_p"), max_tokens=max_tokens,
                          stop=tuple(body.stop or ()), seed=body.seed,
                          upstream=body.upstream_fields())


def check_limits(body: ChatCompletionRequest, messages: list[dict], settings: Settings) -> None:
    """Messages, content parts and characters per request (a 422 naming the limit)."""
    parts = sum(len(m.content) if isinstance(m.content, list) else 1 for m in body.messages)
    chars = sum(len(m["content"]) + sum(len(c["function"]["arguments"]) for c in m.get("tool_calls", ()))
                for m in messages)
    for count, limit, what in ((len(messages), settings.max_messages, "messages"),
                               (parts, settings.max_parts, "content parts"),
                               (chars, settings.max_request_chars, "characters")):
        if count > limit:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"at most {limit} {what} per request")
    if any(len(m["content"]) > settings.max_content_chars for m in messages):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"a message exceeds {settings.max_content_chars} characters")


def route(backend: Backend, conversation_id: str, pinned_version: str | None) -> Backend:
    """The canary router picks champion or challenger; a plain backend serves everything."""
    if isinstance(backend, CanaryBackend):
        return backend.route(conversation_id, pinned_version)
    return backend


def backend_failure(exc: Exception) -> HTTPException:
    """Input the model cannot serve is the client's 4xx; anything else is a 5xx with a JSON detail."""
    if isinstance(exc, BackendError):
        return HTTPException(exc.status_code, str(exc), exc.headers)
    log.error("model backend failed", exc_info=exc)
    return HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, f"model backend failed: {type(exc).__name__}")


@router.post("/v1/chat/completions", response_model=ChatCompletion, tags=["chat"],
             summary="OpenAI-compatible chat completion (set `stream` for SSE)",
             responses={200: {"content": {"text/event-stream": {"schema": {  # one server-sent event
                 "type": "object", "required": ["data"], "properties": {"data": {
                     "type": "string", "description": "With `stream`: a `chat.completion.chunk` (JSON), an `error` "
                                                      "object (JSON) or `[DONE]`"}}}}}}})
async def chat_completions(body: ChatCompletionRequest, backend: BackendDep, settings: SettingsDep,
                           _user: ServiceUser):
    messages = [m.as_dict() for m in body.messages]
    check_limits(body, messages, settings)
    is_new = body.conversation_id is None
    pinned = None if is_new else await run_in_threadpool(_conversation_version, body.conversation_id)
    conversation_id = body.conversation_id or new_id("conv")
    target = route(backend, conversation_id, pinned)
    params = sampling(body, settings, target)
    completion_id = new_id("chatcmpl")
    # choice i is logged as reply reply_ids[i] in conversation conversation_ids[i] (the others fork the first)
    reply_ids = [new_id("msg") for _ in range(body.n)]
    conversation_ids = [conversation_id] + [new_id("conv") for _ in range(body.n - 1)]
    started = time.perf_counter()

    def hitl_info(version: str) -> HitlInfo:
        refs = [ChoiceInfo(index=i, conversation_id=c, message_id=m)
                for i, (c, m) in enumerate(zip(conversation_ids, reply_ids, strict=True))] if body.n > 1 else None
        return HitlInfo(conversation_id=conversation_id, message_id=reply_ids[0], model_version=version, choices=refs)

    def record(generation: Generation) -> None:
        latency_ms = (time.perf_counter() - started) * 1000
        if settings.log_conversations:
            with session_scope() as session:
                service.log_exchange(
                    session, conversation_id=conversation_id, is_new=is_new, end_user=body.user,
                    request_messages=messages, reply_ids=reply_ids, generation=generation, latency_ms=latency_ms,
                    params=params, fork_ids=conversation_ids[1:],
                )
        CHAT_REQUESTS.labels(generation.model_version, str(body.stream).lower()).inc()
        CHAT_LATENCY.labels(str(body.stream).lower()).observe(latency_ms / 1000)
        TOKENS.labels("prompt").inc(generation.prompt_tokens)
        TOKENS.labels("completion").inc(sum(g.completion_tokens for g in generation.choices))

    if body.stream:
        events = target.stream(messages, params)
        try:
            first = await anext(events)  # the version is fixed once decoding starts
        except Exception as exc:
            raise backend_failure(exc) from exc
        return StreamingResponse(
            _sse(events, first, hitl_info(first.model_version), completion_id, record,
                 bool(body.stream_options and body.stream_options.include_usage), body.n),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    try:
        generation = await target.complete(messages, params)
    except Exception as exc:
        raise backend_failure(exc) from exc
    if failure := await _stored(record, generation):
        raise failure
    return ChatCompletion(
        id=completion_id, model=generation.model_version,
        choices=[Choice(index=i, message=AssistantMessage(content=g.text if g.text or not g.tool_calls else None,
                                                          tool_calls=g.tool_calls),
                        finish_reason=g.finish_reason,
                        logprobs={"content": g.logprobs} if g.logprobs is not None else None)
                 for i, g in enumerate(generation.choices)],
        usage=Usage(**usage_of(generation)), hitl=hitl_info(generation.model_version),
    )


def usage_of(generation: Generation) -> dict:
    """The upstream's usage as it sent it, else counted here."""
    if generation.usage:
        return generation.usage
    completion = sum(g.completion_tokens for g in generation.choices)
    return {"prompt_tokens": generation.prompt_tokens, "completion_tokens": completion,
            "total_tokens": generation.prompt_tokens + completion}


async def _sse(events: AsyncIterator, first: Started, info: HitlInfo, completion_id: str,
               record: Callable[[Generation], None], include_usage: bool = False, n: int = 1) -> AsyncIterator[str]:
    """SSE chunks; a failure mid-stream ends with an error event, a client gone away keeps its partial reply.
    Each choice opens with its role and closes with its finish reason (the last closing chunk carries `usage`);
    `include_usage` adds OpenAI's usage-only chunk (empty `choices`)."""
    model = first.model_version
    parts: list[list[str]] = [[] for _ in range(n)]  # each choice's streamed text, for a partial reply
    finished = False

    def partial(reason: str) -> Generation:  # completion_tokens counts streamed chunks (about one per token)
        out = [Generation(text="".join(p), model_version=model, prompt_tokens=first.prompt_tokens,
                          completion_tokens=len(p), finish_reason=reason, index=i) for i, p in enumerate(parts)]
        return Generation(**{**out[0].__dict__, "others": tuple(out[1:])})

    try:
        for i in range(n):
            yield _data(chunk(completion_id, model, {"role": "assistant", "content": ""}, index=i,
                              **({"hitl": info.model_dump(exclude_none=True)} if i == 0 else {})))
        async for event in events:
            if isinstance(event, str):
                parts[0].append(event)
                yield _data(chunk(completion_id, model, {"content": event}))
            elif isinstance(event, Delta):
                if event.index < n:
                    parts[event.index].append(event.delta.get("content") or "")
                yield _data(chunk(completion_id, model, event.delta, index=event.index, logprobs=event.logprobs))
            elif isinstance(event, Generation):
                finished = True
                if failure := await _stored(record, event):
                    yield _data({"error": {"message": failure.detail, "type": "server_error",
                                           "code": failure.status_code}})
                    return
                usage = usage_of(event)
                for g in event.choices:
                    last = g is event.choices[-1]
                    yield _data(chunk(completion_id, model, {}, g.finish_reason, index=g.index,
                                      **({"usage": usage} if last else {})))
                if include_usage:
                    yield _data({**chunk(completion_id, model, {}), "choices": [], "usage": usage})
        yield "data: [DONE]\n\n"
    except Exception as exc:
        finished = True
        error = backend_failure(exc)
        await _stored(record, partial("error"))
        yield _data({"error": {"message": error.detail, "type": "server_error", "code": error.status_code}})
    finally:
        if not finished:  # the client disconnected: no await here, the task may be cancelled
            loop = asyncio.get_running_loop()
            loop.create_task(events.aclose())  # tells the decoder to drop the row
            loop.run_in_executor(None, record, partial("cancelled"))


async def _stored(record: Callable[[Generation], None], generation: Generation) -> HTTPException | None:
    """None once stored; else the error to answer (503 with Retry-After while the database is unreachable)."""
    try:
        await run_in_threadpool(record, generation)
        return None
    except OperationalError as exc:
        log.warning("could not store a chat exchange: %s", exc.orig or exc)
        return database_unavailable(exc)
    except Exception:
        log.exception("could not store a chat exchange")
        return HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, "the reply could not be stored")


def _data(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def _conversation_version(conversation_id: str) -> str | None:
    """404 for an unknown conversation, else the version that started it."""
    with session_scope() as session:
        service.get_conversation(session, conversation_id)
        return service.conversation_version(session, conversation_id)


@router.get("/v1/models", response_model=ModelList, tags=["chat"], summary="Servable model versions")
def list_models(session: SessionDep, backend: BackendDep, _user: ServiceUser) -> ModelList:
    aliases = service.aliases_by_version(session)
    versions = set(aliases) | set(getattr(backend, "versions", [backend.version]))
    return ModelList(data=[ModelCard(id=v, aliases=sorted(aliases.get(v, []))) for v in sorted(versions)])


@router.get("/api/conversations/{conversation_id}", response_model=ConversationPublic, tags=["conversations"],
            summary="A logged conversation with every message and its model version (admin)")
def read_conversation(conversation_id: str, session: SessionDep, _admin: AdminUser) -> ConversationPublic:
    conversation = service.get_conversation(session, conversation_id)
    messages = service.conversation_messages(session, conversation_id)
    return ConversationPublic(
        id=conversation.id, end_user=conversation.end_user, forked_from=conversation.forked_from,
        created_at=conversation.created_at,
        messages=[MessagePublic.model_validate(m, from_attributes=True) for m in messages],
    )


@router.get("/healthz", tags=["ops"], summary="Liveness")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"], summary="Readiness: database reachable and model loaded",
            responses={503: {"description": "Not ready: the same body, with the failing check false"}})
def readyz(request: Request, response: Response) -> dict:
    checks = {"database": True, "model": getattr(request.app.state.backend, "ready", True)}
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:
        checks["database"] = False
    ok = all(checks.values())
    response.status_code = status.HTTP_200_OK if ok else status.HTTP_503_SERVICE_UNAVAILABLE
    backend = request.app.state.backend
    body = {"status": "ready" if ok else "not ready", "checks": checks, "model_version": backend.version,
            "serving": getattr(backend, "versions", [backend.version])}
    if fleet := getattr(getattr(backend, "champion", backend), "fleet", None):  # HITL_BACKEND=vllm
        body["replicas"], body["refused"] = fleet.status(), fleet.refused
    return body


@router.get("/metrics", tags=["ops"], summary="Prometheus metrics (with `HITL_METRICS_KEY`: as its Bearer key)",
            response_class=Response, responses={401: {"description": "`HITL_METRICS_KEY` is set and not sent"}})
def metrics(request: Request, settings: SettingsDep) -> Response:
    sent = request.headers.get("authorization", "").removeprefix("Bearer ")
    if settings.metrics_key and not hmac.compare_digest(sent.encode(), settings.metrics_key.encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "metrics key required", {"WWW-Authenticate": "Bearer"})
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
