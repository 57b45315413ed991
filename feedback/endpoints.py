"""Thin routes: end-user feedback, the reviewer workflow, agreement, audit log and privacy deletions.

Every POST accepts `Idempotency-Key`. Reviewers act only on items they hold (others' items answer
404); admins may act on any assistant reply. The acting user always comes from the API key.
"""

import asyncio
import dataclasses
import random
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from core.auth import AdminUser, ReviewerUser
from core.db import SessionDep, session_scope
from core.limits import Concurrency
from core.settings import Settings, get_settings
from feedback import idempotency, imports, ingest, quality, service
from feedback.idempotency import IdempotencyKey
from feedback.models import ReviewClaimStatus, ReviewItem
from feedback.schemas import (
    AdjudicationIn, AuditOut, AuditPage, CandidateOut, ClaimOut, ClaimStateOut, CommentIn, CommentOut, ComparisonIn,
    ComparisonOut, CorrectionIn, CorrectionOut, DeletionOut, FeedbackIn, FlagIn, FlagOut, GoldIn, ImportOut, RatingIn,
    RatingOut, RubricOut, SkipIn, ThumbsOut,
)
from service.backends import Backend, SamplingParams
from service.endpoints import backend_failure
from service.models import MessagePublic

router = APIRouter()
SettingsDep = Annotated[Settings, Depends(get_settings)]
ITEM = "/api/review/items/{message_id}"
NOT_HELD = {404: {"description": "Unknown message, or an item not held by the caller"},
            409: {"description": "The caller's lease expired"}}
GENERATING = Concurrency("candidate generations")


def _out(schema, row, **extra):
    return schema.model_validate({**row.model_dump(), **extra})


# ---------------------------------------------------------------------------------------------- end users


@router.post("/v1/feedback", response_model=ThumbsOut, status_code=201, tags=["feedback"],
             summary="End-user thumbs up/down with an optional comment (service key)",
             responses={404: {"description": "Unknown message"}})
async def post_feedback(body: FeedbackIn, request: Request, user_id: Annotated[int, Depends(ingest.service_caller)],
                        key: IdempotencyKey = None) -> Response:
    """Group-committed (see `feedback.ingest`): answered once the write is durable. Settings are
    read inline: a sync dependency would cost a thread hop on this hot path."""
    settings = get_settings()
    write = service.ThumbsWrite(user_id, body.message_id, body.thumbs, body.comment, key,
                                idempotency.fingerprint(request, body) if key else None)
    return idempotency.respond(await ingest.writer(settings).submit(write))


# ---------------------------------------------------------------------------------------------- queue


@router.get("/api/review/rubric", response_model=RubricOut, tags=["review"], summary="Rubric and guidelines")
def rubric(_user: ReviewerUser, settings: SettingsDep) -> RubricOut:
    return RubricOut(rubric=settings.review_rubric, guidelines=settings.review_guidelines,
                     lease_minutes=settings.review_lease_minutes, reviews_per_item=settings.review_k)


def _claim_out(session, message_id: str, lease_expires_at, settings: Settings) -> ClaimOut:
    message = service.assistant_message(session, message_id)
    item = session.get(ReviewItem, message_id)
    return ClaimOut(
        message_id=message.id, conversation_id=message.conversation_id,
        conversation=[MessagePublic.model_validate(m, from_attributes=True)
                      for m in service.context_of(session, message)],
        lease_expires_at=lease_expires_at, reason=item.reason if item else None,
        rubric=settings.review_rubric, guidelines=settings.review_guidelines,
    )


@router.post("/api/review/claim", response_model=ClaimOut, tags=["review"],
             summary="Lease the next item of the queue (204 when empty); returns the held item if any",
             responses={204: {"description": "The queue is empty"}})
def claim(request: Request, session: SessionDep, user: ReviewerUser, settings: SettingsDep,
          key: IdempotencyKey = None) -> Response:
    def work():
        row = service.claim(session, user, settings)
        return None if row is None else _claim_out(session, row.message_id, row.lease_expires_at, settings)

    return idempotency.run(session, user, key, request, None, work)


@router.get(ITEM, response_model=ClaimOut, tags=["review"], responses=NOT_HELD,
            summary="An item the caller holds (admins: any assistant reply)")
