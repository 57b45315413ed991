"""Starting runs in their own process, and the scheduler that starts them.

The scheduler (APScheduler 3, `CronTrigger` from `HITL_RETRAIN_CRON`, default nightly) keeps its job in the
hitl database (`SQLAlchemyJobStore`, table `apscheduler_jobs`), so a trigger missed while nothing was running
fires once at the next start-up (`coalesce=True`, `misfire_grace_time`). Each firing is tied to a *slot*
(the cron time it serves) stored unique on the run: however many schedulers fire, one run per slot. The
run itself holds the retrain lock (`service.RetrainLock`) while it trains, so a manual run and a scheduled
run never overlap either. A running run's process refreshes its heartbeat in the database (`heartbeat`); a run
silent for `retrain_lease_s` is dead (`service.lease_expired`), whatever its PID shows.
"""

import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from core.db import session_scope
from core.models import utcnow
from core.settings import Settings, get_settings
from retrain.training import service
from retrain.training.config import ConfigError, load_config, to_dict
from retrain.training.models import SCHEDULER_TABLE, RetrainRun, RunStatus, RunTrigger

log = logging.getLogger(__name__)
JOB_ID = "hitl-retrain"


class RetrainBusy(RuntimeError):
    """Another retrain holds the lock."""


def launch(run_id: int, wait: bool = False) -> subprocess.Popen:
    """Run `python -m hitl retrain execute RUN_ID` in its own process (own session: outlives a server
    restart), output to the run's log file."""
    settings = get_settings()
    log_file = service.run_dir(settings, run_id) / "run.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with session_scope() as session:
        run = service.get_run(session, run_id)
        run.log_path = str(log_file)
        session.add(run)
    with log_file.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hitl", "retrain", "execute", str(run_id)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=str(Path(__file__).resolve().parents[2]), start_new_session=True)
    if wait:
        proc.wait()
    else:  # reap it when it exits: no zombie child
        threading.Thread(target=proc.wait, name=f"retrain-{run_id}-reaper", daemon=True).start()
    return proc


