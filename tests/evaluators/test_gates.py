"""Gates on real numbers: a candidate trained on the corrections is promoted and served; one trained on
label-flipped data is rejected and the champion keeps serving; the retrain hook records the decision and
every promoted model's lineage leads back to feedback rows."""

import json
import shutil
import time

import pytest
import yaml
from sqlmodel import select

from core.db import session_scope
from evaluators import registry
from evaluators.gate import evaluate_and_decide, evaluate_version
from evaluators.lineage import lineage
from evaluators.scoring import read_jsonl
from service import service as serving
from service.models import ModelAlias, ModelVersion, VersionStatus
from tests.evaluators.conftest import build_snapshot, register

# Model-heavy end-to-end tests run once, on SQLite; the registry tests cover both databases.
sqlite_only = pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
POLICY_KEYS = ("forgetting", "golden", "heldout", "preference", "cumulative")  # what the fixture policy overrides


def wait_for_version(client, version: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/readyz").json().get("model_version") != version:
        assert time.monotonic() < deadline, f"serving never switched to {version}"
        time.sleep(0.2)


def chat_version(live_server, key: str) -> str:
    with live_server.client(key) as http:
        body = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hello!"}],
                                                       "max_tokens": 4, "temperature": 0}).json()
    return body["hitl"]["model_version"]


@sqlite_only
def test_candidate_trained_on_corrections_is_promoted_and_served(
        live_server, api, service_key, settings, tiny_model_dir, good_adapter, snapshot, policy):
    with session_scope() as s:
        register(s, "good-1", good_adapter, tiny_model_dir, snapshot_hash="snap")
    report = evaluate_version("good-1", snapshot=snapshot, policy=policy, actor="test")

    results = {r["name"]: r for r in report["results"]}
    assert report["passed"] and report["decision"] == "promoted", report["reasons"]
    assert results["heldout"]["value"] > 0.5 and results["heldout"]["ci"][0] > 0  # the corrections were learned
    assert results["heldout"]["candidate"] < results["heldout"]["champion"]
    assert results["preference"]["value"] == 1.0
    assert results["forgetting"]["passed"] and results["cumulative"]["details"]["reference"] == "base"
    assert results["domain_forgetting"]["evidence"] == "not_applicable"  # no approved rows in the snapshot
    assert report["reference"] == "base" and report["timings"]["total_s"] > 0
    assert results["fewshot"]["details"]["fine_tuning_beats_prompting"]
    assert "Paris" in results["golden"]["details"]["prompts"][0]["candidate"]

    with session_scope() as s:
        assert serving.champion(s).version == "good-1"
        assert s.get(ModelVersion, "base").status == VersionStatus.archived
        event = registry.history(s, "champion")[0]
        assert (event.actor, event.previous_version) == ("test", "base")
        assert event.reason.startswith("gates passed: heldout=")
    wait_for_version(api, "good-1")  # serving hot-swapped to the promoted version
    assert chat_version(live_server, service_key) == "good-1"

    trail = api.get("/api/models/good-1/lineage").json()
    assert trail["version"] == "good-1" and trail["snapshot"] is None  # registered without a snapshot on disk
    stored = api.get("/api/models/good-1/report").json()
    assert stored["decision"] == "promoted" and stored["candidate"] == "good-1"
    page = api.get("/api/models/good-1/report", params={"format": "html"})
    assert page.status_code == 200 and "<svg" in page.text and "promoted" in page.text
    assert "<script" not in page.text and "http" not in page.text.split("<svg", 1)[0]  # self-contained


@sqlite_only
def test_candidate_trained_on_flipped_labels_is_rejected_and_champion_keeps_serving(
        live_server, api, service_key, settings, tiny_model_dir, flipped_adapter, snapshot, policy):
    with session_scope() as s:
        register(s, "flipped-1", flipped_adapter, tiny_model_dir)
    report = evaluate_version("flipped-1", snapshot=snapshot, policy=policy, actor="test")

    results = {r["name"]: r for r in report["results"]}
    assert not report["passed"] and report["decision"] == "rejected"
    assert results["preference"]["passed"] is False and results["preference"]["value"] == 0.0
    assert results["heldout"]["value"] < 0  # worse on unseen questions; reported, no bound by default
    assert any(r.startswith("preference:") for r in report["reasons"])
    with session_scope() as s:
        assert s.get(ModelAlias, "champion").version == "base"
        rejected = s.get(ModelVersion, "flipped-1")
        assert rejected.status == VersionStatus.rejected and rejected.gate_report["decision"] == "rejected"
        assert registry.history(s) == []
    time.sleep(2.5)  # longer than the serving poll: nothing moves
    assert api.get("/readyz").json()["model_version"] == "base"
    assert chat_version(live_server, service_key) == "base"
    assert api.post("/api/models/flipped-1/promote", json={}).status_code == 409  # kept, but needs force

    # any OpenAI-compatible endpoint can judge; here hitl's own API (the tiny model's letter may be noise)
    from evaluators.judge import openai_judge, swapped

    remote = openai_judge(f"{live_server.url}/v1", "hitl", service_key)
    assert swapped(remote, [{"role": "user", "content": "Hi"}], "Hello!", "fox") in {"a", "b", "tie"}


