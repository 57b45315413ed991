"""The admin dataset API over real HTTP, and paraphrase expansion against a real OpenAI-compatible
endpoint (hitl's own chat API serving the tiny model)."""

import json

import pytest

from core.db import session_scope
from tests.conftest import make_key
from tests.retrain.datasets import factories as f


def _seed(n: int = 4, *, bad: bool = True) -> None:
    with session_scope() as s:
        r = f.reviewer(s)
        for i in range(n):
            _c, m = f.conversation(s, f"What is fact number {i}?", f"Fact {i} is unknown.")
            f.correct(s, m[1], r, f"Fact number {i} is {i * 7} apples.")
            if bad:
                f.thumbs(s, m[1], "down")


def test_build_show_list_over_http(api, live_server):
    _seed()
    created = api.post("/api/datasets", json={"validation_fraction": 0, "test_fraction": 0})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["counts"]["sft"] == {"train": 4, "validation": 0, "test": 0} and body["created"] is True
    again = api.post("/api/datasets", json={"validation_fraction": 0, "test_fraction": 0})
    assert again.status_code == 200 and again.json()["id"] == body["id"] and again.json()["hash"] == body["hash"]

    manifest = api.get(f"/api/datasets/{body['id']}").json()
    assert manifest["hash"] == body["hash"] and manifest["counts"] == body["counts"]
    assert manifest["via"]["dpo"] == {"correction": 4} and "filters" in manifest and "builder_version" in manifest
    listed = api.get("/api/datasets").json()
    assert listed["count"] == 1 and listed["data"][0]["hash"] == body["hash"]

    assert api.get("/api/datasets/999").status_code == 404
    bad = api.post("/api/datasets", json={"test_fraction": 2})
    assert bad.status_code == 422 and "detail" in bad.json()
    too_much = api.post("/api/datasets", json={"test_fraction": 0.5, "validation_fraction": 0.45})
    assert too_much.status_code == 422
    assert api.post("/api/datasets", json={"eval_fraction": 0.1}).status_code == 422  # the old option is gone
    assert api.post("/api/datasets", json={"nonsense": 1}).status_code == 422
    with live_server.client(make_key("reviewer")) as reviewer:
        assert reviewer.post("/api/datasets", json={}).status_code == 403
        assert reviewer.get(f"/api/datasets/{body['id']}").status_code == 403
    with live_server.client() as anonymous:
        assert anonymous.get("/api/datasets").status_code == 401


def test_kto_refusal_is_a_422_naming_the_class(api):
    with session_scope() as s:
        r = f.reviewer(s)
        _c, m = f.conversation(s, "Hello", "Hi there!")
        f.thumbs(s, m[1], "up", source="reviewer", user_id=r)
    res = api.post("/api/datasets", json={"kinds": ["kto"], "validation_fraction": 0, "test_fraction": 0})
    assert res.status_code == 422 and "undesirable (label=false)" in res.json()["detail"]


def test_no_upstream_endpoint_or_key_from_the_api(api):
    """The paraphrase endpoint and its key come from settings only: a request cannot send
    HITL_REMOTE_API_KEY and the prompts elsewhere."""
    for field in ("paraphrase_base_url", "paraphrase_api_key"):
        res = api.post("/api/datasets", json={"paraphrases": 1, field: "http://127.0.0.1:9/v1"})
        assert res.status_code == 422 and field in res.text


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)  # the database plays no part here
def test_paraphrase_expansion(settings, live_server, api):
    from retrain.datasets import service
    from retrain.datasets.schemas import BuildOptions

    _seed(3, bad=False)
    upstream = settings.model_copy(update={"remote_base_url": live_server.url + "/v1",
                                           "remote_api_key": make_key("service")})
    opts = BuildOptions(validation_fraction=0.2, test_fraction=0.3, paraphrases=2, kinds=["sft"],
                        paraphrase_model="any", paraphrase_max_tokens=16)
    with session_scope() as s:
        snap, created = service.build(s, upstream, opts)
    report = snap.manifest["expansion"]
    assert upstream.remote_api_key not in json.dumps(snap.manifest)
    assert report["sources"] == 3 and report["generated"] == 6
    assert report["kept_in_snapshot"] <= report["kept_after_expansion_dedup"] <= 6
    rows = {sp: service.load_split(snap.path, "sft", sp) for sp in ("train", "validation", "test")}
    split_of_source = {r["lineage"]["message_id"]: sp for sp, part in rows.items() for r in part
                       if r["lineage"]["source"] == "feedback"}
    variants = [(sp, r) for sp, part in rows.items() for r in part if r["lineage"]["source"] == "paraphrase"]
    assert len(variants) == report["kept_in_snapshot"]
    for sp, r in variants:
        assert split_of_source[r["lineage"]["message_id"]] == sp  # a variant stays in its source's split
        assert r["messages"][-1]["content"].startswith("Fact number")  # same corrected answer
    with session_scope() as s:  # cached paraphrases: the rebuild is the same snapshot
        again, created_again = service.build(s, upstream, opts)
    assert again.hash == snap.hash and not created_again

    with session_scope() as s:
        try:
            service.build(s, settings, BuildOptions(paraphrases=1))
        except service.DatasetError as exc:
            assert "HITL_REMOTE_BASE_URL" in str(exc)
        else:
            raise AssertionError("expansion without an endpoint must fail")
