"""Runs end to end: the API starts a run in its own process; a killed run resumes, or is failed by its
expired lease and never blocks a new one; a crash leaves the champion serving; the lock keeps runs one at a
time."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlmodel import select

from core.db import session_scope
from retrain.training import service as runs
from retrain.training import tasks
from retrain.training.models import RetrainRun, RunStatus
from service import service as serving
from service.models import ModelVersion, VersionStatus
from tests.retrain.training.helpers import fast_config, write_snapshot


def wait_for(run_id: int, timeout: float = 240) -> RetrainRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope() as session:
            run = session.get(RetrainRun, run_id)
            if run.status not in (RunStatus.queued, RunStatus.running):
                return run
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} did not finish: {Path(run.log_path or '/dev/null').read_text()[-3000:]}")


@pytest.fixture
def short_lease(settings, monkeypatch):
    """A run silent for 2 s is dead (the subprocesses inherit it)."""
    from core.settings import get_settings

    monkeypatch.setenv("HITL_RETRAIN_LEASE_S", "2")
    get_settings.cache_clear()


def test_api_run_trains_in_its_own_process_and_registers_a_candidate(api, settings, tmp_path):
    snapshot = write_snapshot(tmp_path / "snap", kinds=("sft",))
    response = api.post("/api/retrain/runs", json={"config": fast_config(snapshot)})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued"
    run = wait_for(body["id"])
    assert run.status == RunStatus.succeeded, run.error
    assert run.pid != os.getpid()  # trained in another process; serving never blocked

    got = api.get(f"/api/retrain/runs/{run.id}").json()
    assert got["plan"]["stages"][0]["method"] == "sft" and got["plan"]["stages"][0]["reason"]
    budget = got["plan"]["stages"][0]["budget"]  # steps, tokens and why, as the trainer ran them
    assert budget["steps"] == 2 and budget["tokens"] > 0 and budget["why"]
    assert got["metrics"]["stages"]["0-sft"]["budget"]["steps"] == budget["steps"]
    assert any("loss" in e and "eval_loss" not in e for e in got["metrics"]["steps"])
    assert got["candidate_version"] and got["snapshot_hash"] and got["timings"]["train_s"] > 0
    assert "evaluation disabled" in got["gate"]["note"]
    assert api.get("/api/retrain/runs").json()["count"] == 1
    assert any((Path(run.artifacts_path) / "tb").rglob("events.out.tfevents.*"))
    with session_scope() as session:
        version = session.get(ModelVersion, got["candidate_version"])
        assert version.status == VersionStatus.candidate and version.parent == "base" and version.run_id == run.id
        from retrain.training.adapters import checksum

        assert version.checksum == checksum(version.adapter_path)
        assert serving.champion(session).version == "base"  # only the evaluators promote
    from service.backends.local import load_model

    load_model(version.base_path, version.adapter_path, device="cpu")

    assert api.post("/api/retrain/runs", json={"config": {"sft": {"lr": 1}}}).status_code == 422
    assert api.get("/api/retrain/runs/9999").status_code == 404


def test_manual_run_respects_the_lock(api, settings):
    lock = runs.RetrainLock(settings)
    assert lock.acquire()
    try:
        assert runs.RetrainLock(settings).acquire() is False
        response = api.post("/api/retrain/runs", json={})
        assert response.status_code == 409 and "already running" in response.json()["detail"]
    finally:
        lock.release()
    assert runs.RetrainLock(settings).held_elsewhere() is False


def test_a_killed_run_resumes_from_its_last_checkpoint(settings, short_lease, tmp_path):
    snapshot = write_snapshot(tmp_path / "snap", train=16, eval_=0, kinds=("sft",))  # no eval: no early stop
    with session_scope() as session:
        run = runs.create_run(session, trigger="manual", config=fast_config(snapshot, steps=30, save_steps=5))
    log = tmp_path / "first.log"
    proc = subprocess.Popen([sys.executable, "-m", "hitl", "retrain", "execute", str(run.id)],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    checkpoints = runs.run_dir(settings, run.id) / "stages" / "0-sft" / "checkpoints"
    deadline = time.monotonic() + 180
    while not list(checkpoints.glob("checkpoint-*/trainer_state.json")):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with session_scope() as session:
        assert session.get(RetrainRun, run.id).status == RunStatus.running  # died mid-way

    deadline = time.monotonic() + 30
    while not (resumed := tasks.resume_interrupted(wait=True)):  # once its lease expires
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert resumed == [run.id]
    run = wait_for(run.id)
    assert run.status == RunStatus.succeeded, run.error
    stage = run.metrics["stages"]["0-sft"]
    assert stage["resumed_from"].startswith("checkpoint-") and stage["steps"] == 30
    assert len(run.timings["attempts"]) == 2 and run.timings["attempts"][1]["resumed"] is True


def test_a_killed_run_is_failed_by_its_lease_reaped_and_never_blocks_a_new_one(api, short_lease, tmp_path):
    snapshot = write_snapshot(tmp_path / "snap", train=16, eval_=0, kinds=("sft",))
    first = api.post("/api/retrain/runs", json={"config": fast_config(snapshot, steps=1000)}).json()["id"]
    deadline = time.monotonic() + 120
    while (run := runs_get(first)).heartbeat_at is None:
        assert run.status in (RunStatus.queued, RunStatus.running) and time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(run.pid, signal.SIGKILL)  # a child of this process (the server launched it)

    deadline = time.monotonic() + 30
    while (response := api.post("/api/retrain/runs", json={"config": fast_config(snapshot)})).status_code == 409:
        assert time.monotonic() < deadline, "the killed run still blocks new runs"
        time.sleep(0.5)
    assert response.status_code == 202, response.text
    killed = runs_get(first)
    assert killed.status == RunStatus.failed and "no heartbeat" in killed.error
    assert not Path(f"/proc/{run.pid}").exists()  # reaped, no zombie
    assert wait_for(response.json()["id"]).status == RunStatus.succeeded


def runs_get(run_id: int) -> RetrainRun:
    with session_scope() as session:
        return session.get(RetrainRun, run_id)


def test_a_crashing_trainer_fails_the_run_and_the_champion_keeps_serving(settings, tmp_path, monkeypatch):
    from hitl import pipeline
    from retrain.training import trainers

    def boom(*args, **kwargs):
        raise RuntimeError("trainer exploded")

    monkeypatch.setattr(trainers, "run_stage", boom)
    snapshot = write_snapshot(tmp_path / "snap", kinds=("sft",))
    with session_scope() as session:
        champion = serving.ensure_champion(session, settings).version
        run = runs.create_run(session, trigger="manual", config=fast_config(snapshot))
    assert pipeline.run_pipeline(run.id) == RunStatus.failed
    with session_scope() as session:
        failed = session.get(RetrainRun, run.id)
        assert failed.status == RunStatus.failed and "trainer exploded" in failed.error and failed.finished_at
        assert serving.champion(session).version == champion
        assert session.exec(select(ModelVersion).where(ModelVersion.status == VersionStatus.candidate)).first() is None
    assert runs.RetrainLock(settings).held_elsewhere() is False  # lock released after the failure


def test_nothing_to_train_is_skipped_with_the_reason(settings, tmp_path):
    from hitl import pipeline

    snapshot = write_snapshot(tmp_path / "snap", train=0, eval_=0)
    with session_scope() as session:
        run = runs.create_run(session, trigger="manual", config=fast_config(snapshot))
    assert pipeline.run_pipeline(run.id) == RunStatus.skipped
    with session_scope() as session:
        assert "nothing to train" in session.get(RetrainRun, run.id).reason


def test_stages_and_champions_chain_into_one_stacked_adapter(settings, tmp_path):
    """SFT then DPO in one run; then a second run on top of that candidate as champion: one adapter each
    time, on the same base, with rank = sum of the parts."""
    if settings.db_url.startswith("postgresql"):
        pytest.skip("the training path does not depend on the database; the run/lock paths are covered above")
    import json

    from hitl import pipeline
    from service.models import ModelAlias

    snapshot = write_snapshot(tmp_path / "snap", kinds=("sft", "dpo"))
    with session_scope() as session:
        first = runs.create_run(session, trigger="manual", config=fast_config(snapshot, steps=1))
    assert pipeline.run_pipeline(first.id) == RunStatus.succeeded
    with session_scope() as session:
        first = session.get(RetrainRun, first.id)
        assert [s["method"] for s in first.plan["stages"]] == ["sft", "dpo"]
        # the snapshot has no anchor rows: SFT is held on the golden prompts alone (the operator's spec)
        assert first.metrics["stages"]["0-sft"]["anchor_rows"] == len(pipeline.golden_anchors()) == 5
        v1 = session.get(ModelVersion, first.candidate_version)
        assert json.loads((Path(v1.adapter_path) / "adapter_config.json").read_text())["r"] == 8  # 4 + 4
        session.get(ModelAlias, "champion").version = v1.version  # as the evaluators would promote it

    with session_scope() as session:
        second = runs.create_run(session, trigger="manual", config=fast_config(snapshot, steps=1, methods=["sft"]))
    assert pipeline.run_pipeline(second.id) == RunStatus.succeeded
    with session_scope() as session:
        v2 = session.get(ModelVersion, session.get(RetrainRun, second.id).candidate_version)
        assert v2.parent == v1.version and v2.base_path == v1.base_path
        assert json.loads((Path(v2.adapter_path) / "adapter_config.json").read_text())["r"] == 12
    from service.backends.local import load_model

    load_model(v2.base_path, v2.adapter_path, device="cpu")


def test_cli_plan_shows_steps_tokens_and_why(settings, tmp_path):
    from typer.testing import CliRunner

    from hitl.cli import app

    snapshot = write_snapshot(tmp_path / "snap", train=25, eval_=3, kinds=("sft",))
    result = CliRunner().invoke(app, ["retrain", "plan", "--snapshot", str(snapshot)])
    assert result.exit_code == 0, result.output
    assert "optimizer steps" in result.output and "tokens" in result.output and "learning rate" in result.output
    assert "at least 256" in result.output  # the small snapshot's floor, with its reason