@contextmanager
def heartbeat(run_id: int, lease_s: float) -> Iterator[None]:
    """Refresh the run's heartbeat from a thread, a few times per lease, while the body runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(lease_s / 4):
            try:
                with session_scope() as session:
                    service.beat(session, run_id)
            except Exception:
                log.exception("retrain run %s: heartbeat failed", run_id)

    thread = threading.Thread(target=beat, name=f"retrain-{run_id}-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def start_manual_run(config: dict | None = None, *, wait: bool = False) -> RetrainRun:
    """A manual run: ignores the new-feedback minimum, respects the lock (RetrainBusy when held)."""
    settings = get_settings()
    full = to_dict(load_config(data=config))  # ConfigError on a bad field
    if service.RetrainLock(settings).held_elsewhere():
        raise RetrainBusy("a retrain is already running")
    with session_scope() as session:
        service.expire_runs(session, settings.retrain_lease_s)
        busy = service.running_run(session)
        if busy is not None:
            raise RetrainBusy(f"retrain run {busy.id} is already running")
        run = service.create_run(session, trigger=RunTrigger.manual, config=full, reason="manual trigger")
    launch(run.id, wait=wait)
    return run


def cron_slot(cron: str, tz: str = "UTC", now: datetime | None = None) -> str:
    """The latest time `cron` fired at or before `now` (ISO, UTC): the slot a firing serves."""
    from apscheduler.triggers.cron import CronTrigger

    trigger = CronTrigger.from_crontab(cron, timezone=tz)
    now = now or datetime.now(UTC)
    for window in (timedelta(days=2), timedelta(days=40), timedelta(days=400)):
        t = trigger.get_next_fire_time(None, now - window)
        latest = None
        while t is not None and t <= now:
            latest = t
            t = trigger.get_next_fire_time(t, t + timedelta(seconds=1))
        if latest is not None:
            return latest.astimezone(UTC).isoformat(timespec="seconds")
    return now.astimezone(UTC).isoformat(timespec="seconds")


def scheduled_retrain() -> int | None:
    """The scheduler's job: one run per cron slot; skipped (with the reason) when too little new feedback
    or when a retrain is running; else executed in its own process. Returns the run id, if any."""
    settings = get_settings()
    slot = cron_slot(settings.retrain_cron, settings.retrain_timezone)
    try:
        with session_scope() as session:
            if session.exec(select(RetrainRun.id).where(RetrainRun.slot == slot)).first() is not None:
                log.info("retrain slot %s already taken", slot)
                return None
            config = to_dict(load_config())
            since = service.last_trained_at(session)
            new = service.new_feedback_since(session, since)
            # claim the slot before probing the lock: a second scheduler firing now waits on this insert
            # (unique slot) and then gives up, instead of taking our probe for a running retrain
            run = service.create_run(session, trigger=RunTrigger.schedule, config=config, slot=slot,
                                     reason=f"scheduled ({new} new feedback)")
            skip = None
            if service.RetrainLock(settings).held_elsewhere():
                skip = "another retrain is running (lock held)"
            elif new < settings.retrain_min_feedback:
                skip = (f"too little new feedback: {new} since "
                        f"{since.isoformat() if since else 'the start'} < minimum {settings.retrain_min_feedback}")
            if skip:
                service.finish(session, run, RunStatus.skipped, reason=skip)
    except IntegrityError:  # another scheduler took this slot first
        log.info("retrain slot %s taken by another process", slot)
        return None
    except ConfigError:
        log.exception("bad retrain config; scheduled run not started")
        return None
    if run.status == RunStatus.queued:
        launch(run.id, wait=True)
    return run.id


def resume_interrupted(wait: bool = False) -> list[int]:
    """Relaunch runs whose process died (status running, lease expired, lock free) or that never started."""
    settings = get_settings()
    if service.RetrainLock(settings).held_elsewhere():
        return []
    stale = utcnow() - timedelta(seconds=settings.retrain_stale_s)
    with session_scope() as session:
        query = select(RetrainRun).where(col(RetrainRun.status).in_([RunStatus.running, RunStatus.queued])) \
            .order_by(col(RetrainRun.id))
        todo = [r.id for r in session.exec(query)
                if service.lease_expired(r, settings.retrain_lease_s)
                or (r.status == RunStatus.queued and service.utc(r.created_at) < stale)]
    for run_id in todo:
        log.warning("resuming interrupted retrain run %s", run_id)
        launch(run_id, wait=wait)
    return todo


def _resume_job() -> None:
    resume_interrupted(wait=True)


def _expire_job() -> None:
    with session_scope() as session:
        for run in service.expire_runs(session, get_settings().retrain_lease_s):
            log.warning("retrain run %s failed: %s", run.id, run.error)


def build_scheduler(settings: Settings | None = None, *, cron: str | None = None):
    """A scheduler whose retrain job lives in the hitl database. Start it with `start_scheduler`."""
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    settings = settings or get_settings()
    scheduler = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=settings.db_url, tablename=SCHEDULER_TABLE)},
        executors={"default": ThreadPoolExecutor(2)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": settings.retrain_misfire_grace_s},
        timezone=settings.retrain_timezone,
    )
    scheduler.hitl_cron = cron or settings.retrain_cron
    return scheduler


def start_scheduler(scheduler) -> None:
    """Start paused, add the job only if missing (or its cron changed), then resume: a job already stored
    with a past `next_run_time` keeps it, so a missed trigger fires once now."""
    from apscheduler.triggers.cron import CronTrigger

    trigger = CronTrigger.from_crontab(scheduler.hitl_cron, timezone=scheduler.timezone)
    scheduler.start(paused=True)
    job = scheduler.get_job(JOB_ID)
    if job is None:
        scheduler.add_job("retrain.training.tasks:scheduled_retrain", trigger, id=JOB_ID, name="nightly retrain",
                          replace_existing=True)
    elif str(job.trigger) != str(trigger):
        scheduler.reschedule_job(JOB_ID, trigger=trigger)
    scheduler.add_job(_resume_job, id="hitl-retrain-resume", jobstore=_memory(scheduler), replace_existing=True)
    scheduler.add_job(_expire_job, "interval", seconds=get_settings().retrain_lease_s, id="hitl-retrain-expire",
                      jobstore=_memory(scheduler), replace_existing=True)
    scheduler.resume()


def _memory(scheduler) -> str:
    from apscheduler.jobstores.memory import MemoryJobStore

    if "memory" not in scheduler._jobstores:
        scheduler.add_jobstore(MemoryJobStore(), "memory")
    return "memory"


def start_embedded_scheduler(settings: Settings | None = None):
    """For `hitl serve`: a background scheduler when `scheduler_enabled`; returns it (or None) so the app's
    lifespan can shut it down."""
    settings = settings or get_settings()
    if not settings.scheduler_enabled:
        return None
    scheduler = build_scheduler(settings)
    start_scheduler(scheduler)
    log.info("retrain scheduler started (cron '%s')", scheduler.hitl_cron)
    return scheduler


def stop_scheduler(scheduler) -> None:
    if scheduler is not None and scheduler.running:
        scheduler.shutdown(wait=False)
