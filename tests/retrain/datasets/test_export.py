"""Export of the feedback store over real HTTP (`GET /api/export`) and the CLI, read back with the real `datasets`;
snapshot file downloads. The round trip of issue 20: import 1,000 past conversations, review some, export the labels."""

import io
import json

import datasets
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from core.db import session_scope
from tests.conftest import make_key
from tests.retrain.datasets import factories as f

NDJSON = {"Content-Type": "application/x-ndjson"}


def _log(i: int) -> str:
    return json.dumps({"messages": [{"role": "user", "content": f"Question {i}: what is {i} times 3?"},
                                    {"role": "assistant", "content": f"{i} times 3 is {i * 3 + (i % 10 == 0)}."}],
                       "model": "legacy-bot", "user": f"user-{i}", "created": 1_700_000_000 + 60 * i,
                       "metadata": {"channel": "web", "n": i}, **({"thumbs": "down"} if i % 10 == 0 else {})})


def _load(tmp_path, name: str, content: bytes, kind: str, **kw) -> datasets.Dataset:
    path = tmp_path / name
    path.write_bytes(content)
    return datasets.load_dataset(kind, data_files=str(path), split="train", cache_dir=str(tmp_path / f"cache-{name}"),
                                 **kw)


def test_import_review_export_round_trip(live_server, api, tmp_path):
    imported = api.post("/api/import", content="\n".join(_log(i) for i in range(1000)).encode(), headers=NDJSON)
    assert imported.status_code == 200, imported.text
    assert imported.json()["conversations"] == 1000 and imported.json()["thumbs"] == 100

    with live_server.client(make_key("reviewer", "ann")) as ann, live_server.client(make_key("reviewer", "bob")) as bob:
        reviewed = {}
        for n in range(3):  # each reviewer gets thumbs-down items first (k = 1: never the same one)
            for name, client in (("ann", ann), ("bob", bob)):
                item = client.post("/api/review/claim").json()
                mid = item["message_id"]
                assert item["reason"] == "thumbs_down"
                if n == 0:
                    client.post(f"/api/review/items/{mid}/correction", json={"content": "Fixed answer."}
                                ).raise_for_status()
                client.post(f"/api/review/items/{mid}/rating",
                            json={"scores": {"correctness": 1 if n == 0 else 4, "helpfulness": 3, "tone": 5},
                                  "comment": f"{name} {n}"}).raise_for_status()
                if n == 1:
                    client.post(f"/api/review/items/{mid}/flag", json={"tags": ["math"]}).raise_for_status()
                    client.post(f"/api/review/items/{mid}/comment", json={"text": "check"}).raise_for_status()
                client.post(f"/api/review/items/{mid}/submit").raise_for_status()
                reviewed[mid] = name

    got = api.get("/api/export")
    assert got.status_code == 200 and got.headers["content-type"].startswith("application/x-ndjson")
    assert got.headers["x-export-rows"] == "1000"
    ds = _load(tmp_path, "export.jsonl", got.content, "json")
    assert ds.num_rows == 1000 and set(ds["source"]) == {"openai"} and set(ds["model_version"]) == {"legacy-bot"}
    rows = {r["message_id"]: r for r in ds}
    assert set(reviewed) <= set(rows)
    corrected = [r for r in rows.values() if r["corrections"]]
    assert len(corrected) == 2 and {c["corrections"][0]["content"] for c in corrected} == {"Fixed answer."}
    for row in corrected:
        assert row["consensus"]["label"] == "bad" and row["consensus"]["correction"] == "Fixed answer."
        assert row["ratings"][0]["scores"] == [{"dimension": "correctness", "score": 1},
                                               {"dimension": "helpfulness", "score": 3},
                                               {"dimension": "tone", "score": 5}]
        assert row["ratings"][0]["reliability"] > 0 and row["thumbs"][0]["value"] == "down"
        assert row["prompt"][0]["role"] == "user" and row["completion"][0]["role"] == "assistant"
    flagged = [r for r in rows.values() if r["flags"]]
    assert len(flagged) == 2 and all(r["flags"][0]["tags"] == ["math"] and r["comments"][0]["text"] == "check"
                                     for r in flagged)
    plain = next(r for r in rows.values() if not r["thumbs"])
    assert plain["consensus"]["label"] is None and plain["ratings"] == [] and json.loads(plain["metadata"])["channel"] == "web"

    # the same export read in small chunks (types inferred from the first one only), and as Parquet
    chunked = _load(tmp_path, "chunked.jsonl", got.content, "json", chunksize=4096)
    assert chunked.num_rows == 1000 and chunked.features == ds.features
    parquet = api.get("/api/export", params={"format": "parquet"})
    assert parquet.status_code == 200 and parquet.headers["content-type"] == "application/vnd.apache.parquet"
    pds = _load(tmp_path, "export.parquet", parquet.content, "parquet")
    assert pds.num_rows == 1000 and {r["message_id"]: r["consensus"] for r in pds} == {
        m: r["consensus"] for m, r in rows.items()}

    # filters
    by_kind = api.get("/api/export", params={"kind": "corrections"})
    assert {json.loads(line)["message_id"] for line in by_kind.text.splitlines()} == {r["message_id"] for r in corrected}
    ann_id = next(r["ratings"][0]["reviewer_id"] for r in corrected if r["ratings"][0]["comment"] == "ann 0")
    mine = [json.loads(line) for line in api.get("/api/export", params={"reviewer": ann_id}).text.splitlines()]
    assert len(mine) == 3 and all(any(x["reviewer_id"] == ann_id for x in r["ratings"]) for r in mine)
    window = api.get("/api/export", params={"since": "2023-11-14T22:23:20Z", "until": "2023-11-14T22:33:20"})
    assert window.headers["x-export-rows"] == "10"  # records 10..19, 60 s apart
    assert api.get("/api/export", params={"model_version": "other"}).content == b""
    assert api.get("/api/export", params={"kind": "bogus"}).status_code == 422
    assert api.get("/api/export", params={"since": "yesterday"}).status_code == 422
    with live_server.client(make_key("reviewer")) as reviewer:
        assert reviewer.get("/api/export").status_code == 403


