"""`hitl serve` as a user runs it: a subprocess on a fresh data dir, answering health and chat."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import _free_port

HITL = [sys.executable, "-m", "hitl"]


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HITL_")}
    return {**env, **extra}


def test_serve_starts_and_chats_and_help_works(tmp_path, tiny_model_dir):
    port = _free_port()
    data = tmp_path / "data"
    env = clean_env(HITL_BASE_MODEL=str(tiny_model_dir), HITL_DATA_DIR=str(data), HITL_PORT=str(port),
                    HITL_SCHEDULER_ENABLED="false", HITL_TORCH_THREADS="1")
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([*HITL, "serve"], cwd=Path(__file__).resolve().parents[2], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    helps = [subprocess.Popen([*HITL, *args, "--help"], stdout=subprocess.PIPE, text=True, env=clean_env())
             for args in ([], ["model"])]  # while the server starts
    try:
        for proc_help, expected in zip(helps, (("serve", "model", "users"), ("init",))):
            out, _ = proc_help.communicate(timeout=120)
            assert proc_help.returncode == 0 and all(word in out for word in expected), out
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "hitl serve did not answer /healthz"
            try:
                if httpx.get(f"{url}/healthz", timeout=2).json() == {"status": "ok"}:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        key = (data / "admin.key").read_text().strip()  # the first admin key, created at first start
        assert key and (data / "hitl.db").exists()
        reply = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=60,
                           json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        assert reply.status_code == 200, reply.text
        assert reply.json()["hitl"]["model_version"] == "base"
        assert httpx.get(f"{url}/readyz", timeout=10).json()["status"] == "ready"
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    assert proc.returncode in (0, -15)
