"""`hitl demo --quick` end to end: a real server subprocess, the scripted scenario over HTTP, a retrain
run, the gates and the report. Uses the real SmolLM2 (slow)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_quick_runs_the_whole_loop(tmp_path, smollm2_dir):
    data_dir = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HITL_")}
    proc = subprocess.run(
        [sys.executable, "-m", "hitl", "demo", "--quick", "--data-dir", str(data_dir), "--base-model", str(smollm2_dir)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((data_dir / "demo-results.json").read_text())
    report = (data_dir / "demo-report.html").read_text()

    assert results["run"]["status"] in {"promoted", "rejected", "succeeded"}, results["run"].get("error")
    assert results["run"]["candidate_version"]
    assert sum(len(log) for log in results["reviews"].values()) >= len(results["items"])
    assert any(r.get("correction") for log in results["reviews"].values() for r in log)
    acc = results["summary"]["accuracy"]
    assert acc["corrected_train"]["n"] >= 1 and acc["corrected_train"]["before"] is not None
    assert acc["corrected_train"]["after"] is not None and acc["general"]["n"] >= 1
    for stage in ("start server", "end users ask", "reviews", "dataset build", "retrain (LoRA SFT)", "gates",
                  "promote", "ask again"):
        assert stage in results["times"]
    assert "data:image/png;base64," in report and "Before → after" in report
    assert "hitl demo" in proc.stdout and "report:" in proc.stdout
