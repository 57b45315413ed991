"""Thin routes: the OpenAI-compatible chat API, conversation reads and health/metrics."""

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from core.auth import AdminUser, ServiceUser
from core.db import SessionDep, get_engine, session_scope
from core.settings import Settings, get_settings
from service import service
from service.backends import Backend, Generation, SamplingParams, Started
from service.metrics import CHAT_LATENCY, CHAT_REQUESTS, TOKENS
from service.models import ConversationPublic, MessagePublic, new_id
from service.schemas import (
    AssistantMessage, ChatCompletion, ChatCompletionRequest, Choice, HitlInfo, ModelCard, ModelList, Usage, chunk,
)

router = APIRouter()


def get_backend(request: Request) -> Backend:
    return request.app.state.backend


BackendDep = Annotated[Backend, Depends(get_backend)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def sampling(body: ChatCompletionRequest, settings: Settings) -> SamplingParams:
    max_tokens = body.max_completion_tokens or body.max_tokens or settings.max_tokens
    if max_tokens > settings.max_tokens_limit:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"max_tokens {max_tokens} exceeds the limit {settings.max_tokens_limit}")
    return SamplingParams(
        temperature=settings.temperature if body.temperature is None else body.temperature,
        top_p=settings.top_p if body.top_p is None else body.top_p,
        max_tokens=max_tokens, stop=tuple(body.stop or ()), seed=body.seed,
    )


def check_limits(messages: list[dict], settings: Settings) -> None:
    if len(messages) > settings.max_messages:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"at most {settings.max_messages} messages")
    if any(len(m["content"]) > settings.max_content_chars for m in messages):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"a message exceeds {settings.max_content_chars} characters")


@router.post("/v1/chat/completions", response_model=ChatCompletion, tags=["chat"],
             summary="OpenAI-compatible chat completion (set `stream` for SSE)")
async def chat_completions(body: ChatCompletionRequest, backend: BackendDep, settings: SettingsDep,
                           _user: ServiceUser):
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    check_limits(messages, settings)
    params = sampling(body, settings)
    is_new = body.conversation_id is None
    if not is_new:
        await run_in_threadpool(_assert_conversation, body.conversation_id)
    conversation_id = body.conversation_id or new_id("conv")
    reply_id, completion_id = new_id("msg"), new_id("chatcmpl")
    started = time.perf_counter()

    def log(generation: Generation) -> None:
        latency_ms = (time.perf_counter() - started) * 1000
        with session_scope() as session:
            service.log_exchange(
                session, conversation_id=conversation_id, is_new=is_new, end_user=body.user,
                request_messages=messages, reply_id=reply_id, generation=generation, latency_ms=latency_ms,
                params=params,
            )
        CHAT_REQUESTS.labels(generation.model_version, str(body.stream).lower()).inc()
        CHAT_LATENCY.labels(str(body.stream).lower()).observe(latency_ms / 1000)
        TOKENS.labels("prompt").inc(generation.prompt_tokens)
        TOKENS.labels("completion").inc(generation.completion_tokens)

    if body.stream:
        events = backend.stream(messages, params)
        first = await anext(events)  # the version is fixed once decoding starts
        assert isinstance(first, Started)
        info = HitlInfo(conversation_id=conversation_id, message_id=reply_id, model_version=first.model_version)
        return StreamingResponse(
            _sse(events, first, info, completion_id, log), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    generation = await backend.complete(messages, params)
    await run_in_threadpool(log, generation)
    return ChatCompletion(
        id=completion_id, model=generation.model_version,
        choices=[Choice(message=AssistantMessage(content=generation.text), finish_reason=generation.finish_reason)],
        usage=Usage(prompt_tokens=generation.prompt_tokens, completion_tokens=generation.completion_tokens,
                    total_tokens=generation.prompt_tokens + generation.completion_tokens),
        hitl=HitlInfo(conversation_id=conversation_id, message_id=reply_id, model_version=generation.model_version),
    )


async def _sse(events: AsyncIterator, first: Started, info: HitlInfo, completion_id: str, log) -> AsyncIterator[str]:
    model = first.model_version
    yield _data(chunk(completion_id, model, {"role": "assistant", "content": ""}, hitl=info.model_dump()))
    async for event in events:
        if isinstance(event, str):
            yield _data(chunk(completion_id, model, {"content": event}))
        elif isinstance(event, Generation):
            await run_in_threadpool(log, event)
            usage = {"prompt_tokens": event.prompt_tokens, "completion_tokens": event.completion_tokens,
                     "total_tokens": event.prompt_tokens + event.completion_tokens}
            yield _data(chunk(completion_id, model, {}, event.finish_reason, usage=usage))
    yield "data: [DONE]\n\n"


def _data(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def _assert_conversation(conversation_id: str) -> None:
    with session_scope() as session:
        service.get_conversation(session, conversation_id)


@router.get("/v1/models", response_model=ModelList, tags=["chat"], summary="Servable model versions")
def list_models(session: SessionDep, backend: BackendDep, _user: ServiceUser) -> ModelList:
    aliases = service.aliases_by_version(session)
    versions = set(aliases) | {backend.version}
    return ModelList(data=[ModelCard(id=v, aliases=sorted(aliases.get(v, []))) for v in sorted(versions)])


@router.get("/api/conversations/{conversation_id}", response_model=ConversationPublic, tags=["conversations"],
            summary="A logged conversation with every message and its model version (admin)")
def read_conversation(conversation_id: str, session: SessionDep, _admin: AdminUser) -> ConversationPublic:
    conversation = service.get_conversation(session, conversation_id)
    messages = service.conversation_messages(session, conversation_id)
    return ConversationPublic(
        id=conversation.id, end_user=conversation.end_user, created_at=conversation.created_at,
        messages=[MessagePublic.model_validate(m, from_attributes=True) for m in messages],
    )


@router.get("/healthz", tags=["ops"], summary="Liveness")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"], summary="Readiness: database reachable and model loaded")
def readyz(request: Request, response: Response) -> dict:
    checks = {"database": True, "model": getattr(request.app.state.backend, "ready", True)}
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:
        checks["database"] = False
    ok = all(checks.values())
    response.status_code = status.HTTP_200_OK if ok else status.HTTP_503_SERVICE_UNAVAILABLE
    return {"status": "ready" if ok else "not ready", "checks": checks,
            "model_version": request.app.state.backend.version}


@router.get("/metrics", tags=["ops"], summary="Prometheus metrics", response_class=Response)
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