def read_item(message_id: str, session: SessionDep, user: ReviewerUser, settings: SettingsDep) -> ClaimOut:
    if user.role == "admin":
        return _claim_out(session, message_id, None, settings)
    held = service.held_claim(session, user, message_id)
    return _claim_out(session, message_id, held.lease_expires_at, settings)


def _finish(session, user, key, request, message_id: str, new_status: ReviewClaimStatus,
            body: SkipIn | None = None) -> Response:
    def work():
        row = service.finish_claim(session, user, message_id, new_status, body.reason if body else None)
        item = session.get(ReviewItem, message_id)
        return ClaimStateOut(message_id=message_id, status=row.status, item_status=item.status.value if item else None)

    return idempotency.run(session, user, key, request, body, work)


@router.post(f"{ITEM}/release", response_model=ClaimStateOut, tags=["review"], responses=NOT_HELD,
             summary="Give the held item back to the queue")
def release(message_id: str, request: Request, session: SessionDep, user: ReviewerUser,
            key: IdempotencyKey = None) -> Response:
    return _finish(session, user, key, request, message_id, ReviewClaimStatus.released)


@router.post(f"{ITEM}/skip", response_model=ClaimStateOut, tags=["review"], responses=NOT_HELD,
             summary="Skip the held item (optional reason); another reviewer gets it")
def skip(message_id: str, request: Request, session: SessionDep, user: ReviewerUser,
         key: IdempotencyKey = None, body: SkipIn | None = None) -> Response:
    return _finish(session, user, key, request, message_id, ReviewClaimStatus.skipped, body)


@router.post(f"{ITEM}/submit", response_model=ClaimStateOut, tags=["review"], responses=NOT_HELD,
             summary="Finish the review of the held item; it counts towards the item's k reviews")
def submit(message_id: str, request: Request, session: SessionDep, user: ReviewerUser,
           key: IdempotencyKey = None) -> Response:
    return _finish(session, user, key, request, message_id, ReviewClaimStatus.submitted)


# ---------------------------------------------------------------------------------------------- feedback on items


@router.post(f"{ITEM}/rating", response_model=RatingOut, status_code=201, tags=["review"], responses=NOT_HELD,
             summary="Rubric rating: Likert 1-5 per dimension")
def post_rating(message_id: str, body: RatingIn, request: Request, session: SessionDep, user: ReviewerUser,
                settings: SettingsDep, key: IdempotencyKey = None) -> Response:
    return idempotency.run(session, user, key, request, body, lambda: _out(RatingOut, service.rate(
        session, user, message_id, body.scores, body.comment, settings)), status.HTTP_201_CREATED)


@router.post(f"{ITEM}/correction", response_model=CorrectionOut, status_code=201, tags=["review"],
             responses=NOT_HELD, summary="The reviewer's edit of the reply (original and diff are kept)")
def post_correction(message_id: str, body: CorrectionIn, request: Request, session: SessionDep, user: ReviewerUser,
                    key: IdempotencyKey = None) -> Response:
    return idempotency.run(session, user, key, request, body, lambda: _out(CorrectionOut, service.correct(
        session, user, message_id, body.content)), status.HTTP_201_CREATED)


@router.post(f"{ITEM}/flag", response_model=FlagOut, status_code=201, tags=["review"], responses=NOT_HELD,
             summary="Tags such as unsafe, pii, off_topic")
def post_flag(message_id: str, body: FlagIn, request: Request, session: SessionDep, user: ReviewerUser,
              key: IdempotencyKey = None) -> Response:
    return idempotency.run(session, user, key, request, body, lambda: _out(FlagOut, service.flag(
        session, user, message_id, body.tags, body.comment)), status.HTTP_201_CREATED)


@router.post(f"{ITEM}/comment", response_model=CommentOut, status_code=201, tags=["review"], responses=NOT_HELD,
             summary="Free-text comment")
def post_comment(message_id: str, body: CommentIn, request: Request, session: SessionDep, user: ReviewerUser,
                 key: IdempotencyKey = None) -> Response:
    return idempotency.run(session, user, key, request, body, lambda: _out(CommentOut, service.comment(
        session, user, message_id, body.text)), status.HTTP_201_CREATED)


