"""Reviewer reliability measured on gold items (even at k = 1), the floor that flags a random clicker and
silences its labels, and the adjudication of conflicting corrections."""

import random

import pytest
from sqlmodel import select

from core.auth import create_user
from core.models import Role, utcnow
from feedback import quality, service
from feedback.models import ReviewClaimStatus, ReviewItem, ReviewItemStatus
from service.models import Conversation, Message
from tests.conftest import make_key
from tests.feedback.conftest import chat

RUBRIC = ["correctness", "helpfulness", "tone"]
GOOD, BAD = {"correctness": 5, "helpfulness": 5, "tone": 4}, {"correctness": 1, "helpfulness": 2, "tone": 2}


def _replies(session, prefix: str, n: int) -> list[str]:
    """n one-turn conversations with fixed, ordered ids (so the queue serves them in a known order)."""
    ids = []
    for i in range(n):
        conv = Conversation(id=f"conv_{prefix}{i:04d}")
        session.add(conv)
        session.flush()
        session.add(Message(id=f"msg_{prefix}u{i:04d}", conversation_id=conv.id, position=0, role="user",
                            content=f"question {prefix} {i}"))
        session.add(Message(id=f"msg_{prefix}a{i:04d}", conversation_id=conv.id, position=1, role="assistant",
                            content=f"answer {prefix} {i}", model_version="v0"))
        ids.append(f"msg_{prefix}a{i:04d}")
    session.flush()
    return ids


def _flips(session, settings, truth: dict[str, str], floor: float) -> tuple[int, int]:
    """(labels flipped between good and bad, items left without a label) in the dataset consensus, with
    reviewer weights as of now under the given floor (0 = nobody is ever silenced)."""
    from retrain.datasets.common import Prep, assess, reviewer_verdict
    from retrain.datasets.repository import load_store
    from retrain.datasets.schemas import BuildOptions

    weights = quality.reviewer_reliability(session, as_of=utcnow(),
                                           settings=settings.model_copy(update={"review_reliability_floor": floor}))
    prep = Prep(load_store(session), BuildOptions(), RUBRIC, weights)
    assessments = assess(prep)
    flipped = unlabelled = 0
    for mid, label in truth.items():
        verdict, _state = reviewer_verdict(prep, assessments[mid])
        unlabelled += verdict is None
        flipped += {verdict, label} == {"good", "bad"}
    return flipped, unlabelled


def test_random_clicker_among_five_is_flagged_and_its_flips_drop_at_k1(settings, session, capsys):
    """300 replies, half good and half bad, each reviewed once (k = 1) by one of five reviewers; 20 gold
    items mixed in at the default rate (1 claim in 10). Four reviewers are careful (off by one point now
    and then, never across good/bad), one clicks at random."""
    assert settings.review_k == 1 and settings.review_gold_rate == 0.1
    rng = random.Random(2024)
    admin, _ = create_user(session, name="sim-admin", role=Role.admin)
    reviewers = [create_user(session, name=f"sim-r{i}", role=Role.reviewer)[0] for i in range(5)]
    clicker = reviewers[2]
    gold_ids = _replies(session, "g", 20)
    gold = {mid: dict(GOOD if i % 2 else BAD) for i, mid in enumerate(gold_ids)}
    for mid, scores in gold.items():
        service.set_gold(session, admin, mid, scores, settings)
    item_ids = _replies(session, "x", 300)
    truth = {mid: "good" if i % 2 else "bad" for i, mid in enumerate(item_ids)}
    for mid in item_ids:
        service.enqueue(session, mid, service.THUMBS_DOWN_PRIORITY, "thumbs_down", settings)

    def answer(reviewer, mid: str) -> dict[str, int]:
        known = gold.get(mid) or (GOOD if truth[mid] == "good" else BAD)
        if reviewer.id == clicker.id:
            return {d: rng.randint(1, 5) for d in RUBRIC}
        band = (4, 5) if min(known.values()) >= 4 else (1, 2)
        return {d: min(max(v + rng.choice((-1, 0, 0, 0, 1)), band[0]), band[1]) for d, v in known.items()}

    open_items = set(item_ids)
    while open_items:
        progressed = False
        for reviewer in reviewers:
            row = service.claim(session, reviewer, settings)
            if row is None:
                continue
            progressed = True
            service.rate(session, reviewer, row.message_id, answer(reviewer, row.message_id), None, settings)
            service.finish_claim(session, reviewer, row.message_id, ReviewClaimStatus.submitted)
            open_items.discard(row.message_id)
        assert progressed
    done = session.exec(select(ReviewItem).where(ReviewItem.status == ReviewItemStatus.done)).all()
    assert {i.message_id for i in done} >= set(item_ids)

    report = quality.agreement_report(session, settings)
    figures = {int(r): f for r, f in report["reviewers"].items()}
    assert all(figures[r.id]["n_gold"] >= 5 * 3 for r in reviewers)  # every reviewer met ≥ 5 gold items
    assert report["flagged"] == [str(clicker.id)]
    assert figures[clicker.id]["reliability"] < settings.review_reliability_floor <= min(
        figures[r.id]["reliability"] for r in reviewers if r is not clicker)
    assert figures[clicker.id]["weight"] == 0.0

    before, unlabelled_before = _flips(session, settings, truth, floor=0.0)
    after, unlabelled_after = _flips(session, settings, truth, floor=settings.review_reliability_floor)
    clicked = sum(1 for mid in item_ids if any(c.reviewer_id == clicker.id for c in _claims(session, mid)))
    with capsys.disabled():
        print(f"\n[simulation k=1, 5 reviewers, 1 random clicker, 300 items + 20 gold] clicker reliability "
              f"{figures[clicker.id]['reliability']:.3f} (others ≥ "
              f"{min(figures[r.id]['reliability'] for r in reviewers if r is not clicker):.3f}); flips "
              f"good↔bad before {before}, after {after}; unlabelled before {unlabelled_before}, after "
              f"{unlabelled_after} (clicker reviewed {clicked})")
    assert before >= 15 and after == 0
    assert unlabelled_after == clicked  # the clicker's items are left out instead of flipping

    from hitl.ui import data  # the admin page shows the flag

    page = data.agreement(session)
    assert page["flagged"] == ["sim-r2"] and page["floor"] == settings.review_reliability_floor
    assert next(r for r in page["reviewers"] if r["name"] == "sim-r2")["flagged"]


