"""Review quality: Krippendorff's alpha per rubric dimension (ordinal, via the `krippendorff`
package), per-reviewer agreement with the consensus, reliability measured on gold items, and the
adjudication queue (ratings that disagree, corrections that conflict).

Definitions (each reviewer's latest non-adjudicated rating per item counts; with `as_of`, only
ratings and gold marks made at or before that time):
- agreement(reviewer) = mean over its (item, dimension) scores that have other raters of
  1 - |score - median(other raters' scores)| / 4   (1 = always with the consensus, 0 = opposite ends).
  A diagnostic: it needs overlap (k ≥ 2) and it does not set the reliability.
- gold items: replies an admin marked with known scores (`POST /api/review/gold`); every reviewer is
  served them at `review_gold_rate` of its claims, so reliability is measured even at k = 1.
- a gold answer: one (gold item, dimension) the reviewer scored; a hit when
  |score - gold| ≤ `review_gold_tolerance`. gold_accuracy = share of hits.
- reliability(reviewer) = posterior mean of r in the one-coin model: the reviewer knows the answer with
  probability r, else it clicks uniformly at random on 1..5 (so P(hit) = r + (1 - r)·c, c = the chance
  of a random hit for that gold score). Prior Beta(`review_reliability_prior`), posterior on a grid:
  a few answers never give 0 or 1, a random clicker tends to 0, a careful reviewer to 1. Without gold
  answers the reliability is the prior mean.
- flagged(reviewer) = it has gold answers and reliability < `review_reliability_floor`; its labels
  weigh nothing in dataset builds (`reviewer_reliability` gives it weight 0.0).
- disagreement(item) = largest spread (max - min score) over the dimensions; adjudication when it
  exceeds `review_disagreement_threshold` and no admin has adjudicated the item.
- correction conflicts (also adjudication): two or more corrections of a reply whose texts are not
  near-identical and whose reviewers' total weights give no clear winner (`choose_correction`), or a
  correction of a reply another reviewer rated good (every dimension ≥ `review_good_min_score`, or a
  reviewer thumbs up). Dataset builds leave such replies out until an admin adjudicates them.
"""

import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

import krippendorff
import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
from sqlmodel import Session, col, select

from core.settings import Settings, get_settings
from feedback.models import AuditEvent, Correction, Rating, ReviewItem, ReviewItemStatus, Thumbs

LIKERT = [1, 2, 3, 4, 5]
CORRECTION_SIMILARITY = 0.8  # token-set Jaccard at or above which two corrections count as the same text
CORRECTION_MARGIN = 0.25  # the heaviest group of corrections wins if it outweighs the next by this factor

Ratings = dict[str, dict[int, dict[str, int]]]  # message_id -> reviewer_id -> {dimension: score}


def _upto(model, as_of: datetime | None) -> list:
    return [] if as_of is None else [model.created_at <= as_of]


def latest_ratings(session: Session, as_of: datetime | None = None) -> Ratings:
    table: Ratings = defaultdict(dict)
    query = (select(Rating).where(Rating.adjudicated == False, *_upto(Rating, as_of))  # noqa: E712
             .order_by(col(Rating.id)))
    for rating in session.exec(query):
        table[rating.message_id][rating.reviewer_id] = dict(rating.scores)
    return dict(table)


def gold_answers(session: Session, as_of: datetime | None = None) -> dict[str, dict[str, int]]:
    """message_id -> known scores. Live: the queue's gold items; `as_of`: replayed from the audit
    trail (the latest `item.gold` event per reply at or before that time), so an old snapshot's
    reliability does not change when an admin marks or edits gold items later."""
    if as_of is None:
        return {item.message_id: dict(item.gold_scores) for item in
                session.exec(select(ReviewItem).where(col(ReviewItem.gold_scores).is_not(None)))}
    gold: dict[str, dict[str, int]] = {}
    events = session.exec(select(AuditEvent).where(AuditEvent.action == "item.gold", AuditEvent.created_at <= as_of)
                          .order_by(col(AuditEvent.id)))
    for event in events:
        scores = (event.after or {}).get("gold_scores")
        if event.message_id and isinstance(scores, dict):
            gold[event.message_id] = {d: int(v) for d, v in scores.items()}
    return gold


