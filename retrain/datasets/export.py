"""Export of the feedback store as training data (`GET /api/export`, `hitl export`): one reviewed or imported
reply per row, as JSON lines or Parquet, both loadable unchanged by `datasets.load_dataset("json" | "parquet")`.

A row is an assistant reply that has any feedback (thumbs, rating, correction, comparison, flag, comment) or
that was imported (`POST /api/import`). Every row has every field of `SCHEMA` (null or an empty list when there
is nothing), with one type per field, so pyarrow and `datasets` read any number of rows in any chunking:

| field | type | holds |
|---|---|---|
| `message_id`, `conversation_id` | string | the reply and its conversation |
| `source` | string | `chat` (served by hitl), or the import format: `openai`, `langfuse` |
| `created_at` | string | when the reply was written (ISO 8601 UTC with microseconds, as every `created_at`; imports: the record's time) |
| `model_version` | string? | the registry version that wrote it (imports: the record's `model`) |
| `end_user` | string? | the chat request's `user` |
| `prompt` | list of {role, content} | the conversation before the reply |
| `completion` | list of {role, content} | the reply (one assistant message): with `prompt`, TRL's conversational prompt-completion format |
| `ratings` | list of {id, reviewer_id, reliability, scores: list of {dimension, score}, comment, adjudicated, created_at} | rubric ratings; `adjudicated` = an admin's final decision |
| `thumbs` | list of {id, value, source, user_id, reliability, comment, created_at} | `value` up/down; `source` end_user or reviewer (an end user's `reliability` is the weight builds give end users, `end_user_weight`) |
| `corrections` | list of {id, reviewer_id, reliability, content, created_at} | edited replies |
| `comparisons` | list of {id, reviewer_id, reliability, choice, candidate_a, candidate_b, created_at} | pairwise choices (a, b, tie) between two generated candidates (their texts) |
| `flags` | list of {id, reviewer_id, reliability, tags, comment, created_at} | tags such as unsafe, pii |
| `comments` | list of {id, reviewer_id, reliability, text, created_at} | free-text comments |
| `consensus` | {label, state, reviewer_label, mean_score, correction, pending} | what a dataset build concludes: `label` good/neutral/bad from reviewers (Dawid–Skene when they disagree) and end users, null when unknown or unresolved; `state` null, resolved or unresolved; `reviewer_label` from reviewers alone; `mean_score` reliability-weighted mean rubric score; `correction` the correction a build trains on; `pending` why it waits for adjudication |
| `metadata` | string? | the imported record's metadata, as JSON text |

Order: first a few rows that together give every field (nested ones too) a value somewhere in the export, then
all the others, oldest reply first. Readers that infer the types from the start of a file (`datasets` reads the
first 10 MB of JSON lines) thus see every type before any later row needs it.

`reliability` is the reviewer's vote weight 0..1 (`feedback.quality.reviewer_reliability`: gold reliability, 0
below the floor). Text is exported as stored (no PII redaction). Deleted conversations and every conversation of a
deleted end user never appear (their rows are gone; a later conversation of a deleted end user is skipped).
"""

import io
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import sqlalchemy as sa
from sqlmodel import Session

from core.settings import Settings
from feedback.models import Comment, Comparison, Correction, Flag, ImportedConversation, Rating, Thumbs
from feedback.quality import reviewer_reliability
from retrain.datasets.common import Assessment, Prep, assess, mean_score, overall_verdict, reviewer_verdict
from retrain.datasets.common import resolve_corrections
from retrain.datasets.repository import load_store
from retrain.datasets.schemas import BuildOptions
from service.models import Message

FORMATS = ("jsonl", "parquet")
KINDS = ("ratings", "thumbs", "corrections", "comparisons", "flags", "comments", "imported")
MEDIA_TYPES = {"jsonl": "application/x-ndjson", "parquet": "application/vnd.apache.parquet"}
DEFAULT_RUBRIC = ["correctness", "helpfulness", "tone"]

