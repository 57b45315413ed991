"""Import of existing chat logs into the feedback store (`POST /api/import`, `hitl import FILE`).

One JSON object per line, in either format (detected per line, or forced with `fmt`):

- **openai**: an OpenAI chat record, `{"messages": [{"role", "content"}, ...]}` (the fine-tuning and chat
  completion format; `content` a string or a list of `{"type": "text", "text"}` parts), with optional `model`,
  `user` (the end user), `created` (Unix seconds or ISO 8601), `metadata` (an object), `thumbs` (`"up"` or
  `"down"`, on the last assistant reply), `comment` (with the thumbs) and `scores` (`{rubric dimension: 1..5}`,
  on the last assistant reply). Key: the record itself (the same line imports once).
- **langfuse**: a Langfuse trace with its details, as the public API (`GET /api/public/traces/{id}`) and the UI's
  "Download JSON" give it: `id`, `timestamp`, `userId`, `sessionId`, `metadata`, `tags`, `version`, `input` (a
  message list, `{"messages": [...]}` or a string), `output` (a string, a message, or a chat completion with
  `choices`), `observations` (the last `GENERATION` supplies `model`, and `input`/`output` when the trace lacks
  them) and `scores` (`{name, value, dataType, comment}`: a `BOOLEAN` score, or one named `user-feedback`,
  `feedback` or `thumbs`, becomes a thumbs (value > 0 up); a score named after a rubric dimension with an integer
  value 1..5 becomes a rating; others are kept in the metadata). Key: the trace id.

Every assistant turn of an imported conversation is a reply of the model named in the record (`model_version`),
reviewable like a served one; its conversation is marked with its source in the import ledger
(`ImportedConversation`), which also makes the import idempotent: a key already imported (even one whose
conversation a privacy deletion has since removed) is counted as a duplicate and skipped. Records of a deleted end
user are skipped. Replies enter the review queue by the usual priorities: a thumbs-down first, else the
calibration sample. Thumbs are stored as end-user thumbs and scores as ratings, both by the source's importer
(an inactive reviewer account named `import:<source>` that no key can use). A bad line is reported by its number
and costs nothing else; records are stored in chunks of `CHUNK` lines, one transaction each.
"""

import hashlib
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlmodel import Session, select

from core.auth import create_user
from core.db import session_scope
from core.limits import json_problem
from core.models import Role, User, utcnow
from core.settings import Settings
from feedback.models import ImportedConversation, Rating, ReviewItem, ReviewItemStatus, Thumbs
from feedback.service import (
    THUMBS_DOWN_PRIORITY, _RawSQL, audit, audit_user, deleted_end_users, lock_for_write, queue_priority,
)
from service.models import Conversation, Message, new_id
from service.service import storable

FORMATS = ("auto", "openai", "langfuse")
CHUNK = 2000
MAX_REPORTED_ERRORS = 1000
ROLES = ("system", "user", "assistant")
THUMBS_SCORES = {"user-feedback", "user_feedback", "feedback", "thumbs"}
MAX_TEXT = 1_000_000  # characters per message


class LineError(ValueError):
    """What is wrong with one line (reported with its number)."""


@dataclass
class Record:
    line: int
    source: str
    key: str
    messages: list[tuple[str, str]]
    model: str | None = None
    end_user: str | None = None
    created: datetime | None = None
    metadata: dict | None = None
    thumbs: str | None = None
    comment: str | None = None
    scores: dict[str, int] | None = None


