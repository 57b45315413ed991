"""The scheduler: one run per cron slot however many schedulers fire, a missed trigger runs once, too
little new feedback is a skipped run with the reason."""

import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import select

from core.db import session_scope
from retrain.training import tasks
from core.settings import get_settings
from retrain.training.models import RetrainRun, RunStatus, RunTrigger


@pytest.fixture
def launched(monkeypatch, settings):
    """Record launches instead of training (the scheduler logic is what is under test)."""
    calls = []

    def fake_launch(run_id, wait=False):
        calls.append(run_id)
        with session_scope() as session:
            run = session.get(RetrainRun, run_id)
            run.status = RunStatus.succeeded
            session.add(run)

    monkeypatch.setattr(tasks, "launch", fake_launch)
    monkeypatch.setenv("HITL_RETRAIN_MIN_FEEDBACK", "0")
    get_settings.cache_clear()
    yield calls
    get_settings.cache_clear()


def scheduled_runs() -> list[RetrainRun]:
    with session_scope() as session:
        return list(session.exec(select(RetrainRun).where(RetrainRun.trigger == RunTrigger.schedule)))


def store_missed_job(settings, days: int = 3) -> None:
    """A scheduler that ran once, stored its job, and was down for `days` nightly triggers."""
    from apscheduler.job import Job
    from apscheduler.triggers.cron import CronTrigger

    scheduler = tasks.build_scheduler(settings)  # never started: write straight into its job store
    store = scheduler._jobstores["default"]
    store.start(scheduler, "default")
    store.add_job(Job(scheduler, id=tasks.JOB_ID, func="retrain.training.tasks:scheduled_retrain",
                      trigger=CronTrigger.from_crontab(scheduler.hitl_cron), executor="default", args=(), kwargs={},
                      name="nightly retrain", misfire_grace_time=get_settings().retrain_misfire_grace_s,
                      coalesce=True, max_instances=1,
                      next_run_time=datetime.now(UTC) - timedelta(days=days, minutes=1)))
    store.shutdown()


def wait_until(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_missed_trigger_runs_once_at_start_up(settings, launched):
    store_missed_job(settings)
    scheduler = tasks.build_scheduler(settings)
    tasks.start_scheduler(scheduler)
    try:
        wait_until(lambda: launched)
        time.sleep(1.0)  # any second firing would land now
        runs = scheduled_runs()
        assert len(runs) == 1 and len(launched) == 1 and runs[0].slot
        job = scheduler.get_job(tasks.JOB_ID)
        assert job.next_run_time > datetime.now(UTC)  # back on the nightly schedule
    finally:
        tasks.stop_scheduler(scheduler)


def test_two_schedulers_at_once_make_exactly_one_run(settings, launched):
    store_missed_job(settings, days=1)
    a, b = tasks.build_scheduler(settings), tasks.build_scheduler(settings)
    tasks.start_scheduler(a)
    tasks.start_scheduler(b)
    try:
        wait_until(lambda: launched, timeout=90)  # SQLite: the schedulers may wait out each other's write lock
        time.sleep(1.5)
        assert len(scheduled_runs()) == 1 and len(launched) == 1
    finally:
        tasks.stop_scheduler(a)
        tasks.stop_scheduler(b)
    assert tasks.scheduled_retrain() is None  # the same slot again: nothing new
    assert len(scheduled_runs()) == 1


def test_too_little_new_feedback_is_skipped_with_the_reason(settings, launched, monkeypatch):
    monkeypatch.setenv("HITL_RETRAIN_MIN_FEEDBACK", "5")
    get_settings.cache_clear()
    run_id = tasks.scheduled_retrain()
    with session_scope() as session:
        run = session.get(RetrainRun, run_id)
        assert run.status == RunStatus.skipped and run.finished_at is not None
        assert "too little new feedback: 0" in run.reason and "minimum 5" in run.reason
    assert launched == []


def test_a_scheduled_run_while_another_runs_is_skipped(settings, launched):
    from retrain.training.service import RetrainLock

    with RetrainLock(settings) as held:
        assert held
        run_id = tasks.scheduled_retrain()
    with session_scope() as session:
        run = session.get(RetrainRun, run_id)
        assert run.status == RunStatus.skipped and "lock held" in run.reason


def test_cron_slot_is_the_latest_fire_time():
    now = datetime(2026, 11, 25, 1, 30, tzinfo=UTC)
    assert tasks.cron_slot("0 2 * * *", now=now) == "2026-11-24T02:00:00+00:00"
    assert tasks.cron_slot("*/15 * * * *", now=now) == "2026-11-25T01:30:00+00:00"
