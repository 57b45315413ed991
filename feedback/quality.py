"""Review quality: Krippendorff's alpha per rubric dimension (ordinal, via the `krippendorff`
package), per-reviewer agreement with the consensus and accuracy on gold items, and the
adjudication queue of items whose reviewers disagree beyond a threshold.

Definitions (each reviewer's latest non-adjudicated rating per item counts):
- agreement(reviewer) = mean over its (item, dimension) scores that have other raters of
  1 - |score - median(other raters' scores)| / 4   (1 = always with the consensus, 0 = opposite ends).
- gold_accuracy(reviewer) = share of its scores on gold items equal to the gold score.
- reliability(reviewer) = mean of agreement and gold accuracy where known; 1.0 when neither is.
- disagreement(item) = largest spread (max - min score) over the dimensions; adjudication when it
  exceeds `review_disagreement_threshold` and no admin has adjudicated the item.
"""

import statistics
from collections import defaultdict

import krippendorff
import numpy as np
from sqlmodel import Session, col, select

from core.settings import Settings, get_settings
from feedback.models import Rating, ReviewItem, ReviewItemStatus

LIKERT = [1, 2, 3, 4, 5]

Ratings = dict[str, dict[int, dict[str, int]]]  # message_id -> reviewer_id -> {dimension: score}


def latest_ratings(session: Session) -> Ratings:
    table: Ratings = defaultdict(dict)
    query = select(Rating).where(Rating.adjudicated == False).order_by(col(Rating.id))  # noqa: E712
    for rating in session.exec(query):
        table[rating.message_id][rating.reviewer_id] = dict(rating.scores)
    return dict(table)


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


def gold_accuracy(session: Session, ratings: Ratings) -> dict[int, dict]:
    gold = {item.message_id: item.gold_scores for item in
            session.exec(select(ReviewItem).where(col(ReviewItem.gold_scores).is_not(None)))}
    hits: dict[int, list[int]] = defaultdict(list)
    for message_id, answer in gold.items():
        for reviewer, scores in ratings.get(message_id, {}).items():
            hits[reviewer].extend(int(scores[d] == answer[d]) for d in answer if d in scores)
    return {r: {"gold_accuracy": sum(v) / len(v), "n_gold": len(v)} for r, v in hits.items() if v}


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
            queue.append({"message_id": message_id, "spread": spreads,
                          "ratings": {str(r): s for r, s in sorted(by_reviewer.items())}})
    return queue


def agreement_report(session: Session, settings: Settings) -> dict:
    ratings = latest_ratings(session)
    per_reviewer: dict[int, dict] = defaultdict(lambda: {"n_items": 0})
    for by_reviewer in ratings.values():
        for reviewer in by_reviewer:
            per_reviewer[reviewer]["n_items"] += 1
    for source in (reviewer_agreement(ratings), gold_accuracy(session, ratings)):
        for reviewer, figures in source.items():
            per_reviewer[reviewer].update(figures)
    for reviewer, figures in per_reviewer.items():
        figures["reliability"] = _reliability(figures)
    return {
        "dimensions": {d: {"alpha": alpha(ratings, d),
                           "n_items": sum(1 for by in ratings.values() if sum(d in s for s in by.values()) >= 2)}
                       for d in settings.review_rubric},
        "reviewers": {str(r): per_reviewer[r] for r in sorted(per_reviewer)},
        "adjudication": disagreements(session, ratings, settings.review_disagreement_threshold),
        "threshold": settings.review_disagreement_threshold,
    }


def _reliability(figures: dict) -> float:
    known = [figures[k] for k in ("agreement", "gold_accuracy") if k in figures]
    return sum(known) / len(known) if known else 1.0


def reviewer_reliability(session: Session) -> dict[int, float]:
    """0..1 per reviewer id for weighting feedback in dataset builds; 1.0 for reviewers without
    evidence (callers should use `.get(id, 1.0)`)."""
    report = agreement_report(session, get_settings())
    return {int(r): figures["reliability"] for r, figures in report["reviewers"].items()}
