"""Serving logic: the conversation log and the registry reads that serving needs. Only flushes."""

from pathlib import Path

from fastapi import HTTPException, status
from sqlalchemy import event, insert
from sqlmodel import Session, col, select

from core.models import utcnow
from core.settings import Settings
from service.backends import Generation, SamplingParams
from service.models import Conversation, Message, ModelAlias, ModelVersion, VersionStatus, new_id

BASE_VERSION = "base"


def get_conversation(session: Session, conversation_id: str) -> Conversation:
    conversation = session.get(Conversation, conversation_id)
    if conversation is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"conversation '{conversation_id}' not found")
    return conversation


def conversation_messages(session: Session, conversation_id: str) -> list[Message]:
    query = select(Message).where(Message.conversation_id == conversation_id).order_by(col(Message.position))
    return list(session.exec(query))


def log_exchange(
    session: Session, *, conversation_id: str, is_new: bool, end_user: str | None, request_messages: list[dict],
    reply_ids: list[str], generation: Generation, latency_ms: float, params: SamplingParams,
    fork_ids: list[str] = (),
) -> None:
    """Store the request's new messages and the reply, stamped with the version that wrote it; with `n` > 1,
    choice i (i >= 1) goes to the new conversation `fork_ids[i-1]`: a copy of the history (as the client's), then
    that choice, so that each choice is a reply of its own to review.

    On the hot path of every chat, so: plain Core inserts, and an asynchronous commit (no fsync
    wait; see `_commit_without_fsync`)."""
    _commit_without_fsync(session)
    now = utcnow()
    if is_new:
        session.execute(insert(Conversation.__table__).values(
            id=conversation_id, end_user=end_user, created_at=now, updated_at=now))
        stored: list[Message] = []
    else:
        conversation = get_conversation(session, conversation_id)
        conversation.updated_at = now
        stored = conversation_messages(session, conversation_id)
    asked = [_turn(m, from_client=True) for m in new_messages(stored, request_messages)]
    logged = {"temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_tokens,
              "stop": list(params.stop), "seed": params.seed,
              **{k: v for k, v in params.upstream.items() if k != "tools"}}  # the OpenAI fields as sent
    choices = generation.choices
    for i, (conv, reply_id, choice) in enumerate(zip([conversation_id, *fork_ids], reply_ids, choices, strict=False)):
        rows = asked
        if i:
            session.execute(insert(Conversation.__table__).values(
                id=conv, end_user=end_user, forked_from=conversation_id, created_at=now, updated_at=now))
            history = [{**_turn(_as_dict(m), from_client=True), "model_version": m.model_version} for m in stored]
            rows = history + [{**r, "id": new_id("msg")} for r in asked]
        reply = {
            **_turn({"role": "assistant", "content": choice.text, "tool_calls": choice.tool_calls}, from_client=False),
            "id": reply_id, "model_version": choice.model_version, "tools": params.upstream.get("tools"),
            "latency_ms": latency_ms, "prompt_tokens": choice.prompt_tokens,
            "completion_tokens": choice.completion_tokens, "mean_logprob": choice.mean_logprob,
            "finish_reason": choice.finish_reason, "params": logged,
        }
        offset = 0 if i else len(stored)
        session.execute(insert(Message.__table__), [
            {**MESSAGE_DEFAULTS, **row, "conversation_id": conv, "position": offset + j, "end_user": end_user,
             "created_at": now}
            for j, row in enumerate([*rows, reply])
        ])
    session.flush()


MESSAGE_DEFAULTS = dict.fromkeys(("model_version", "latency_ms", "prompt_tokens", "completion_tokens", "mean_logprob",
                                  "finish_reason", "params", "tool_calls", "tool_call_id", "tools"))


def _turn(message: dict, from_client: bool) -> dict:
    """A message dict as a row (a new id; content storable; the tool fields when it has them)."""
    return {"id": new_id("msg"), "role": message["role"], "content": storable(message["content"]),
            "from_client": from_client, "tool_calls": message.get("tool_calls") or None,
            "tool_call_id": message.get("tool_call_id")}


def _as_dict(message: Message) -> dict:
    return {"role": message.role, "content": message.content, "tool_calls": message.tool_calls,
            "tool_call_id": message.tool_call_id}


def storable(text: str) -> str:
    """Text as every database can store it: PostgreSQL refuses NUL characters, which a model may emit."""
    return text.replace("\x00", "\ufffd")


def _commit_without_fsync(session: Session) -> None:
    """Chat logs use asynchronous commit: visible at once and never corrupt, but a power loss or OS
    crash may drop the last fraction of a second of them (PostgreSQL `synchronous_commit=off` for this
    transaction; SQLite WAL `synchronous=NORMAL` for this transaction). Waiting for the disk flush
    would add ~10 ms to every chat; reviews and feedback keep the full guarantee."""
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
    elif conn.dialect.name == "sqlite":
        raw = conn.connection.dbapi_connection
        if raw.in_transaction:  # the level can only change between transactions
            return
        raw.execute("PRAGMA synchronous=NORMAL")

        def restore(_session) -> None:
            raw.execute("PRAGMA synchronous=FULL")

        event.listen(session, "after_commit", restore, once=True)
        event.listen(session, "after_rollback", restore, once=True)


def new_messages(stored: list[Message], request: list[dict]) -> list[dict]:
    """The request's messages not yet logged: everything after the stored prefix, or, when the
    client trimmed or edited its history, the messages after its last assistant turn."""
    stored_pairs = [_key(_as_dict(m)) for m in stored]
    request_pairs = [_key({**m, "content": storable(m["content"])}) for m in request]
    if request_pairs[: len(stored_pairs)] == stored_pairs:
        return request[len(stored_pairs):]
    last_assistant = max((i for i, m in enumerate(request) if m["role"] == "assistant"), default=-1)
    return request[last_assistant + 1:]


def _key(message: dict) -> tuple:
    """What tells two turns apart: role, text, the ids of their tool calls, the call a tool turn answers."""
    return (message["role"], message["content"], tuple(c.get("id") for c in message.get("tool_calls") or ()),
            message.get("tool_call_id"))


def champion(session: Session) -> ModelVersion | None:
    alias = session.get(ModelAlias, "champion")
    return session.get(ModelVersion, alias.version) if alias else None


def aliased_versions(session: Session) -> dict[str, ModelVersion]:
    """Each alias with the registry row it points at."""
    rows = session.exec(select(ModelAlias, ModelVersion).where(ModelAlias.version == ModelVersion.version))
    return {alias.alias: version for alias, version in rows}


def conversation_version(session: Session, conversation_id: str) -> str | None:
    """The model version that answered first in a conversation (a canary conversation sticks to it)."""
    query = (select(Message.model_version).where(Message.conversation_id == conversation_id,
                                                 Message.role == "assistant")
             .order_by(col(Message.position)).limit(1))
    return session.exec(query).first()


def aliases_by_version(session: Session) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for alias in session.exec(select(ModelAlias)):
        found.setdefault(alias.version, []).append(alias.alias)
    return found


def ensure_champion(session: Session, settings: Settings) -> ModelVersion:
    """On a fresh store, register the base checkpoint as version `base` and make it champion."""
    current = champion(session)
    if current is not None:
        return current
    base = session.get(ModelVersion, BASE_VERSION) or ModelVersion(
        version=BASE_VERSION, base_path=str(Path(settings.base_model_path).resolve()),
    )
    base.status = VersionStatus.champion
    session.add(base)
    session.flush()
    session.add(ModelAlias(alias="champion", version=BASE_VERSION))
    session.flush()
    return base