def _claims(session, message_id: str):
    from feedback.models import ReviewClaim

    return session.exec(select(ReviewClaim).where(ReviewClaim.message_id == message_id,
                                                  ReviewClaim.status == ReviewClaimStatus.submitted)).all()


def test_gold_is_served_to_every_reviewer_even_once_done(settings, session):
    admin, _ = create_user(session, name="g-admin", role=Role.admin)
    r1, r2 = (create_user(session, name=f"g-r{i}", role=Role.reviewer)[0] for i in range(2))
    [gold_id] = _replies(session, "h", 1)
    service.set_gold(session, admin, gold_id, dict(GOOD), settings)
    items = _replies(session, "y", 30)
    for mid in items:
        service.enqueue(session, mid, service.THUMBS_DOWN_PRIORITY, "thumbs_down", settings)
    served: dict[int, list[str]] = {r1.id: [], r2.id: []}
    for _ in range(12):
        for reviewer in (r1, r2):
            row = service.claim(session, reviewer, settings)
            served[reviewer.id].append(row.message_id)
            service.finish_claim(session, reviewer, row.message_id, ReviewClaimStatus.submitted)
    for got in served.values():  # the gold item once each, on the 10th claim (the first due at rate 0.1)
        assert got.count(gold_id) == 1 and got.index(gold_id) == 9
    assert session.get(ReviewItem, gold_id).status == ReviewItemStatus.done  # k = 1 reached after r1
    off = settings.model_copy(update={"review_gold_rate": 0.0})
    r3 = create_user(session, name="g-r3", role=Role.reviewer)[0]
    for _ in range(5):  # rate 0: only the ordinary queue, where the gold item is done
        row = service.claim(session, r3, off)
        assert row.message_id != gold_id
        service.finish_claim(session, r3, row.message_id, ReviewClaimStatus.submitted)


def test_conflicting_corrections_go_to_adjudication(server_with, admin_key, service_key):
    server = server_with(REVIEW_K="3")
    keys = [make_key("reviewer", f"c{i}") for i in range(3)]
    with server.client(service_key) as svc, server.client(admin_key) as admin:
        replies = [chat(svc, f"question {i}")["message_id"] for i in range(2)]
        clients = [server.client(k) for k in keys]
        try:
            for who, client in enumerate(clients):
                for _ in range(2):
                    mid = client.post("/api/review/claim").json()["message_id"]
                    item = f"/api/review/items/{mid}"
                    if mid == replies[0] and who < 2:  # two different rewrites by equally trusted reviewers
                        text = ["Paris is the capital of France.", "France's capital city is Paris, on the Seine."][who]
                        assert client.post(f"{item}/correction", json={"content": text}).status_code == 201
                    elif mid == replies[1] and who == 0:  # a correction of a reply the others rate good
                        assert client.post(f"{item}/correction", json={"content": "A better answer."}).status_code == 201
                    elif mid == replies[1]:
                        scores = {"correctness": 5, "helpfulness": 5, "tone": 5}
                        assert client.post(f"{item}/rating", json={"scores": scores}).status_code == 201
                    assert client.post(f"{item}/submit").status_code == 200
        finally:
            for client in clients:
                client.close()
        queue = {e["message_id"]: e for e in admin.get("/api/review/adjudication").json()}
        assert queue[replies[0]]["reason"] == "corrections_differ" and len(queue[replies[0]]["corrections"]) == 2
        assert queue[replies[1]]["reason"] == "correction_vs_good" and len(queue[replies[1]]["good_votes"]) == 2
        decided = admin.post(f"/api/review/adjudication/{replies[0]}",
                             json={"scores": {"correctness": 2}, "correction": "Paris is the capital of France."})
        assert decided.status_code == 201
        assert admin.post(f"/api/review/adjudication/{replies[1]}",
                          json={"scores": {"correctness": 5, "helpfulness": 5, "tone": 5}}).status_code == 201
        assert admin.get("/api/review/adjudication").json() == []


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_choose_correction_by_reliability(settings):
    rows = [(1, 10, "The capital of Australia is Canberra."), (2, 11, "the capital of australia is canberra"),
            (3, 12, "Canberra, not Sydney, is Australia's capital city.")]
    weights = {10: 0.6, 11: 0.5, 12: 0.8}
    chosen, group, state, groups = quality.choose_correction(rows, weights.get)
    assert state == "resolved" and [r[0] for r in group] == [1, 2] and chosen[0] == 1  # 1.1 ≥ 1.25 × 0.8
    assert [g["weight"] for g in groups] == [1.1, 0.8]
    weights[12] = 0.95
    chosen, group, state, _ = quality.choose_correction(rows, weights.get)
    assert state == "adjudicate" and chosen is None  # 1.1 < 1.25 × 0.95: no clear choice
    weights[11] = 0.0  # flagged: its near-identical copy no longer counts
    chosen, group, state, _ = quality.choose_correction(rows, weights.get)
    assert state == "resolved" and chosen[0] == 3  # 0.95 ≥ 1.25 × 0.6
    assert quality.choose_correction(rows[1:2], weights.get)[2] == "unreliable"