def alpha(ratings: Ratings, dimension: str) -> float | None:
    """Ordinal Krippendorff's alpha for one dimension; None when it is undefined (too few pairs or
    no variation)."""
    reviewers = sorted({r for by in ratings.values() for r in by})
    items = sorted(ratings)
    data = np.full((len(reviewers), len(items)), np.nan)
    for j, item in enumerate(items):
        for i, reviewer in enumerate(reviewers):
            score = ratings[item].get(reviewer, {}).get(dimension)
            if score is not None:
                data[i, j] = score
    pairable = (np.sum(~np.isnan(data), axis=0) >= 2).sum() if data.size else 0
    if pairable == 0:
        return None
    try:
        value = krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal", value_domain=LIKERT)
    except (ValueError, ZeroDivisionError):
        return None
    return float(value) if np.isfinite(value) else None


def reviewer_agreement(ratings: Ratings) -> dict[int, dict]:
    totals: dict[int, list[float]] = defaultdict(list)
    for by_reviewer in ratings.values():
        for reviewer, scores in by_reviewer.items():
            for dimension, score in scores.items():
                others = [s[dimension] for r, s in by_reviewer.items() if r != reviewer and dimension in s]
                if others:
                    totals[reviewer].append(1 - abs(score - statistics.median(others)) / 4)
    return {r: {"agreement": sum(v) / len(v), "n_compared": len(v)} for r, v in totals.items()}


# ---------------------------------------------------------------------------------------------- gold reliability


def chance_hit(gold: int, tolerance: int) -> float:
    """Probability that a uniform random click on 1..5 lands within `tolerance` of `gold`."""
    return sum(1 for v in LIKERT if abs(v - gold) <= tolerance) / len(LIKERT)


_GRID = np.linspace(0.0, 1.0, 1001)


def one_coin_reliability(answers: Sequence[tuple[bool, float]], prior: tuple[float, float]) -> float:
    """Posterior mean of r given gold answers (hit, chance of a random hit) under
    P(hit) = r + (1 - r)·chance and a Beta(a, b) prior on r (numerical integration on a grid)."""
    a, b = prior
    r = _GRID
    with np.errstate(divide="ignore", invalid="ignore"):
        log_post = (a - 1) * np.log(r) + (b - 1) * np.log1p(-r)
        for hit, chance in answers:
            p = r + (1 - r) * chance
            log_post = log_post + (np.log(p) if hit else np.log1p(-p))
    log_post = np.where(np.isnan(log_post), -np.inf, log_post)
    if not np.isfinite(log_post).any():
        return a / (a + b)
    weights = np.exp(log_post - log_post[np.isfinite(log_post)].max())
    return float((weights * r).sum() / weights.sum())


def gold_reliability(ratings: Ratings, gold: dict[str, dict[str, int]], settings: Settings) -> dict[int, dict]:
    """Per reviewer with gold answers: gold_accuracy, n_gold (answers), gold_items, reliability."""
    answers: dict[int, list[tuple[bool, float]]] = defaultdict(list)
    items: dict[int, int] = defaultdict(int)
    tolerance = settings.review_gold_tolerance
    for message_id, known in gold.items():
        for reviewer, scores in ratings.get(message_id, {}).items():
            mine = [(abs(scores[d] - known[d]) <= tolerance, chance_hit(known[d], tolerance))
                    for d in known if d in scores]
            if mine:
                answers[reviewer].extend(mine)
                items[reviewer] += 1
    prior = tuple(settings.review_reliability_prior)
    return {r: {"gold_accuracy": sum(h for h, _ in v) / len(v), "n_gold": len(v), "gold_items": items[r],
                "reliability": one_coin_reliability(v, prior)} for r, v in answers.items()}


