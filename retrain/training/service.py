"""Retrain run records, the cluster-wide retrain lock, new-feedback counting and candidate registration.
Functions take `session` first and only flush."""

import json
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import HTTPException, status
from sqlmodel import Session, col, func, select

from core import webhooks
from core.models import utcnow
from core.settings import Settings
from retrain.training.models import RetrainRun, RunStatus, RunTrigger
from service.models import ModelVersion, VersionStatus

log = logging.getLogger(__name__)
LOCK_KEY = 0x68_69_74_6C_72_74  # "hitlrt": one advisory-lock id for every hitl process on this database
FEEDBACK_KINDS = ("Thumbs", "Rating", "Correction", "Comparison", "Flag")


# -- lock ------------------------------------------------------------------------------------------

class RetrainLock:
    """At most one retrain at a time per database, across processes and hosts.

    PostgreSQL: a session-level `pg_try_advisory_lock` held on a dedicated connection for the whole run
    (released when the holder exits or dies). SQLite: an OS file lock next to the database file (same
    crash-release property; SQLite is single-host anyway)."""

    def __init__(self, settings: Settings):
        self.url = settings.db_url
        self._conn = None
        self._file = None

    def acquire(self) -> bool:
        if self.url.startswith("sqlite"):
            from filelock import FileLock, Timeout

            path = self.url.removeprefix("sqlite:///")
            lock_path = (path if path and path != ":memory:" else "hitl") + ".retrain.lock"
            self._file = FileLock(lock_path, timeout=0, is_singleton=False)
            try:
                self._file.acquire()
                return True
            except Timeout:
                self._file = None
                return False
        conn = sa.create_engine(self.url, poolclass=sa.pool.NullPool).connect()
        got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY}).scalar()
        conn.commit()
        if got:
            self._conn = conn
            return True
        conn.close()
        return False

    def release(self) -> None:
        if self._file is not None:
            self._file.release()
            self._file = None
        if self._conn is not None:
            try:
                self._conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
                self._conn.commit()
            finally:
                self._conn.close()
                self._conn = None

    def held_elsewhere(self, probes: int = 3, gap_s: float = 0.2) -> bool:
        """True when another process holds the lock: in every one of a few probes, so that another
        process's momentary probe is not taken for a running retrain."""
        for i in range(probes):
            if self.acquire():
                self.release()
                return False
            if i + 1 < probes:
                time.sleep(gap_s)
        return True

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# -- runs ------------------------------------------------------------------------------------------

def get_run(session: Session, run_id: int) -> RetrainRun:
    run = session.get(RetrainRun, run_id)
    if run is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"retrain run {run_id} not found")
    return run


def list_runs(session: Session, limit: int = 50, offset: int = 0) -> tuple[list[RetrainRun], int]:
    runs = session.exec(select(RetrainRun).order_by(col(RetrainRun.id).desc()).offset(offset).limit(limit))
    return list(runs), session.exec(select(func.count()).select_from(RetrainRun)).one()


def create_run(session: Session, *, trigger: RunTrigger, config: dict[str, Any], slot: str | None = None,
               status_: RunStatus = RunStatus.queued, reason: str | None = None) -> RetrainRun:
    run = RetrainRun(trigger=trigger, config=config, slot=slot, status=status_, reason=reason)
    if status_ in (RunStatus.skipped,):
        run.finished_at = utcnow()
    session.add(run)
    session.flush()
    return run


def running_run(session: Session) -> RetrainRun | None:
    return session.exec(select(RetrainRun).where(RetrainRun.status == RunStatus.running)
                        .order_by(col(RetrainRun.id).desc())).first()


def lease_expired(run: RetrainRun, lease_s: float) -> bool:
    """A running run whose process has not refreshed its heartbeat within `lease_s` is dead (crashed,
    killed): liveness comes from the database, never from a PID that a zombie or another process holds."""
    last = utc(run.heartbeat_at or run.started_at or run.created_at)
    return run.status == RunStatus.running and last < utcnow() - timedelta(seconds=lease_s)


def beat(session: Session, run_id: int) -> None:
    session.execute(sa.update(RetrainRun).where(RetrainRun.id == run_id, RetrainRun.status == RunStatus.running)
                    .values(heartbeat_at=utcnow()))


def expire_runs(session: Session, lease_s: float) -> list[RetrainRun]:
    """Mark failed every running run whose lease expired."""
    expired = [r for r in session.exec(select(RetrainRun).where(RetrainRun.status == RunStatus.running))
               if lease_expired(r, lease_s)]
    for run in expired:
        finish(session, run, RunStatus.failed, error=f"no heartbeat for {lease_s:g} s: the run's process died")
    return expired


def finish(session: Session, run: RetrainRun, status_: RunStatus, *, error: str | None = None,
           reason: str | None = None) -> RetrainRun:
    run.status, run.finished_at = status_, utcnow()
    if error is not None:
        run.error = error
    if reason is not None:
        run.reason = reason
    session.add(run)
    session.flush()
    _notify(session, run)
    return run