@router.post(f"{ITEM}/comparison", response_model=ComparisonOut, status_code=201, tags=["review"],
             responses=NOT_HELD, summary="Pairwise choice between two candidates of this item")
def post_comparison(message_id: str, body: ComparisonIn, request: Request, session: SessionDep, user: ReviewerUser,
                    key: IdempotencyKey = None) -> Response:
    return idempotency.run(session, user, key, request, body, lambda: _out(ComparisonOut, service.compare(
        session, user, message_id, body.candidate_a, body.candidate_b, body.choice)), status.HTTP_201_CREATED)


@router.post(f"{ITEM}/candidates", response_model=list[CandidateOut], status_code=201, tags=["review"],
             responses={**NOT_HELD, 429: {"description": "The caller already generates `HITL_CANDIDATE_CONCURRENCY` "
                                                         "candidate pairs"},
                        503: {"description": "The model's queue is full, or the model is not running"}},
             summary="Generate two alternative replies from the serving model (different seeds)")
async def post_candidates(message_id: str, request: Request, user: ReviewerUser, settings: SettingsDep,
                          key: IdempotencyKey = None) -> Response:
    """No database connection is held while the model runs: the context is read, and the candidates stored,
    each in a short session of its own."""
    with GENERATING.slot(user.id, settings.candidate_concurrency):
        stored, context = await run_in_threadpool(_candidate_context, user, message_id, key,
                                                  idempotency.fingerprint(request, None))
        if stored is not None:
            return stored
        backend: Backend = request.app.state.backend
        seeds = random.sample(range(1, 2**31 - 1), 2)
        params = [SamplingParams(temperature=settings.temperature or 0.7, top_p=settings.top_p or 1.0,
                                 max_tokens=settings.max_tokens, seed=seed) for seed in seeds]
        try:
            generations = await asyncio.gather(*(backend.complete(context, p) for p in params))
        except Exception as exc:
            raise backend_failure(exc) from exc

    def store() -> Response:
        def work():
            rows = service.store_candidates(session, user, message_id,
                                            [(g.text, g.model_version, s) for g, s in zip(generations, seeds)])
            return [CandidateOut(candidate_id=r.id, content=r.content, model_version=r.model_version, seed=r.seed)
                    for r in rows]

        with session_scope() as session:
            return idempotency.run(session, user, key, request, None, work, status.HTTP_201_CREATED)

    return await run_in_threadpool(store)


def _candidate_context(user, message_id: str, key: str | None, fp: str) -> tuple[Response | None, list[dict]]:
    """The stored response of a replayed key, else the messages the candidates answer."""
    with session_scope() as session:
        if key is not None and (stored := idempotency.lookup(session, user, key, fp)) is not None:
            return stored, []
        return None, service.candidate_context(session, user, message_id)


# ---------------------------------------------------------------------------------------------- admin


@router.get("/api/review/agreement", tags=["review admin"],
            summary="Krippendorff's alpha per dimension, per-reviewer agreement, gold reliability and flags, "
                    "adjudication queue")
def agreement(session: SessionDep, _admin: AdminUser, settings: SettingsDep) -> dict:
    return quality.agreement_report(session, settings)


@router.get("/api/review/adjudication", tags=["review admin"],
            summary="Items whose reviewers disagree: rating spread, differing corrections, correction of a reply rated good")
def adjudication_queue(session: SessionDep, _admin: AdminUser, settings: SettingsDep) -> list[dict]:
    return quality.adjudication_queue(session, settings)


@router.post("/api/review/adjudication/{message_id}", response_model=RatingOut, status_code=201,
             tags=["review admin"], summary="Final scores for a disputed item (admin)")
def adjudicate(message_id: str, body: AdjudicationIn, request: Request, session: SessionDep, admin: AdminUser,
               settings: SettingsDep, key: IdempotencyKey = None) -> Response:
    return idempotency.run(session, admin, key, request, body, lambda: _out(RatingOut, service.adjudicate(
        session, admin, message_id, body.scores, body.comment, settings, body.correction)), status.HTTP_201_CREATED)


@router.post("/api/review/gold", tags=["review admin"], status_code=201,
             summary="Mark a reply as a gold item with known scores; it is mixed into the queue")