@dataclass
class ImportReport:
    lines: int = 0  # non-empty lines read
    conversations: int = 0
    replies: int = 0
    thumbs: int = 0
    ratings: int = 0
    queued: int = 0
    duplicates: int = 0
    skipped_deleted: int = 0
    by_source: dict[str, int] = field(default_factory=dict)
    errors: list[dict] = field(default_factory=list)  # {"line", "error"}, the first MAX_REPORTED_ERRORS
    error_count: int = 0

    def error(self, line: int, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append({"line": line, "error": message})


# ---------------------------------------------------------------------------------------------- parsing


def parse_line(number: int, raw: bytes | str, fmt: str, rubric: list[str]) -> Record | None:
    """The record on one line, None for a blank line; raises LineError naming what is wrong."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LineError(f"not valid UTF-8 (byte {exc.start})") from None
    raw = raw.strip().lstrip("\ufeff")
    if not raw:
        return None
    if problem := json_problem(raw.encode("utf-8", "surrogatepass")):
        raise LineError(f"the line holds {problem.replace('body', 'the record')}")
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise LineError(f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise LineError("a line must be a JSON object")
    if fmt == "auto":
        fmt = "openai" if "messages" in obj else "langfuse" if "id" in obj and (
            "input" in obj or "output" in obj or "observations" in obj) else ""
        if not fmt:
            raise LineError('neither an OpenAI chat record ({"messages": [...]}) nor a Langfuse trace '
                            '({"id", "input", "output"})')
    return _openai(number, obj, rubric) if fmt == "openai" else _langfuse(number, obj, rubric)


def _key(source: str, value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False,
                                                           separators=(",", ":"))
    return hashlib.sha256(f"{source}\n{text}".encode()).hexdigest()


def _text(value, where: str) -> str:
    """A message content: a string, or a list of text parts."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, list):
        texts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise LineError(f"{where}.content[{i}]: only text parts can be imported")
            texts.append(part["text"])
        text = "".join(texts)
    else:
        raise LineError(f"{where}.content must be a string or a list of text parts")
    if len(text) > MAX_TEXT:
        raise LineError(f"{where}.content is longer than {MAX_TEXT} characters")
    return storable(text)


def _messages(value, where: str) -> list[tuple[str, str]]:
    if not isinstance(value, list) or not value:
        raise LineError(f"{where} must be a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(m, dict):
            raise LineError(f"{at} must be an object")
        role = m.get("role")
        if role == "developer":
            role = "system"
        if role not in ROLES:
            raise LineError(f"{at}.role {role!r} cannot be imported (system, user or assistant; tool calls are not "
                            "imported yet)")
        if m.get("tool_calls"):
            raise LineError(f"{at} holds tool_calls, which are not imported yet")
        out.append((role, _text(m.get("content"), at)))
    if not any(role == "assistant" for role, _ in out):
        raise LineError(f"{where} holds no assistant reply to review")
    return out


def _string(obj: dict, name: str, limit: int) -> str | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise LineError(f"{name} must be a string of at most {limit} characters")
    return value


def _time(value, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        pass
    raise LineError(f"{name} must be Unix seconds or an ISO 8601 time")


def _scores(value, rubric: list[str]) -> dict[str, int] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise LineError("scores must be an object of rubric dimensions to integers 1..5")
    for dim, score in value.items():
        if dim not in rubric:
            raise LineError(f"scores: unknown rubric dimension {dim!r}; the rubric is {rubric}")
        if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 5:
            raise LineError(f"scores.{dim} must be an integer 1..5")
    return dict(value)


def _openai(number: int, obj: dict, rubric: list[str]) -> Record:
    thumbs = obj.get("thumbs")
    if thumbs not in (None, "up", "down"):
        raise LineError('thumbs must be "up" or "down"')
    metadata = obj.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise LineError("metadata must be an object")
    return Record(number, "openai", _key("openai", obj), _messages(obj.get("messages"), "messages"),
                  model=_string(obj, "model", 100), end_user=_string(obj, "user", 200),
                  created=_time(obj.get("created"), "created"), metadata=metadata, thumbs=thumbs,
                  comment=_string(obj, "comment", 10_000), scores=_scores(obj.get("scores"), rubric))


def _langfuse(number: int, obj: dict, rubric: list[str]) -> Record:
    trace_id = obj.get("id")
    if not isinstance(trace_id, str) or not trace_id or len(trace_id) > 200:
        raise LineError("a Langfuse trace needs its id (a string)")
    observations = obj.get("observations") if isinstance(obj.get("observations"), list) else []
    generations = [o for o in observations if isinstance(o, dict) and o.get("type") == "GENERATION"]
    last = generations[-1] if generations else {}
    given = obj.get("input") is not None
    prompt = obj.get("input") if given else last.get("input")
    output = obj.get("output") if obj.get("output") is not None else last.get("output")
    messages = _prompt(prompt, "input" if given else "observations[GENERATION].input")
    messages.append(("assistant", _completion(output)))
    metadata = dict(obj["metadata"]) if isinstance(obj.get("metadata"), dict) else {}
    for name in ("name", "sessionId", "tags", "release"):
        if obj.get(name) is not None:
            metadata[name] = obj[name]
    thumbs = comment = None
    scores: dict[str, int] = {}
    kept = []
    for s in obj.get("scores") or []:
        if not isinstance(s, dict):
            continue  # a list of score ids (the trace list API) carries nothing to import
        name, value = s.get("name"), s.get("value")
        number_value = isinstance(value, int | float) and not isinstance(value, bool)
        if number_value and (s.get("dataType") == "BOOLEAN" or str(name).lower() in THUMBS_SCORES):
            thumbs, comment = ("up" if value > 0 else "down"), s.get("comment") if isinstance(
                s.get("comment"), str) else None
        elif number_value and name in rubric and float(value).is_integer() and 1 <= value <= 5:
            scores[name] = int(value)
        else:
            kept.append({k: s.get(k) for k in ("name", "value", "stringValue", "dataType", "comment") if k in s})
    if kept:
        metadata["scores"] = kept
    model = last.get("model") if isinstance(last.get("model"), str) else obj.get("version")
    return Record(number, "langfuse", _key("langfuse", trace_id), messages,
                  model=model[:100] if isinstance(model, str) else None, end_user=_string(obj, "userId", 200),
                  created=_time(obj.get("timestamp"), "timestamp"), metadata=metadata or None, thumbs=thumbs,
                  comment=comment[:10_000] if comment else None, scores=scores or None)


def _prompt(value, where: str) -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [("user", _text(value, where))]
    if isinstance(value, dict) and "messages" in value:
        value = value["messages"]
    if isinstance(value, list):
        if not value:
            raise LineError(f"{where} is empty")
        out = []
        for i, m in enumerate(value):
            if not isinstance(m, dict) or m.get("role") not in (*ROLES, "developer"):
                raise LineError(f"{where}[{i}] must be a message with role system, user or assistant")
            if m.get("tool_calls"):
                raise LineError(f"{where}[{i}] holds tool_calls, which are not imported yet")
            out.append(("system" if m["role"] == "developer" else m["role"], _text(m.get("content"), f"{where}[{i}]")))
        return out
    raise LineError(f"{where} must be a message list, {{\"messages\": [...]}} or a string")


def _completion(value) -> str:
    if isinstance(value, dict) and isinstance(value.get("choices"), list) and value["choices"]:
        value = value["choices"][0].get("message") if isinstance(value["choices"][0], dict) else None
    if isinstance(value, dict):
        if value.get("tool_calls"):
            raise LineError("output holds tool_calls, which are not imported yet")
        value = value.get("content")
    if value is None:
        raise LineError("the trace has no output (the reply to review)")
    return _text(value, "output")


# ---------------------------------------------------------------------------------------------- storing


def importer(session: Session, actor: User | None, source: str) -> User:
    """The account imported thumbs and scores are attributed to: `import:<source>`, an inactive reviewer."""
    name = f"import:{source}"
    user = session.exec(select(User).where(User.name == name, User.role == Role.reviewer)).first()
    if user is None:
        user, _key = create_user(session, name=name, role=Role.reviewer)  # the key is never shown: unusable
        user.active = False
        session.add(user)
        session.flush()
        audit_user(session, actor, "user.create", user)
    return user


def store(session: Session, actor: User | None, records: list[Record], settings: Settings,
          report: ImportReport) -> None:
    """Store one chunk of parsed records in the session's transaction (set-based inserts; only flushes)."""
    if not records:
        return
    lock_for_write(session)
    sql = _RawSQL(session)
    keys = sorted({r.key for r in records})
    known = {row[0] for row in sql.lookup("SELECT key FROM importedconversation WHERE key", keys).fetchall()}
    gone = deleted_end_users(session)
    fresh: list[Record] = []
    for r in records:
        if r.key in known:
            report.duplicates += 1
        elif r.end_user is not None and r.end_user in gone:
            report.skipped_deleted += 1
        else:
            known.add(r.key)
            fresh.append(r)
    if not fresh:
        return
    now = utcnow()
    stamp = sql.timestamp(now)
    importers = {s: importer(session, actor, s).id for s in sorted({r.source for r in fresh})}
    rng = random.Random()
    conversations, messages, ledger, thumbs, ratings, items = [], [], [], [], [], []
    for r in fresh:
        conv = new_id("conv")
        at = sql.timestamp(r.created or now)
        conversations.append((conv, r.end_user, at, at))
        ledger.append((r.key, r.source, conv, r.line, actor.id if actor else None, stamp))
        last = max(i for i, (role, _) in enumerate(r.messages) if role == "assistant")
        params = json.dumps({"source": r.source, "metadata": r.metadata}, ensure_ascii=False)
        for i, (role, content) in enumerate(r.messages):
            mid = new_id("msg")
            reply = role == "assistant"
            messages.append((mid, conv, i, role, content, r.end_user, not reply, r.model if reply else None,
                             params if reply else None, at))
            if not reply:
                continue
            report.replies += 1
            down = i == last and r.thumbs == "down"
            priority, reason = (THUMBS_DOWN_PRIORITY, "thumbs_down") if down else queue_priority(None, settings, rng)
            items.append((mid, priority, reason, settings.review_k, ReviewItemStatus.open.value, stamp, stamp))
            report.queued += priority is not None
            if i == last and r.thumbs:
                thumbs.append((mid, r.thumbs, r.comment, "end_user", importers[r.source], at))
            if i == last and r.scores:
                ratings.append((mid, importers[r.source], json.dumps(r.scores), None, False, at))
        report.by_source[r.source] = report.by_source.get(r.source, 0) + 1
    with sql.pipeline():
        sql.insert(Conversation, ("id", "end_user", "created_at", "updated_at"), conversations)
        sql.insert(Message, ("id", "conversation_id", "position", "role", "content", "end_user", "from_client",
                             "model_version", "params", "created_at"), messages)
        sql.insert(ImportedConversation, ("key", "source", "conversation_id", "line", "imported_by", "created_at"),
                   ledger)
        sql.insert(Thumbs, ("message_id", "thumbs", "comment", "source", "user_id", "created_at"), thumbs)
        sql.insert(Rating, ("message_id", "reviewer_id", "scores", "comment", "adjudicated", "created_at"), ratings)
        sql.insert(ReviewItem, ("message_id", "priority", "reason", "required_reviews", "status", "created_at",
                                "updated_at"), items)
    report.conversations += len(fresh)
    report.thumbs += len(thumbs)
    report.ratings += len(ratings)
    audit(session, actor, "import.create", "import", after={
        "lines": [fresh[0].line, fresh[-1].line], "conversations": len(fresh), "sources": sorted(importers),
        "thumbs": len(thumbs), "ratings": len(ratings)})


def run(lines: Iterable[bytes | str], actor_id: int | None, settings: Settings, fmt: str = "auto",
        chunk: int = CHUNK) -> ImportReport:
    """Import lines (numbered from 1), one transaction per `chunk` records. A chunk that fails (the
    database went away) raises; the chunks before it stay imported, and importing again skips them."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}")
    report = ImportReport()
    batch: list[Record] = []

    def flush() -> None:
        with session_scope() as session:
            actor = session.get(User, actor_id) if actor_id is not None else None
            store(session, actor, batch, settings, report)
        batch.clear()

    for number, raw in enumerate(lines, 1):
        try:
            record = parse_line(number, raw, fmt, settings.review_rubric)
        except LineError as exc:
            report.lines += 1
            report.error(number, str(exc))
            continue
        if record is None:
            continue
        report.lines += 1
        batch.append(record)
        if len(batch) >= chunk:
            flush()
    flush()
    return report