@sqlite_only
def test_two_test_groups_are_insufficient_evidence_and_nothing_moves(settings, tiny_model_dir, good_adapter, snapshot,
                                                                     policy):
    with session_scope() as s:
        register(s, "thin-1", good_adapter, tiny_model_dir)
    thin = policy | {"heldout": policy["heldout"] | {"min_n": 5}}  # the fixture snapshot has 2 question groups
    report = evaluate_version("thin-1", snapshot=snapshot, policy=thin, actor="test")
    results = {r["name"]: r for r in report["results"]}
    assert report["decision"] == "insufficient_evidence" and not report["passed"], report["reasons"]
    assert results["heldout"]["evidence"] == "insufficient" and results["heldout"]["passed"] is None
    assert any(r.startswith("heldout: insufficient evidence; has 2, needs 5") for r in report["reasons"])
    with session_scope() as s:
        assert s.get(ModelAlias, "champion").version == "base"
        assert s.get(ModelVersion, "thin-1").status == VersionStatus.candidate
        assert registry.history(s) == []


@sqlite_only
def test_cli_eval_writes_the_report(settings, tiny_model_dir, good_adapter, snapshot, policy, tmp_path):
    from typer.testing import CliRunner

    from hitl.cli import app

    with session_scope() as s:
        register(s, "good-cli", good_adapter, tiny_model_dir)
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump({k: policy[k] for k in POLICY_KEYS}))
    result = CliRunner().invoke(app, ["eval", "good-cli", "--snapshot", str(snapshot), "--policy", str(policy_file),
                                      "--no-decide"])
    assert result.exit_code == 0, result.output
    assert "heldout           pass" in result.output and "report:" in result.output
    html = settings.data_dir / "reports" / "good-cli" / "report.html"
    assert html.is_file() and json.loads(html.with_suffix(".json").read_text())["passed"] is True
    with session_scope() as s:  # --no-decide: nothing moved
        assert s.get(ModelAlias, "champion").version == "base"


@pytest.fixture
def feedback_rows(settings):
    """Two logged conversations with reviewer corrections; returns the correction ids."""
    from core.auth import create_user
    from core.models import Role
    from feedback.models import Correction
    from service.models import Conversation, Message

    ids = []
    with session_scope() as s:
        reviewer, _key = create_user(s, name="rev", role=Role.reviewer)
        for i in range(12):
            conv = Conversation()
            s.add(conv)
            s.flush()
            s.add(Message(conversation_id=conv.id, position=0, role="user", content=f"q{i}"))
            reply = Message(conversation_id=conv.id, position=1, role="assistant", content="fox", model_version="base")
            s.add(reply)
            s.flush()
            correction = Correction(message_id=reply.id, reviewer_id=reviewer.id, content="better", original="fox",
                                    diff="-fox\n+better")
            s.add(correction)
            s.flush()
            ids.append(correction.id)
    return ids


@sqlite_only
def test_retrain_hook_decides_and_lineage_reaches_feedback_rows(
        settings, tiny_model_dir, good_adapter, feedback_rows, policy, tmp_path, monkeypatch):
    from core.settings import get_settings
    from retrain.datasets.models import DatasetSnapshot
    from retrain.training.models import RetrainRun, RunStatus

    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump({k: policy[k] for k in POLICY_KEYS}))
    monkeypatch.setenv("HITL_GATE_POLICY", str(policy_file))
    get_settings.cache_clear()
    snap_dir = build_snapshot(settings.data_dir / "datasets" / "abc123", correction_ids=feedback_rows)
    adapter = shutil.copytree(good_adapter, settings.data_dir / "runs" / "1" / "adapter")
    with session_scope() as s:
        snap = DatasetSnapshot(hash="abc123", path=str(snap_dir), counts={}, builder_version="test",
                               manifest=json.loads((snap_dir / "manifest.json").read_text()))
        s.add(snap)
        s.flush()
        run = RetrainRun(status=RunStatus.running, snapshot_id=snap.id, snapshot_hash="abc123",
                         candidate_version="run-1")
        s.add(run)
        s.flush()
        register(s, "run-1", adapter, tiny_model_dir, snapshot_hash="abc123", run_id=run.id)
        run_id = run.id

    gate = evaluate_and_decide(run_id)
    assert gate["decision"] == "promoted" and gate["passed"]
    with session_scope() as s:
        run = s.get(RetrainRun, run_id)
        assert run.gate["decision"] == "promoted" and run.gate["results"]["heldout"]["passed"]
        assert serving.champion(s).version == "run-1"
        assert registry.history(s)[0].actor == f"retrain-run:{run_id}"

    # version -> run -> snapshot manifest -> feedback rows, for every promoted version
    with session_scope() as s:
        promoted = [e.version for e in registry.history(s, "champion") if e.action == "promote"]
        for version in promoted:
            trail = lineage(s, settings, version)
            assert trail["complete"], trail
            assert trail["run"]["id"] == run_id and trail["snapshot"]["hash"] == "abc123"
            trained_on = {f for row in read_jsonl(snap_dir / "sft.train.jsonl") for f in row["lineage"]["feedback_ids"]}
            assert set(trail["feedback_ids"]) == trained_on and len(trained_on) == 6
            assert trained_on <= {f"correction:{i}" for i in feedback_rows}
            assert trail["resolved"] == len(trained_on) and not trail["missing"]
        from feedback.models import Correction

        assert len(s.exec(select(Correction)).all()) == len(feedback_rows)
