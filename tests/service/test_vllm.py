"""hitl in front of two REAL vLLM replicas (vLLM's CPU build, SmolLM2, fp32): chat, adapters loaded on
promotion, a hot swap under 50 concurrent chats, a canary share, rollback, retirement, and a replica that
restarts and catches up before it takes traffic; and the OpenAI surface (tools, tool turns, JSON schema, n,
logprobs, include_usage) through HITL_BACKEND=vllm and HITL_BACKEND=openai with the real openai client. Marked `vllm`; `make vllm-venv` installs vLLM into its own
venv (never the project's), and the tests skip, saying so, when that venv is absent."""

import json
import os
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from service.models import ModelVersion
from tests.conftest import LiveServer

pytestmark = [pytest.mark.vllm, pytest.mark.parametrize("settings", ["sqlite"], indirect=True)]

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = Path(os.environ.get("HITL_TEST_VLLM_PYTHON", ROOT / ".vllm-venv" / "bin" / "python"))
PROMPT = [{"role": "user", "content": "Name a colour."}]
MAX_TOKENS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VllmServer:
    """One vLLM OpenAI server process (CPU build) with runtime LoRA updating on."""

    def __init__(self, model: Path, log_dir: Path, cpu: int):
        self.model, self.port, self.cpu = model, _free_port(), cpu
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"vllm-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "VllmServer":
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_CPU_KVCACHE_SPACE": "1",
               "HF_HUB_OFFLINE": "1", "VLLM_CPU_OMP_THREADS_BIND": str(self.cpu)}
        cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model),
               "--host", "127.0.0.1", "--port", str(self.port), "--enable-lora", "--max-lora-rank", "16",
               "--max-loras", "4", "--max-model-len", "2048", "--dtype", "float32",
               # vLLM 0.32 answers any tool_choice but "none" only with a tool-call parser set
               "--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"vLLM not ready in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def adapters(self) -> set[str]:
        return {m["id"] for m in httpx.get(f"{self.url}/v1/models").json()["data"] if m.get("parent")}

    def requests_served(self) -> float:
        text = httpx.get(f"{self.url}/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("vllm:request_success_total"))

    def greedy(self, model: str) -> str:
        client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="EMPTY", max_retries=0)
        reply = client.chat.completions.create(model=model, messages=PROMPT, max_tokens=MAX_TOKENS, temperature=0)
        return reply.choices[0].message.content