_S, _I, _F, _B = pa.string(), pa.int64(), pa.float64(), pa.bool_()
_MESSAGE = pa.struct([("role", _S), ("content", _S)])
_WHO = [("id", _I), ("reviewer_id", _I), ("reliability", _F)]
SCHEMA = pa.schema([
    ("message_id", _S), ("conversation_id", _S), ("source", _S), ("created_at", _S), ("model_version", _S),
    ("end_user", _S), ("prompt", pa.list_(_MESSAGE)), ("completion", pa.list_(_MESSAGE)),
    ("ratings", pa.list_(pa.struct([*_WHO, ("scores", pa.list_(pa.struct([("dimension", _S), ("score", _I)]))),
                                    ("comment", _S), ("adjudicated", _B), ("created_at", _S)]))),
    ("thumbs", pa.list_(pa.struct([("id", _I), ("value", _S), ("source", _S), ("user_id", _I), ("reliability", _F),
                                   ("comment", _S), ("created_at", _S)]))),
    ("corrections", pa.list_(pa.struct([*_WHO, ("content", _S), ("created_at", _S)]))),
    ("comparisons", pa.list_(pa.struct([*_WHO, ("choice", _S), ("candidate_a", _S), ("candidate_b", _S),
                                        ("created_at", _S)]))),
    ("flags", pa.list_(pa.struct([*_WHO, ("tags", pa.list_(_S)), ("comment", _S), ("created_at", _S)]))),
    ("comments", pa.list_(pa.struct([*_WHO, ("text", _S), ("created_at", _S)]))),
    ("consensus", pa.struct([("label", _S), ("state", _S), ("reviewer_label", _S), ("mean_score", _F),
                             ("correction", _S), ("pending", _S)])),
    ("metadata", _S),
])


@dataclass
class ExportFilter:
    """Rows whose reply was written in [since, until), by one of `model_versions`, with feedback of one of
    `kinds` (or imported, for `imported`), with feedback by one of `reviewers` (user ids). None = any."""

    since: datetime | None = None
    until: datetime | None = None
    model_versions: list[str] | None = None
    kinds: list[str] | None = None
    reviewers: list[int] | None = None


def _utc(when: datetime | None) -> datetime | None:
    return None if when is None else when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _iso(when: datetime) -> str:
    return _utc(when).isoformat(timespec="microseconds").replace("+00:00", "Z")  # one shape: one inferred type


def export_rows(session: Session, settings: Settings, where: ExportFilter | None = None) -> list[dict]:
    """The export's rows (see `SCHEMA`), oldest reply first."""
    where = where or ExportFilter()
    conn = session.connection()
    m, ic, cm = Message.__table__, ImportedConversation.__table__, Comment.__table__
    imported = sa.select(ic.c.conversation_id)
    commented = sa.select(m.c.conversation_id).where(m.c.id.in_(sa.select(cm.c.message_id)))
    store = load_store(session, also=(imported, commented))
    tables = {"thumbs": Thumbs, "ratings": Rating, "corrections": Correction, "comparisons": Comparison,
              "flags": Flag, "comments": Comment}
    reviewed = sa.union(*(sa.select(t.__table__.c.message_id) for t in tables.values()))
    query = (sa.select(m.c.id, m.c.conversation_id, m.c.model_version, m.c.created_at, m.c.params)
             .where(m.c.role == "assistant", m.c.from_client.is_(False),
                    sa.or_(m.c.id.in_(reviewed), m.c.conversation_id.in_(imported)))
             .order_by(m.c.created_at, m.c.id))
    if where.since is not None:
        query = query.where(m.c.created_at >= _utc(where.since))
    if where.until is not None:
        query = query.where(m.c.created_at < _utc(where.until))
    if where.model_versions:
        query = query.where(m.c.model_version.in_(where.model_versions))
    replies = conn.execute(query).all()
    sources = dict(conn.execute(sa.select(ic.c.conversation_id, ic.c.source)).all())

    prep = Prep(store, BuildOptions(), list(getattr(settings, "review_rubric", None) or DEFAULT_RUBRIC),
                reviewer_reliability(session, settings=settings))
    assessments = assess(prep)
    corrections = resolve_corrections(prep, assessments)
    feedback = _feedback(conn, tables, prep, store.candidates)
    kinds, reviewers = set(where.kinds or ()), set(where.reviewers or ())
    rows = []
    for mid, conv, version, created, params in replies:
        found = store.context(mid)
        end_user = store.conversations.get(conv)
        if found is None or conv in store.deleted_conversations or (end_user and end_user in store.deleted_end_users):
            continue
        mine = feedback.get(mid, {})
        source = sources.get(conv, "chat")
        if kinds and not (any(mine.get(k) for k in kinds) or ("imported" in kinds and source != "chat")):
            continue
        if reviewers and not any(item.get("reviewer_id", item.get("user_id")) in reviewers
                                 for items in mine.values() for item in items):
            continue
        turns = found[1]
        a = assessments.get(mid) or Assessment()
        label, state = overall_verdict(prep, a)
        chosen = corrections.get(mid)
        mean = mean_score(prep, a)
        metadata = (params or {}).get("metadata") if isinstance(params, dict) else None
        rows.append({
            "message_id": mid, "conversation_id": conv, "source": source, "created_at": _iso(created),
            "model_version": version, "end_user": end_user,
            "prompt": [{"role": t.role, "content": t.content} for t in turns[:-1]],
            "completion": [{"role": "assistant", "content": turns[-1].content}],
            **{k: mine.get(k, []) for k in tables},
            "consensus": {"label": label, "state": state, "reviewer_label": reviewer_verdict(prep, a)[0],
                          "mean_score": None if mean is None else float(mean),
                          "correction": chosen[0] if chosen else None, "pending": a.pending},
            "metadata": None if metadata is None else json.dumps(metadata, ensure_ascii=False, sort_keys=True),
        })
    return _types_first(rows)


