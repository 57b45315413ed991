"""Prometheus metrics read from the database at scrape time: what every replica sees alike (the Grafana
dashboard in `deploy/grafana/` takes their max over instances). Serving's own metrics live in `service.metrics`."""

import logging

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector
from sqlmodel import func, select

from core.db import session_scope
from core.models import User
from feedback.models import ReviewClaim, ReviewClaimStatus, ReviewItem, ReviewItemStatus
from retrain.training.models import RetrainRun
from service.models import ModelAlias

log = logging.getLogger(__name__)


def _families():
    return (GaugeMetricFamily("hitl_review_queue_open", "Open review items waiting for a reviewer", labels=["reason"]),
            CounterMetricFamily("hitl_reviews_submitted", "Review items submitted, per reviewer", labels=["reviewer"]),
            CounterMetricFamily("hitl_retrain_runs", "Retrain runs by status (final or current)", labels=["status"]),
            GaugeMetricFamily("hitl_model_alias_info", "1 for the version each alias (champion, challenger) points at",
                              labels=["alias", "version"]),
            GaugeMetricFamily("hitl_store_up", "1 when the database answered this scrape"))


class StoreCollector(Collector):
    def describe(self):
        """The families without values: registering reads no database (it ran before the migrations)."""
        return _families()

    def collect(self):
        queue, reviews, runs, aliases, up = _families()
        try:
            with session_scope() as session:
                for reason, n in session.exec(
                        select(ReviewItem.reason, func.count()).where(ReviewItem.status == ReviewItemStatus.open,
                                                                      ReviewItem.priority.is_not(None))
                        .group_by(ReviewItem.reason)):
                    queue.add_metric([reason or "other"], n)
                for name, n in session.exec(
                        select(User.name, func.count()).join(ReviewClaim, ReviewClaim.reviewer_id == User.id)
                        .where(ReviewClaim.status == ReviewClaimStatus.submitted).group_by(User.name)):
                    reviews.add_metric([name], n)
                for status, n in session.exec(select(RetrainRun.status, func.count()).group_by(RetrainRun.status)):
                    runs.add_metric([str(status)], n)
                for alias in session.exec(select(ModelAlias)):
                    aliases.add_metric([alias.alias, alias.version], 1)
            up.add_metric([], 1)
        except Exception as exc:  # a scrape never fails on the database: the panels show the gap
            log.warning("metrics: database not readable: %s", exc)
            up.add_metric([], 0)
        yield from (queue, reviews, runs, aliases, up)


_registered = False


def register() -> None:
    """Once per process (the app may be built several times, as in tests)."""
    global _registered
    if not _registered:
        REGISTRY.register(StoreCollector())
        _registered = True
