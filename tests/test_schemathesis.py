"""schemathesis against the live app's OpenAPI (examples, coverage and fuzzing phases, as an admin, about a
minute per database): no server errors, and every response conforms to its documented status code, content type,
headers and schema."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LiveServer
from tests.feedback.conftest import chat

CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance"]
# starts a training process per accepted request: covered by tests/retrain, not fuzzed
EXCLUDED = ["POST /api/retrain/runs"]


@pytest.mark.fuzz
def test_openapi_fuzz_finds_no_server_errors_or_schema_violations(settings, admin_key, service_key, monkeypatch,
                                                                  tmp_path):
    from core.settings import get_settings
    from hitl.app import create_app

    monkeypatch.setenv("HITL_MAX_TOKENS", "8")  # generated review candidates stay short
    get_settings.cache_clear()
    with LiveServer(create_app()) as server:
        with server.client(service_key) as service:
            for i in range(3):  # a few real replies, so that some ids exist
                chat(service, f"question {i}")
        command = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{server.url}/openapi.json",
                   "--checks", ",".join(CHECKS), "--phases", "examples,coverage,fuzzing", "--max-examples", "10",
                   "--max-time", "50", "--seed", "16", "--workers", "1", "--request-timeout", "60",
                   "-H", f"Authorization: Bearer {admin_key}", "--continue-on-failure", "--output-truncate", "false",
                   "--suppress-health-check", "all", "--warnings", "off"]
        for operation in EXCLUDED:
            command += ["--exclude-name", operation]
        run = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path)  # its cache there
    assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-4_000:]