def _filled(value, path: str, out: set[str]) -> set[str]:
    """The paths (nested fields, `[]` for list items) that hold a value in `value`."""
    if isinstance(value, dict):
        for key, item in value.items():
            _filled(item, f"{path}.{key}", out)
    elif isinstance(value, list):
        if value:
            out.add(f"{path}[]")
        for item in value:
            _filled(item, f"{path}[]", out)
    elif value is not None:
        out.add(path)
    return out


def _types_first(rows: list[dict]) -> list[dict]:
    """Rows that first give some path a value, in order, then the others (both oldest first)."""
    seen: set[str] = set()
    first, rest = [], []
    for row in rows:
        paths = _filled(row, "", set())
        (first if not paths <= seen else rest).append(row)
        seen |= paths
    return first + rest


def _feedback(conn, tables: dict, prep: Prep, candidates: dict[int, tuple[str, str]]) -> dict[str, dict[str, list]]:
    """message id -> kind -> its feedback items (see `SCHEMA`), oldest first."""
    out: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))

    def rows(model, *columns):
        t = model.__table__
        return conn.execute(sa.select(*(t.c[c] for c in ("id", "message_id", *columns))).order_by(t.c.id))

    end_user_weight = prep.options.end_user_weight

    def who(reviewer: int) -> dict:
        return {"reviewer_id": reviewer, "reliability": float(prep.weight(reviewer))}

    for i, mid, reviewer, scores, comment, adjudicated, at in rows(
            Rating, "reviewer_id", "scores", "comment", "adjudicated", "created_at"):
        out[mid]["ratings"].append({"id": i, **who(reviewer), "scores": [
            {"dimension": d, "score": int(s)} for d, s in sorted((scores or {}).items())],
            "comment": comment, "adjudicated": bool(adjudicated), "created_at": _iso(at)})
    for i, mid, value, source, user, comment, at in rows(Thumbs, "thumbs", "source", "user_id", "comment",
                                                         "created_at"):
        reviewer = source == "reviewer"
        out[mid]["thumbs"].append({"id": i, "value": str(value), "source": str(source), "user_id": user,
                                   "reliability": float(prep.weight(user) if reviewer else end_user_weight),
                                   "comment": comment, "created_at": _iso(at)})
    for i, mid, reviewer, content, at in rows(Correction, "reviewer_id", "content", "created_at"):
        out[mid]["corrections"].append({"id": i, **who(reviewer), "content": content, "created_at": _iso(at)})
    for i, mid, reviewer, a, b, choice, at in rows(Comparison, "reviewer_id", "candidate_a", "candidate_b", "choice",
                                                   "created_at"):
        out[mid]["comparisons"].append({"id": i, **who(reviewer), "choice": str(choice),
                                        "candidate_a": candidates.get(a, (None, None))[1],
                                        "candidate_b": candidates.get(b, (None, None))[1], "created_at": _iso(at)})
    for i, mid, reviewer, tags, comment, at in rows(Flag, "reviewer_id", "tags", "comment", "created_at"):
        out[mid]["flags"].append({"id": i, **who(reviewer), "tags": list(tags or []), "comment": comment,
                                  "created_at": _iso(at)})
    for i, mid, reviewer, text, at in rows(Comment, "reviewer_id", "text", "created_at"):
        out[mid]["comments"].append({"id": i, **who(reviewer), "text": text, "created_at": _iso(at)})
    return out


def jsonl(rows: Iterable[dict]) -> Iterator[bytes]:
    for row in rows:
        yield (json.dumps(row, ensure_ascii=False) + "\n").encode()


def parquet(rows: list[dict]) -> bytes:
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), buffer)
    return buffer.getvalue()
