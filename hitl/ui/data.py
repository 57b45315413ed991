"""Read-only queries behind the admin pages and the reviewer's progress counter.

Writes never happen here: every button in the UI calls the domains' JSON APIs. Tables of parts that
are not installed yet are skipped (the page says so) instead of failing.
"""

import importlib
import json
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func
from sqlmodel import Session, col, select

from core.models import User
from core.settings import get_settings
from service.models import Conversation, Message, ModelAlias, ModelVersion


def optional(module: str, name: str) -> Any | None:
    """A class from a part that may not exist yet."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def fb(name: str) -> Any | None:
    return optional("feedback.models", name)


def today_start() -> datetime:
    now = datetime.now(UTC)
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def _day_key(value: Any) -> str:
    if isinstance(value, datetime | date):
        return value.strftime("%Y-%m-%d")
    return str(value)[:10]


def per_day(session: Session, model: Any, days: int, where: Any = None) -> dict[str, int]:
    since = today_start() - timedelta(days=days - 1)
    day = func.date(model.created_at)
    query = select(day, func.count()).where(model.created_at >= since)
    if where is not None:
        query = query.where(where)
    counts = {_day_key(d): n for d, n in session.exec(query.group_by(day))}
    return counts


def day_labels(days: int) -> list[str]:
    start = today_start().date() - timedelta(days=days - 1)
    return [(start + timedelta(days=i)).isoformat() for i in range(days)]


REVIEW_KINDS = ("Rating", "Correction", "Comparison", "Flag")


def activity(session: Session, days: int = 14) -> dict[str, Any]:
    labels = day_labels(days)
    conversations = per_day(session, Conversation, days)
    series: dict[str, list[float]] = {"conversations": [conversations.get(d, 0) for d in labels]}
    thumbs_model = fb("Thumbs")
    if thumbs_model is not None:
        thumbs = per_day(session, thumbs_model, days)
        series["thumbs"] = [thumbs.get(d, 0) for d in labels]
    reviews: dict[str, int] = defaultdict(int)
    for kind in REVIEW_KINDS:
        if (model := fb(kind)) is not None:
            for d, n in per_day(session, model, days).items():
                reviews[d] += n
    if any(fb(k) for k in REVIEW_KINDS):
        series["reviewer feedback"] = [reviews.get(d, 0) for d in labels]
    return {"labels": labels, "series": series}


def thumbs_up_rate(session: Session) -> dict[str, Any]:
    thumbs = fb("Thumbs")
    if thumbs is None:
        return {"labels": [], "rate": [], "n": []}
    query = (select(Message.model_version, thumbs.thumbs, func.count())
             .join(Message, col(Message.id) == thumbs.message_id)
             .group_by(Message.model_version, thumbs.thumbs))
    up: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    for version, value, n in session.exec(query):
        key = version or "unknown"
        total[key] += n
        if str(getattr(value, "value", value)) == "up":
            up[key] += n
    labels = sorted(total)
    return {"labels": labels, "rate": [up[v] / total[v] for v in labels], "n": [total[v] for v in labels]}


def queue_depth(session: Session) -> dict[str, int]:
    item = fb("ReviewItem")
    if item is None:
        return {}
    query = (select(item.reason, func.count()).where(item.status == "open", col(item.priority).is_not(None))
             .group_by(item.reason))
    return {reason or "other": n for reason, n in session.exec(query)}


def reviewer_throughput(session: Session, days: int = 7) -> dict[str, Any]:
    """Items finished per reviewer per day over the last `days` days."""
    claim = fb("ReviewClaim")
    names = {u.id: u.name for u in session.exec(select(User))}
    labels = day_labels(days)
    if claim is None:
        return {"labels": labels, "series": {}}
    since = today_start() - timedelta(days=days - 1)
    finished = func.coalesce(claim.finished_at, claim.created_at)
    day = func.date(finished)
    query = (select(claim.reviewer_id, day, func.count())
             .where(claim.status == "submitted", finished >= since)
             .group_by(claim.reviewer_id, day))
    per: dict[str, dict[str, int]] = defaultdict(dict)
    for reviewer, d, n in session.exec(query):
        per[names.get(reviewer, f"#{reviewer}")][_day_key(d)] = n
    series = {name: [counts.get(d, 0) for d in labels] for name, counts in sorted(per.items())}
    return {"labels": labels, "series": series}


def progress(session: Session, user: User) -> dict[str, Any]:
    """Reviewed today by this reviewer, and items left in the queue."""
    claim, item = fb("ReviewClaim"), fb("ReviewItem")
    reviewed = None
    if claim is not None:
        finished = func.coalesce(claim.finished_at, claim.created_at)
        reviewed = session.exec(select(func.count()).select_from(claim).where(
            claim.reviewer_id == user.id, claim.status == "submitted", finished >= today_start())).one()
    left = None
    if item is not None:
        left = session.exec(select(func.count()).select_from(item).where(
            item.status == "open", col(item.priority).is_not(None))).one()
    return {"reviewed_today": reviewed, "left_in_queue": left}


def recent_feedback(session: Session, limit: int = 15) -> list[dict[str, Any]]:
    """Newest reviewer and end-user feedback rows, across kinds."""
    names = {u.id: u.name for u in session.exec(select(User))}
    rows: list[dict[str, Any]] = []
    for kind in ("Thumbs", *REVIEW_KINDS, "Comment"):
        model = fb(kind)
        if model is None:
            continue
        for row in session.exec(select(model).order_by(col(model.created_at).desc()).limit(limit)):
            who = getattr(row, "reviewer_id", None) or getattr(row, "user_id", None)
            rows.append({"kind": kind.lower(), "message_id": row.message_id, "who": names.get(who, "end user"),
                         "created_at": row.created_at, "summary": _summary(kind, row)})
    rows.sort(key=lambda r: _aware(r["created_at"]), reverse=True)
    return rows[:limit]


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _summary(kind: str, row: Any) -> str:
    if kind == "Thumbs":
        return "thumbs " + str(getattr(row.thumbs, "value", row.thumbs)) + (f": {row.comment}" if row.comment else "")
    if kind == "Rating":
        return ", ".join(f"{k} {v}" for k, v in (row.scores or {}).items())
    if kind == "Correction":
        return row.content[:120]
    if kind == "Comparison":
        return f"preferred {getattr(row.choice, 'value', row.choice)}"
    if kind == "Flag":
        return ", ".join(row.tags or [])
    if kind == "Comment":
        return row.text[:120]
    return ""


def adjudication_queue(session: Session) -> list[dict[str, Any]]:
    """Items whose reviewers disagree beyond the configured threshold (the feedback part's rule)."""
    try:
        from feedback import quality
    except ImportError:
        return []
    names = {u.id: u.name for u in session.exec(select(User))}
    settings = get_settings()
    out = []
    for entry in quality.adjudication_queue(session, settings):
        dims = sorted(entry["spread"]) or list(settings.review_rubric)
        reason = entry.get("correction_reason") or entry.get("reason")
        out.append({"message_id": entry["message_id"], "gap": max(entry["spread"].values(), default=0),
                    "dimensions": dims, "spread": entry["spread"], "reason": reason,
                    "ratings": [{"who": names.get(int(r), f"#{r}"), "scores": s} for r, s in entry["ratings"].items()],
                    "corrections": [{**g, "who": [names.get(int(r), f"#{r}") for r in g["reviewer_ids"]]}
                                    for g in entry.get("corrections", [])],
                    "good_votes": [names.get(int(r), f"#{r}") for r in entry.get("good_votes", [])]})
    out.sort(key=lambda r: -r["gap"])
    return out


def agreement(session: Session) -> dict[str, Any] | None:
    """Krippendorff's alpha per dimension and agreement per reviewer, with reviewer names."""
    try:
        from feedback import quality
    except ImportError:
        return None
    report = quality.agreement_report(session, get_settings())
    names = {u.id: u.name for u in session.exec(select(User))}
    reviewers = [{"name": names.get(int(r), f"#{r}"), **figures} for r, figures in report["reviewers"].items()]
    return {"dimensions": report["dimensions"], "reviewers": reviewers, "threshold": report.get("threshold"),
            "open_conflicts": len(report.get("adjudication", [])),
            "flagged": [names.get(int(r), f"#{r}") for r in report.get("flagged", [])],
            "floor": report.get("reliability", {}).get("floor")}


def users(session: Session) -> list[User]:
    return list(session.exec(select(User).order_by(col(User.id))))


def datasets(session: Session) -> list[Any] | None:
    model = optional("retrain.datasets.models", "DatasetSnapshot")
    if model is None:
        return None
    return list(session.exec(select(model).order_by(col(model.id).desc()).limit(50)))


def retrain_model() -> Any | None:
    return optional("retrain.training.models", "RetrainRun")


def runs(session: Session) -> list[Any] | None:
    model = retrain_model()
    if model is None:
        return None
    return list(session.exec(select(model).order_by(col(model.id).desc()).limit(50)))


def run_logs(run: Any, max_chars: int = 20_000) -> list[tuple[str, str]]:
    """Tails of the run's log file and of the text logs under its artifacts dir."""
    files: list[tuple[str, Path]] = []
    if (log_path := getattr(run, "log_path", None)) and Path(log_path).is_file():
        files.append((Path(log_path).name, Path(log_path)))
    if (path := getattr(run, "artifacts_path", None)) and Path(path).is_dir():
        root = Path(path)
        found = sorted(root.rglob("*.log"))[:5] + sorted(root.rglob("trainer_log*.jsonl"))[:2]
        files += [(str(f.relative_to(root)), f) for f in found if not log_path or f.resolve() != Path(log_path).resolve()]
    out = []
    for name, file in files:
        try:
            text = file.read_text(errors="replace")
        except OSError:
            continue
        out.append((name, text[-max_chars:]))
    return out


def models(session: Session) -> list[dict[str, Any]]:
    aliases: dict[str, list[str]] = defaultdict(list)
    for alias in session.exec(select(ModelAlias)):
        aliases[alias.version].append(alias.alias)
    out = []
    for version in session.exec(select(ModelVersion).order_by(col(ModelVersion.created_at).desc())):
        report = version.gate_report or {}
        decision = report.get("decision") or ({True: "passed", False: "failed"}.get(report.get("passed")))
        out.append({"v": version, "aliases": sorted(aliases.get(version.version, [])), "decision": decision,
                    "report": json.dumps(version.gate_report, indent=2, default=str) if version.gate_report else None})
    return out


def alias_history(session: Session, limit: int = 30) -> list[Any]:
    model = optional("evaluators.models", "AliasEvent")
    if model is None:
        return []
    return list(session.exec(select(model).order_by(col(model.created_at).desc()).limit(limit)))


def totals(session: Session) -> dict[str, int | None]:
    count = lambda model: session.exec(select(func.count()).select_from(model)).one()  # noqa: E731
    out: dict[str, int | None] = {"conversations": count(Conversation),
                                  "replies": session.exec(select(func.count()).select_from(Message)
                                                          .where(Message.role == "assistant")).one()}
    for kind in ("Thumbs", *REVIEW_KINDS):
        model = fb(kind)
        out[kind.lower()] = count(model) if model is not None else None
    return out


def item_detail(session: Session, message_id: str) -> dict[str, Any] | None:
    """One reply with its conversation up to it and every feedback row on it, oldest first."""
    message = session.get(Message, message_id)
    if message is None:
        return None
    context = list(session.exec(select(Message).where(Message.conversation_id == message.conversation_id,
                                                      Message.position <= message.position)
                                .order_by(col(Message.position))))
    names = {u.id: u.name for u in session.exec(select(User))}
    rows: list[dict[str, Any]] = []
    for kind in ("Thumbs", *REVIEW_KINDS, "Comment", "Candidate"):
        model = fb(kind)
        if model is None:
            continue
        for row in session.exec(select(model).where(model.message_id == message_id)):
            who = getattr(row, "reviewer_id", None) or getattr(row, "user_id", None) or getattr(row, "created_by", None)
            rows.append({"kind": kind.lower(), "id": row.id, "who": names.get(who, "end user" if kind == "Thumbs" else ""),
                         "created_at": row.created_at, "summary": _summary(kind, row) if kind != "Candidate" else row.content[:200],
                         "diff": getattr(row, "diff", None)})
    rows.sort(key=lambda r: _aware(r["created_at"]))
    item = fb("ReviewItem")
    queue = session.get(item, message_id) if item is not None else None
    return {"message": message, "context": context, "feedback": rows, "queue": queue}


def webhooks(session: Session, limit: int = 100) -> dict[str, Any]:
    """Receivers (URLs shortened to scheme://host/…: a path may hold a token, as Slack's do) and the latest
    deliveries."""
    from core import webhooks as hooks

    def receiver(url: str) -> str:
        parsed = httpx.URL(url)
        host = parsed.host + (f":{parsed.port}" if parsed.port else "")  # never user:password@
        return f"{parsed.scheme}://{host}" + ("/…" if parsed.path.strip("/") else "/")

    targets = [{"url": receiver(t.url), "events": t.events} for t in hooks.targets()]
    deliveries = [{**d.model_dump(), "receiver": receiver(d.url), "text": (d.payload or {}).get("text", "")}
                  for d in hooks.recent(session, limit)]
    return {"targets": targets, "deliveries": deliveries}
