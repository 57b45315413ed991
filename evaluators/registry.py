"""Model registry writes: promote, rollback, challenger. Each is one unit of work (services only flush;
the caller's session commits once), and the `champion` row is locked so concurrent moves serialize."""

from typing import Any

from fastapi import HTTPException, status
from sqlmodel import Session, col, select

from core.models import utcnow
from evaluators.models import AliasAction, AliasEvent
from service import service as serving
from service.models import ModelAlias, ModelVersion, VersionStatus

CHAMPION, CHALLENGER = "champion", "challenger"


def get_version(session: Session, version: str) -> ModelVersion:
    found = session.get(ModelVersion, version)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"model version '{version}' not found")
    return found


def _alias(session: Session, name: str) -> ModelAlias | None:
    """The alias row, locked for the rest of the transaction (PostgreSQL; SQLite serializes writers)."""
    return session.exec(select(ModelAlias).where(ModelAlias.alias == name).with_for_update()).first()


def _move(session: Session, name: str, version: str | None, action: AliasAction, actor: str,
          reason: str) -> AliasEvent:
    row = _alias(session, name)
    previous = row.version if row else None
    if version is None:
        if row is not None:
            session.delete(row)
    elif row is None:
        session.add(ModelAlias(alias=name, version=version))
    else:
        row.version, row.updated_at = version, utcnow()
        session.add(row)
    event = AliasEvent(alias=name, version=version, previous_version=previous, action=action, actor=actor,
                       reason=reason)
    session.add(event)
    session.flush()
    return event


def promote(session: Session, version: str, *, actor: str, reason: str = "", force: bool = False) -> AliasEvent:
    """Make `version` the champion; the old champion is archived. A rejected version needs `force`."""
    target = get_version(session, version)
    current = _alias(session, CHAMPION)
    if current is not None and current.version == version:
        raise HTTPException(status.HTTP_409_CONFLICT, f"'{version}' is already the champion")
    if target.status == VersionStatus.rejected and not force:
        raise HTTPException(status.HTTP_409_CONFLICT, f"'{version}' was rejected by the gates; pass force to override")
    if current is not None:
        _set_status(session, current.version, VersionStatus.archived)
    target.status = VersionStatus.champion
    session.add(target)
    event = _move(session, CHAMPION, version, AliasAction.promote, actor, reason)
    challenger = session.get(ModelAlias, CHALLENGER)
    if challenger is not None and challenger.version == version:
        _move(session, CHALLENGER, None, AliasAction.clear, actor, f"promoted to champion: {reason}".strip())
    return event


def champion_stack(session: Session) -> list[str]:
    """Champion lineage as a stack replayed from the history: promote pushes, rollback pops."""
    stack: list[str] = []
    events = session.exec(select(AliasEvent).where(AliasEvent.alias == CHAMPION).order_by(col(AliasEvent.id)))
    for event in events:
        if not stack and event.previous_version:
            stack.append(event.previous_version)  # the champion before the first recorded move (e.g. `base`)
        if event.action == AliasAction.promote:
            stack.append(event.version)
        elif event.action == AliasAction.rollback:
            if len(stack) > 1:
                stack.pop()
            if not stack or stack[-1] != event.version:
                stack.append(event.version)
    return stack


def rollback(session: Session, *, actor: str, reason: str = "", to: str | None = None) -> AliasEvent:
    """Put the previous champion back (or `to`, any known version); the current one is archived."""
    current = _alias(session, CHAMPION)
    if current is None:
        raise HTTPException(status.HTTP_409_CONFLICT, "there is no champion to roll back")
    if to is None:
        stack = champion_stack(session)
        if len(stack) < 2 or stack[-1] != current.version:
            raise HTTPException(status.HTTP_409_CONFLICT, "no earlier champion to roll back to")
        to = stack[-2]
    if to == current.version:
        raise HTTPException(status.HTTP_409_CONFLICT, f"'{to}' is already the champion")
    target = get_version(session, to)
    _set_status(session, current.version, VersionStatus.archived)
    target.status = VersionStatus.champion
    session.add(target)
    return _move(session, CHAMPION, to, AliasAction.rollback, actor, reason)


def set_challenger(session: Session, version: str, *, actor: str, reason: str = "") -> AliasEvent:
    """Point the canary alias at a candidate (serving routes a share of new conversations to it)."""
    get_version(session, version)
    champion = session.get(ModelAlias, CHAMPION)
    if champion is not None and champion.version == version:
        raise HTTPException(status.HTTP_409_CONFLICT, f"'{version}' is the champion")
    return _move(session, CHALLENGER, version, AliasAction.set, actor, reason)


def clear_challenger(session: Session, *, actor: str, reason: str = "", reject: bool = False) -> AliasEvent | None:
    """End the canary; `reject` marks the challenger rejected (auto-rollback of a canary)."""
    row = session.get(ModelAlias, CHALLENGER)
    if row is None:
        return None
    if reject:
        _set_status(session, row.version, VersionStatus.rejected)
    return _move(session, CHALLENGER, None, AliasAction.clear, actor, reason)


def reject(session: Session, version: str, *, report: dict[str, Any] | None = None) -> ModelVersion:
    """Mark a candidate rejected; it stays in the registry with its report for inspection."""
    target = get_version(session, version)
    if target.status == VersionStatus.champion:
        raise HTTPException(status.HTTP_409_CONFLICT, f"'{version}' is the champion; roll back first")
    target.status = VersionStatus.rejected
    if report is not None:
        target.gate_report = report
    session.add(target)
    session.flush()
    return target


def _set_status(session: Session, version: str, value: VersionStatus) -> None:
    row = session.get(ModelVersion, version)
    if row is not None:
        row.status = value
        session.add(row)


def list_versions(session: Session) -> list[tuple[ModelVersion, list[str]]]:
    aliases = serving.aliases_by_version(session)
    rows = session.exec(select(ModelVersion).order_by(col(ModelVersion.created_at).desc()))
    return [(row, sorted(aliases.get(row.version, []))) for row in rows]


def history(session: Session, alias: str | None = None, limit: int = 200) -> list[AliasEvent]:
    query = select(AliasEvent).order_by(col(AliasEvent.id).desc()).limit(limit)
    if alias:
        query = query.where(AliasEvent.alias == alias)
    return list(session.exec(query))


def actor_of(user) -> str:
    return f"{user.role}:{user.name}#{user.id}"
