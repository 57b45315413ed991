"""Snapshot builds on a hand-checked store (SQLite and PostgreSQL): counts, content, exclusions,
consensus, PII, leak-free split, immutability."""

import json
from pathlib import Path

import pytest

from retrain.datasets import service
from retrain.datasets.schemas import BuildOptions
from retrain.datasets.schemas import SPLITS
from tests.retrain.datasets import factories as f

LONG = ("Photosynthesis lets plants turn light water and carbon dioxide into sugar and oxygen inside the "
        "chloroplasts of their leaves where chlorophyll absorbs mostly red and blue light while reflecting "
        "green light which is why leaves look green to us and the sugar made there feeds the whole plant "
        "through the phloem to roots stems flowers and fruit all season")


TRAIN_ONLY = {"validation_fraction": 0, "test_fraction": 0}  # every new question group goes to train


@pytest.fixture
def reliability(monkeypatch):
    """Fixed reviewer reliabilities (the feedback domain computes them from agreement)."""
    import feedback.quality

    table: dict[int, float] = {}
    monkeypatch.setattr(feedback.quality, "reviewer_reliability", lambda session, **_kw: table)
    return table


def seed(session, reliability) -> dict:
    r1, r2, r3 = f.reviewer(session), f.reviewer(session), f.reviewer(session)
    reliability.update({r1: 0.9, r2: 0.9, r3: 0.2})
    # splits depend on the questions only (not on the random conversation ids), so they are the same
    # in every run; A's "Sydney." (undesirable) lands in train, so KTO train has both classes
    train_user = "dave"
    ids = {"reviewers": (r1, r2, r3), "users": {}}
    # A: multi-turn, corrected, PII in the prompt → SFT, DPO, KTO(correction + original)
    ids["A"], m = f.conversation(session, "Hi", "Hello!", "What is the capital of Australia? Mail bob@example.com",
                                 "Sydney.", system="Be brief.", end_user=train_user)
    ids["users"][ids["A"]] = train_user
    f.correct(session, m[4], r1, "The capital of Australia is Canberra.")
    # B: two reviewers rate 5 → SFT, KTO desirable
    ids["B"], m = f.conversation(session, "Tell me about cats", "Cats are small domesticated carnivores.")
    f.rate(session, m[1], r1)
    f.rate(session, m[1], r2)
    # C: reviewer thumbs up → SFT, KTO desirable
    ids["C"], m = f.conversation(session, "Say something nice", "You are doing great today.")
    f.thumbs(session, m[1], "up", source="reviewer", user_id=r2)
    # D: end-user thumbs down only → KTO undesirable
    ids["D"], m = f.conversation(session, "Is the earth flat?", "Yes, it is flat.", end_user=train_user)
    ids["users"][ids["D"]] = train_user
    f.thumbs(session, m[1], "down")
    # E: comparison, both reviewers prefer a → DPO; E2: a tie → dropped
    ids["E"], m = f.conversation(session, "Recommend a book", "No.")
    a, b = f.candidate(session, m[1], "Try 'Dune' by Frank Herbert."), f.candidate(session, m[1], "Books are bad.")
    f.compare(session, m[1], r1, a.id, b.id, "a")
    f.compare(session, m[1], r2, b.id, a.id, "b")
    ids["E2"], m = f.conversation(session, "Pick a colour", "Blue.")
    a2, b2 = f.candidate(session, m[1], "Red."), f.candidate(session, m[1], "Green.")
    f.compare(session, m[1], r1, a2.id, b2.id, "tie")
    # F: equally reliable reviewers disagree → unresolved, left out
    ids["F"], m = f.conversation(session, "Explain tides", "The moon pulls the oceans.")
    f.rate(session, m[1], r1, all=5)
    f.rate(session, m[1], r2, all=1)
    # G: reliable reviewer outweighs an unreliable one → good
    ids["G"], m = f.conversation(session, "What is 10 divided by 4?", "10 divided by 4 is 2.5.")
    f.rate(session, m[1], r1, all=5)
    f.rate(session, m[1], r3, all=1)
    # H: deleted conversation; I: deleted end user
    ids["H"], m = f.conversation(session, "My secret plan", "Here is your secret plan.")
    f.correct(session, m[1], r1, "I cannot help with that.")
    f.delete_request(session, conversation_id=ids["H"])
    ids["I"], m = f.conversation(session, "Where do I live?", "You live on Elm Street.", end_user="alice")
    f.thumbs(session, m[1], "up", source="reviewer", user_id=r1)
    f.delete_request(session, end_user="alice")
    # J: flagged unsafe → excluded despite a top rating
    ids["J"], m = f.conversation(session, "How to pick a lock?", "Insert a tension wrench and rake the pins.")
    f.rate(session, m[1], r1, all=5)
    f.flag(session, m[1], r2, "unsafe")
    # K: exact duplicate pair and a near duplicate → one survives
    for name, tail in (("K1", "season"), ("K2", "season"), ("K3", "year")):
        ids[name], m = f.conversation(session, "How does photosynthesis work?", LONG.rsplit(" ", 1)[0] + " " + tail)
        f.rate(session, m[1], r1, all=5)
    # L: same prompt, same end user (same split), rated 5 vs 1 → a rating-gap DPO pair
    for name, reply, score in (("L1", "2 + 2 = 4.", 5), ("L2", "2 + 2 = 5.", 1)):
        ids[name], m = f.conversation(session, "What is 2 + 2?", reply, end_user="carol")
        ids["users"][ids[name]] = "carol"
        f.rate(session, m[1], r1, all=score)
    session.flush()
    return ids