def _reviewer_ids(session: Session, as_of: datetime | None) -> set[int]:
    """Everyone who left reviewer feedback (ratings, corrections, reviewer thumbs) up to `as_of`."""
    ids = set(session.exec(select(Rating.reviewer_id).where(Rating.adjudicated == False,  # noqa: E712
                                                            *_upto(Rating, as_of)).distinct()))
    ids |= set(session.exec(select(Correction.reviewer_id).where(*_upto(Correction, as_of)).distinct()))
    ids |= {u for u in session.exec(select(Thumbs.user_id).where(Thumbs.source == "reviewer", *_upto(Thumbs, as_of))
                                    .distinct()) if u is not None}
    return ids


def reviewer_figures(session: Session, settings: Settings, as_of: datetime | None = None,
                     ratings: Ratings | None = None) -> dict[int, dict]:
    """Per reviewer: n_items, agreement, gold figures, reliability, weight and flagged."""
    ratings = latest_ratings(session, as_of) if ratings is None else ratings
    prior = tuple(settings.review_reliability_prior)
    per: dict[int, dict] = {r: {"n_items": 0} for r in _reviewer_ids(session, as_of)}
    for by_reviewer in ratings.values():
        for reviewer in by_reviewer:
            per.setdefault(reviewer, {"n_items": 0})["n_items"] += 1
    for source in (reviewer_agreement(ratings), gold_reliability(ratings, gold_answers(session, as_of), settings)):
        for reviewer, figures in source.items():
            per.setdefault(reviewer, {"n_items": 0}).update(figures)
    floor = settings.review_reliability_floor
    for figures in per.values():
        figures.setdefault("n_gold", 0)
        figures.setdefault("reliability", prior[0] / (prior[0] + prior[1]))
        figures["flagged"] = bool(figures["n_gold"] and figures["reliability"] < floor)
        figures["weight"] = 0.0 if figures["flagged"] else figures["reliability"]
    return per


def reviewer_reliability(session: Session, as_of: datetime | None = None,
                         settings: Settings | None = None) -> dict[int, float]:
    """Vote weight 0..1 per reviewer id for dataset builds, from feedback created at or before `as_of`
    (None: everything): the gold reliability, 0.0 for flagged reviewers (below the floor). Reviewers
    not listed have left no feedback; callers use `.get(id, 1.0)`."""
    figures = reviewer_figures(session, settings or get_settings(), as_of)
    return {r: f["weight"] for r, f in figures.items()}


# ---------------------------------------------------------------------------------------------- corrections


def tokens(text: str) -> list[str]:
    return re.findall(r"\w+", text.casefold())


TOPIC_SHARE = 0.5  # a question sharing this share of its content words with another is on its topic


def topic_words(prompt: list[dict]) -> frozenset[str]:
    """Content words of a prompt's last user turn (English stop words and single characters dropped)."""
    text = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")
    return frozenset(w for w in tokens(text) if len(w) > 1 and w not in ENGLISH_STOP_WORDS)


def frequent_words(topics: list[frozenset[str]], share: float = 0.25, at_least: int = 3) -> frozenset[str]:
    """Words in at least `share` of the examples' questions (and `at_least` of them): the domain's or a
    template's words ("zsh", "tell ... please"), which say nothing about which question it is."""
    counts = Counter(w for t in topics for w in t)
    return frozenset(w for w, n in counts.items() if n >= max(at_least, share * len(topics)))


def on_topic(words: frozenset[str], topics: list[frozenset[str]]) -> bool:
    return bool(words) and any(len(words & t) >= TOPIC_SHARE * len(words) for t in topics)


def near_identical(a: list[str], b: list[str], similarity: float = CORRECTION_SIMILARITY) -> bool:
    """Same words in the same order (case, spacing and punctuation aside), or token-set Jaccard ≥ similarity."""
    if a == b:
        return True
    sa, sb = set(a), set(b)
    return bool(sa and sb) and len(sa & sb) / len(sa | sb) >= similarity