def test_deleted_conversations_and_end_users_never_appear(api):
    with session_scope() as s:
        r = f.reviewer(s)
        kept = f.conversation(s, "Keep me?", "Kept.", end_user="alice")[1][1]
        gone = f.conversation(s, "Secret question", "Secret answer.", end_user="bob")
        f.thumbs(s, kept, "up")
        f.correct(s, gone[1][1], r, "Secret correction.")
    assert api.delete(f"/api/conversations/{gone[0]}").status_code == 200
    assert api.delete("/api/end-users/carol").status_code == 200
    with session_scope() as s:  # a later conversation of a deleted end user, with feedback
        late = f.conversation(s, "Carol again", "Carol reply.", end_user="carol")[1][1]
        f.thumbs(s, late, "down")
    for fmt in ("jsonl", "parquet"):
        body = api.get("/api/export", params={"format": fmt}).content
        assert b"Secret" not in body and b"Carol" not in body and b"carol" not in body and b"Kept." in body
    rows = pq.read_table(io.BytesIO(api.get("/api/export", params={"format": "parquet"}).content)).to_pylist()
    assert [r["message_id"] for r in rows] == [kept] and rows[0]["thumbs"][0]["source"] == "end_user"


def test_snapshot_files_download(api):
    with session_scope() as s:
        r = f.reviewer(s)
        for i in range(3):
            _c, m = f.conversation(s, f"What is fact {i}?", "Unknown.")
            f.correct(s, m[1], r, f"Fact {i} is {i}.")
    snap = api.post("/api/datasets", json={"validation_fraction": 0, "test_fraction": 0}).json()
    jsonl = api.get(f"/api/datasets/{snap['id']}/files/sft.train.jsonl")
    assert jsonl.status_code == 200 and len(jsonl.text.splitlines()) == 3
    assert "attachment" in jsonl.headers["content-disposition"]
    parquet = api.get(f"/api/datasets/{snap['id']}/files/sft.train.parquet")
    assert pq.read_table(io.BytesIO(parquet.content)).num_rows == 3
    assert api.get(f"/api/datasets/{snap['id']}/files/manifest.json").json()["counts"]["sft"]["train"] == 3
    for name in ("sft.test.parquet", "hitl.db", "..%2F..%2Fhitl.db", "manifest.json.bak"):
        assert api.get(f"/api/datasets/{snap['id']}/files/{name}").status_code == 404, name
    assert api.get("/api/datasets/999/files/manifest.json").status_code == 404


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_cli_export(settings, tmp_path):
    from hitl.cli import app

    with session_scope() as s:
        _c, m = f.conversation(s, "Hi", "Hello.")
        f.thumbs(s, m[1], "down")
    runner = CliRunner()
    out = tmp_path / "labels.parquet"
    result = runner.invoke(app, ["export", "--format", "parquet", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "exported 1 replies" in result.output and pq.read_table(out).to_pylist()[0]["completion"][0]["content"] == "Hello."
    result = runner.invoke(app, ["export", "-o", str(tmp_path / "none.jsonl"), "--kind", "ratings"])
    assert result.exit_code == 0 and (tmp_path / "none.jsonl").read_text() == ""
    assert runner.invoke(app, ["export", "--kind", "stars"]).exit_code == 2