def _notify(session: Session, run: RetrainRun) -> None:
    """The webhook event of a finished run (`run.<status>`), in the transaction that finishes it."""
    why = run.reason if run.status != RunStatus.failed else (run.error or "").split("\n", 1)[0]
    gate = run.gate or {}
    reasons = gate.get("reasons") or []
    text = f"hitl: retrain run {run.id} ({run.trigger}) {run.status}" + (f": {why}" if why else "")
    if reasons and run.status in (RunStatus.rejected, RunStatus.insufficient_evidence):
        text += " | " + "; ".join(map(str, reasons))[:500]
    webhooks.notify(session, f"run.{run.status}", text, {
        "run_id": run.id, "status": str(run.status), "trigger": str(run.trigger), "slot": run.slot,
        "reason": run.reason, "error": (run.error or "")[:2000] or None, "candidate_version": run.candidate_version,
        "snapshot_hash": run.snapshot_hash, "decision": gate.get("decision"), "gate_reasons": reasons,
    })


def last_trained_at(session: Session) -> datetime | None:
    """When the last run that actually started (not skipped) was created."""
    query = select(RetrainRun.created_at).where(col(RetrainRun.status).not_in([RunStatus.skipped])) \
        .order_by(col(RetrainRun.created_at).desc())
    return session.exec(query).first()


def new_feedback_since(session: Session, since: datetime | None) -> int:
    """Feedback rows (thumbs, ratings, corrections, comparisons, flags) created after `since`."""
    try:
        from feedback import models as fb
    except ImportError:
        return 0
    total = 0
    for name in FEEDBACK_KINDS:
        table = getattr(fb, name, None)
        if table is None:
            continue
        query = select(func.count()).select_from(table)
        if since is not None:
            query = query.where(table.created_at > since)
        total += session.exec(query).one()
    return total


# -- snapshots -------------------------------------------------------------------------------------

def split_path(snapshot: Path, kind: str, split: str) -> Path:
    return Path(snapshot) / f"{kind}.{split}.jsonl"


def load_rows(snapshot: Path, kind: str, split: str) -> list[dict]:
    """Rows of one split (any name: train, validation, test, anchor, or a legacy eval file): the dataset
    builder's `load_split` when it knows the split, else the JSONL file as it is (SEAMS fixtures)."""
    try:
        from retrain.datasets.schemas import ANCHOR, SPLITS
        from retrain.datasets.service import load_split
    except ImportError:
        load_split, ANCHOR, SPLITS = None, None, ()
    path = split_path(snapshot, kind, split)
    if not path.exists():
        return []
    if load_split is not None and (split in SPLITS or (kind, split) == ANCHOR):
        return list(load_split(str(snapshot), kind, split))
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


SNAPSHOT_SPLITS = ("train", "validation", "test")


def snapshot_counts(snapshot: Path) -> dict[str, dict[str, int]]:
    """Rows per kind and split (train, validation, test; a legacy `eval` file is counted when present)."""
    counts: dict[str, dict[str, int]] = {}
    for kind in ("sft", "dpo", "kto"):
        for split in SNAPSHOT_SPLITS + ("eval",):
            path = split_path(snapshot, kind, split)
            if split == "eval" and not path.exists():
                continue
            n = sum(1 for line in path.read_text().splitlines() if line.strip()) if path.exists() else 0
            counts.setdefault(kind, {})[split] = n
    return counts


def snapshot_hash(snapshot: Path) -> str:
    """The manifest's content hash when there is one, else sha256 of the files."""
    manifest = Path(snapshot) / "manifest.json"
    if manifest.exists():
        found = json.loads(manifest.read_text()).get("hash")
        if found:
            return str(found)[:64]
    from retrain.training import adapters

    return adapters.checksum(snapshot)


# -- candidates ------------------------------------------------------------------------------------

def register_candidate(session: Session, run: RetrainRun, *, base_path: str, adapter_path: Path,
                       parent: str | None) -> ModelVersion:
    """Register the run's adapter as a `candidate` version; the champion alias is not touched."""
    from retrain.training import adapters

    digest = adapters.checksum(adapter_path)
    version = ModelVersion(version=f"run{run.id}-{digest[:8]}", base_path=str(base_path),
                           adapter_path=str(Path(adapter_path).resolve()), checksum=digest, parent=parent,
                           snapshot_hash=run.snapshot_hash, run_id=run.id, status=VersionStatus.candidate)
    existing = session.get(ModelVersion, version.version)
    if existing is None:
        session.add(version)
    run.candidate_version = version.version
    session.add(run)
    session.flush()
    return existing or version


def run_dir(settings: Settings, run_id: int) -> Path:
    return (settings.data_dir / "retrain" / "runs" / str(run_id)).resolve()


def utc(dt: datetime | None) -> datetime | None:
    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt
