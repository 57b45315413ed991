"""Consensus in snapshot builds: differing corrections chosen by reviewer reliability (or adjudicated), a
correction of a reply others rated good held for adjudication, Dawid–Skene on overlapping labels, and
reviewer reliability read as of the snapshot's time (reproducible rebuilds)."""

from datetime import timedelta

import pytest

from core.models import utcnow
from retrain.datasets import service
from retrain.datasets.common import Prep, assess, resolve_corrections, reviewer_verdict
from retrain.datasets.labels import dawid_skene
from retrain.datasets.repository import load_store
from retrain.datasets.schemas import SPLITS, BuildOptions
from tests.retrain.datasets import factories as f

ALL_TRAIN = ({"validation_fraction": 0, "test_fraction": 0} if "test_fraction" in BuildOptions.model_fields
             else {"eval_fraction": 0})
RUBRIC = ["correctness", "helpfulness", "tone"]


@pytest.fixture
def reliability(monkeypatch):
    import feedback.quality

    table: dict[int, float] = {}
    monkeypatch.setattr(feedback.quality, "reviewer_reliability", lambda session, **_kw: table)
    return table


def rows(snap, kind: str) -> list[dict]:
    return [r for s in SPLITS for r in service.load_split(snap.path, kind, s)]


def build(session, settings, **options):
    return service.build_snapshot(session, settings, BuildOptions(**ALL_TRAIN, **options))


def test_differing_corrections_are_chosen_by_reliability_not_dropped(settings, session, reliability):
    r1, r2, r3 = f.reviewer(session), f.reviewer(session), f.reviewer(session)
    reliability.update({r1: 0.9, r2: 0.4, r3: 0.4})
    _c, m = f.conversation(session, "What is the capital of Australia?", "Sydney.")
    f.correct(session, m[1], r1, "The capital of Australia is Canberra.")
    f.correct(session, m[1], r2, "Canberra.")  # a different text: the old rule (identical text) dropped the item
    _c, m2 = f.conversation(session, "How many legs does a spider have?", "Six.")
    f.correct(session, m2[1], r1, "A spider has eight legs.")
    f.correct(session, m2[1], r2, "Spiders have 8 legs")
    f.correct(session, m2[1], r3, "spiders have 8 legs!")  # near-identical to r2's: 0.4 + 0.4 = 0.8 vs 0.9
    session.flush()
    snap = build(session, settings)
    sft = {r["lineage"]["message_id"]: r for r in rows(snap, "sft")}
    assert sft[m[1]]["messages"][-1]["content"] == "The capital of Australia is Canberra."  # 0.9 ≥ 1.25 × 0.4
    assert sft[m[1]]["lineage"]["reviewer_ids"] == [r1]
    assert m2[1] not in sft  # 0.9 vs 0.8: no clear choice → adjudication
    assert snap.manifest["filters"]["correction"] == {"awaiting_adjudication_corrections_differ": 1}
    assert snap.manifest["conflicts"]["correction"] == {"resolved": 1, "adjudication": 1}
    dpo = {r["lineage"]["message_id"]: r for r in rows(snap, "dpo")}
    assert dpo[m[1]]["chosen"][0]["content"] == "The capital of Australia is Canberra." and m2[1] not in dpo


def test_correction_of_a_reply_rated_good_waits_for_an_admin(settings, session, reliability):
    r1, r2, admin = f.reviewer(session), f.reviewer(session), f.reviewer(session, "admin-like")
    reliability.update({r1: 0.9, r2: 0.9})
    _c, m = f.conversation(session, "Name a primary colour", "Red is a primary colour.")
    f.correct(session, m[1], r1, "Blue is a primary colour.")
    f.rate(session, m[1], r2, all=5)
    session.flush()
    snap = build(session, settings)
    everything = [r for k in ("sft", "dpo", "kto") for r in rows(snap, k)]
    assert not [r for r in everything if r["lineage"]["message_id"] == m[1]]  # neither correction nor reply
    assert snap.manifest["filters"]["correction"] == {"awaiting_adjudication_correction_vs_good": 1}

    # the admin decides the reply was bad and writes the final correction: it becomes the target
    f.rate(session, m[1], admin, adjudicated=True, all=2)
    f.correct(session, m[1], admin, "Red, blue and yellow are the primary colours.")
    session.flush()
    snap = build(session, settings)
    [sft] = [r for r in rows(snap, "sft") if r["lineage"]["message_id"] == m[1]]
    assert sft["messages"][-1]["content"] == "Red, blue and yellow are the primary colours."

    # ... or decides it was good: the reply itself is the target and the corrections are dropped
    f.rate(session, m[1], admin, adjudicated=True, all=5)
    session.flush()
    snap = build(session, settings)
    [sft] = [r for r in rows(snap, "sft") if r["lineage"]["message_id"] == m[1]]
    assert sft["messages"][-1]["content"] == "Red is a primary colour." and sft["lineage"]["via"] == "top_rated"
    assert snap.manifest["filters"]["correction"] == {"adjudicated_good": 1}


def test_a_reviewer_below_the_floor_weighs_nothing(settings, session, reliability):
    good, clicker = f.reviewer(session), f.reviewer(session)
    reliability.update({good: 0.9, clicker: 0.0})  # 0.0: flagged by feedback.quality
    _c, lone = f.conversation(session, "Is water wet?", "Water makes things wet.")
    f.rate(session, lone[1], clicker, all=1)  # a lone vote of a flagged reviewer no longer decides
    _c, pair = f.conversation(session, "What is 3 + 3?", "3 + 3 = 6.")
    f.rate(session, pair[1], good, all=5)
    f.rate(session, pair[1], clicker, all=1)
    _c, fixed = f.conversation(session, "Spell cat", "kat")
    f.correct(session, fixed[1], clicker, "dog")
    session.flush()
    prep = Prep(load_store(session), BuildOptions(**ALL_TRAIN), RUBRIC, dict(reliability))
    assessments = assess(prep)
    corrections = resolve_corrections(prep, assessments)
    assert reviewer_verdict(prep, assessments[lone[1]]) == (None, None)
    assert reviewer_verdict(prep, assessments[pair[1]]) == ("good", None)  # unanimous once the clicker is out
    assert fixed[1] not in corrections and prep.drops["correction"] == {"unreliable_reviewer": 1}
    assert prep.conflicts["consensus"]["votes_ignored_below_floor"] == 3


def test_repeated_votes_count_once_and_the_latest_wins(settings, session, reliability):
    """No ballot stuffing: one vote per person per reply per kind (rating, thumbs, correction, comparison)."""
    from retrain.datasets import dpo

    r1, r2, frontend = f.reviewer(session), f.reviewer(session), f.reviewer(session)
    reliability.update({r1: 0.9, r2: 0.9})
    _c, stuffed = f.conversation(session, "Is the sky blue?", "Yes, on a clear day.")
    f.rate(session, stuffed[1], r1, all=5)
    for _ in range(4):
        f.rate(session, stuffed[1], r2, all=1)
    _c, changed = f.conversation(session, "What is 2 + 2?", "2 + 2 = 4.")
    f.rate(session, changed[1], r1, all=1)
    f.rate(session, changed[1], r1, all=5)  # the reviewer changed their mind
    _c, thumbed = f.conversation(session, "Hello", "Hi there!")
    for value in ("down", "down", "down", "down", "up"):
        f.thumbs(session, thumbed[1], value, user_id=frontend)
    _c, fixed = f.conversation(session, "Capital of France?", "Lyon.")
    f.correct(session, fixed[1], r1, "Paris.")
    f.correct(session, fixed[1], r1, "The capital of France is Paris.")
    _c, compared = f.conversation(session, "Name a fruit", "A car.")
    a, b = (f.candidate(session, compared[1], text).id for text in ("An apple.", "A banana."))
    for _ in range(3):
        f.compare(session, compared[1], r1, a, b, "a")
    f.compare(session, compared[1], r2, a, b, "b")
    session.flush()

    prep = Prep(load_store(session), BuildOptions(**ALL_TRAIN), RUBRIC, dict(reliability))
    assessments = assess(prep)
    assert reviewer_verdict(prep, assessments[stuffed[1]]) == (None, "unresolved")  # 1 good vs 1 bad
    assert len(assessments[stuffed[1]].rating_ids) == 2
    assert reviewer_verdict(prep, assessments[changed[1]]) == ("good", None)
    assert assessments[thumbed[1]].user_votes == [("good", prep.options.end_user_weight)]
    corrections = resolve_corrections(prep, assessments)
    assert corrections[fixed[1]][0] == "The capital of France is Paris." and assessments[fixed[1]].pending is None
    assert dpo._from_comparisons(prep) == [] and prep.conflicts["dpo"] == {"unresolved": 1}  # 1 vote each


def test_dawid_skene_learns_a_reviewer_who_inverts_labels():
    """Four reviewers label 80 items (right 90%, 80%, 75% and 10% of the time: the last one inverts).
    With the same gold prior for all, EM learns the inverter's confusion and recovers far more labels
    than a plain majority (ties count as wrong)."""
    import random

    rng = random.Random(0)
    truth = {f"m{i}": rng.choice(["good", "bad"]) for i in range(80)}
    flip = {"good": "bad", "bad": "good"}
    items = {mid: [(j, label if rng.random() < acc else flip[label])
                   for j, acc in ((1, 0.9), (2, 0.8), (3, 0.75), (4, 0.1))] for mid, label in truth.items()}
    posteriors, report = dawid_skene(items, {1: 0.8, 2: 0.8, 3: 0.8, 4: 0.8})
    assert report["converged"] and report["items"] == 80
    right = sum(max(p, key=p.get) == truth[mid] for mid, p in posteriors.items())
    majority = 0
    for mid, votes in items.items():
        good = sum(label == "good" for _, label in votes)
        majority += ("good" if good > 2 else "bad" if good < 2 else None) == truth[mid]
    assert right >= 72 and right > majority + 20
    accuracy = report["reviewer_accuracy"]
    assert accuracy["4"] < 0.5 < min(accuracy["1"], accuracy["2"], accuracy["3"])


def test_reliability_is_read_as_of_the_snapshot_time(settings, session):
    """Real reliabilities (feedback.quality): a reviewer good on gold before the cut, random after it.
    A rebuild with `as_of` = the cut gives the same snapshot; a build now does not (the reviewer is
    flagged now and its lone rating is left out)."""
    from core.auth import create_user
    from core.models import Role
    from feedback import quality
    from feedback import service as feedback_service

    admin, _ = create_user(session, name="asof-admin", role=Role.admin)
    rev = f.reviewer(session)
    gold = []
    for i in range(6):
        _c, m = f.conversation(session, f"Gold question {i}", f"Gold answer {i}")
        feedback_service.set_gold(session, admin, m[1], {d: 5 for d in RUBRIC}, settings)
        gold.append(m[1])
    for mid in gold[:2]:
        f.rate(session, mid, rev, all=5)
    _c, m = f.conversation(session, "What is the boiling point of water?", "100 degrees Celsius at sea level.")
    f.rate(session, m[1], rev, all=5)
    session.flush()
    cut = utcnow()
    before = quality.reviewer_reliability(session, as_of=cut)
    first = build(session, settings, as_of=cut)
    assert before[rev] > settings.review_reliability_floor and len(rows(first, "sft")) >= 1

    for mid in gold[2:]:  # after the cut: wrong on every gold item
        row = f.rate(session, mid, rev, all=1)
        row.created_at = cut + timedelta(seconds=5)
    session.flush()
    now = quality.reviewer_reliability(session, as_of=cut + timedelta(seconds=10))
    assert now[rev] == 0.0 and quality.reviewer_reliability(session, as_of=cut) == before
    again, created = service.build(session, settings, BuildOptions(**ALL_TRAIN, as_of=cut))
    assert not created and again.hash == first.hash
    later = build(session, settings, as_of=cut + timedelta(seconds=10))
    assert later.hash != first.hash
    assert m[1] not in {r["lineage"]["message_id"] for r in rows(later, "sft")}