@pytest.fixture(scope="module")
def replicas(smollm2_dir, tmp_path_factory):
    if not VLLM_PYTHON.exists():
        pytest.skip(f"vLLM's CPU build is not installed at {VLLM_PYTHON} (`make vllm-venv`: ~2 min, 2.5 GB; "
                    "or set HITL_TEST_VLLM_PYTHON)")
    logs = tmp_path_factory.mktemp("vllm-logs")
    servers = [VllmServer(smollm2_dir.resolve(), logs, cpu).start() for cpu in (0, 1)]
    try:
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="module")
def adapters(smollm2_dir, tmp_path_factory) -> dict[str, Path]:
    """Three random rank-8 LoRA adapters over SmolLM2 (each gives PROMPT another greedy reply), and one of rank 32."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = {}
    for seed, name in enumerate(("v1", "v2", "v3", "wide")):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(str(smollm2_dir))
        config = LoraConfig(r=32 if name == "wide" else 8, lora_alpha=16, init_lora_weights=False,
                            target_modules=["q_proj", "v_proj", "o_proj", "down_proj"])
        peft_model = get_peft_model(model, config)
        with torch.no_grad():  # large enough that each adapter answers PROMPT differently
            for param_name, param in peft_model.named_parameters():
                if "lora_B" in param_name:
                    param.normal_(0, 0.06)
        path = tmp_path_factory.mktemp(f"adapter-{name}")
        peft_model.save_pretrained(path)
        out[name] = path
    return out


@pytest.fixture
def front(settings, replicas, adapters, smollm2_dir, monkeypatch):
    """hitl serving from both replicas (HITL_BACKEND=vllm), with the adapters registered as candidates."""
    from core.db import session_scope
    from core.settings import get_settings
    from hitl.app import create_app

    for name, value in {"BACKEND": "vllm", "VLLM_URLS": ",".join(r.url for r in replicas), "VLLM_KEEP": "1",
                        "VLLM_CHECK_S": "0.5", "BASE_MODEL": str(smollm2_dir.resolve()), "CANARY_SHARE": "0.5",
                        "RATE_LIMIT_PER_S": "0"}.items():
        monkeypatch.setenv(f"HITL_{name}", value)
    get_settings.cache_clear()
    with session_scope() as s:
        for name, path in adapters.items():
            s.add(ModelVersion(version=name, base_path=str(smollm2_dir.resolve()), adapter_path=str(path)))
        s.add(ModelVersion(version="merged", base_path=str(adapters["v1"])))  # as `chaining: merge` writes
    with LiveServer(create_app()) as server:
        yield server
    for replica in replicas:  # the next test starts from the base model only
        for name in replica.adapters():
            httpx.post(f"{replica.url}/v1/unload_lora_adapter", json={"lora_name": name})


def wait_serving(api, expected: list[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while (ready := api.get("/readyz").json())["serving"] != expected:
        assert time.monotonic() < deadline, f"served versions never became {expected}: {ready}"
        time.sleep(0.2)
    return ready


def chat(client: openai.OpenAI, stream: bool = False) -> tuple[str, str]:
    """(stamped version, reply text) of one greedy chat through hitl."""
    if not stream:
        reply = client.chat.completions.create(model="m", messages=PROMPT, max_tokens=MAX_TOKENS, temperature=0)
        return reply.model_extra["hitl"]["model_version"], reply.choices[0].message.content
    chunks = list(client.chat.completions.create(model="m", messages=PROMPT, max_tokens=MAX_TOKENS, temperature=0,
                                                 stream=True))
    return chunks[0].model_extra["hitl"]["model_version"], "".join(c.choices[0].delta.content or "" for c in chunks
                                                                 if c.choices)


def test_chat_swap_canary_rollback_retire(front, api, service_key, replicas):
    client = openai.OpenAI(base_url=f"{front.url}/v1", api_key=service_key, max_retries=0, timeout=300)
    ready = wait_serving(api, ["base"])
    assert [r["in_pool"] for r in ready["replicas"]] == [True, True]
    base_name = next(m["id"] for m in httpx.get(f"{replicas[0].url}/v1/models").json()["data"] if not m["parent"])
    expected = {"base": replicas[0].greedy(base_name)}
    assert chat(client) == ("base", expected["base"])
    assert chat(client, stream=True) == ("base", expected["base"])

    # promotion under 50 concurrent chats: every one succeeds and is stamped with the version that wrote it
    with ThreadPoolExecutor(50) as pool:
        futures = [pool.submit(chat, client, i % 2 == 1) for i in range(50)]
        time.sleep(0.5)
        assert api.post("/api/models/v1/promote", json={"reason": "test"}).status_code == 200
        replies = [f.result() for f in futures]  # raises on any failed request
    ready = wait_serving(api, ["v1"])
    assert all("v1" in r.adapters() for r in replicas)
    expected["v1"] = replicas[1].greedy("v1")
    assert expected["v1"] != expected["base"], "the adapter must change the greedy reply for this test to tell"
    after = [chat(client) for _ in range(4)]
    for version, text in replies + after:
        assert text == expected[version], f"reply stamped {version} is not {version}'s"
    assert {v for v, _ in after} == {"v1"}
    logged = api.get(f"/api/conversations/{client.chat.completions.create(model='m', messages=PROMPT, max_tokens=2).model_extra['hitl']['conversation_id']}").json()
    assert logged["messages"][-1]["model_version"] == "v1"
    assert logged["messages"][-1]["mean_logprob"] < 0  # vLLM's token log-probs: the review queue's confidence

    # canary: half of new conversations go to v2, loaded on both replicas first
    assert api.post("/api/models/v2/challenger", json={"reason": "canary"}).status_code == 200
    wait_serving(api, ["v1", "v2"])
    assert all({"v1", "v2"} <= r.adapters() for r in replicas)
    expected["v2"] = replicas[0].greedy("v2")
    assert len(set(expected.values())) == 3, expected
    canary = [chat(client, stream=i % 2 == 0) for i in range(24)]
    assert {v for v, _ in canary} == {"v1", "v2"}
    assert all(text == expected[v] for v, text in canary)

    # rollback: one call, base serves again, v1 stays loaded (keep 1) for the next rollback
    assert api.post("/api/models/rollback", json={"reason": "test"}).status_code == 200
    wait_serving(api, ["base", "v2"])
    assert all({"v1", "v2"} <= r.adapters() for r in replicas)

    # promote v2 then v3: v1 falls out of the last 1 kept and is unloaded everywhere
    assert api.post("/api/models/v2/promote", json={"reason": "test"}).status_code == 200
    wait_serving(api, ["v2"])
    assert api.post("/api/models/v3/promote", json={"reason": "test"}).status_code == 200
    wait_serving(api, ["v3"])
    deadline = time.monotonic() + 10
    while any(r.adapters() != {"v2", "v3"} for r in replicas):
        assert time.monotonic() < deadline, [r.adapters() for r in replicas]
        time.sleep(0.2)
    expected["v3"] = replicas[0].greedy("v3")
    assert chat(client) == ("v3", expected["v3"])

    # versions a LoRA fleet cannot hold are refused with the reason; the champion before them keeps serving
    for version, reason in (("wide", "LoRA rank 32 > HITL_VLLM_MAX_LORA_RANK 16"), ("merged", "a merged base")):
        assert api.post(f"/api/models/{version}/promote", json={"reason": "test"}).status_code == 200
        deadline = time.monotonic() + 30
        while version not in (ready := api.get("/readyz").json())["refused"]:
            assert time.monotonic() < deadline, ready
            time.sleep(0.2)
        assert reason in ready["refused"][version] and ready["serving"] == ["v3"]
        assert chat(client) == ("v3", expected["v3"])
    assert all(r.adapters() == {"v2", "v3"} for r in replicas)


def test_replica_restart_catches_up_before_traffic(front, api, service_key, replicas):
    client = openai.OpenAI(base_url=f"{front.url}/v1", api_key=service_key, max_retries=0, timeout=300)
    assert api.post("/api/models/v1/promote", json={"reason": "test"}).status_code == 200
    wait_serving(api, ["v1"])
    expected = replicas[0].greedy("v1")
    restarted = replicas[1]
    restarted.stop()
    # the dead replica leaves the pool; every chat meanwhile succeeds on the other
    during = [chat(client) for _ in range(6)]
    assert during == [("v1", expected)] * 6
    states = api.get("/readyz").json()["replicas"]
    assert [s["in_pool"] for s in states] == [True, False] and "unreachable" in states[1]["note"]

    restarted.start()
    joined_holding = None
    deadline = time.monotonic() + 300
    while joined_holding is None:  # sample what the replica holds at the moment it rejoins
        assert time.monotonic() < deadline, "the restarted replica never rejoined the pool"
        assert restarted.proc.poll() is None, restarted.log.read_text()[-3000:]
        state = api.get("/readyz").json()["replicas"][1]
        if state["in_pool"]:
            joined_holding = restarted.adapters()
        else:
            time.sleep(0.2)
    assert "v1" in joined_holding
    served_before = restarted.requests_served()
    assert [chat(client) for _ in range(8)] == [("v1", expected)] * 8
    assert restarted.requests_served() > served_before, "the caught-up replica takes traffic again"
    assert json.loads(json.dumps(api.get("/readyz").json()))["checks"]["model"] is True


# ------------------------------------------------------------------------------------------ the OpenAI surface

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(params=["vllm", "openai"])
def surface(request, settings, replicas, smollm2_dir, monkeypatch, service_key, admin_key):
    """hitl over the first replica as a fleet (`vllm`) or as any OpenAI-compatible upstream (`openai`); the real
    openai client against hitl, one against the replica itself, and the admin API."""
    from core.settings import get_settings
    from hitl.app import create_app

    base_name = next(m["id"] for m in httpx.get(f"{replicas[0].url}/v1/models").json()["data"] if not m["parent"])
    env = {"BACKEND": request.param, "BASE_MODEL": str(smollm2_dir.resolve()), "RATE_LIMIT_PER_S": "0",
           **({"VLLM_URLS": replicas[0].url} if request.param == "vllm" else
              {"REMOTE_BASE_URL": f"{replicas[0].url}/v1", "REMOTE_MODEL": base_name})}
    for name, value in env.items():
        monkeypatch.setenv(f"HITL_{name}", value)
    get_settings.cache_clear()
    with LiveServer(create_app()) as server:
        if request.param == "vllm":
            wait_serving(server.client(admin_key), ["base"])
        yield (openai.OpenAI(base_url=f"{server.url}/v1", api_key=service_key, max_retries=0, timeout=300),
               openai.OpenAI(base_url=f"{replicas[0].url}/v1", api_key="EMPTY", max_retries=0, timeout=300),
               base_name, server.client(admin_key))
    get_settings.cache_clear()


def _logged(api, conversation_id: str) -> list[dict]:
    return api.get(f"/api/conversations/{conversation_id}").json()["messages"]


def _calls(calls) -> list[tuple[str, str]]:
    return [(c.function.name, c.function.arguments) for c in calls or ()]


def _streamed_calls(chunks) -> list[tuple[str, str]]:
    """(name, arguments) of each tool call, assembled from streamed deltas as OpenAI clients do."""
    calls: dict[int, tuple[str, str]] = {}
    for c in chunks:
        for d in (c.choices[0].delta.tool_calls or ()) if c.choices else ():
            name, args = calls.get(d.index, ("", ""))
            function = d.function
            calls[d.index] = (name + ((function.name or "") if function else ""),
                              args + ((function.arguments or "") if function else ""))
    return [calls[i] for i in sorted(calls)]


def test_tools_and_tool_turns_pass_through_and_are_logged(surface):
    client, direct, base_name, api = surface
    named = {"type": "function", "function": {"name": "get_weather"}}
    ask = {"messages": ASK, "tools": TOOLS, "max_tokens": 24, "temperature": 0}
    # the same greedy request straight to vLLM and through hitl: the same calls (ids are the upstream's own)
    for choice in (named, "required"):
        expected = _streamed_calls(direct.chat.completions.create(model=base_name, tool_choice=choice, stream=True,
                                                                  **ask))
        reply = client.chat.completions.create(model="m", tool_choice=choice, **ask)
        message = reply.choices[0].message
        assert _calls(message.tool_calls) == expected
        assert message.tool_calls[0].function.name == "get_weather" and message.tool_calls[0].id
        logged = _logged(api, reply.model_extra["hitl"]["conversation_id"])[-1]
        assert logged["tool_calls"] == [c.model_dump() for c in message.tool_calls]
        assert logged["tools"] == TOOLS and logged["params"]["tool_choice"] == choice
        # streamed through hitl: the same calls, delta by delta
        assert _streamed_calls(client.chat.completions.create(model="m", tool_choice=choice, stream=True,
                                                              **ask)) == expected

    # the call's result goes back as a tool turn in the same conversation: stored once each, with its id
    call = message.tool_calls[0]
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
               {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 degrees."}]
    conversation = reply.model_extra["hitl"]["conversation_id"]
    answer = client.chat.completions.create(model="m", messages=history, tools=TOOLS, max_tokens=12, temperature=0,
                                            extra_body={"conversation_id": conversation})
    direct_answer = direct.chat.completions.create(model=base_name, messages=history, tools=TOOLS, max_tokens=12,
                                                   temperature=0)
    assert answer.choices[0].message.content == direct_answer.choices[0].message.content
    logged = _logged(api, conversation)
    assert [(m["role"], m["tool_call_id"], bool(m["tool_calls"])) for m in logged] == [
        ("user", None, False), ("assistant", None, True), ("tool", call.id, False), ("assistant", None, False)]
    assert logged[-1]["content"] == answer.choices[0].message.content

    # a request the upstream refuses (a named tool it was not given) stays the client's 4xx, never a 5xx
    with pytest.raises((openai.BadRequestError, openai.UnprocessableEntityError)):
        client.chat.completions.create(model="m", messages=ASK, tools=TOOLS, max_tokens=4,
                                       tool_choice={"type": "function", "function": {"name": "no_such_tool"}})


def test_json_schema_choices_logprobs_and_usage(surface):
    from pydantic import BaseModel

    class City(BaseModel):
        city: str
        country: str

    client, direct, base_name, api = surface
    louvre = [{"role": "user", "content": "Where is the Louvre?"}]
    parsed = client.chat.completions.parse(model="m", messages=louvre, response_format=City, max_tokens=60,
                                           temperature=0)
    city = parsed.choices[0].message.parsed  # the openai client's JSON-schema example, guided by vLLM
    assert isinstance(city, City)
    assert city == direct.chat.completions.parse(model=base_name, messages=louvre, response_format=City,
                                                 max_tokens=60, temperature=0).choices[0].message.parsed
    with client.chat.completions.stream(model="m", messages=louvre, response_format=City, max_tokens=60,
                                        temperature=0) as stream:
        assert stream.get_final_completion().choices[0].message.parsed == city
    assert _logged(api, parsed.model_extra["hitl"]["conversation_id"])[-1]["params"]["response_format"]["type"] \
        == "json_schema"

    # n = 3 with logprobs: three choices, each with its top log-probs, each a reply of its own in the log
    reply = client.chat.completions.create(model="m", messages=ASK, n=3, logprobs=True, top_logprobs=2, max_tokens=6,
                                           temperature=1.0, seed=7)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    for choice in reply.choices:
        assert len(choice.logprobs.content) >= 1 and len(choice.logprobs.content[0].top_logprobs) == 2
    refs = reply.model_extra["hitl"]["choices"]
    assert len({r["conversation_id"] for r in refs}) == 3 and refs[0]["message_id"] == reply.model_extra["hitl"][
        "message_id"]
    assert reply.usage.completion_tokens == direct.chat.completions.create(
        model=base_name, messages=ASK, n=3, max_tokens=6, temperature=1.0, seed=7).usage.completion_tokens
    for ref, choice in zip(refs, reply.choices, strict=True):
        conversation = api.get(f"/api/conversations/{ref['conversation_id']}").json()
        assert [m["role"] for m in conversation["messages"]] == ["user", "assistant"]
        assert conversation["messages"][-1]["id"] == ref["message_id"]
        assert conversation["messages"][-1]["content"] == choice.message.content
        assert conversation["messages"][-1]["mean_logprob"] < 0
        assert conversation["forked_from"] == (None if ref["index"] == 0 else refs[0]["conversation_id"])
        assert api.post(f"/api/review/adjudication/{ref['message_id']}",  # each choice can be reviewed
                        json={"scores": {"correctness": 3, "helpfulness": 3, "tone": 3}}).status_code == 201

    # streamed n = 2 with include_usage: each choice's deltas by index, then the usage-only chunk
    chunks = list(client.chat.completions.create(model="m", messages=ASK, n=2, max_tokens=6, stream=True, seed=7,
                                                 temperature=1.0, stream_options={"include_usage": True}))
    texts = {0: "", 1: ""}
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] += choice.delta.content or ""
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    refs = chunks[0].model_extra["hitl"]["choices"]
    for ref in refs:
        assert _logged(api, ref["conversation_id"])[-1]["content"] == texts[ref["index"]]

    # a request that sets no sampling: hitl sends none, and vLLM applies the model's generation_config
    plain = client.chat.completions.create(model="m", messages=ASK, max_tokens=8)
    assert _logged(api, plain.model_extra["hitl"]["conversation_id"])[-1]["params"]["temperature"] is None
