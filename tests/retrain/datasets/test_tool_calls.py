"""Tool calls through the log into snapshots: a reply's calls and a tool turn's `tool_call_id` are stored as
served (service.log_exchange), and SFT / DPO rows keep them in TRL's tool-calling conversational format, with
the request's `tools` on the row; the files load with `datasets`."""

import json

import pytest

from core.db import session_scope
from retrain.datasets import service
from retrain.datasets.schemas import BuildOptions
from service import service as serving
from service.backends import Generation, SamplingParams
from service.models import new_id
from tests.retrain.datasets import factories as f

pytestmark = pytest.mark.parametrize("settings", ["sqlite"], indirect=True)

TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}


def _chat(session, messages, reply: Generation, conversation_id=None) -> tuple[str, str]:
    conv, mid = conversation_id or new_id("conv"), new_id("msg")
    serving.log_exchange(session, conversation_id=conv, is_new=conversation_id is None, end_user=None,
                         request_messages=messages, reply_ids=[mid], generation=reply, latency_ms=1.0,
                         params=SamplingParams(upstream={"tools": TOOLS, "tool_choice": "auto"}))
    return conv, mid


def _gen(text="", calls=None) -> Generation:
    return Generation(text=text, model_version="v0", prompt_tokens=3, completion_tokens=4, finish_reason="stop",
                      tool_calls=calls)


def test_tool_turns_are_stored_and_kept_in_trl_format(settings):
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    with session_scope() as s:
        conv, called = _chat(s, ask, _gen(calls=[CALL]))
        history = [*ask, {"role": "assistant", "content": "", "tool_calls": [CALL]},
                   {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}]
        _conv, answered = _chat(s, history, _gen("It is sunny in Paris."), conversation_id=conv)
        stored = serving.conversation_messages(s, conv)
        assert [(m.role, m.tool_calls, m.tool_call_id) for m in stored] == [
            ("user", None, None), ("assistant", [CALL], None), ("tool", None, "call_1"), ("assistant", None, None)]
        assert stored[1].tools == TOOLS and stored[1].params["tool_choice"] == "auto"  # history not logged twice

        reviewer = f.reviewer(s)
        f.rate(s, answered, reviewer, all=5)  # approved: SFT on the answer, after the call and its result
        f.correct(s, called, f.reviewer(s), "Which Paris?")  # DPO: correction chosen over the call
        snap = service.build_snapshot(s, settings, BuildOptions(validation_fraction=0, test_fraction=0))

    from datasets import load_dataset

    sft = [json.loads(line) for line in open(f"{snap.path}/sft.train.jsonl")]
    trl_call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}
    final = next(r for r in sft if r["lineage"]["message_id"] == answered)
    assert final["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [trl_call]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1", "name": "weather"},
        {"role": "assistant", "content": "It is sunny in Paris."}]
    assert json.loads(final["tools"]) == TOOLS
    dpo = [json.loads(line) for line in open(f"{snap.path}/dpo.train.jsonl")]
    pair = next(r for r in dpo if r["lineage"]["message_id"] == called)
    assert pair["chosen"] == [{"role": "assistant", "content": "Which Paris?"}]
    assert pair["rejected"] == [{"role": "assistant", "content": "", "tool_calls": [trl_call]}]
    assert json.loads(pair["tools"]) == TOOLS
    for kind in ("sft", "dpo"):
        loaded = load_dataset("json", data_files=f"{snap.path}/{kind}.train.jsonl", split="train")
        assert len(loaded) >= 1 and "tools" in loaded.column_names


def test_n_choices_fork_conversations_and_deleting_one_deletes_all(settings):
    from feedback import service as feedback
    from core.models import Role
    from core.auth import create_user

    reply = Generation(**{**_gen("A").__dict__, "others": (Generation(**{**_gen("B").__dict__, "index": 1}),)})
    with session_scope() as s:
        serving.log_exchange(s, conversation_id="conv_a", is_new=True, end_user="u", reply_ids=["msg_a", "msg_b"],
                             request_messages=[{"role": "user", "content": "Letter?"}], generation=reply,
                             latency_ms=1.0, params=SamplingParams(upstream={"n": 2}), fork_ids=["conv_b"])
        for conv, text in (("conv_a", "A"), ("conv_b", "B")):
            assert [(m.role, m.content) for m in serving.conversation_messages(s, conv)] == [
                ("user", "Letter?"), ("assistant", text)]
        assert serving.get_conversation(s, "conv_b").forked_from == "conv_a"
        admin, _key = create_user(s, name="adm", role=Role.admin)
        deletion = feedback.delete_conversation(s, admin, "conv_a")
        assert sorted(deletion.conversation_ids) == ["conv_a", "conv_b"]


def test_the_migration_matches_the_models(settings):
    """No pending autogenerate operation for the service tables (`alembic check`, scoped to them)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    from core.db import engine_for

    with engine_for(settings.db_url).connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata)
    assert [d for d in diffs if "'message'" in repr(d) or "'conversation'" in repr(d)] == []