def post_gold(body: GoldIn, request: Request, session: SessionDep, admin: AdminUser, settings: SettingsDep,
              key: IdempotencyKey = None) -> Response:
    def work():
        item = service.set_gold(session, admin, body.message_id, body.scores, settings)
        return {"message_id": item.message_id, "gold_scores": item.gold_scores, "priority": item.priority}

    return idempotency.run(session, admin, key, request, body, work, status.HTTP_201_CREATED)


@router.get("/api/review/stats", tags=["review admin"], summary="Feedback and queue counts")
def review_stats(session: SessionDep, _admin: AdminUser) -> dict:
    return service.stats(session)


@router.get("/api/audit", response_model=AuditPage, tags=["review admin"],
            summary="The audit log of every write, oldest first (admin)")
def audit_log(session: SessionDep, _admin: AdminUser, after_id: int = 0,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100, actor_id: int | None = None,
              action: str | None = None, message_id: str | None = None) -> AuditPage:
    rows = service.audit_page(session, after_id=after_id, limit=limit, actor_id=actor_id, action=action,
                              message_id=message_id)
    data = [AuditOut.model_validate(r.model_dump()) for r in rows]
    return AuditPage(data=data, count=len(data), next_after_id=data[-1].id if len(data) == limit else None)


@router.delete("/api/conversations/{conversation_id}", response_model=DeletionOut, tags=["privacy"],
               summary="Delete a conversation, its messages and feedback; dataset builds exclude it forever")
def delete_conversation(conversation_id: str, session: SessionDep, admin: AdminUser) -> DeletionOut:
    return _out(DeletionOut, service.delete_conversation(session, admin, conversation_id))


@router.delete("/api/end-users/{end_user}", response_model=DeletionOut, tags=["privacy"],
               summary="Delete all conversations of an end user (the chat `user` field); excluded forever")
def delete_end_user(end_user: str, session: SessionDep, admin: AdminUser) -> DeletionOut:
    return _out(DeletionOut, service.delete_end_user(session, admin, end_user))


# ---------------------------------------------------------------------------------------------- import

NDJSON = ("application/x-ndjson", "application/jsonl", "application/json-lines", "application/x-jsonlines")
IMPORT_BODY = {"required": True, "content": {
    **{t: {"schema": {"type": "string", "description": "One JSON record per line"}} for t in NDJSON[:1]},
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": {"type": "string", "format": "binary"}}}},
}}


@router.post("/api/import", response_model=ImportOut, tags=["import/export"], openapi_extra={"requestBody": IMPORT_BODY},
             summary="Import existing chat logs: OpenAI chat-format JSONL or Langfuse traces (admin)",
             responses={415: {"description": "Not `application/x-ndjson` (or `application/jsonl`) nor a multipart "
                                             "file upload"},
                        422: {"description": "Unknown `format`, no `file` field in a multipart body, or no line "
                                             "could be imported (the first errors are named)"}})
async def import_logs(request: Request, admin: AdminUser, settings: SettingsDep,
                      fmt: Annotated[Literal["auto", "openai", "langfuse"], Query(
                          alias="format", description="Record format; `auto` detects it per line")] = "auto",
                      ) -> ImportOut:
    """Send the file as the body (`Content-Type: application/x-ndjson`) or as the multipart field `file`.
    Formats and their fields: see `feedback/imports.py` and the README. Every assistant reply is imported
    as a reviewable reply of the record's `model`, its conversation marked with its source; replies enter the
    review queue by the usual priorities. The same record imports once (stable key). Bad lines are skipped
    and reported by number; the body size is bounded by `HITL_MAX_IMPORT_BYTES`."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=10)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "a multipart import needs its file in the "
                                                                       "field 'file'")
        data = await upload.read()
    elif ctype in NDJSON:
        data = await request.body()
    else:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                            f"send JSON lines as {NDJSON[0]} (or a multipart field 'file'), not {ctype or 'no type'}")
    report = await run_in_threadpool(imports.run, data.splitlines(), admin.id, settings, fmt)
    if not report.lines:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "the import holds no records")
    if report.error_count == report.lines:
        named = "; ".join(f"line {e['line']}: {e['error']}" for e in report.errors[:5])
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"no line could be imported: {named}")
    return ImportOut(**dataclasses.asdict(report))