def group_corrections(rows: Sequence[tuple], similarity: float = CORRECTION_SIMILARITY) -> list[list[tuple]]:
    """Rows (id, reviewer_id, content, …) in groups of near-identical texts (transitively), by first id."""
    rows = sorted(rows, key=lambda r: r[0])
    toks = [tokens(r[2]) for r in rows]
    parent = list(range(len(rows)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(rows)):
        for j in range(i):
            if root(i) != root(j) and near_identical(toks[i], toks[j], similarity):
                parent[root(i)] = root(j)
    groups: dict[int, list[tuple]] = defaultdict(list)
    for i, row in enumerate(rows):
        groups[root(i)].append(row)
    return [groups[k] for k in sorted(groups)]


def choose_correction(rows: Sequence[tuple], weight: Callable[[int | None], float],
                      similarity: float = CORRECTION_SIMILARITY, margin: float = CORRECTION_MARGIN,
                      ) -> tuple[tuple | None, list[tuple], str | None, list[dict]]:
    """Pick among the corrections of one reply, rows (id, reviewer_id, content, …).

    Corrections by reviewers of weight 0 (flagged) are ignored. The rest are grouped into
    near-identical texts; a group weighs the sum of its distinct reviewers' weights. One group: it
    wins. Several: the heaviest wins when it outweighs the runner-up by the factor 1 + `margin`
    ("resolved"), else no choice is clear ("adjudicate"). Returns (chosen row: the latest correction of
    the group's most reliable reviewer, the group's rows, state, groups summary heaviest first);
    state "unreliable" when every correction came from a flagged reviewer."""
    kept = [r for r in rows if weight(r[1]) > 0]
    if not kept:
        return None, [], ("unreliable" if rows else None), []
    groups = group_corrections(kept, similarity)
    totals = [sum(weight(rv) for rv in {r[1] for r in g}) for g in groups]
    order = sorted(range(len(groups)), key=lambda i: (-totals[i], groups[i][0][0]))
    summary = [{"correction_ids": [r[0] for r in groups[i]], "reviewer_ids": sorted({r[1] for r in groups[i]}),
                "weight": round(totals[i], 4), "content": groups[i][-1][2]} for i in order]
    best = groups[order[0]]
    if len(groups) > 1 and totals[order[0]] < (1 + margin) * totals[order[1]]:
        return None, [], "adjudicate", summary
    chosen = max(best, key=lambda r: (weight(r[1]), r[0]))
    return chosen, best, ("resolved" if len(groups) > 1 else None), summary


def rated_good(scores: dict, rubric: Iterable[str], min_score: int) -> bool:
    """Every rubric dimension scored and at least `min_score`."""
    return all(isinstance(scores.get(d), int | float) and scores[d] >= min_score for d in rubric)


def correction_conflicts(session: Session, settings: Settings, weights: dict[int, float] | None = None,
                         ratings: Ratings | None = None) -> list[dict]:
    """Replies whose corrections need an admin: differing corrections without a clear choice, or a
    correction of a reply another (unflagged) reviewer rated good or gave a thumbs up."""
    weights = reviewer_reliability(session, settings=settings) if weights is None else weights
    ratings = latest_ratings(session) if ratings is None else ratings
    weight = lambda r: weights.get(r, 1.0)  # noqa: E731
    settled = set(session.exec(select(ReviewItem.message_id).where(ReviewItem.status == ReviewItemStatus.adjudicated)))
    by_message: dict[str, list[tuple]] = defaultdict(list)
    for c in session.exec(select(Correction).order_by(col(Correction.id))):
        if c.message_id not in settled:
            by_message[c.message_id].append((c.id, c.reviewer_id, c.content))
    if not by_message:
        return []
    ups: dict[str, set[int]] = defaultdict(set)
    for mid, user in session.exec(select(Thumbs.message_id, Thumbs.user_id).where(
            Thumbs.source == "reviewer", Thumbs.thumbs == "up", col(Thumbs.message_id).in_(list(by_message)))):
        if user is not None:
            ups[mid].add(user)
    queue = []
    for mid, rows in sorted(by_message.items()):
        _chosen, _group, state, groups = choose_correction(rows, weight)
        correctors = {r[1] for r in rows}
        good = sorted(r for r in ({r for r, s in ratings.get(mid, {}).items()
                                   if rated_good(s, settings.review_rubric, settings.review_good_min_score)}
                                  | ups.get(mid, set())) - correctors if weight(r) > 0)
        reason = "correction_vs_good" if good and state != "unreliable" else (
            "corrections_differ" if state == "adjudicate" else None)
        if reason:
            queue.append({"message_id": mid, "reason": reason, "spread": {}, "good_votes": [str(r) for r in good],
                          "corrections": groups,
                          "ratings": {str(r): s for r, s in sorted(ratings.get(mid, {}).items())}})
    return queue


# ---------------------------------------------------------------------------------------------- adjudication


def disagreements(session: Session, ratings: Ratings, threshold: float) -> list[dict]:
    settled = set(session.exec(select(ReviewItem.message_id).where(ReviewItem.status == ReviewItemStatus.adjudicated)))
    queue = []
    for message_id, by_reviewer in sorted(ratings.items()):
        if len(by_reviewer) < 2 or message_id in settled:
            continue
        spreads = {}
        for dimension in sorted({d for s in by_reviewer.values() for d in s}):
            values = [s[dimension] for s in by_reviewer.values() if dimension in s]
            if len(values) >= 2:
                spreads[dimension] = max(values) - min(values)
        if spreads and max(spreads.values()) > threshold:
            queue.append({"message_id": message_id, "reason": "ratings_spread", "spread": spreads,
                          "ratings": {str(r): s for r, s in sorted(by_reviewer.items())}})
    return queue


def adjudication_queue(session: Session, settings: Settings, ratings: Ratings | None = None,
                       weights: dict[int, float] | None = None) -> list[dict]:
    """Everything waiting for an admin: rating spreads, then correction conflicts (one entry per reply;
    a reply in both keeps the spread entry, with the correction conflict added)."""
    ratings = latest_ratings(session) if ratings is None else ratings
    queue = disagreements(session, ratings, settings.review_disagreement_threshold)
    index = {entry["message_id"]: entry for entry in queue}
    for entry in correction_conflicts(session, settings, weights, ratings):
        if entry["message_id"] in index:
            index[entry["message_id"]].update(corrections=entry["corrections"], good_votes=entry["good_votes"],
                                              correction_reason=entry["reason"])
        else:
            queue.append(entry)
    return queue


def agreement_report(session: Session, settings: Settings) -> dict:
    ratings = latest_ratings(session)
    per_reviewer = reviewer_figures(session, settings, ratings=ratings)
    weights = {r: f["weight"] for r, f in per_reviewer.items()}
    return {
        "dimensions": {d: {"alpha": alpha(ratings, d),
                           "n_items": sum(1 for by in ratings.values() if sum(d in s for s in by.values()) >= 2)}
                       for d in settings.review_rubric},
        "reviewers": {str(r): per_reviewer[r] for r in sorted(per_reviewer)},
        "flagged": [str(r) for r in sorted(per_reviewer) if per_reviewer[r]["flagged"]],
        "reliability": {"method": "one-coin model on gold items, Beta prior, posterior mean",
                        "prior": list(settings.review_reliability_prior),
                        "floor": settings.review_reliability_floor,
                        "gold_tolerance": settings.review_gold_tolerance, "gold_rate": settings.review_gold_rate},
        "adjudication": adjudication_queue(session, settings, ratings, weights),
        "threshold": settings.review_disagreement_threshold,
    }
