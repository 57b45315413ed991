"""Tables of the retrain domain, gathered so Alembic sees them: snapshots and runs."""

from retrain.datasets.models import DatasetSnapshot
from retrain.training.models import RetrainRun

__all__ = ["DatasetSnapshot", "RetrainRun"]
