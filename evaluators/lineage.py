"""Lineage of a model version: version → retrain run → dataset snapshot manifest → feedback rows."""

import json
from pathlib import Path
from typing import Any

from sqlmodel import Session

from core.settings import Settings
from evaluators.registry import get_version


def _feedback_tables() -> dict[str, type]:
    try:
        from feedback import models as fb
    except ImportError:
        return {}
    names = {"thumbs": "Thumbs", "rating": "Rating", "correction": "Correction", "candidate": "Candidate",
             "comparison": "Comparison", "flag": "Flag"}
    return {kind: getattr(fb, cls) for kind, cls in names.items() if hasattr(fb, cls)}


def snapshot_feedback_ids(snapshot: Path, manifest: dict | None = None) -> list[str]:
    """Feedback ids named by the manifest or by the lineage of the snapshot's training rows."""
    ids: set[str] = set((manifest or {}).get("feedback_ids") or [])
    for path in sorted(snapshot.glob("*.train.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                ids.update(str(i) for i in (json.loads(line).get("lineage") or {}).get("feedback_ids", []))
    return sorted(ids)


def lineage(session: Session, settings: Settings, version: str) -> dict[str, Any]:
    """Follow a version back to the feedback rows it was trained on; `complete` when every link resolves."""
    from evaluators.gate import snapshot_dir

    row = get_version(session, version)
    out: dict[str, Any] = {"version": version, "parent": row.parent, "run_id": row.run_id,
                           "snapshot_hash": row.snapshot_hash, "run": None, "snapshot": None,
                           "feedback_ids": [], "resolved": 0, "missing": [], "complete": False}
    snapshot_hash = row.snapshot_hash
    if row.run_id is not None:
        try:
            from retrain.training.models import RetrainRun

            run = session.get(RetrainRun, row.run_id)
            if run is not None:
                out["run"] = {"id": run.id, "status": str(run.status), "snapshot_hash": run.snapshot_hash,
                              "candidate_version": run.candidate_version}
                snapshot_hash = snapshot_hash or run.snapshot_hash
        except ImportError:
            pass
    path = snapshot_dir(session, settings, snapshot_hash)
    if path is None or not path.is_dir():
        return out
    manifest_path = path / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    out["snapshot"] = {"hash": snapshot_hash, "path": str(path), "manifest": bool(manifest)}
    ids = snapshot_feedback_ids(path, manifest)
    tables = _feedback_tables()
    for fid in ids:
        kind, _, key = fid.partition(":")
        table = tables.get(kind)
        found = table is not None and key.isdigit() and session.get(table, int(key)) is not None
        if found:
            out["resolved"] += 1
        else:
            out["missing"].append(fid)
    out["feedback_ids"] = ids
    out["complete"] = bool(ids) and not out["missing"] and (row.run_id is None or out["run"] is not None)
    return out
