"""`hitl demo --quick` end to end: a real server subprocess, the scripted scenario over HTTP, a retrain run on
the product's defaults, the gates and the report. Uses the real SmolLM2 (slow).

A smoke test of the loop's plumbing, not of learning: with 16 corrected questions the default split leaves only
a few test groups, so the gates may legitimately decide `insufficient_evidence`. The learning targets are the
full demo's (and `bench/learning.py`'s)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DECISIONS = {"promoted", "rejected", "insufficient_evidence"}


@pytest.mark.slow
@pytest.mark.timeout(2700)  # 15-29 min on 2 cores (29 under a load of 3): the 16 corrections train their whole budget
def test_demo_quick_runs_the_whole_loop(tmp_path, smollm2_dir):
    data_dir = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HITL_")}
    proc = subprocess.run(
        [sys.executable, "-m", "hitl", "demo", "--quick", "--data-dir", str(data_dir), "--base-model", str(smollm2_dir)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=2700)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((data_dir / "demo-results.json").read_text())
    report = (data_dir / "demo-report.html").read_text()
    run = results["run"]

    # the run trained on the product's defaults (the stored config is the resolved one) and finished with a
    # gate decision recorded
    from retrain.training.config import RetrainConfig, to_dict

    assert run["config"] == json.loads(json.dumps(to_dict(RetrainConfig()))), run["config"]
    assert "sft" in [s["method"] for s in (run.get("plan") or {}).get("stages", [])], run.get("plan")
    assert run["candidate_version"], run.get("error")
    assert run["status"] in DECISIONS, (run["status"], run.get("error"))
    assert (run.get("gate") or {}).get("decision") in DECISIONS, run.get("gate")
    assert results["dataset"].get("path")

    # the scenario happened, and the measurement prompts stayed out of the snapshot
    assert sum(len(log) for log in results["reviews"].values()) >= len(results["items"])
    assert any(r.get("correction") for log in results["reviews"].values() for r in log)
    assert results["anchors"]["measured_questions"] == []
    assert "train" in results["membership"].values()

    # the summary and the report
    summary = results["summary"]
    assert summary["decision"] == run["gate"]["decision"] and summary["run_status"] == run["status"]
    assert isinstance(summary["gate_reasons"], list) and summary["gate"]["gates"]
    assert set(summary["targets"]) == {"corrected_train", "paraphrases", "general_no_net_drop"}
    acc = summary["accuracy"]
    assert acc["corrected_train"]["n"] >= 1 and acc["corrected_train"]["before"] is not None
    assert acc["corrected_train"]["after"] is not None and acc["general"]["n"] >= 1
    for stage in ("baseline server", "baseline answers", "start server", "end users ask", "reviews",
                  "dataset build", "retrain", "gates", "promote", "ask again", "report"):
        assert stage in results["times"], stage
    assert "data:image/png;base64," in report and "Before → after" in report
    assert run["status"] in report and "gate decision" in report
    assert "hitl demo" in proc.stdout and "report:" in proc.stdout