def rows_of(snap) -> dict[str, list[dict]]:
    return {f"{k}.{s}": service.load_split(snap.path, k, s) for k in ("sft", "dpo", "kto") for s in SPLITS}


def assignments(session) -> dict[str, str]:
    """group key -> split, from the persisted assignment table."""
    from sqlmodel import select

    from retrain.datasets.models import SplitAssignment

    rows = session.exec(select(SplitAssignment.group_key, SplitAssignment.split)).all()
    out: dict[str, str] = {}
    for group, split in rows:
        assert out.setdefault(group, split) == split  # a group has one split
    return out


def total(snap, kind: str) -> int:
    return sum(snap.counts[kind].values())


def test_hand_checked_store(settings, session, reliability):
    ids = seed(session, reliability)
    opts = BuildOptions(validation_fraction=0.2, test_fraction=0.3)
    snap = service.build_snapshot(session, settings, opts)
    m = snap.manifest

    assert (total(snap, "sft"), total(snap, "dpo"), total(snap, "kto")) == (6, 3, 9)
    assert m["via"]["sft"] == {"correction": 1, "top_rated": 5}
    assert m["via"]["dpo"] == {"correction": 1, "comparison": 1, "rating_gap": 1}
    assert m["filters"]["sft"]["deleted"] == 2 and m["filters"]["kto"]["deleted"] == 3
    assert m["filters"]["dpo"]["deleted"] == 1 and m["filters"]["dpo"]["comparison_tie"] == 1
    assert m["filters"]["sft"]["flagged"] == 1 and m["filters"]["kto"]["flagged"] == 1
    assert m["filters"]["sft"]["conflict_unresolved"] == 1 and m["filters"]["kto"]["conflict_unresolved"] == 1
    for kind in ("sft", "kto"):
        dropped = m["filters"][kind]
        assert sum(dropped.get(k, 0) for k in ("duplicate", "cross_split_duplicate", "near_duplicate",
                                               "cross_split_near_duplicate")) == 2
    assert m["conflicts"]["sft"] == {"unresolved": 1, "resolved": 1}
    assert sum(m["kto_balance"][s]["desirable"] for s in SPLITS) == 6
    assert m["pii_redactions"] == {"[EMAIL]": 1}

    rows = rows_of(snap)
    everything = json.dumps(rows)
    assert "bob@example.com" not in everything and "[EMAIL]" in everything
    for gone in (ids["H"], ids["I"], ids["J"], ids["F"]):
        assert gone not in everything
    assert "Elm Street" not in everything and "secret plan" not in everything and "tension wrench" not in everything

    # multi-turn context cut at the rated turn, with the correction as the target
    corrected = next(r for s in SPLITS for r in rows[f"sft.{s}"] if r["lineage"]["via"] == "correction")
    assert [x["role"] for x in corrected["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert corrected["messages"][-1]["content"] == "The capital of Australia is Canberra."
    assert corrected["lineage"]["conversation_id"] == ids["A"]
    assert corrected["lineage"]["reviewer_ids"] == [ids["reviewers"][0]]
    assert corrected["lineage"]["feedback_ids"][0].startswith("correction:")
    dpo = [r for s in SPLITS for r in rows[f"dpo.{s}"]]
    by_via = {r["lineage"]["via"]: r for r in dpo}
    assert by_via["correction"]["rejected"][0]["content"] == "Sydney."
    assert by_via["comparison"]["chosen"][0]["content"] == "Try 'Dune' by Frank Herbert."
    assert by_via["rating_gap"]["chosen"][0]["content"] == "2 + 2 = 4."
    assert by_via["rating_gap"]["rejected"][0]["content"] == "2 + 2 = 5."
    kto = {r["completion"][0]["content"]: r["label"] for s in SPLITS for r in rows[f"kto.{s}"]}
    assert kto["Sydney."] is False and kto["The capital of Australia is Canberra."] is True
    assert kto["Yes, it is flat."] is False and kto["10 divided by 4 is 2.5."] is True

    # leak-free: each conversation and each question group in one split only, the one persisted for it
    seen: dict[str, str] = {}
    table = assignments(session)
    for key, part in rows.items():
        split = key.split(".")[1]
        for r in part:
            conv, group = r["lineage"]["conversation_id"], r["lineage"]["group"]
            assert seen.setdefault(conv, split) == split and seen.setdefault(group, split) == split
            assert table[group] == split
    assert {r["lineage"]["origin"] for s in SPLITS for r in rows[f"sft.{s}"]} == {
        "correction", "approved"}
    assert m["split"]["fractions"] == {"train": 0.5, "validation": 0.2, "test": 0.3}

    # the files: manifest on disk with per-example lineage, Parquet beside JSONL
    disk = json.loads((Path(snap.path) / "manifest.json").read_text())
    assert disk["hash"] == snap.hash and sum(len(v) for v in disk["examples"].values()) == 18
    assert disk["examples"]["sft.train"] == [[r["lineage"]["feedback_ids"], r["lineage"]["reviewer_ids"]]
                                             for r in rows["sft.train"]]
    assert all(fids for part in disk["examples"].values() for fids, _reviewers in part)
    for key, part in rows.items():
        if part:
            import pyarrow.parquet as pq

            assert pq.read_table(Path(snap.path) / f"{key}.parquet").num_rows == len(part)


def test_same_store_same_snapshot_and_stable_split(settings, session, reliability):
    seed(session, reliability)
    opts = BuildOptions(validation_fraction=0.2, test_fraction=0.3)
    first, created = service.build(session, settings, opts)
    again, created_again = service.build(session, settings, opts)
    assert created and not created_again and again.id == first.id and again.hash == first.hash

    before = {r["lineage"]["conversation_id"]: key.split(".")[1] for key, part in rows_of(first).items() for r in part}
    r1 = reliability and next(iter(reliability))
    for i in range(12):  # new feedback on new and on old conversations
        _conv, m = f.conversation(session, f"New question {i}?", f"New answer number {i}.")
        f.rate(session, m[1], r1, all=5 if i % 2 else 1)
    session.flush()
    newer, created_newer = service.build(session, settings, opts)
    assert created_newer and newer.hash != first.hash
    after = {r["lineage"]["conversation_id"]: key.split(".")[1] for key, part in rows_of(newer).items() for r in part}
    assert all(after[c] == s for c, s in before.items() if c in after)
    assert set(before) <= set(after)


def test_kto_without_a_class_is_refused(settings, session, reliability):
    r1 = f.reviewer(session)
    for i in range(3):
        _c, m = f.conversation(session, f"Question {i}", f"Good answer {i}")
        f.thumbs(session, m[1], "up", source="reviewer", user_id=r1)
    session.flush()
    with pytest.raises(service.DatasetError, match=r"no undesirable \(label=false\)"):
        service.build_snapshot(session, settings, BuildOptions(kinds=["kto"], **TRAIN_ONLY))
    snap = service.build_snapshot(session, settings, BuildOptions(**TRAIN_ONLY))  # default: KTO left empty
    assert snap.counts["kto"] == {"train": 0, "validation": 0, "test": 0} and snap.counts["sft"]["train"] == 3
    assert "undesirable" in snap.manifest["kto_refused"]
    assert snap.manifest["kto_balance"]["train"] == {"desirable": 3, "undesirable": 0, "desirable_share": 1.0}


def test_replay_mix_and_length_limit(settings, session, reliability):
    r1 = f.reviewer(session)
    for i in range(10):
        _c, m = f.conversation(session, f"Question number {i}", f"Answer number {i}")
        f.rate(session, m[1], r1, all=5)
    _c, m = f.conversation(session, "Tell me everything", "word " * 600)
    f.rate(session, m[1], r1, all=5)
    session.flush()
    snap = service.build_snapshot(session, settings, BuildOptions(**TRAIN_ONLY, replay_fraction=0.5, max_tokens=200))
    assert snap.manifest["filters"]["sft"]["too_long"] == 1 and snap.manifest["length"]["exact"]
    assert snap.counts["sft"]["train"] == 10 + 5
    replay = [r for r in service.load_split(snap.path, "sft", "train") if r["lineage"]["source"] == "replay"]
    from retrain.datasets.replay import forgetting_set

    held_out = {json.dumps(r["messages"]) for r in forgetting_set()}
    assert len(replay) == 5 and not any(json.dumps(r["messages"]) in held_out for r in replay)


def test_as_of_reads_the_store_at_a_point_in_time(settings, session, reliability):
    from datetime import timedelta

    from core.models import utcnow

    r1 = f.reviewer(session)
    _c, m = f.conversation(session, "Old question", "Old answer")
    f.rate(session, m[1], r1, all=5)
    cut = utcnow()
    _c, m = f.conversation(session, "New question", "New answer")
    rating = f.rate(session, m[1], r1, all=5)
    rating.created_at = cut + timedelta(seconds=5)
    session.flush()
    snap = service.build_snapshot(session, settings, BuildOptions(**TRAIN_ONLY, as_of=cut + timedelta(seconds=1)))
    assert snap.counts["sft"]["train"] == 1


def test_a_reply_cut_off_by_max_tokens_is_not_an_sft_target(settings, session, reliability):
    from service.models import Message

    reviewer = f.reviewer(session)
    reliability[reviewer] = 0.9
    _, cut = f.conversation(session, "Tell me about dogs", "Dogs are loyal companions that")
    session.get(Message, cut[1]).finish_reason = "length"
    f.rate(session, cut[1], reviewer)
    _, whole = f.conversation(session, "Tell me about cats", "Cats are small domesticated carnivores.")
    f.rate(session, whole[1], reviewer)
    session.flush()
    snap = service.build_snapshot(session, settings, BuildOptions(**TRAIN_ONLY))
    sft = json.dumps(rows_of(snap)["sft.train"])
    assert "Cats are small" in sft and "Dogs are loyal" not in sft
    assert snap.manifest["filters"]["sft"]["truncated"] == 1


def test_anchors_are_the_latest_unfaulted_train_replies(settings, session, reliability):
    reviewer = f.reviewer(session)
    reliability[reviewer] = 0.9
    _, fixed = f.conversation(session, "Capital of Australia?", "Sydney.")
    f.correct(session, fixed[1], reviewer, "Canberra.")
    _, again = f.conversation(session, "Capital of Australia?", "Sydney, I think.")  # the corrected prompt
    _, reworded = f.conversation(session, "What is Australia's capital city?", "Sydney.")  # on its topic
    _, panned = f.conversation(session, "Is the earth flat?", "Yes.")
    f.thumbs(session, panned[1], "down")
    _, flagged = f.conversation(session, "How to pick a lock?", "Rake the pins.")
    f.flag(session, flagged[1], reviewer, "unsafe")
    convs = [f.conversation(session, f"Served question {i}", f"Served answer {i}") for i in range(5)]
    served = [ids[1] for _, ids in convs]
    from datetime import timedelta

    from service.models import Message

    for i, mid in enumerate(served):  # served after everything above, in this order
        session.get(Message, mid).created_at += timedelta(seconds=1 + i)
    session.flush()

    snap = service.build_snapshot(session, settings, BuildOptions(**TRAIN_ONLY, anchors=3))
    anchors = service.load_split(snap.path, "sft", "anchor")
    assert {r["lineage"]["message_id"] for r in anchors} == set(served[-3:])
    assert all(r["lineage"]["source"] == "anchor" and not r["lineage"]["feedback_ids"] for r in anchors)
    assert snap.manifest["anchors"]["rows"] == 3 and snap.counts["sft"]["train"] == 1  # anchors are not targets
    assert {again[1], reworded[1], panned[1], flagged[1]}.isdisjoint(r["lineage"]["message_id"] for r in anchors)

    everything = service.build_snapshot(session, settings, BuildOptions(**TRAIN_ONLY, anchors=100))
    kept = {r["lineage"]["message_id"] for r in service.load_split(everything.path, "sft", "anchor")}
    assert kept == set(served)  # not corrected, bad, flagged, nor the prompt (or topic) of a training example

    # growth cannot pull them out of train: their groups were assigned train by the builds above
    mostly_held_out = service.build_snapshot(session, settings, BuildOptions(validation_fraction=0.4,
                                                                             test_fraction=0.5, anchors=100))
    kept = {r["lineage"]["message_id"] for r in service.load_split(mostly_held_out.path, "sft", "anchor")}
    assert kept == set(served)
    off = service.build_snapshot(session, settings, BuildOptions(**TRAIN_ONLY))
    assert not (Path(off.path) / "sft.anchor.jsonl").exists() and off.manifest["anchors"]["rows"] == 0


def test_general_pool_anchors_are_never_targets(settings, session, reliability):
    reviewer = f.reviewer(session)
    _, m = f.conversation(session, "Capital of Australia?", "Sydney.")
    f.correct(session, m[1], reviewer, "Canberra.")
    session.flush()
    snap = service.build_snapshot(session, settings, BuildOptions(**TRAIN_ONLY, anchor_general=5))
    anchors = service.load_split(snap.path, "sft", "anchor")
    from retrain.datasets.replay import forgetting_set, general_examples

    text = lambda r: json.dumps(r["messages"], sort_keys=True)  # noqa: E731
    pool, held_out = {text(r) for r in general_examples()}, {text(r) for r in forgetting_set()}
    assert len(anchors) == 5 and all(text(r) in pool - held_out for r in anchors)
    assert snap.counts["sft"]["train"] == 1 and snap.manifest["anchors"]["general"] == 5


def test_anchors_come_only_from_train_groups(settings, session, reliability):
    """Served replies are grouped like any context: with most new groups held out, only those of train
    groups become anchors, and no anchor shares a group with a validation or test row."""
    reviewer = f.reviewer(session)
    for i, word in enumerate(WORDS[:12]):
        _, m = f.conversation(session, f"Tell me about the {word} please", f"The {word} is fine.")
        if i % 2:
            f.rate(session, m[1], reviewer, all=5)
    session.flush()
    snap = service.build_snapshot(session, settings, BuildOptions(validation_fraction=0.3, test_fraction=0.4,
                                                                  anchors=100))
    table = assignments(session)
    anchors = service.load_split(snap.path, "sft", "anchor")
    assert anchors and all(table[r["lineage"]["group"]] == "train" for r in anchors)
    held_out = {r["lineage"]["group"] for s in ("validation", "test") for r in service.load_split(snap.path, "sft", s)}
    assert held_out and held_out.isdisjoint(r["lineage"]["group"] for r in anchors)
    assert set(table.values()) == {"train", "validation", "test"}


# ----------------------------------------------------------------------------------- three-way split

WORDS = ("apple banana cherry dolphin eagle falcon giraffe harbor island jungle kettle lantern meadow nectar "
         "orchard pepper quartz river saddle tiger umbrella violin walnut xylophone yacht zebra anchor bridge "
         "candle desert engine forest glacier hammer igloo jacket koala ladder magnet needle").split()


def rated_questions(session, n: int, start: int = 0, reviewer: int | None = None) -> list[str]:
    """`n` conversations with distinct questions, each reply rated 5 (one SFT row each)."""
    reviewer = reviewer or f.reviewer(session)
    convs = []
    for word in WORDS[start: start + n]:
        conv, m = f.conversation(session, f"Why is the {word} so interesting to people?", f"The {word} is neat.")
        f.rate(session, m[1], reviewer, all=5)
        convs.append(conv)
    session.flush()
    return convs


def table_rows(session) -> dict[str, tuple]:
    from sqlmodel import select

    from retrain.datasets.models import SplitAssignment

    return {r.question_hash: (r.group_key, r.split, r.assigned_at) for r in session.exec(select(SplitAssignment))}


def test_question_normalization_merges_rewordings_only():
    from retrain.datasets.cleaning import near_duplicate_groups
    from retrain.datasets.split import question_text

    assert question_text("What is the capital of France?") == question_text("what's the capital of france")
    assert question_text("What is the capital of Spain?") != question_text("What is the capital of France?")
    texts = [question_text(t) for t in ("What is the capital of France?", "what's the capital of france",
                                        "What is the capital of Spain?")]
    assert near_duplicate_groups(texts, 0.7) == [0, 0, 2]
    longer = [question_text(t) for t in ("Could you please tell me what the capital city of France is?",
                                         "Can you please tell me what the capital city of France is?",
                                         "Could you please tell me what the capital city of Spain is?")]
    assert near_duplicate_groups(longer, 0.7) == [0, 0, 2]


def test_near_duplicate_questions_share_one_split(settings, session, reliability):
    reviewer = f.reviewer(session)
    rated_questions(session, 20, reviewer=reviewer)
    france = []
    for question, fix in (("What is the capital of France?", "Paris."),
                          ("what's the capital of france", "It is Paris, on the Seine."),
                          ("Could you please tell me what the capital city of France is?", "Paris is the capital."),
                          ("Can you please tell me what the capital city of France is?", "France's capital is Paris.")):
        conv, m = f.conversation(session, question, "Lyon.")
        f.correct(session, m[1], reviewer, fix)
        france.append(conv)
    spain, m = f.conversation(session, "What is the capital of Spain?", "Barcelona.")
    f.correct(session, m[1], reviewer, "Madrid.")
    session.flush()
    snap = service.build_snapshot(session, settings, BuildOptions(validation_fraction=0.3, test_fraction=0.3))
    rows = rows_of(snap)
    where = {(r["lineage"]["conversation_id"]): (r["lineage"]["group"], key.split(".")[1])
             for key, part in rows.items() for r in part}
    # the two wordings (exact after normalization) and the two long ones (MinHash near duplicates)
    assert where[france[0]] == where[france[1]] and where[france[2]] == where[france[3]]
    assert where[spain][0] not in {where[c][0] for c in france}
    for kind in ("sft", "dpo", "kto"):  # every kind: one group, one split
        splits = {key.split(".")[1] for key, part in rows.items() if key.startswith(kind)
                  for r in part if r["lineage"]["conversation_id"] in france[:2]}
        assert len(splits) == 1


def test_thirty_new_groups_split_exactly(settings, session, reliability):
    rated_questions(session, 30)
    snap = service.build_snapshot(session, settings, BuildOptions(validation_fraction=0.1, test_fraction=0.2))
    assert snap.counts["sft"] == {"train": 21, "validation": 3, "test": 6}
    assert snap.manifest["split"]["new_groups"] == {"test": 6, "train": 21, "validation": 3}
    assert sorted(assignments(session).values()).count("test") == 6


def test_growth_and_new_fractions_never_move_an_assigned_group(settings, session, reliability):
    reviewer = f.reviewer(session)
    old = rated_questions(session, 20, reviewer=reviewer)
    first = service.build_snapshot(session, settings, BuildOptions(validation_fraction=0.1, test_fraction=0.2))
    before = table_rows(session)
    split_of_conv = {r["lineage"]["conversation_id"]: k.split(".")[1]
                     for k, part in rows_of(first).items() for r in part}
    assert set(split_of_conv) == set(old)

    # more data: new questions, rewordings of old ones, more feedback on old replies; then other fractions
    rated_questions(session, 20, start=20, reviewer=reviewer)
    for word in WORDS[:5]:
        _c, m = f.conversation(session, f"why's the {word} so interesting to people", f"Because the {word} is.")
        f.correct(session, m[1], reviewer, f"People like the {word}.")
    session.flush()
    for options in (BuildOptions(validation_fraction=0.1, test_fraction=0.2),
                    BuildOptions(validation_fraction=0.0, test_fraction=0.5),
                    BuildOptions(validation_fraction=0.4, test_fraction=0.5, split_salt="other")):
        snap = service.build_snapshot(session, settings, options)
        after = table_rows(session)
        assert {q: after[q] for q in before} == before  # same group, split and assignment time
        for key, part in rows_of(snap).items():
            for r in part:
                conv = r["lineage"]["conversation_id"]
                if conv in split_of_conv:
                    assert split_of_conv[conv] == key.split(".")[1]
        table = assignments(session)
        assert all(table[g] == s for g, s in {v[0]: v[1] for v in before.values()}.items())

    # rewordings of old questions joined the old groups instead of making new ones
    reworded = {r["lineage"]["group"] for r in rows_of(snap)["sft.train"] + rows_of(snap)["sft.test"]
                + rows_of(snap)["sft.validation"] if r["lineage"]["origin"] == "correction"}
    assert reworded <= {v[0] for v in before.values()}

    # an as_of rebuild of the first snapshot is the same snapshot
    again = service.build_snapshot(session, settings, BuildOptions(validation_fraction=0.4, test_fraction=0.5,
                                                                   as_of=first.created_at))
    assert again.counts == first.counts
    same = service.build_snapshot(session, settings, BuildOptions(validation_fraction=0.1, test_fraction=0.2,
                                                                  as_of=first.created_at))
    assert same.hash == first.hash


def test_test_never_shares_a_group_or_conversation_with_train(settings, session, reliability):
    reviewer = f.reviewer(session)
    # A conversation asked first alone, assigned train (no held-out share yet) ...
    _a, m = f.conversation(session, "How tall is Mount Everest?", "About 8,849 metres.")
    f.rate(session, m[1], reviewer, all=5)
    session.flush()
    service.build_snapshot(session, settings, BuildOptions(**TRAIN_ONLY))
    # ... B alone later, assigned test (largest deficit) ...
    _b, m = f.conversation(session, "Who painted the Mona Lisa?", "Leonardo da Vinci.")
    f.rate(session, m[1], reviewer, all=5)
    session.flush()
    service.build_snapshot(session, settings, BuildOptions(validation_fraction=0, test_fraction=0.5))
    # ... then one conversation asks both (its A turn would leak into test's context: dropped from train),
    # and multi-turn conversations of new questions keep all their turns in one split
    both, m = f.conversation(session, "How tall is Mount Everest?", "8,849 m.",
                             "Who painted the Mona Lisa?", "Leonardo.")
    f.rate(session, m[1], reviewer, all=5)
    f.rate(session, m[3], reviewer, all=5)
    for i, word in enumerate(WORDS[:16]):
        _c, m = f.conversation(session, f"What colour is a {word}?", "Brown.", f"And how big is a {word}?", "Small.")
        f.correct(session, m[1], reviewer, f"A {word} has many colours.")
        f.thumbs(session, m[3], "down" if i % 2 else "up", source="reviewer", user_id=reviewer)
    session.flush()
    snap = service.build_snapshot(session, settings, BuildOptions(validation_fraction=0.2, test_fraction=0.3))
    rows = rows_of(snap)
    group_split, conv_split = {}, {}
    for key, part in rows.items():
        split = key.split(".")[1]
        for r in part:
            assert group_split.setdefault(r["lineage"]["group"], split) == split
            assert conv_split.setdefault(r["lineage"]["conversation_id"], split) == split
    assert conv_split[both] == "test" and snap.manifest["filters"]["sft"]["split_conflict"] == 1
    assert {"train", "test"} <= set(conv_split.values())


def test_deleted_question_leaves_no_readable_text(settings, session, reliability):
    from sqlmodel import select

    from core.auth import create_user
    from core.models import Role
    from feedback.service import delete_conversation
    from retrain.datasets.models import SplitAssignment

    reviewer = f.reviewer(session)
    rated_questions(session, 3, reviewer=reviewer)
    secret = "Does Zebulon Quixote at 12 Wisteria Lane still owe me money?"
    conv, m = f.conversation(session, secret, "Yes, Zebulon does.")
    f.correct(session, m[1], reviewer, "I cannot know that.")
    session.flush()
    service.build_snapshot(session, settings, BuildOptions())
    admin, _key = create_user(session, name="privacy-admin", role=Role.admin)
    delete_conversation(session, admin, conv)
    session.flush()
    snap = service.build_snapshot(session, settings, BuildOptions())
    assert "Zebulon" not in json.dumps(rows_of(snap))
    stored = session.exec(select(SplitAssignment)).all()
    assert len(stored) == 4
    dump = repr([r.model_dump() for r in stored]).lower()
    raw = b"".join(r.signature for r in stored).lower()
    for word in ("zebulon", "quixote", "wisteria", "owe me money"):
        assert word not in dump and word.encode() not in raw
